"""One visual encoding per video for many questions (method.md step 1): ``answer_many`` and
:class:`VisualCache`.

References: each question answered on its own by :meth:`AdaptToken.answer` (no cache), and
the vision tower run afresh on frames decoded by PyAV directly."""
import os
import shutil

import av
import numpy as np
import pytest
import torch

from adapttoken_ext import AdaptToken, AdaptTokenConfig
from adapttoken_ext.models.tiny import ensure_tiny_model
from adapttoken_ext.video import sample_video
from adapttoken_ext.visual_cache import video_key

SMALL = dict(frames=64, max_pixels=112 * 224, units_per_group=8, budget=40)
QUESTIONS = [("What are the people doing?", ["A. Riding bikes", "B. Cooking", "C. Chess"]),
             ("Describe the video.", None),
             ("Which colour is the sky?", ["A. Blue", "B. Grey"])]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    out = tmp_path_factory.mktemp("reuse") / "bikes.mp4"
    shutil.copy(sample_video("bikes.mp4"), out)
    return str(out)


def _pipeline(**cfg):
    return AdaptToken.from_pretrained(str(ensure_tiny_model()), AdaptTokenConfig(**{**SMALL, **cfg}))


class EncodeSpy:
    def __init__(self, adapter):
        self.n, self._f = 0, adapter.encode
        adapter.encode = self

    def __call__(self, frames):
        self.n += 1
        return self._f(frames)


def _same(a, b):
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d.pop("timings_s"), d.pop("peak_memory_bytes")
    return da == db


def _pyav_frames(path, indices, size):
    """The frames at ``indices`` decoded in one pass by PyAV, bicubic-resized like the reader."""
    want, out = set(indices), {}
    with av.open(path) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in want:
                img = f.reformat(width=size[1], height=size[0], format="rgb24", interpolation="BICUBIC")
                out[i] = torch.from_numpy(img.to_ndarray()).permute(2, 0, 1)
    return torch.stack([out[i] for i in indices])


def test_answer_many_equals_answer_and_encodes_each_group_once(video):
    at = _pipeline()
    spy = EncodeSpy(at.adapter)
    alone = [at.answer(video, q, o, progress=False) for q, o in QUESTIONS]
    groups = len(alone[0].groups)
    assert spy.n >= 3 * groups
    spy.n = 0
    many = at.answer_many(video, QUESTIONS, progress=False)
    assert spy.n == groups  # the first question encodes, the others reuse
    assert all(_same(a, b) for a, b in zip(many, alone))
    for r in many[1:]:
        assert r.timings_s["decode"] == 0 and r.timings_s["vision_encoder"] == 0
    again = at.answer_many(video, [QUESTIONS[1]], progress=False)  # across calls too
    assert spy.n == groups and _same(again[0], alone[1])


def test_hit_is_bitwise_a_fresh_encode(video):
    at = _pipeline()
    res = at.answer_many(video, [QUESTIONS[0]], progress=False)[0]
    entries = at.visual_cache._videos[video_key(video)]
    assert len(entries) == len(res.groups)
    for (model, size, frames), vis in entries.items():
        fresh = at.adapter.encode(_pyav_frames(video, list(frames), size))
        assert vis.embeds.dtype == fresh.embeds.dtype
        assert torch.equal(vis.embeds, fresh.embeds.cpu())
        assert model[0] == at.name


def test_refill_reencodes_come_from_the_cache(video):
    # threshold -1: every same-location token is redundant, so step 7 refills from the groups
    at = _pipeline(redundancy_threshold=-1.0, budget=300)
    spy = EncodeSpy(at.adapter)
    alone = at.answer(video, *QUESTIONS[0], progress=False)
    assert spy.n == len(alone.groups) + alone.reencodes > len(alone.groups)  # refill re-encoded without the cache
    spy.n = 0
    many = at.answer_many(video, [QUESTIONS[0]], progress=False)
    assert spy.n == len(alone.groups) and _same(many[0], alone)


def test_changed_file_is_encoded_again(video, tmp_path):
    copy = tmp_path / "v.mp4"
    shutil.copy(video, copy)
    at = _pipeline()
    spy = EncodeSpy(at.adapter)
    first = at.answer_many(str(copy), [QUESTIONS[1]], progress=False)[0]
    n = spy.n
    st = os.stat(copy)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, new mtime
    at.answer_many(str(copy), [QUESTIONS[1]], progress=False)
    assert spy.n == 2 * n
    cfg = at.config
    at.config = AdaptTokenConfig(**{**cfg.to_dict(), "frames": 32})  # other sampling: other keys
    at.answer_many(str(copy), [QUESTIONS[1]], progress=False)
    assert spy.n > 2 * n
    assert len(first.groups) == n


def test_limit_bounds_memory_and_evicts_older_videos(video, tmp_path):
    at = _pipeline()
    at.answer_many(video, [QUESTIONS[1]], progress=False)
    full = at.visual_cache.bytes
    groups = len(at.visual_cache._videos[video_key(video)])
    per_group = full // groups
    # room for half the groups: a partial cache still answers exactly
    at2 = _pipeline(visual_cache_gb=(groups // 2) * per_group / 2**30)
    spy = EncodeSpy(at2.adapter)
    many = at2.answer_many(video, QUESTIONS, progress=False)
    assert at2.visual_cache.bytes <= at2.visual_cache.limit
    assert spy.n == groups + 2 * (groups - groups // 2)
    alone = [at.answer(video, q, o, progress=False) for q, o in QUESTIONS]
    assert all(_same(a, b) for a, b in zip(many, alone))
    # a second video takes the room of the first, least recently used
    other = tmp_path / "other.mp4"
    shutil.copy(video, other)
    at3 = _pipeline(visual_cache_gb=full / 2**30)
    at3.answer_many(video, [QUESTIONS[1]], progress=False)
    at3.answer_many(str(other), [QUESTIONS[1]], progress=False)
    assert list(at3.visual_cache._videos) == [video_key(other)]
    assert at3.visual_cache.bytes == full


def test_zero_disables_and_bad_values_are_named(video):
    at = _pipeline(visual_cache_gb=0)
    spy = EncodeSpy(at.adapter)
    r = at.answer_many(video, QUESTIONS[:2], progress=False)
    assert spy.n == sum(len(x.groups) for x in r) and at.visual_cache.bytes == 0
    for bad in (-1, "4", True, float("nan")):
        with pytest.raises(ValueError, match="visual_cache_gb"):
            AdaptTokenConfig(visual_cache_gb=bad).validate()
    with pytest.raises(ValueError, match="questions"):
        at.answer_many(video, "What?")
    with pytest.raises(ValueError, match="questions"):
        at.answer_many(video, [("What?", None, 3)])
    with pytest.raises(ValueError, match="question"):  # a bad question anywhere: before any work
        at.answer_many(video, ["What?", ""])
    with pytest.raises(FileNotFoundError, match="video"):
        at.answer_many(video + ".missing", ["What?"])
    assert spy.n == sum(len(x.groups) for x in r)


def test_pyav_reference_matches_reader(video):
    """The test's own decoder agrees with the reader (else the bitwise test proves nothing)."""
    from adapttoken_ext.video import VideoReader
    with VideoReader(video) as r:
        got = r.get_frames([0, 5, 17], 112, 224)
    ref = _pyav_frames(video, [0, 5, 17], (112, 224))
    assert np.array_equal(got.numpy(), ref.numpy())

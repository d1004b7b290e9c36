"""AdaptToken on the tiny Qwen2.5-VL and real sample videos (method.md steps 0-9)."""
import json
import os
from fractions import Fraction

import av
import pytest
import torch

from adapttoken_ext import AdaptToken, AdaptTokenConfig
from adapttoken_ext.config import MC_INSTRUCTION
from adapttoken_ext.models.qwen2_5_vl import Qwen2_5_VLAdapter
from adapttoken_ext.models.tiny import build_tiny_model
from adapttoken_ext.video import VideoReader, sample_frame_indices, sample_video

QUESTION = "What are the people doing?"
OPTIONS = ["A. Riding bikes", "B. Cooking", "C. Chess", "D. Swimming"]
SMALL = dict(frames=64, max_pixels=112 * 224, units_per_group=8, budget=40)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def bikes():
    return str(sample_video("bikes.mp4"))


def _pipeline(tiny_dir, **cfg):
    return AdaptToken(Qwen2_5_VLAdapter.from_pretrained(str(tiny_dir)), AdaptTokenConfig(**cfg))


@pytest.fixture(scope="session")
def at(tiny_dir):
    return _pipeline(tiny_dir, **SMALL)


class Spy:
    """Records every adapter.forward call (inputs and returned logits)."""

    def __init__(self, adapter):
        self.calls, self._f = [], adapter.forward
        adapter.forward = self

    def __call__(self, emb, pos, **kw):
        logits, past = self._f(emb, pos, **kw)
        self.calls.append(dict(emb=emb, pos=pos, logits=logits, **kw))
        return logits, past


def _write_video(path, frames):
    """H.264 (lossless) file from uint8 [N, H, W, 3] frames."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25, options={"qp": "0", "preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f.numpy(), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, 25)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


# ---- model composition -------------------------------------------------------------------

def test_pixel_values_match_transformers_patchify(at):
    """Our video patchify equals transformers' Qwen2-VL processor layout on a still unit."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    img = torch.randint(0, 256, (3, 56, 112), dtype=torch.uint8)
    ours, grid = at.adapter.pixel_values(img[None].expand(2, -1, -1, -1))
    proc = Qwen2VLImageProcessorPil()
    x = ((img.float() / 255 - at.adapter.mean[0]) / at.adapter.std[0]).numpy()
    ref, gh, gw = proc.patchify(x, patch_size=14, merge_size=2, temporal_patch_size=2)
    assert grid.tolist() == [[1, gh, gw]]
    torch.testing.assert_close(ours, torch.from_numpy(ref.copy()), rtol=0, atol=1e-6)


def test_hook_scores_equal_eager_attentions(tiny_dir, bikes):
    """Scores captured through the sdpa wrapper equal the eager output_attentions reduction."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    ad = Qwen2_5_VLAdapter.from_pretrained(str(tiny_dir))
    eager = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(tiny_dir), attn_implementation="eager").eval()
    layer = ad.default_reference_layer()
    cap = ad.install_hook(layer)
    with VideoReader(bikes) as r:
        H, W = ad.frame_size(r.info.height, r.info.width, 112 * 224)
        frames = r.get_frames(sample_frame_indices(r.info.num_frames, 8, 2), H, W)
    vis = ad.encode_video(frames)
    pre, suf = ad.prompt_ids(QUESTION, OPTIONS, None)
    rows, cols = ad.unit_grid(H, W)
    P, N = len(pre), vis.shape[0]
    emb = torch.cat([ad.embed(pre), vis, ad.embed(suf)])
    pos = ad.position_ids(P, 4, rows, cols, len(suf), 1.0)
    for reduce in ("max", "mean"):
        cap.arm(P + N, P, P + N, reduce)
        ad.forward(emb, pos)
        got = cap.take()[0]
        with torch.no_grad():
            out = eager(inputs_embeds=emb[None], position_ids=pos[:, None],
                        attention_mask=torch.ones(1, emb.shape[0], dtype=torch.long),
                        output_attentions=True)
        a = out.attentions[layer][0, :, P + N:, P:P + N].double()  # [heads, text queries, visual keys]
        want = a.amax(dim=(0, 1)) if reduce == "max" else a.mean(dim=(0, 1))
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_keep_all_reproduces_unpruned_logits(tiny_dir, bikes):
    """Budget = all tokens, no redundancy removal, one group: the final pass is the unpruned model."""
    at = _pipeline(tiny_dir, frames=16, max_pixels=112 * 224, units_per_group=64, budget=10**6,
                   redundancy_threshold=None, max_new_tokens=1)
    spy = Spy(at.adapter)
    res = at.answer(bikes, QUESTION, OPTIONS, progress=False)
    final = [c for c in spy.calls if c.get("use_cache")][0]
    ad = at.adapter
    with VideoReader(bikes) as r:
        H, W = ad.frame_size(r.info.height, r.info.width, 112 * 224)
        frames = r.get_frames(res.frames, H, W)
        spu = r.info.duration_s * 2 / len(res.frames)
    pv, grid = ad.pixel_values(frames)
    pre, suf = ad.prompt_ids(QUESTION, OPTIONS, MC_INSTRUCTION)
    n = int(grid.prod()) // 4
    ids = torch.tensor([pre + [ad.video_token_id] * n + suf])
    with torch.no_grad():
        ref = ad.model(input_ids=ids, pixel_values_videos=pv, video_grid_thw=grid,
                       mm_token_type_ids=(ids == ad.video_token_id).int() * 2,
                       second_per_grid_ts=torch.tensor([spu]), logits_to_keep=1).logits[0, -1]
    assert len(res.selected_tokens) == n
    torch.testing.assert_close(final["logits"][-1], ref, rtol=1e-4, atol=1e-4)


def test_kept_tokens_keep_unpruned_positions(tiny_dir, bikes):
    at = _pipeline(tiny_dir, **SMALL)
    spy = Spy(at.adapter)
    res = at.answer(bikes, QUESTION, OPTIONS, progress=False)
    ad = at.adapter
    pos = [c for c in spy.calls if c.get("use_cache")][0]["pos"]
    rows, cols = res.grid
    U, tpu = len(res.frames) // 2, rows * cols
    pre, suf = ad.prompt_ids(QUESTION, OPTIONS, MC_INSTRUCTION)
    P = len(pre)
    with VideoReader(bikes) as r:
        spu = r.info.duration_s * 2 / len(res.frames)
    ids = torch.tensor([pre + [ad.video_token_id] * (U * tpu) + suf])
    full, delta = ad.model.model.get_rope_index(
        ids, mm_token_type_ids=(ids == ad.video_token_id).int() * 2,
        video_grid_thw=torch.tensor([[U, rows * 2, cols * 2]]), second_per_grid_ts=torch.tensor([spu]))
    full = full[:, 0]
    unit = {f: i // 2 for i, f in enumerate(res.frames) if i % 2 == 0}
    keys = [unit[t["frame"]] * tpu + t["h"] * cols + t["w"] for t in res.selected_tokens]
    assert keys == sorted(keys)
    want = torch.cat([full[:, :P], full[:, [P + k for k in keys]], full[:, P + U * tpu:]], dim=1)
    assert torch.equal(pos, want)
    # M-RoPE by hand: t = P + unit * tokens_per_second * seconds_per_unit, h = P + row, w = P + col
    tps = ad.tokens_per_second
    for i, (k, t) in enumerate(zip(keys, res.selected_tokens)):
        assert pos[:, P + i].tolist() == [P + int(k // tpu * tps * spu), P + t["h"], P + t["w"]]
    # decode offset: the next token continues at max position + 1
    assert int(delta) == int(full.max()) + 1 - full.shape[1]


def test_budgets_sum_and_respect_capacity(at, bikes):
    res = at.answer(bikes, QUESTION, OPTIONS, progress=False)
    assert len(res.groups) == 4  # 64 frames = 32 units, 8 per group
    assert sum(g.budget for g in res.groups) == SMALL["budget"]
    assert all(0 <= g.budget <= g.num_tokens and g.selected == g.budget for g in res.groups)
    assert len(res.selected_tokens) == SMALL["budget"]
    order = sorted(res.groups, key=lambda g: g.entropy)
    assert order[0].budget >= order[-1].budget
    assert all(0 <= g.entropy <= torch.log(torch.tensor(4.0)) + 1e-6 for g in res.groups)


def test_lite_stops_at_first_group_under_threshold(tiny_dir, bikes):
    full = _pipeline(tiny_dir, **SMALL).answer(bikes, QUESTION, OPTIONS, progress=False)
    H = [g.entropy for g in full.groups]
    j = min(range(len(H) - 1), key=lambda g: H[g])  # lowest entropy among the non-last groups
    tau = H[j] + 1e-6
    first = next(g for g, h in enumerate(H) if h < tau)
    lite = _pipeline(tiny_dir, lite=True, stop_threshold=tau, **SMALL).answer(
        bikes, QUESTION, OPTIONS, progress=False)
    assert lite.stopped_after_group == first
    assert [g.index for g in lite.groups] == list(range(first + 1))
    assert sum(g.budget for g in lite.groups) == SMALL["budget"]
    never = _pipeline(tiny_dir, lite=True, stop_threshold=0.0, **SMALL).answer(
        bikes, QUESTION, OPTIONS, progress=False)
    assert never.stopped_after_group is None and len(never.groups) == len(H)
    forced = _pipeline(tiny_dir, force_stop_after=2, **SMALL).answer(bikes, QUESTION, OPTIONS, progress=False)
    assert forced.stopped_after_group == 1 and sum(g.budget for g in forced.groups) == SMALL["budget"]


def test_redundancy_removal_drops_repeated_frames(tiny_dir, bikes, tmp_path):
    """Each frame repeats 4x, so units 2k and 2k+1 are identical: pairs must not both stay."""
    with VideoReader(bikes) as r:
        src = r.get_frames(list(range(0, 80, 5)), 84, 224)
    video = _write_video(tmp_path / "rep.mp4", src.repeat_interleave(4, dim=0).permute(0, 2, 3, 1))
    cfg = dict(frames=64, max_pixels=112 * 224, units_per_group=32, budget=150, group_layout="contiguous")

    def pairs(res):
        rows, cols = res.grid
        unit = {f: i // 2 for i, f in enumerate(res.frames) if i % 2 == 0}
        kept = {(unit[t["frame"]], t["h"], t["w"]) for t in res.selected_tokens}
        return sum((u - 1, h, w) in kept for (u, h, w) in kept if u % 2 == 1)

    off = _pipeline(tiny_dir, redundancy_threshold=None, **cfg).answer(video, QUESTION, OPTIONS, progress=False)
    on = _pipeline(tiny_dir, redundancy_threshold=0.9, **cfg).answer(video, QUESTION, OPTIONS, progress=False)
    assert pairs(off) > 0  # without removal, duplicated tokens are kept together
    assert pairs(on) == 0
    assert len(on.selected_tokens) == cfg["budget"]  # refilled to the budget


def test_deterministic(at, bikes):
    a = at.answer(bikes, QUESTION, OPTIONS, progress=False).to_dict()
    b = at.answer(bikes, QUESTION, OPTIONS, progress=False).to_dict()
    for d in (a, b):
        d.pop("timings_s"), d.pop("peak_memory_bytes")
    assert a == b


def test_result_json_keys(at, bikes, tmp_path):
    res = at.answer(bikes, QUESTION, None, progress=False)  # no options: full-vocabulary entropy
    path = tmp_path / "r.json"
    res.to_json(path)
    d = json.loads(path.read_text())
    for key in ("answer", "model", "frames", "groups", "budget", "selected_tokens",
                "stopped_after_group", "timings_s", "peak_memory_bytes"):
        assert key in d
    assert set(d["groups"][0]) >= {"index", "frames", "num_tokens", "entropy", "budget", "selected"}
    assert set(d["timings_s"]) >= {"decode", "vision_encoder", "group_prefill", "scoring", "entropy",
                                   "selection", "final_prefill", "generate", "total"}
    assert d["peak_memory_bytes"]["host_rss"] > 0
    assert max(g["entropy"] for g in d["groups"]) > 0


# ---- errors ------------------------------------------------------------------------------

def test_bad_input_errors(at, bikes, tmp_path):
    with pytest.raises(FileNotFoundError, match="video"):
        at.answer(str(tmp_path / "missing.mp4"), QUESTION)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(ValueError, match="video: .* not a readable video"):
        at.answer(str(text), QUESTION)
    empty = tmp_path / "empty.mp4"
    with av.open(str(empty), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        c.start_encoding()  # header only, no frames
    with pytest.raises(ValueError, match="video: .* no video frames"):
        at.answer(str(empty), QUESTION)
    with pytest.raises(ValueError, match="question"):
        at.answer(bikes, "   ")
    with pytest.raises(ValueError, match="options"):
        at.answer(bikes, QUESTION, ["first choice", "second choice"])
    for field, value in (("budget", 0), ("frames", 0), ("units_per_group", -1),
                         ("group_layout", "zigzag"), ("reduce", "sum"), ("temperature", 0.0)):
        with pytest.raises(ValueError, match=field):
            AdaptTokenConfig(**{field: value}).validate()


def test_video_reader_seeks_exact_frames(bikes):
    with VideoReader(bikes) as r:
        idx = [0, 3, 60, 61, 200, 249]
        got = r.get_frames(idx, 64, 96)
    with av.open(bikes) as c:
        ref = [f for i, f in enumerate(c.decode(video=0)) if i in idx]
    want = torch.stack([torch.from_numpy(f.reformat(width=96, height=64, format="rgb24",
                                                    interpolation="BICUBIC").to_ndarray()).permute(2, 0, 1)
                        for f in ref])
    assert torch.equal(got, want)


def test_video_reader_cache_gives_the_same_frames(bikes):
    """Interleaved requests through the decode cache return exactly the uncached frames."""
    from adapttoken_ext.selection import make_groups
    idx = sample_frame_indices(250, 120, 2)
    plain, cached = VideoReader(bikes), VideoReader(bikes, cache_bytes=1 << 30)
    cached.plan(idx, 48, 112)
    for units in make_groups(60, 8, "interleaved"):
        f = [idx[u * 2 + j] for u in units for j in range(2)]
        assert torch.equal(cached.get_frames(f, 48, 112), plain.get_frames(f, 48, 112))
    assert not cached._cache  # every cached frame was handed out and released


def test_sample_frame_indices():
    idx = sample_frame_indices(250, 64, 2)
    assert len(idx) == 64 and idx == sorted(idx) and idx[0] >= 0 and idx[-1] < 250
    # capped at 5 frames, rounded down to 4; centres of 4 bins of 1.25 frames: 0.6, 1.9, 3.1, 4.4
    assert sample_frame_indices(5, 4096, 2) == [0, 1, 3, 4]
    assert len(sample_frame_indices(1, 8, 2)) == 2


# ---- CLI ---------------------------------------------------------------------------------

def test_cli_answer_end_to_end(tiny_dir, bikes, tmp_path, capsys):
    from adapttoken_ext.cli import main
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    rc = main(["answer", "--video", bikes, "--question", QUESTION, "--options", *OPTIONS,
               "--model", str(tiny_dir), "--frames", "32", "--budget", "20", "--units-per-group", "4",
               "--max-pixels", str(112 * 224), "--json", str(out), "--plot", str(png), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "answer:" in text and "entropy" in text
    d = json.loads(out.read_text())
    assert len(d["groups"]) == 4 and sum(g["budget"] for g in d["groups"]) == 20
    assert png.read_bytes()[:4] == b"\x89PNG"
    rc = main(["answer", "--video", str(tmp_path / "nope.mp4"), "--question", QUESTION, "--quiet"])
    assert rc == 2 and "--video" in capsys.readouterr().err


def test_cli_demo_console_script(tmp_path):
    import subprocess
    import sys
    env = dict(os.environ, ADAPTTOKEN_CACHE=str(tmp_path / "cache"))
    script = os.path.join(os.path.dirname(sys.executable), "adapttoken")
    p = subprocess.run([script, "demo", "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "RANDOM weights" in p.stderr and "meaningless" in p.stdout
    assert "why:" in p.stdout and "bikes.mp4" in p.stdout
    assert (tmp_path / "cache").is_dir()

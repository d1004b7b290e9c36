"""AdaptToken on the tiny Qwen2.5-VL and real sample videos (method.md steps 0-9).

References are built without the code under test: transformers' processing rules
(``smart_resize``, the image processor's ``patchify``, CLIP mean/std, the chat template
with the placeholder expanded as the processor does), the model's own forward at explicit
position ids, PyAV decoding, ``torch.distributions``. Positions are Qwen2.5-VL's trained rule
written out here (:func:`_trained_positions`), not transformers 5.x's ``get_rope_index`` or
``generate``, which start the text after a video at ``max(h, w)`` instead of after the
video's last temporal position (README "Positions")."""
import json
import math
import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from adapttoken_ext import AdaptToken, AdaptTokenConfig, stages
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
    """Records every adapter.prefill call (sequence, visual tokens, returned logits)."""

    def __init__(self, adapter):
        self.calls, self._f = [], adapter.prefill
        adapter.prefill = self

    def __call__(self, seq, visual, use_cache=False):
        logits, state = self._f(seq, visual, use_cache)
        self.calls.append(dict(seq=seq, visual=visual, logits=logits, use_cache=use_cache))
        return logits, state


def _write_video(path, frames, times_ms=None):
    """H.264 (lossless) file from uint8 [N, H, W, 3] frames, at 25 fps or at explicit
    presentation times ``times_ms``."""
    tb = Fraction(1, 25) if times_ms is None else Fraction(1, 1000)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25 if times_ms is None else 50,
                         options={"qp": "0", "preset": "ultrafast", "bf": "0"})
        s.width, s.height, s.pix_fmt, s.time_base = frames.shape[2], frames.shape[1], "yuv444p", tb
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f.numpy(), format="rgb24")
            vf.pts, vf.time_base = (i if times_ms is None else times_ms[i]), tb
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


# ---- independent references (transformers' rules, PyAV) -------------------------------------

DUP = dict(frames=64, max_pixels=112 * 224)  # every frame of dup_video: 32 units of 2 equal frames


def make_dup_video(folder, bikes):
    """32 distinct bikes frames at 84x168 (a size smart_resize keeps), each written twice, so
    every 2-frame unit is a still and transformers' image patchify is its reference."""
    with av.open(bikes) as c:
        src = [f.to_ndarray(format="rgb24", width=168, height=84)
               for i, f in enumerate(c.decode(video=0)) if i % 7 == 0][:32]
    frames = torch.from_numpy(np.stack(src)).repeat_interleave(2, dim=0)
    return _write_video(folder / "dup.mp4", frames)


@pytest.fixture(scope="session")
def dup_video(tmp_path_factory, bikes):
    return make_dup_video(tmp_path_factory.mktemp("dup"), bikes)


def _decode_all(path):
    with av.open(path) as c:
        return [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def _hf_pixels(frames):
    """transformers' rules: CLIP normalisation and the image processor's patchify, per
    2-frame unit of equal frames; ``frames`` uint8 [T, H, W, 3]."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    proc, out = Qwen2VLImageProcessorPil(), []
    mean, std = torch.tensor(OPENAI_CLIP_MEAN)[:, None, None], torch.tensor(OPENAI_CLIP_STD)[:, None, None]
    for u in range(0, len(frames), 2):
        assert torch.equal(frames[u], frames[u + 1])
        x = ((frames[u].permute(2, 0, 1).double() / 255 - mean) / std).float().numpy()
        patches, gh, gw = proc.patchify(x, patch_size=14, merge_size=2, temporal_patch_size=2)
        out.append(torch.from_numpy(patches.copy()))
    return torch.cat(out), torch.tensor([[len(frames) // 2, gh, gw]])


def _hf_inputs(tokenizer, model, frames, spu, question=QUESTION, options=OPTIONS):
    """The unpruned model inputs as Qwen2.5-VL's processor builds them: chat template, the
    video placeholder repeated grid/4 times, pixel values, grid, seconds per temporal patch."""
    text = question + ("\n" + "\n".join(options) + "\n" + MC_INSTRUCTION if options else "")
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids)
    pv, grid = _hf_pixels(frames)
    vid = model.config.video_token_id
    i = ids.index(vid)
    ids = ids[:i] + [vid] * (int(grid.prod()) // 4) + ids[i + 1:]
    input_ids = torch.tensor([ids])
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                pixel_values_videos=pv, video_grid_thw=grid,
                mm_token_type_ids=(input_ids == vid).int() * 2, second_per_grid_ts=torch.tensor([spu]))


def _trained_positions(input_ids, video_token_id, units, rows, cols, spu, tps):
    """Qwen2.5-VL's M-RoPE ids as trained (Qwen's ``get_rope_index``, transformers 4.x, vLLM),
    by hand for one video of ``units`` temporal patches of ``rows x cols`` merged tokens,
    ``spu`` seconds apart: text before it at ``0..P-1``, token (t, h, w) at
    ``(P + floor(t * spu * tps), P + h, P + w)`` (the exact product of the given floats), the
    text after it from the video's maximum + 1. int64 ``[3, L]``."""
    ids = [int(i) for i in input_ids]
    P = ids.index(video_token_id)
    out = [(i, i, i) for i in range(P)]
    for t in range(units):
        dt = math.floor(t * Fraction(spu) * Fraction(tps))
        out += [(P + dt, P + h, P + w) for h in range(rows) for w in range(cols)]
    assert ids[P:len(out)] == [video_token_id] * (len(out) - P)
    start = max(max(c) for c in out[P:]) + 1
    out += [(start + j,) * 3 for j in range(len(ids) - len(out))]
    return torch.tensor(out).T


def _hf_positions(model, inp, spu):
    """:func:`_trained_positions` of an :func:`_hf_inputs` dict made with ``spu`` (a float:
    the dict's float32 copy would move floors that fall on an integer)."""
    t, h, w = inp["video_grid_thw"][0].tolist()
    m = model.config.vision_config.spatial_merge_size
    return _trained_positions(inp["input_ids"][0], model.config.video_token_id, t, h // m, w // m,
                              spu, model.config.vision_config.tokens_per_second)


@torch.no_grad()
def greedy_by_recomputation(model, emb, pos, next_position, steps, eos):
    """Greedy ids from input embeddings ``[L, hidden]`` at explicit position ids ``pos``
    (``[3, L]`` M-RoPE or ``[L]`` 1-D), one full forward per token through the model's own
    forward, generated token s at ``next_position + s``; stops at an id in ``eos``."""
    out = []
    for s in range(steps):
        ids = pos[:, None] if pos.dim() == 2 else pos[None]
        logits = model(inputs_embeds=emb[None], position_ids=ids,
                       attention_mask=torch.ones(1, emb.shape[0], dtype=torch.long)).logits[0, -1]
        t = int(logits.argmax())
        if t in eos:
            break
        out.append(t)
        emb = torch.cat([emb, model.get_input_embeddings()(torch.tensor([t]))])
        nxt = torch.full((*pos.shape[:-1], 1), next_position + s)
        pos = torch.cat([pos, nxt], dim=-1)
    return out


def _letter_entropy(logits, tokenizer):
    """Step 4 by torch.distributions: each letter's probability sums its forms "A" and " A"."""
    p = torch.softmax(logits.double(), -1)
    forms = [[tokenizer.encode(t, add_special_tokens=False) for t in (x, " " + x)] for x in "ABCD"]
    probs = torch.stack([sum(p[f[0]] for f in fs if len(f) == 1) for fs in forms])
    return torch.distributions.Categorical(probs=probs / probs.sum()).entropy()


# ---- model composition -------------------------------------------------------------------

def test_pixel_values_match_transformers_patchify(at):
    """Our patchify equals transformers' on a still unit, on several units in order, and
    puts frame t of a unit in the t-th block of each channel (the video processor's layout)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    img = torch.randint(0, 256, (3, 56, 112), dtype=torch.uint8)
    ours, grid = at.adapter.pixel_values(img[None].expand(2, -1, -1, -1))
    proc = Qwen2VLImageProcessorPil()
    x = ((img.float() / 255 - at.adapter.mean[0]) / at.adapter.std[0]).numpy()
    ref, gh, gw = proc.patchify(x, patch_size=14, merge_size=2, temporal_patch_size=2)
    assert grid.tolist() == [[1, gh, gw]]
    torch.testing.assert_close(ours, torch.from_numpy(ref.copy()), rtol=0, atol=1e-6)
    stills = torch.randint(0, 256, (3, 56, 84, 3), dtype=torch.uint8).repeat_interleave(2, dim=0)
    ours, grid = at.adapter.pixel_values(stills.permute(0, 3, 1, 2))
    ref, ref_grid = _hf_pixels(stills)
    assert grid.tolist() == ref_grid.tolist()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    two = torch.stack([torch.zeros(3, 28, 28), torch.full((3, 28, 28), 255.0)]).to(torch.uint8)
    v = at.adapter.pixel_values(two)[0].view(4, 3, 2, 14 * 14)  # [patches, channel, t, pixels]
    assert (v[:, :, 0] < 0).all() and (v[:, :, 1] > 0).all()


def test_group_pass_matches_transformers_eager(tiny_dir, dup_video):
    """The pipeline's own group pass (which rows are queries, compact positions, entropy)
    against HF's eager forward of the group as a video: scores, logits and entropies."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    at = _pipeline(tiny_dir, units_per_group=8, budget=40, **DUP)
    ad = at.adapter
    eager = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tiny_dir), attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    frames = _decode_all(dup_video)
    fps_group = len(frames) / (len(frames) / 25) / 4  # sampled every frame, 4 interleaved groups
    with VideoReader(dup_video) as r:
        for opts in (OPTIONS, None):
            plan = stages.make_plan(ad, r.info, at.config, QUESTION, opts)
            assert len(plan.groups) == 4
            for g in (0, 3):
                spy = Spy(ad)
                enc = stages.encode_group(ad, r, plan, g)
                res = stages.score_group(ad, at.capture, plan, enc, "max")
                h, scores = res.entropy, res.scores
                assert res.max_entropy == pytest.approx(math.log(4 if opts else len(tok)))
                ad.prefill = spy._f
                fr = torch.stack([frames[i] for i in plan.unit_frames(plan.groups[g])])
                inp = _hf_inputs(tok, eager, fr, 2 / fps_group, QUESTION, opts)
                pos = _hf_positions(eager, inp, 2 / fps_group)
                assert torch.equal(spy.calls[0]["seq"].positions, pos)
                with torch.no_grad():
                    out = eager(**inp, position_ids=pos[:, None], output_attentions=True)
                vid = (inp["input_ids"][0] == eager.config.video_token_id).nonzero().flatten()
                vs, ve = int(vid[0]), int(vid[-1]) + 1
                a = out.attentions[at.reference_layer][0, :, ve:, vs:ve].double()
                torch.testing.assert_close(scores.double(), a.amax(dim=(0, 1)), rtol=1e-4, atol=1e-6)
                torch.testing.assert_close(spy.calls[0]["logits"], out.logits[0, -1], rtol=1e-4, atol=1e-4)
                want = (_letter_entropy(out.logits[0, -1], tok) if opts else
                        torch.distributions.Categorical(logits=out.logits[0, -1].double()).entropy())
                assert h == pytest.approx(float(want), rel=1e-4, abs=1e-6)


def _hf_reference(tiny_dir, frames, spu, max_new):
    """The unpruned run by transformers at the trained positions: the model's own forward
    (its vision tower on the processor's pixel values), then greedy decoding by full
    recomputation from the maximum position + 1."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tiny_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    inp = _hf_inputs(tok, model, frames, spu)
    pos = _hf_positions(model, inp, spu)
    with torch.no_grad():
        logits = model(**inp, position_ids=pos[:, None]).logits[0, -1]
        ids = inp["input_ids"][0]
        emb = model.get_input_embeddings()(ids)
        emb[ids == model.config.video_token_id] = torch.cat(model.model.get_video_features(
            inp["pixel_values_videos"], inp["video_grid_thw"], return_dict=True).pooler_output)
    out = greedy_by_recomputation(model, emb, pos, int(pos.max()) + 1, max_new,
                                  {model.generation_config.eos_token_id})
    return out, logits, pos


def _capture_ids(monkeypatch):
    got = []
    real = stages.greedy_decode

    def spy(*a, **k):
        got.append(real(*a, **k))
        return got[-1]
    monkeypatch.setattr(stages, "greedy_decode", spy)
    return got


def test_keep_all_matches_transformers_forward(tiny_dir, dup_video, monkeypatch):
    """Budget = all tokens, no redundancy removal, one group: the final pass is HF's own
    unpruned forward at the trained positions, and greedy decoding equals HF's forward
    recomputed token by token after the maximum position."""
    at = _pipeline(tiny_dir, units_per_group=64, budget=10**6, redundancy_threshold=None,
                   max_new_tokens=8, **DUP)
    spy, ids = Spy(at.adapter), _capture_ids(monkeypatch)
    res = at.answer(dup_video, QUESTION, OPTIONS, progress=False)
    frames = torch.stack(_decode_all(dup_video))
    hf_ids, hf_logits, pos = _hf_reference(tiny_dir, frames, 2 / 25, 8)
    assert len(res.selected_tokens) == 32 * 18
    assert torch.equal(spy.calls[-1]["seq"].positions, pos)
    torch.testing.assert_close(spy.calls[-1]["logits"], hf_logits, rtol=1e-4, atol=1e-4)
    assert ids[0] == hf_ids and len(ids[0]) >= 1


def test_pruned_decoding_matches_full_recomputation(tiny_dir, dup_video, monkeypatch):
    """A run that drops the last units decodes at the trained positions: the kept columns of
    the unpruned sequence (chat template, the model's vision tower, :func:`_trained_positions`),
    then greedy decoding by full recomputation, token s at max(full positions) + 1 + s."""
    at = _pipeline(tiny_dir, units_per_group=8, budget=60, group_layout="contiguous",
                   force_stop_after=2, max_new_tokens=10, **DUP)
    ids = _capture_ids(monkeypatch)
    res = at.answer(dup_video, QUESTION, OPTIONS, progress=False)
    frames = torch.stack(_decode_all(dup_video))
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tiny_dir)).eval()
    inp = _hf_inputs(AutoTokenizer.from_pretrained(str(tiny_dir)), model, frames, 2 / 25)
    rows, cols = res.grid
    unit = {f: i // 2 for i, f in enumerate(res.frames) if i % 2 == 0}
    keys = torch.tensor([unit[t["frame"]] * rows * cols + t["h"] * cols + t["w"] for t in res.selected_tokens])
    assert int(keys.max()) // (rows * cols) < 16  # units 16..31 (groups 2, 3) are all dropped
    ids_full = inp["input_ids"][0]
    vid = (ids_full == model.config.video_token_id).nonzero().flatten()
    pos = _hf_positions(model, inp, 2 / 25)[:, None]
    with torch.no_grad():
        emb = model.get_input_embeddings()(ids_full)
        vis = torch.cat(model.model.get_video_features(inp["pixel_values_videos"], inp["video_grid_thw"],
                                                       return_dict=True).pooler_output)
        emb[vid] = vis
    cols_kept = torch.cat([torch.arange(int(vid[0])), vid[keys], torch.arange(int(vid[-1]) + 1, len(ids_full))])
    nxt_pos = int(pos.max()) + 1  # over the full sequence: the question's last position + 1
    emb, pos = emb[cols_kept], pos[:, 0, cols_kept]
    want = greedy_by_recomputation(model, emb, pos, nxt_pos, 10, {model.generation_config.eos_token_id})
    assert len(want) >= 8
    assert ids[0] == want


def test_decoding_stops_at_generation_config_eos(tiny_dir, bikes, monkeypatch):
    """An EOS id that only the generation config names stops decoding."""
    ids = _capture_ids(monkeypatch)
    _pipeline(tiny_dir, max_new_tokens=4, **SMALL).answer(bikes, QUESTION, OPTIONS, progress=False)
    assert len(ids[0]) == 4
    ad = Qwen2_5_VLAdapter.from_pretrained(str(tiny_dir))
    ad.model.generation_config.eos_token_id = [ad.model.generation_config.eos_token_id, ids[0][2]]
    ad = Qwen2_5_VLAdapter(ad.model, ad.tokenizer)
    AdaptToken(ad, AdaptTokenConfig(max_new_tokens=4, **SMALL)).answer(bikes, QUESTION, OPTIONS, progress=False)
    assert ids[1] == ids[0][:2]


def test_kept_tokens_keep_unpruned_positions(tiny_dir, bikes):
    at = _pipeline(tiny_dir, **SMALL)
    spy = Spy(at.adapter)
    res = at.answer(bikes, QUESTION, OPTIONS, progress=False)
    ad = at.adapter
    final = [c for c in spy.calls if c["use_cache"]][0]["seq"]
    pos = final.positions
    rows, cols = res.grid
    U, tpu = len(res.frames) // 2, rows * cols
    pre, suf = ad.prompt(QUESTION, OPTIONS, MC_INSTRUCTION).prefix, ad.prompt(QUESTION, OPTIONS, MC_INSTRUCTION).suffix
    P = len(pre)
    with VideoReader(bikes) as r:
        spu = r.info.duration_s * 2 / len(res.frames)
    ids = torch.tensor(pre + [ad.video_token_id] * (U * tpu) + suf)
    tps = ad.model.config.vision_config.tokens_per_second
    full = _trained_positions(ids, ad.video_token_id, U, rows, cols, spu, tps)
    unit = {f: i // 2 for i, f in enumerate(res.frames) if i % 2 == 0}
    keys = [unit[t["frame"]] * tpu + t["h"] * cols + t["w"] for t in res.selected_tokens]
    assert keys == sorted(keys)
    want = torch.cat([full[:, :P], full[:, [P + k for k in keys]], full[:, P + U * tpu:]], dim=1)
    assert torch.equal(pos, want)
    for i, t in enumerate(res.selected_tokens):  # (h, w) of the result are the kept cells
        assert pos[1:, P + i].tolist() == [P + t["h"], P + t["w"]]
    # the question starts after the whole video's last temporal position, decoding after it
    q = P + len(keys)
    assert int(pos[0, q]) == int(full[:, P:P + U * tpu].max()) + 1 > P + int((U - 1) * tps * spu)
    assert final.next_position == int(full.max()) + 1 == int(pos[0, -1]) + 1


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


def test_deterministic_across_objects(tiny_dir, bikes):
    """Two pipelines loaded separately, and two runs of one, give the same result."""
    runs = [_pipeline(tiny_dir, **SMALL) for _ in range(2)]
    a, b, c = (x.answer(bikes, QUESTION, OPTIONS, progress=False).to_dict() for x in (runs[0], runs[1], runs[0]))
    for d in (a, b, c):
        d.pop("timings_s"), d.pop("peak_memory_bytes")
    assert a == b == c


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
    with pytest.raises(ValueError, match="video: .* is a directory"):
        at.answer(str(tmp_path), QUESTION)
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
    for field, value in (("budget", 0), ("frames", 0), ("units_per_group", -1), ("lite", "yes"),
                         ("group_layout", "zigzag"), ("reduce", "sum"), ("temperature", 0.0),
                         ("per_group_floor", 1.5), ("decode_cache_mb", -1), ("instruction", 3)):
        with pytest.raises(ValueError, match=field):
            AdaptTokenConfig(**{field: value}).validate()


def test_settings_checked_before_the_first_group_pass(tiny_dir, bikes):
    """A floor that cannot fit, or a bad entropy mode, fails before any model work."""
    for cfg, field in ((dict(per_group_floor=20), "per_group_floor"), (dict(entropy_mode="options"), "entropy_mode")):
        at = _pipeline(tiny_dir, **{**SMALL, **cfg})
        spy = Spy(at.adapter)
        with pytest.raises(ValueError, match=field):
            at.answer(bikes, QUESTION, None, progress=False)
        assert spy.calls == []
    with pytest.raises(ValueError, match="reference_layer"):
        _pipeline(tiny_dir, reference_layer=4, **SMALL)


def test_unsupported_model_type_lists_supported(tmp_path):
    from transformers import LlamaConfig
    from adapttoken_ext import models
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                vocab_size=10).save_pretrained(tmp_path)
    listed = ", ".join(sorted(models.ADAPTERS))  # every registered family, qwen2_5_vl among them
    assert "qwen2_5_vl" in models.ADAPTERS
    with pytest.raises(ValueError, match=rf"model_type 'llama' is not supported \(supported: {listed}\)"):
        models.load(str(tmp_path))


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


def test_variable_frame_rate_is_sampled_uniformly_in_time(tmp_path):
    """5 frames in the first second, 50 in the second: half the samples come from each
    second, frames are found by presentation time, timestamps match a sequential decode."""
    times = [200 * i for i in range(5)] + [1000 + 20 * i for i in range(50)]
    grey = torch.arange(55, dtype=torch.uint8)[:, None, None, None] * 4  # frame i: grey 4 * i
    path = _write_video(tmp_path / "vfr.mp4", grey.expand(55, 48, 64, 3).contiguous(), times)
    with av.open(path) as c:
        seq = [(f.time, int(f.to_ndarray(format="rgb24").mean().round())) for f in c.decode(video=0)]
    with VideoReader(path) as r:
        assert r.info.num_frames == 55
        assert r.info.timestamps_s == pytest.approx([t - seq[0][0] for t, _ in seq])
        assert r.info.duration_s == pytest.approx(2.0, abs=0.05)
        idx = sample_frame_indices(r.info.num_frames, 10, 2, r.info.timestamps_s)
        got = r.get_frames(idx, 48, 64).float().mean(dim=(1, 2, 3)).round().int().tolist()
    t = [r.info.timestamps_s[i] for i in idx]
    assert sum(x < 1.0 for x in t) == 5  # index-uniform sampling would give 1
    for k, x in enumerate(t):  # each sample is the frame shown at its bin's centre
        centre = (k + 0.5) * r.info.duration_s / 10
        assert x <= centre + 1e-9 and (idx[k] + 1 == 55 or r.info.timestamps_s[idx[k] + 1] > centre - 1e-9)
    assert got == [seq[i][1] for i in idx]


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_rotated_video_is_decoded_as_displayed(tmp_path, degrees):
    """A landscape 64x48 frame whose left half is white, stored with a display rotation
    (counter-clockwise degrees): 90 shows it portrait with the white half at the bottom,
    -90 at the top, 180 on the right."""
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :32] = 255
    path = tmp_path / "rot.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25, options={"qp": "0"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv444p"
        s.set_display_rotation(degrees)
        for i in range(4):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, 25)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with VideoReader(path) as r:
        H, W = (64, 48) if degrees != 180 else (48, 64)
        assert (r.info.height, r.info.width, r.info.rotation) == (H, W, degrees)
        f = r.get_frames([0, 3], H // 2, W // 2)[0].float().mean(0)  # [h, w] grey level
    h, w = f.shape
    halves = {90: (f[h // 2 + 2:], f[: h // 2 - 2]), -90: (f[: h // 2 - 2], f[h // 2 + 2:]),
              180: (f[:, w // 2 + 2:], f[:, : w // 2 - 2])}[degrees]
    assert halves[0].min() > 200 and halves[1].max() < 50


def test_result_reports_timestamps(at, bikes):
    res = at.answer(bikes, QUESTION, OPTIONS, progress=False)
    with av.open(bikes) as c:
        s = c.streams.video[0]
        first = next(c.decode(s)).time
    assert res.timestamps_s == pytest.approx([i / 25 for i in res.frames], abs=1e-6)  # 25 fps, CFR
    with VideoReader(bikes) as r:
        assert sample_frame_indices(250, 64, 2, r.info.timestamps_s) == sample_frame_indices(250, 64, 2)
    assert first == pytest.approx(0.0, abs=0.1)
    for tok in res.selected_tokens:
        assert tok["time_s"] == pytest.approx(tok["frame"] / 25, abs=1e-6)


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
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    before = out.read_bytes()
    rc = main(["answer", "--video", str(bad), "--question", QUESTION, "--model", str(tiny_dir),
               "--json", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "not a readable video" in err and "Traceback" not in err
    assert out.read_bytes() == before  # a failed run leaves earlier output as it was


def test_cli_loading_flags(tiny_dir, bikes, tmp_path, capsys):
    """--device-map, --dtype and --attn-implementation reach the model; bad values are clear errors."""
    from adapttoken_ext.cli import main
    out = tmp_path / "r.json"
    base = ["answer", "--video", bikes, "--question", QUESTION, "--options", *OPTIONS, "--model",
            str(tiny_dir), "--frames", "32", "--budget", "20", "--units-per-group", "4",
            "--max-pixels", str(112 * 224), "--quiet"]
    assert main(base + ["--json", str(out)]) == 0
    assert main(base + ["--device-map", '{"": "cpu"}', "--dtype", "float32",
                        "--attn-implementation", "eager", "--json", str(out) + "2"]) == 0
    a, b = (json.loads(open(p).read()) for p in (out, str(out) + "2"))
    assert [t["score"] for t in a["selected_tokens"]] == pytest.approx([t["score"] for t in b["selected_tokens"]], rel=1e-4)
    capsys.readouterr()
    assert main(base + ["--device-map", "everywhere"]) == 2
    assert "--device-map" in capsys.readouterr().err
    assert main(base + ["--device", "gpu"]) == 2
    assert "device: 'gpu'" in capsys.readouterr().err
    assert main(base + ["--json", str(tmp_path / "no" / "r.json")]) == 2
    assert "--json" in capsys.readouterr().err
    assert main(base[:7] + ["--model", str(tmp_path)]) == 2  # no checkpoint there
    assert "adapttoken: error:" in capsys.readouterr().err


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


# ---- attention backends, devices, memory -----------------------------------------------------

def _flash_like(name):
    """A stand-in attention function registered under its own name: like transformers'
    flash path, it looks itself up by the module's configured name and fails otherwise."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    calls = []

    def fn(module, q, k, v, *args, **kw):
        if module.config._attn_implementation != name:
            raise ValueError(f"Could not find the currently requested implementation {module.config._attn_implementation}")
        calls.append(getattr(module, "layer_idx", None))
        return sdpa_attention_forward(module, q, k, v, *args, **kw)
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)
    return calls


def test_score_hook_is_transparent_to_the_attention_backend(tiny_dir, bikes):
    """sdpa, eager and a flash-like registered function give the same selection; the model's
    configuration is never changed; the flash-like function runs under its own name."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    calls = _flash_like("test_standin_attention")
    results = {}
    for impl in ("sdpa", "eager", "test_standin_attention"):
        ad = Qwen2_5_VLAdapter.from_pretrained(str(tiny_dir), attn_implementation=impl)
        at = AdaptToken(ad, AdaptTokenConfig(**SMALL))
        results[impl] = at.answer(bikes, QUESTION, OPTIONS, progress=False)
        assert ad.model.config.text_config._attn_implementation == impl
        assert "test_standin_attention" not in ALL_ATTENTION_FUNCTIONS._local_mapping
    assert set(calls) - {None} == set(range(4))
    ref = results["sdpa"]
    for impl in ("eager", "test_standin_attention"):
        got = results[impl]
        assert [(t["frame"], t["h"], t["w"]) for t in got.selected_tokens] == \
            [(t["frame"], t["h"], t["w"]) for t in ref.selected_tokens]
        torch.testing.assert_close(torch.tensor([t["score"] for t in got.selected_tokens]),
                                   torch.tensor([t["score"] for t in ref.selected_tokens]), rtol=1e-4, atol=1e-6)
        assert [g.entropy for g in got.groups] == pytest.approx([g.entropy for g in ref.groups], rel=1e-4)


def test_two_pipelines_share_a_model_and_detach_cleanly(tiny_dir, bikes):
    """Two captures on one model each get their own scores; closing both leaves no hook."""
    ad = Qwen2_5_VLAdapter.from_pretrained(str(tiny_dir))
    a = AdaptToken(ad, AdaptTokenConfig(**SMALL))
    b = AdaptToken(ad, AdaptTokenConfig(reference_layer=1, **SMALL))
    c = AdaptToken(ad, AdaptTokenConfig(reduce="mean", **SMALL))
    with VideoReader(bikes) as r:
        plan = stages.make_plan(ad, r.info, a.config, QUESTION, OPTIONS)
        enc = stages.encode_group(ad, r, plan, 0)
    seq = ad.sequence(plan.prompt, plan.clip(enc.units), plan.grid)
    vs, ve = seq.visual_span()
    for cap, reduce in ((a.capture, "max"), (b.capture, "max"), (c.capture, "mean")):
        cap.arm(ve, vs, ve, reduce)
    ad.prefill(seq, enc.visual)
    sa, sb, sc = a.capture.take(), b.capture.take(), c.capture.take()
    assert not torch.equal(sa, sb) and not torch.equal(sa, sc)
    solo = AdaptToken(Qwen2_5_VLAdapter.from_pretrained(str(tiny_dir)), AdaptTokenConfig(reference_layer=1, **SMALL))
    solo.capture.arm(ve, vs, ve, "max")
    solo.adapter.prefill(seq, enc.visual)
    torch.testing.assert_close(sb, solo.capture.take())
    for x in (a, b, c):
        x.close()
    for m in ad.model.modules():
        assert not m._forward_pre_hooks and not m._forward_hooks


def test_device_map_dict_matches_the_unsplit_model(tiny_dir, bikes):
    """An explicit per-module device_map dispatches through accelerate's hooks (the
    embedding and the first layers CPU-offloaded: their weights on ``meta``, run on the
    execution device) and answers exactly as the unsplit model."""
    cpu = torch.device("cpu")  # "cpu" means offloaded; two spellings make transformers dispatch
    dmap = {"model.visual": cpu, "model.language_model.embed_tokens": "cpu",
            "model.language_model.layers.0": "cpu", "model.language_model.layers.1": "cpu",
            "model.language_model.layers.2": cpu, "model.language_model.layers.3": cpu,
            "model.language_model.norm": cpu, "model.language_model.rotary_emb": cpu, "lm_head": cpu}
    split = AdaptToken.from_pretrained(str(tiny_dir), AdaptTokenConfig(**SMALL), device_map=dmap)
    assert split.adapter.model.get_input_embeddings().weight.device.type == "meta"
    plain = _pipeline(tiny_dir, **SMALL)
    a, b = (x.answer(bikes, QUESTION, OPTIONS, progress=False).to_dict() for x in (split, plain))
    for d in (a, b):
        d.pop("timings_s"), d.pop("peak_memory_bytes"), d.pop("model")
    assert a == b


@pytest.fixture(scope="session")
def video_10k(tmp_path_factory):
    from adapttoken_ext.video import make_long_video
    return str(make_long_video(tmp_path_factory.mktemp("long") / "long.mp4", 10_000, width=96, height=56))


@pytest.mark.parametrize("layout", ["interleaved", "contiguous"])
def test_candidate_memory_bounded_at_10k_frames(tiny_dir, video_10k, layout):
    """At 10,000 frames (5,000 units, 79 groups, the last contiguous one 8 units) the
    candidate embeddings held never exceed 4 B rows, and the refill still fills B."""
    B = 300
    at = _pipeline(tiny_dir, frames=10_000, max_pixels=56 * 84, units_per_group=64, budget=B,
                   group_layout=layout)
    res = at.answer(video_10k, QUESTION, OPTIONS, progress=False)
    assert len(res.frames) == 10_000 and len(res.groups) == 79
    if layout == "contiguous":
        assert min(g.num_tokens for g in res.groups) < B  # capacity caps are in play
    assert 0 < res.candidate_rows_peak <= 4 * B
    assert len(res.selected_tokens) == B == sum(g.selected for g in res.groups)


@pytest.fixture(scope="module")
def static_video(tmp_path_factory, bikes):
    """A paused screen: 1024 frames of one real bikes frame (224x112) with mild noise
    (uniform +-2 levels per pixel, then H.264)."""
    with av.open(bikes) as c:
        frame = next(f for i, f in enumerate(c.decode(video=0)) if i == 100)
    base = frame.to_ndarray(format="rgb24", width=224, height=112).astype(np.int16)
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("static") / "static.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25, options={"preset": "ultrafast", "crf": "18"})
        s.width, s.height, s.pix_fmt = 224, 112, "yuv420p"
        for _ in range(1024):
            f = np.clip(base + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def test_step7_stays_bounded_on_static_video(tiny_dir, static_video, monkeypatch):
    """Scores correlated by location (every frame alike): step 7 holds at most 4 B candidate
    rows, encodes each of the 32 groups at most twice (scan and one refill), keeps at most
    B tokens, and fewer only for groups whose non-redundant candidates ran out."""
    B = 512
    encodes = {}
    real = stages.encode_group

    def counting(adapter, reader, plan, g, *a, **k):
        encodes[g] = encodes.get(g, 0) + 1
        return real(adapter, reader, plan, g, *a, **k)
    monkeypatch.setattr(stages, "encode_group", counting)
    at = _pipeline(tiny_dir, frames=1024, max_pixels=112 * 224, units_per_group=16, budget=B)
    res = at.answer(static_video, QUESTION, OPTIONS, progress=False)
    groups = res.groups
    assert len(groups) == 32 and len(encodes) == 32
    assert max(encodes.values()) <= 2, encodes
    assert res.candidate_rows_peak <= 4 * B
    kept = len(res.selected_tokens)
    assert kept == sum(g.selected for g in groups) <= B
    assert len({(x["frame"], x["h"], x["w"]) for x in res.selected_tokens}) == kept
    assert sum(g.redundant for g in groups) > B  # the static video is mostly redundant
    for g in groups:
        assert g.selected <= g.budget
        if g.selected < g.budget:  # short only when every token of the group was taken
            assert g.ran_out and g.selected + g.redundant == g.num_tokens
    assert kept == B or any(g.ran_out for g in groups)


def test_cli_answer_says_why_fewer_tokens_were_kept(tiny_dir, static_video, tmp_path, capsys):
    """A budget above the video's tokens is stated as capped; the table and the why line of
    ``answer`` (as ``demo``'s) give step 7's drops per group and the groups that ran out."""
    from adapttoken_ext.cli import main
    out = tmp_path / "r.json"
    rc = main(["answer", "--video", static_video, "--question", QUESTION, "--options", *OPTIONS,
               "--model", str(tiny_dir), "--frames", "64", "--budget", "5000", "--units-per-group", "8",
               "--max-pixels", str(112 * 224), "--json", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0
    d = json.loads(out.read_text())
    total = sum(g["num_tokens"] for g in d["groups"])
    assert total == 32 * 4 * 8 and d["budget"] == 5000
    assert d["budget_capped"] is True and d["budget_used"] == total
    kept = len(d["selected_tokens"])
    assert kept < total
    for g in d["groups"]:  # every token admitted: each one not kept was dropped as redundant
        assert g["budget"] == g["num_tokens"] and g["redundant"] == g["num_tokens"] - g["selected"]
        assert g["ran_out"] is (g["selected"] < g["budget"])
    header = text.splitlines()[text.splitlines().index(next(ln for ln in text.splitlines() if ln.lstrip().startswith("group")))]
    assert "redundant" in header and "ran out" in header
    assert f"--budget 5000 capped at {total}" in text
    assert "why: group" in text and "attention at layer" in text
    short = ", ".join(str(g["index"]) for g in d["groups"] if g["ran_out"])
    assert f"step 7 dropped {total - kept} tokens as redundant" in text
    assert f"group(s) {short} ran out of non-redundant candidates, so {kept} of {total} tokens were kept" in text

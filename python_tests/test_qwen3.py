"""AdaptToken on tiny Qwen3-VL and Qwen3.5 models, dense and MoE, and real sample frames
(method.md steps 0-9).

References are built without the adapter's code: the chat template, then the video
placeholder expanded by transformers' own ``Qwen3VLProcessor.replace_video_token`` (one
``<t seconds><|vision_start|>...<|vision_end|>`` block per temporal patch, timestamps by
its ``_calculate_timestamps``), pixel values by ``Qwen3VLVideoProcessor.patchify`` after the
processor's normalisation (the resize needs torchvision, which this machine lacks, so the
frames are written at a size the processor keeps), PyAV decoding, and the model's own
forward, ``get_rope_index``, vision tower and ``generate``."""
import json
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from test_pipeline import OPTIONS, QUESTION, Spy, _capture_ids, _decode_all, _letter_entropy, _write_video

from adapttoken_ext import AdaptToken, AdaptTokenConfig, models, stages
from adapttoken_ext.config import MC_INSTRUCTION
from adapttoken_ext.models.tiny import build_tiny_model
from adapttoken_ext.video import VideoReader, sample_video

FAMILIES = ["qwen3_vl", "qwen3_5", "qwen3_vl_moe", "qwen3_5_moe"]
FPS = 25
CLIP = dict(frames=16, max_pixels=112 * 224)  # every frame of clip16: 8 units of 2x4 tokens


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory):
    return request.param, build_tiny_model(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def clip16(tmp_path_factory):
    """16 distinct bikes frames at 64x128 (a size Qwen3's smart_resize keeps), 25 fps."""
    with av.open(str(sample_video("bikes.mp4"))) as c:
        src = [f.to_ndarray(format="rgb24", width=128, height=64)
               for i, f in enumerate(c.decode(video=0)) if i % 9 == 0][:16]
    return _write_video(tmp_path_factory.mktemp("clip") / "clip16.mp4", torch.from_numpy(np.stack(src)))


def _model(path, **kw):
    import transformers
    cfg = transformers.AutoConfig.from_pretrained(path)
    cls = {"qwen3_vl": "Qwen3VLForConditionalGeneration", "qwen3_5": "Qwen3_5ForConditionalGeneration",
           "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration", "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration"}
    return getattr(transformers, cls[cfg.model_type]).from_pretrained(path, **kw).eval()


def _hf_inputs(tok, model, frames, indices, question=QUESTION, options=OPTIONS):
    """Unpruned inputs as Qwen3VLProcessor builds them from uint8 frames [T, H, W, 3] sampled
    at ``indices`` of a ``FPS`` video."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata
    text = question + ("\n" + "\n".join(options) + "\n" + MC_INSTRUCTION if options else "")
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, enable_thinking=False)
    x = (frames.permute(0, 3, 1, 2).double() / 255 - 0.5) / 0.5
    pv, gt, gh, gw = Qwen3VLVideoProcessor.patchify(None, x.float()[None], 16, 2, 2)
    grid = torch.tensor([[gt, gh, gw]])
    proc = SimpleNamespace(video_processor=SimpleNamespace(merge_size=2, temporal_patch_size=2),
                           vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>",
                           video_token="<|video_pad|>",
                           _calculate_timestamps=lambda *a: Qwen3VLProcessor._calculate_timestamps(None, *a))
    meta = VideoMetadata(total_num_frames=max(indices) + 1, fps=FPS, frames_indices=list(indices))
    repl = Qwen3VLProcessor.replace_video_token(proc, {"video_grid_thw": grid, "video_metadata": [meta]}, 0)
    assert prompt.count("<|video_pad|>") == 1
    ids = torch.tensor([tok(prompt.replace("<|video_pad|>", repl), add_special_tokens=False)["input_ids"]])
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pv[0],
                video_grid_thw=grid, mm_token_type_ids=(ids == model.config.video_token_id).int() * 2)


def _pipeline(path, **cfg):
    return AdaptToken(models.load(str(path)), AdaptTokenConfig(**cfg))


def test_group_pass_matches_transformers_eager(family_dir, clip16):
    """Scores at the reference layer (rows after the video), logits and entropies of the
    pipeline's group pass equal HF's eager forward of the group's frames as a video. The
    MoE pipelines run eager attention too: sdpa and eager differ by float32 rounding, which
    the tiny MoE models amplify past 1e-4 (3e-4 in the logits, HF against itself)."""
    from transformers import AutoTokenizer
    family, path = family_dir
    attn = "eager" if family.endswith("_moe") else None
    at = AdaptToken(models.load(str(path), attn_implementation=attn),
                    AdaptTokenConfig(units_per_group=4, budget=20, **CLIP))
    eager = _model(path, attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(path)
    frames = _decode_all(clip16)
    layer = at.reference_layer
    full = [i for i, t in enumerate(getattr(eager.config.text_config, "layer_types", None)
                                    or ["full_attention"] * at.adapter.num_layers) if t == "full_attention"]
    with VideoReader(clip16) as r:
        for opts in (OPTIONS, None):
            plan = stages.make_plan(at.adapter, r.info, at.config, QUESTION, opts)
            assert len(plan.groups) == 2
            for g in (0, 1):
                spy = Spy(at.adapter)
                res = stages.score_group(at.adapter, at.capture, plan, stages.encode_group(at.adapter, r, plan, g), "max")
                at.adapter.prefill = spy._f
                idx = plan.unit_frames(plan.groups[g])
                inp = _hf_inputs(tok, eager, torch.stack([frames[i] for i in idx]), idx, QUESTION, opts)
                assert torch.equal(spy.calls[0]["seq"].input_ids, inp["input_ids"][0])
                with torch.no_grad():
                    out = eager(**inp, output_attentions=True)
                logits = out.logits[0, -1]
                vid = (inp["input_ids"][0] == eager.config.video_token_id).nonzero().flatten()
                ve = int(vid[-1]) + 1
                a = out.attentions[full.index(layer)][0, :, ve:, vid].double()
                torch.testing.assert_close(res.scores.double(), a.amax(dim=(0, 1)), rtol=1e-4, atol=1e-6)
                torch.testing.assert_close(spy.calls[0]["logits"], logits, rtol=1e-4, atol=1e-4)
                want = (_letter_entropy(logits, tok) if opts else
                        torch.distributions.Categorical(logits=logits.double()).entropy())
                assert res.entropy == pytest.approx(float(want), rel=1e-4, abs=1e-6)


def test_keep_all_matches_transformers_generate(family_dir, clip16, monkeypatch):
    """One group, budget >= N, no redundancy removal: the final pass's logits equal HF's
    unpruned forward and greedy decoding equals HF's ``generate`` over 8 tokens."""
    from transformers import AutoTokenizer
    family, path = family_dir
    at = _pipeline(path, units_per_group=64, budget=10**6, redundancy_threshold=None, max_new_tokens=8, **CLIP)
    spy, ids = Spy(at.adapter), _capture_ids(monkeypatch)
    res = at.answer(clip16, QUESTION, OPTIONS, progress=False)
    assert len(res.selected_tokens) == 8 * 8
    model, tok = _model(path), AutoTokenizer.from_pretrained(path)
    inp = _hf_inputs(tok, model, torch.stack(_decode_all(clip16)), res.frames)
    with torch.no_grad():
        logits = model(**inp).logits[0, -1]
        out = model.generate(**inp, max_new_tokens=8, do_sample=False)[0, inp["input_ids"].shape[1]:].tolist()
    assert torch.equal(spy.calls[-1]["seq"].input_ids, inp["input_ids"][0])
    torch.testing.assert_close(spy.calls[-1]["logits"], logits, rtol=1e-4, atol=1e-4)
    cut = next((i for i, t in enumerate(out) if t in at.adapter.eos_token_ids), len(out))
    assert ids[0] == out[:cut] and len(ids[0]) >= 1


def _qwen3_trained_positions(ids, video_token_id, rows, cols):
    """Qwen3-VL's M-RoPE ids as its reference ``get_rope_index`` gives them (transformers
    4.57, the Qwen3-VL repository): every run of text and every per-frame video block
    starts at the maximum of all earlier positions + 1 (``st_idx = max + 1``); a block's
    token (h, w) at ``(st, st + h, st + w)`` (``t_index`` always 0: time is in the
    timestamp text). By hand, int64 ``[3, L]``."""
    out, i, ids = [], 0, [int(x) for x in ids]
    while i < len(ids):
        st = max(max(c) for c in out) + 1 if out else 0
        if ids[i] == video_token_id:
            out += [(st, st + h, st + w) for h in range(rows) for w in range(cols)]
            i += rows * cols
        else:
            out.append((st,) * 3)
            i += 1
    return torch.tensor(out).T


def test_positions_are_the_trained_rule(family_dir, clip16):
    """transformers 5.x's Qwen3-VL ``get_rope_index`` (which the adapter uses) gives the
    trained positions: for one-frame blocks its ``max(h, w)`` advance is max + 1, so the
    text after each block, and the question after the video, start at max(earlier) + 1."""
    family, path = family_dir
    ad = models.load(str(path))
    with VideoReader(clip16) as r:
        plan = stages.make_plan(ad, r.info, AdaptTokenConfig(**CLIP), QUESTION, OPTIONS)
    seq = ad.sequence(plan.prompt, plan.clip(range(plan.num_units), whole_video=True), plan.grid)
    want = _qwen3_trained_positions(seq.input_ids, ad.video_token_id, *plan.grid)
    assert torch.equal(seq.positions, want)
    q = int(seq.visual_columns[-1]) + 2  # the first text after the last block
    assert int(seq.positions[0, q]) == int(seq.positions[:, :q].max()) + 1
    assert seq.next_position == int(seq.positions.max()) + 1


def _unit_spans(ids, vid, units, tpu, start_id, end_id):
    """Columns of each unit's block in an HF sequence: from just after the previous block's
    ``<|vision_end|>`` (the template's ``<|vision_start|>`` for the first) to its own."""
    first = int((ids == start_id).nonzero()[0])
    spans, lo = [], first + 1
    for u in range(units):
        hi = int(vid[(u + 1) * tpu - 1]) + 1
        assert int(ids[hi]) == end_id
        spans.append(range(lo, hi + 1))
        lo = hi + 1
    return spans


def test_pruned_decoding_matches_full_recomputation(family_dir, clip16, monkeypatch):
    """A run that drops units 4-7 feeds the kept columns of HF's unpruned sequence (their
    ids, timestamps and positions; dropped patches lose their whole block), the DeepStack
    features of the kept tokens only, and decodes at max(full positions) + 1 + s: checked by
    full recomputation through the language model with explicit DeepStack inputs."""
    from transformers import AutoTokenizer
    family, path = family_dir
    at = _pipeline(path, units_per_group=4, budget=12, group_layout="contiguous", force_stop_after=1,
                   max_new_tokens=10, **CLIP)
    spy, ids = Spy(at.adapter), _capture_ids(monkeypatch)
    res = at.answer(clip16, QUESTION, OPTIONS, progress=False)
    final = [c for c in spy.calls if c["use_cache"]][0]
    model, tok = _model(path), AutoTokenizer.from_pretrained(path)
    inp = _hf_inputs(tok, model, torch.stack(_decode_all(clip16)), res.frames)
    rows, cols = res.grid
    tpu = rows * cols
    unit = {f: i // 2 for i, f in enumerate(res.frames) if i % 2 == 0}
    keys = torch.tensor([unit[t["frame"]] * tpu + t["h"] * cols + t["w"] for t in res.selected_tokens])
    kept_units = set((keys // tpu).tolist())
    assert max(kept_units) < 4 and len(kept_units) >= 2
    full = inp["input_ids"][0]
    vid = (full == model.config.video_token_id).nonzero().flatten()
    spans = _unit_spans(full, vid, 8, tpu, model.config.vision_start_token_id, model.config.vision_end_token_id)
    in_unit = set().union(*map(set, spans))
    keep = [c for c in range(len(full)) if c not in in_unit or
            any(c in spans[u] and (full[c] != model.config.video_token_id or int(vid[keys].eq(c).any()))
                for u in kept_units)]
    keep = torch.tensor(keep)
    with torch.no_grad():
        pos, _ = model.model.get_rope_index(inp["input_ids"], inp["mm_token_type_ids"],
                                            video_grid_thw=inp["video_grid_thw"])
        enc = model.model.get_video_features(inp["pixel_values_videos"], inp["video_grid_thw"], return_dict=True)
    vis = torch.cat(enc.pooler_output)[keys]
    deep = [torch.cat(f)[keys] for f in (getattr(enc, "deepstack_features", None) or [])]
    pos = pos[:, 0, keep]
    assert torch.equal(final["seq"].input_ids, full[keep])  # kept patches keep their timestamps
    assert torch.equal(final["seq"].positions, pos)  # and their unpruned positions
    side = final["visual"].side
    assert len(side) == len(deep) == (2 if family.startswith("qwen3_vl") else 0)  # DeepStack: Qwen3-VL only
    for i, d in enumerate(deep):  # DeepStack rows pruned with the visual tokens' indices
        torch.testing.assert_close(side[f"deepstack{i}"], d, rtol=1e-5, atol=1e-5)
    lm = model.model.language_model
    cur = full[keep]
    emb = model.get_input_embeddings()(cur)
    emb[cur == model.config.video_token_id] = vis
    nxt, want = int(pos.max()) + 1, []
    with torch.no_grad():
        for s in range(10):
            mask = torch.cat([cur == model.config.video_token_id, torch.zeros(len(want), dtype=torch.bool)])
            extra = dict(visual_pos_masks=mask[None], deepstack_visual_embeds=deep) if deep else {}
            h = lm(inputs_embeds=emb[None], position_ids=pos[:, None], **extra).last_hidden_state
            t = int(model.lm_head(h[0, -1]).argmax())
            if t in at.adapter.eos_token_ids:
                break
            want.append(t)
            emb = torch.cat([emb, model.get_input_embeddings()(torch.tensor([t]))])
            pos = torch.cat([pos, torch.full((3, 1), nxt + s)], dim=1)
    assert len(want) >= 8
    assert ids[0] == want


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_5_moe"])
def test_qwen3_5_reference_layer_is_full_attention(family, tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp(family), family)
    ad = models.load(str(path))
    types = ad.model.config.text_config.layer_types
    layer = ad.default_reference_layer()
    assert types[layer] == "full_attention"
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    assert layer == min(full, key=lambda i: abs(i - round(0.7 * len(types))))
    linear = types.index("linear_attention")
    with pytest.raises(ValueError, match=f"reference_layer: layer {linear} is a linear-attention layer"):
        AdaptToken(ad, AdaptTokenConfig(reference_layer=linear))
    with pytest.raises(ValueError, match="reference_layer"):
        AdaptToken(ad, AdaptTokenConfig(reference_layer=len(types)))


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_answer_writes_json(family, tmp_path, capsys):
    from adapttoken_ext.cli import main
    path = build_tiny_model(tmp_path / family, family)
    out = tmp_path / "r.json"
    rc = main(["answer", "--video", str(sample_video("bikes.mp4")), "--question", QUESTION,
               "--options", *OPTIONS, "--model", str(path), "--frames", "32", "--budget", "20",
               "--units-per-group", "4", "--max-pixels", str(112 * 224), "--json", str(out), "--quiet"])
    assert rc == 0 and "answer:" in capsys.readouterr().out
    d = json.loads(out.read_text())
    assert d["model"] == str(path) and len(d["groups"]) == 4
    assert sum(g["budget"] for g in d["groups"]) == 20 == len(d["selected_tokens"])
    assert all({"frame", "time_s", "h", "w", "score"} <= set(t) for t in d["selected_tokens"])


def test_tiny_model_id_picks_its_family():
    from adapttoken_ext.models.qwen3_5 import Qwen3_5Adapter
    at = AdaptToken.from_pretrained("adapttoken/tiny-qwen3_5")
    assert type(at.adapter) is Qwen3_5Adapter and at.tiny and at.name == "adapttoken/tiny-qwen3_5"

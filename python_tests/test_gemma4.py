"""AdaptToken on a tiny Gemma 4 model and real sample frames (method.md steps 0-9).

References are built without the adapter's code: the chat template, then the video
placeholder expanded by transformers' own ``Gemma4Processor.replace_video_token`` (per frame
``mm:ss <boi>[soft tokens]<eoi>``, frames joined by a space, times from
``VideoMetadata.timestamps``), ``mm_token_type_ids`` by ``ProcessorMixin``'s rule, pixel
values by the image processor's ``convert_image_to_patches`` and ``pad_along_first_dim``
with the video processor's patch positions, padded to its 70-soft-token budget (its own
module imports torchvision, which this machine lacks; so does its resize, so the frames
are written at a size it keeps: 288x528, 6x11 tokens), PyAV decoding, and the model's own
forward and ``generate``. The tiny model has sliding-window (8 keys) and global layers,
frames attending to themselves bidirectionally in the sliding layers (the larger
checkpoints' ``use_bidirectional_attention="vision"``) and per-layer embeddings (as E2B)."""
import json
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from test_pipeline import (
    OPTIONS,
    QUESTION,
    Spy,
    _capture_ids,
    _decode_all,
    _letter_entropy,
    _write_video,
)

from adapttoken_ext import AdaptToken, AdaptTokenConfig, models, stages
from adapttoken_ext.config import MC_INSTRUCTION
from adapttoken_ext.models.tiny import build_tiny_model
from adapttoken_ext.video import VideoReader, sample_video

STEP_S = 9  # seconds between the clip's frames: times 00:00 ... 01:03
H, W = 288, 528
CLIP = {"frames": 8, "max_pixels": H * W}  # every frame of clip8: 8 units of 6x11 tokens


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("gemma4"), "gemma4")


@pytest.fixture(scope="module")
def clip8(tmp_path_factory):
    """8 distinct bikes frames at 288x528, STEP_S seconds apart."""
    with av.open(str(sample_video("bikes.mp4"))) as c:
        src = [f.to_ndarray(format="rgb24", width=W, height=H) for i, f in enumerate(c.decode(video=0)) if i % 17 == 0][:8]
    return _write_video(tmp_path_factory.mktemp("clip") / "clip8.mp4", torch.from_numpy(np.stack(src)),
                        times_ms=[i * STEP_S * 1000 for i in range(8)])


def _model(path, **kw):
    from transformers import Gemma4ForConditionalGeneration
    return Gemma4ForConditionalGeneration.from_pretrained(path, **kw).eval()


def _hf_inputs(tok, model, frames, indices, question=QUESTION, options=OPTIONS):
    """Unpruned inputs as Gemma4Processor builds them from uint8 frames [T, H, W, 3] taken
    at ``indices`` of a video at 1/STEP_S fps."""
    from transformers.models.gemma4.image_processing_pil_gemma4 import (
        convert_image_to_patches,
        pad_along_first_dim,
    )
    from transformers.models.gemma4.processing_gemma4 import Gemma4Processor
    from transformers.processing_utils import ProcessorMixin
    from transformers.video_utils import VideoMetadata
    text = question + ("\n" + "\n".join(options) + "\n" + MC_INSTRUCTION if options else "")
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    cfg = model.config
    pv, pos = [], []
    for f in frames:  # the video processor: fused rescale-and-normalize (mean 0, std 1), 16 px patches
        x = ((f.permute(2, 0, 1).float() - 0.0) / (1.0 * (1.0 / (1 / 255.0)))).numpy()
        patches = convert_image_to_patches(x, 16)
        gx, gy = np.meshgrid(np.arange(x.shape[2] // 16), np.arange(x.shape[1] // 16), indexing="xy")
        p, q = pad_along_first_dim(patches, np.stack([gx, gy], axis=-1).reshape(-1, 2), 70 * 9)
        pv.append(torch.from_numpy(p))
        pos.append(torch.from_numpy(q))
    n_soft = frames.shape[1] // 48 * (frames.shape[2] // 48)
    proc = SimpleNamespace(boi_token="<|image>", eoi_token="<image|>", video_token="<|video|>")
    meta = VideoMetadata(total_num_frames=max(indices) + 1, fps=1 / STEP_S, frames_indices=list(indices))
    repl = Gemma4Processor.replace_video_token(proc, {"num_soft_tokens_per_video": [n_soft], "video_metadata": [meta]}, 0)
    assert prompt.count("<|video|>") == 1
    ids = tok(prompt.replace("<|video|>", repl))["input_ids"]
    types = SimpleNamespace(image_token_ids=[cfg.image_token_id], video_token_ids=[cfg.video_token_id],
                            audio_token_ids=[cfg.audio_token_id])
    mm = torch.tensor(ProcessorMixin.create_mm_token_type_ids(types, [ids]))
    ids = torch.tensor([ids])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": torch.stack(pv),
            "video_position_ids": torch.stack(pos).long(), "num_frames_per_video": torch.tensor([len(frames)]),
            "mm_token_type_ids": mm}


def _pipeline(path, **cfg):
    return AdaptToken(models.load(str(path)), AdaptTokenConfig(**cfg))


def test_group_pass_matches_transformers_eager(tiny, clip8):
    """Scores at the reference (global) layer, rows after the last visual token; logits
    and entropies of the group pass equal HF's eager forward of the group's frames as a
    video, its sliding layers attending bidirectionally within each frame."""
    from transformers import AutoTokenizer
    at = _pipeline(tiny, units_per_group=4, budget=20, **CLIP)
    eager = _model(tiny, attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(tiny)
    frames = _decode_all(clip8)
    with VideoReader(clip8) as r:
        for opts in (OPTIONS, None):
            plan = stages.make_plan(at.adapter, r.info, at.config, QUESTION, opts)
            assert len(plan.groups) == 2 and plan.grid == (6, 11)
            for g in (0, 1):
                spy = Spy(at.adapter)
                res = stages.score_group(at.adapter, at.capture, plan, stages.encode_group(at.adapter, r, plan, g), "max")
                at.adapter.prefill = spy._f
                idx = plan.unit_frames(plan.groups[g])
                inp = _hf_inputs(tok, eager, torch.stack([frames[i] for i in idx]), idx, QUESTION, opts)
                assert torch.equal(spy.calls[0]["seq"].input_ids, inp["input_ids"][0])
                with torch.no_grad():
                    out = eager(**inp, output_attentions=True)
                vid = (inp["mm_token_type_ids"][0] == 2).nonzero().flatten()
                a = out.attentions[at.reference_layer][0, :, int(vid[-1]) + 1:, vid].double()
                torch.testing.assert_close(res.scores.double(), a.amax(dim=(0, 1)), rtol=1e-4, atol=1e-6)
                torch.testing.assert_close(spy.calls[0]["logits"], out.logits[0, -1], rtol=1e-4, atol=1e-4)
                want = (_letter_entropy(out.logits[0, -1], tok) if opts else
                        torch.distributions.Categorical(logits=out.logits[0, -1].double()).entropy())
                assert res.entropy == pytest.approx(float(want), rel=1e-4, abs=1e-6)


def test_frames_attend_bidirectionally_in_sliding_layers_only(tiny, clip8):
    """What the reference-layer rule rests on, in transformers' own eager attention: a
    frame's tokens see the later tokens of the same frame in sliding-window layers, never
    in global layers (causal, as attention_scores' softmax), and no text row sees later
    keys in any layer; a sliding layer's last row sees no key more than the window back."""
    from transformers import AutoTokenizer
    eager, tok = _model(tiny, attn_implementation="eager"), AutoTokenizer.from_pretrained(tiny)
    frames = torch.stack(_decode_all(clip8)[:2])
    inp = _hf_inputs(tok, eager, frames, [0, 1])
    with torch.no_grad():
        att = eager(**inp, output_attentions=True).attentions
    types, window = eager.config.text_config.layer_types, eager.config.text_config.sliding_window
    vid = (inp["mm_token_type_ids"][0] == 2).nonzero().flatten()
    frame0 = vid[:66]
    later = torch.triu(torch.ones(len(frame0), len(frame0), dtype=torch.bool), 1)
    text = (inp["mm_token_type_ids"][0] == 0).nonzero().flatten()
    for layer, a in enumerate(att):
        block = a[0][:, frame0][:, :, frame0]  # [heads, frame-0 queries, frame-0 keys]
        above = block[:, later].abs().max()
        assert (above > 0) if types[layer] == "sliding_attention" else (above == 0), layer
        rows = a[0][:, text]
        assert all(rows[:, i, int(t) + 1:].abs().sum() == 0 for i, t in enumerate(text)), layer
        if types[layer] == "sliding_attention":
            assert a[0][:, -1, :a.shape[-1] - window].abs().sum() == 0, layer


def test_keep_all_matches_transformers_generate(tiny, clip8, monkeypatch):
    """One group, budget >= N, no redundancy removal: the final pass's logits equal HF's
    unpruned forward and greedy decoding equals HF's ``generate`` over 8 tokens."""
    from transformers import AutoTokenizer
    at = _pipeline(tiny, units_per_group=64, budget=10**6, redundancy_threshold=None, max_new_tokens=8, **CLIP)
    spy, ids = Spy(at.adapter), _capture_ids(monkeypatch)
    res = at.answer(clip8, QUESTION, OPTIONS, progress=False)
    assert len(res.selected_tokens) == 8 * 66
    model, tok = _model(tiny), AutoTokenizer.from_pretrained(tiny)
    inp = _hf_inputs(tok, model, torch.stack(_decode_all(clip8)), res.frames)
    with torch.no_grad():
        logits = model(**inp).logits[0, -1]
        out = model.generate(**inp, max_new_tokens=8, do_sample=False)[0, inp["input_ids"].shape[1]:].tolist()
    assert torch.equal(spy.calls[-1]["seq"].input_ids, inp["input_ids"][0])
    torch.testing.assert_close(spy.calls[-1]["logits"], logits, rtol=1e-4, atol=1e-4)
    cut = next((i for i, t in enumerate(out) if t in at.adapter.eos_token_ids), len(out))
    assert ids[0] == out[:cut] and len(ids[0]) >= 1


def test_pruned_decoding_matches_full_recomputation(tiny, clip8, monkeypatch):
    """A run that drops frames 4-7 feeds the kept columns of HF's unpruned sequence (their
    ids and time texts; a dropped frame loses its time text and brackets) at compact
    positions 0..len-1 (method.md step 9, 1-D RoPE), each kept frame's tokens one
    bidirectional block, and decodes at len + s: checked by full recomputation through the
    model's own forward."""
    from transformers import AutoTokenizer
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    at = _pipeline(tiny, units_per_group=4, budget=12, group_layout="contiguous", force_stop_after=1,
                   max_new_tokens=10, **CLIP)
    spy, ids = Spy(at.adapter), _capture_ids(monkeypatch)
    res = at.answer(clip8, QUESTION, OPTIONS, progress=False)
    final = next(c for c in spy.calls if c["use_cache"])
    model, tok = _model(tiny), AutoTokenizer.from_pretrained(tiny)
    inp = _hf_inputs(tok, model, torch.stack(_decode_all(clip8)), res.frames)
    rows, cols = res.grid
    tpu = rows * cols
    unit = {f: i for i, f in enumerate(res.frames)}
    keys = torch.tensor([unit[t["frame"]] * tpu + t["h"] * cols + t["w"] for t in res.selected_tokens])
    kept_units = set((keys // tpu).tolist())
    assert max(kept_units) < 4 and len(kept_units) >= 2
    full, cfg = inp["input_ids"][0], model.config
    vid = (inp["mm_token_type_ids"][0] == 2).nonzero().flatten()
    # frame u: from the end of the previous frame's <eoi> (the video's start for frame 0)
    # to its own <eoi>: its time text (and the space before it), <boi>, tokens, <eoi>
    ends = (full == cfg.eoi_token_id).nonzero().flatten().tolist()
    starts = [int(vid[0]) - 1 - len(tok.encode("00:00 ", add_special_tokens=False))] + [e + 1 for e in ends[:-1]]
    assert tok.decode(full[starts[7]:ends[7] + 1]).startswith(" 01:03 ")
    dropped = {c for u in range(8) if u not in kept_units for c in range(starts[u], ends[u] + 1)}
    kept_vis, vis_cols = set(vid[keys].tolist()), set(vid.tolist())
    keep = torch.tensor([c for c in range(len(full)) if c not in dropped and (c in kept_vis or c not in vis_cols)])
    assert torch.equal(final["seq"].input_ids, full[keep])  # kept frames keep their time texts
    n = keep.numel()
    assert torch.equal(final["seq"].positions, torch.arange(n)[None])  # compact positions
    assert final["seq"].next_position == n < full.numel()
    with torch.no_grad():
        enc = model.model.get_video_features(inp["pixel_values_videos"], inp["video_position_ids"],
                                             num_frames_per_video=inp["num_frames_per_video"], return_dict=True)
    vis = torch.cat(enc.pooler_output)[keys]
    cur, pos, types = full[keep], torch.arange(n), inp["mm_token_type_ids"][0, keep]
    want = []
    with torch.no_grad():
        for s in range(10):
            out = model(input_ids=cur[None], position_ids=pos[None], attention_mask=torch.ones(1, len(cur), dtype=torch.long),
                        mm_token_type_ids=types[None], mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=(vis,))})
            t = int(out.logits[0, -1].argmax())
            if t in at.adapter.eos_token_ids:
                break
            want.append(t)
            cur, pos = torch.cat([cur, torch.tensor([t])]), torch.cat([pos, torch.tensor([n + s])])
            types = torch.cat([types, torch.zeros(1, dtype=types.dtype)])
    assert len(want) >= 8
    assert ids[0] == want


def test_reference_layer_is_global(tiny):
    """The default is the global layer nearest round(0.7 L) (here 5: 4 is a sliding
    layer); a sliding-window layer is refused with the global ones listed."""
    ad = models.load(str(tiny))
    types = ad.model.config.text_config.layer_types
    glob = [i for i, t in enumerate(types) if t == "full_attention"]
    target = round(0.7 * len(types))
    assert types[target] == "sliding_attention"
    assert ad.default_reference_layer() == min(glob, key=lambda i: abs(i - target)) == 5
    with pytest.raises(ValueError, match=rf"reference_layer: layer {target} is a sliding-window layer.*\[2, 5\]"):
        AdaptToken(ad, AdaptTokenConfig(reference_layer=target))
    with pytest.raises(ValueError, match="reference_layer"):
        AdaptToken(ad, AdaptTokenConfig(reference_layer=len(types)))
    assert AdaptToken(ad, AdaptTokenConfig(reference_layer=2)).reference_layer == 2


def test_geometry_at_the_default_size(tiny):
    """308x560 (and 720p) frames at the default max_pixels: 288x528, 6x11 soft tokens, as
    the video processor's own 70-token budget sizes a 16:9 frame."""
    from transformers.models.gemma4.processing_gemma4 import (
        get_aspect_ratio_preserving_size,
    )
    ad = models.load(str(tiny))
    for h, w in ((308, 560), (720, 1280)):
        size = ad.frame_size(h, w, 308 * 560)
        assert size == (288, 528) == get_aspect_ratio_preserving_size(h, w, 16, 70 * 9, 3)
        assert ad.unit_grid(*size) == (6, 11)


def test_cli_answer_writes_json(tmp_path, capsys):
    from adapttoken_ext.cli import main
    path = build_tiny_model(tmp_path / "gemma4", "gemma4")
    out = tmp_path / "r.json"
    rc = main(["answer", "--video", str(sample_video("bikes.mp4")), "--question", QUESTION,
               "--options", *OPTIONS, "--model", str(path), "--frames", "16", "--budget", "20",
               "--units-per-group", "4", "--max-pixels", str(96 * 192), "--json", str(out), "--quiet"])
    assert rc == 0 and "answer:" in capsys.readouterr().out
    d = json.loads(out.read_text())
    assert d["model"] == str(path) and len(d["groups"]) == 4
    assert sum(g["budget"] for g in d["groups"]) == 20 == len(d["selected_tokens"])
    assert all({"frame", "time_s", "h", "w", "score"} <= set(t) for t in d["selected_tokens"])


def test_flash_attention_is_refused(tiny):
    """Flash attention would drop the bidirectional frame blocks: refused, naming the
    argument, before any loading; sdpa is the default."""
    with pytest.raises(ValueError, match="attn_implementation: flash_attention_2 drops"):
        models.load(str(tiny), attn_implementation="flash_attention_2")
    assert models.load(str(tiny)).model.config._attn_implementation == "sdpa"

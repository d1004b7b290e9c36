"""AdaptToken on the tiny InternVL (model_type ``internvl``) and real sample-video frames.

References are built without the adapter's code. transformers': the chat template, the
placeholder expansion ``InternVLProcessor.replace_video_token`` (called unbound: the processor
itself cannot be built here, its video processor needs torchvision) with the attributes the
processor reads from the tokenizer, ``GotOcr2ImageProcessorPil`` (InternVL's image processor:
rescale and normalise each 112 px tile, the video processor's per-frame rule), the model's own
forward, ``get_image_features`` and ``generate``. Hand-written here: which columns a pruned
run keeps (from the expanded text's tokens), greedy decoding by full recomputation at the
compact positions of method.md step 9.
"""
import json
import math
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
    greedy_by_recomputation,
)

from adapttoken_ext import AdaptToken, AdaptTokenConfig, stages
from adapttoken_ext.config import MC_INSTRUCTION
from adapttoken_ext.models.internvl import InternVLAdapter
from adapttoken_ext.models.tiny import build_tiny_model
from adapttoken_ext.video import VideoReader, sample_video

TILE = 112  # the tiny model's tile: 8 x 8 patches of 14 px, 4 x 4 tokens after the pixel shuffle
ALL = dict(frames=32, max_pixels=TILE * TILE)  # every frame of tile_video


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_internvl"), "internvl")


@pytest.fixture(scope="module")
def tile_video(tmp_path_factory):
    """32 bikes frames at the tile size, so no resize rule is involved (lossless H.264)."""
    with av.open(str(sample_video("bikes.mp4"))) as c:
        src = [f.to_ndarray(format="rgb24", width=TILE, height=TILE)
               for i, f in enumerate(c.decode(video=0)) if i % 7 == 0][:32]
    return _write_video(tmp_path_factory.mktemp("tile") / "tile.mp4", torch.from_numpy(np.stack(src)))


def _pipeline(tiny_dir, attn="sdpa", **cfg):
    return AdaptToken(InternVLAdapter.from_pretrained(str(tiny_dir), attn_implementation=attn),
                      AdaptTokenConfig(**cfg))


def _hf_inputs(tiny_dir, tok, model, frames, question=QUESTION, options=OPTIONS):
    """The unpruned inputs as InternVLProcessor builds them from frames uint8 [T, H, W, 3]."""
    from PIL import Image
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )
    from transformers.models.internvl.processing_internvl import InternVLProcessor
    pre = json.loads((tiny_dir / "preprocessor_config.json").read_text())
    text = question + ("\n" + "\n".join(options) + "\n" + MC_INSTRUCTION if options else "")
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    proc = SimpleNamespace(start_image_token=tok.start_image_token, end_image_token=tok.end_image_token,
                           image_token=tok.context_image_token, image_seq_length=model.config.image_seq_length)
    video = InternVLProcessor.replace_video_token(proc, {"pixel_values_videos": [frames]}, 0)
    input_ids = tok(prompt.replace(tok.video_token, video), return_tensors="pt")["input_ids"]
    ip = GotOcr2ImageProcessorPil(size={"height": TILE, "width": TILE}, crop_to_patches=False,
                                  image_mean=pre["image_mean"], image_std=pre["image_std"])
    pv = ip([Image.fromarray(f.numpy()) for f in frames], return_tensors="pt")["pixel_values"]
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=pv)


def _hf_model(tiny_dir, attn="sdpa"):
    from transformers import AutoTokenizer, InternVLForConditionalGeneration
    model = InternVLForConditionalGeneration.from_pretrained(str(tiny_dir), attn_implementation=attn).eval()
    return model, AutoTokenizer.from_pretrained(str(tiny_dir))


def test_group_pass_matches_transformers_eager(tiny_dir, tile_video):
    """The pipeline's group pass (compact 1-D positions, per-frame text, queries after the
    last visual token) against HF's eager forward of the group as a video: scores, logits,
    entropies."""
    at = _pipeline(tiny_dir, units_per_group=8, budget=40, **ALL)
    ad = at.adapter
    eager, tok = _hf_model(tiny_dir, "eager")
    frames = _decode_all(tile_video)
    with VideoReader(tile_video) as r:
        for opts in (OPTIONS, None):
            plan = stages.make_plan(ad, r.info, at.config, QUESTION, opts)
            assert len(plan.groups) == 4 and plan.grid == (4, 4) and plan.size == (TILE, TILE)
            for g in (0, 3):
                spy = Spy(ad)
                enc = stages.encode_group(ad, r, plan, g)
                res = stages.score_group(ad, at.capture, plan, enc, "max")
                ad.prefill = spy._f
                inp = _hf_inputs(tiny_dir, tok, eager, torch.stack([frames[i] for i in plan.unit_frames(plan.groups[g])]),
                                 QUESTION, opts)
                assert torch.equal(spy.calls[0]["seq"].input_ids, inp["input_ids"][0])
                with torch.no_grad():
                    out = eager(**inp, output_attentions=True)
                vid = (inp["input_ids"][0] == eager.config.image_token_id).nonzero().flatten()
                ve = int(vid[-1]) + 1
                a = out.attentions[at.reference_layer][0, :, ve:, vid].double()
                torch.testing.assert_close(res.scores.double(), a.amax(dim=(0, 1)), rtol=1e-4, atol=1e-6)
                torch.testing.assert_close(spy.calls[0]["logits"], out.logits[0, -1], rtol=1e-4, atol=1e-4)
                want = (_letter_entropy(out.logits[0, -1], tok) if opts else
                        torch.distributions.Categorical(logits=out.logits[0, -1].double()).entropy())
                assert res.entropy == pytest.approx(float(want), rel=1e-4, abs=1e-6)
                assert res.max_entropy == pytest.approx(math.log(4 if opts else len(tok)))


def test_keep_all_matches_transformers_generate(tiny_dir, tile_video, monkeypatch):
    """Budget = all tokens, one group: the final pass is HF's own unpruned forward (logits to
    1e-4) and greedy decoding over 8 tokens equals HF's ``generate``."""
    at = _pipeline(tiny_dir, units_per_group=32, budget=10**6, redundancy_threshold=None,
                   max_new_tokens=8, **ALL)
    spy, ids = Spy(at.adapter), _capture_ids(monkeypatch)
    res = at.answer(tile_video, QUESTION, OPTIONS, progress=False)
    model, tok = _hf_model(tiny_dir)
    inp = _hf_inputs(tiny_dir, tok, model, torch.stack(_decode_all(tile_video)))
    with torch.no_grad():
        hf = model.generate(**inp, max_new_tokens=8, do_sample=False)[0, inp["input_ids"].shape[1]:].tolist()
        logits = model(**inp).logits[0, -1]
    cut = next((i for i, t in enumerate(hf) if t == model.generation_config.eos_token_id), len(hf))
    assert len(res.selected_tokens) == 32 * 16
    final = spy.calls[-1]
    assert torch.equal(final["seq"].input_ids, inp["input_ids"][0])
    assert torch.equal(final["seq"].positions[0], torch.arange(inp["input_ids"].shape[1]))
    torch.testing.assert_close(final["logits"], logits, rtol=1e-4, atol=1e-4)
    assert ids[0] == hf[:cut] and len(ids[0]) >= 1


def test_pruned_decoding_at_compact_positions(tiny_dir, tile_video, monkeypatch):
    """A run that drops whole frames: the kept columns of HF's unpruned input (a fully dropped
    frame loses its "\\nFrame{i}: <img>...</img>" text too; kept frames keep their
    full-video label), at compact positions 0..len-1 (method.md step 9), then greedy decoding
    by full recomputation through HF's forward with token s at len + s."""
    at = _pipeline(tiny_dir, units_per_group=8, budget=24, group_layout="contiguous",
                   force_stop_after=2, max_new_tokens=10, **ALL)
    spy, ids = Spy(at.adapter), _capture_ids(monkeypatch)
    res = at.answer(tile_video, QUESTION, OPTIONS, progress=False)
    model, tok = _hf_model(tiny_dir)
    inp = _hf_inputs(tiny_dir, tok, model, torch.stack(_decode_all(tile_video)))
    full = inp["input_ids"][0]
    frame_of = {f: i for i, f in enumerate(res.frames)}
    keys = {frame_of[t["frame"]] * 16 + t["h"] * 4 + t["w"] for t in res.selected_tokens}
    kept_frames = {k // 16 for k in keys}
    assert max(kept_frames) < 16 and len(kept_frames) < 16  # frames of visited groups dropped too
    # the text of frame f: from after frame f-1's </img> (its "\n") or, for frame 0, the
    # tokens of "Frame1: ", up to its own </img>
    starts = (full == tok.convert_tokens_to_ids(tok.start_image_token)).nonzero().flatten()
    ends = (full == tok.convert_tokens_to_ids(tok.end_image_token)).nonzero().flatten()
    first = int(starts[0]) - len(tok("Frame1: ", add_special_tokens=False)["input_ids"])
    assert tok.decode(full[first:starts[0]]) == "Frame1: "
    drop = torch.zeros_like(full, dtype=torch.bool)
    for f in range(32):
        lo = first if f == 0 else int(ends[f - 1]) + 1
        if f not in kept_frames:
            drop[lo:int(ends[f]) + 1] = True
        else:
            for j in range(16):  # the frame's j-th <IMG_CONTEXT> holds key 16 f + j
                drop[int(starts[f]) + 1 + j] = 16 * f + j not in keys
    cols = (~drop).nonzero().flatten()
    final = [c for c in spy.calls if c["use_cache"]][0]["seq"]
    n = cols.numel()
    assert torch.equal(final.input_ids, full[cols]) and torch.equal(final.positions, torch.arange(n)[None])
    assert final.next_position == n < full.numel()
    labels = tok.decode(full[cols])
    assert all(f"Frame{f + 1}: " in labels for f in kept_frames)  # full-video numbers
    assert not any(f"Frame{f + 1}: " in labels for f in set(range(32)) - kept_frames)
    with torch.no_grad():
        emb = model.get_input_embeddings()(full)
        emb[full == model.config.image_token_id] = model.model.get_image_features(
            inp["pixel_values"], return_dict=True).pooler_output.flatten(0, 1)
    want = greedy_by_recomputation(model, emb[cols], torch.arange(n), n, 10, {model.generation_config.eos_token_id})
    assert len(want) >= 8
    assert ids[0] == want


def test_cli_answer_writes_json(tiny_dir, tmp_path, capsys):
    """``adapttoken answer --model <tiny InternVL dir>`` on bikes.mp4 writes the JSON contract."""
    from adapttoken_ext.cli import main
    out = tmp_path / "r.json"
    rc = main(["answer", "--video", str(sample_video("bikes.mp4")), "--question", QUESTION, "--options",
               *OPTIONS, "--model", str(tiny_dir), "--frames", "32", "--budget", "20",
               "--units-per-group", "8", "--json", str(out), "--quiet"])
    assert rc == 0 and "answer:" in capsys.readouterr().out
    d = json.loads(out.read_text())
    assert len(d["frames"]) == 32 and len(d["groups"]) == 4 and d["budget"] == 20
    assert sum(g["budget"] for g in d["groups"]) == 20 == len(d["selected_tokens"])
    assert all(0 <= t["h"] < 4 and 0 <= t["w"] < 4 and t["frame"] in d["frames"] for t in d["selected_tokens"])
    assert set(d["timings_s"]) >= set(stages.STAGES) | {"total"}



def test_tile_size_must_match_image_seq_length(tiny_dir):
    model, tok = _hf_model(tiny_dir)
    model.config.image_seq_length = 64
    with pytest.raises(ValueError, match="model: .*image_seq_length is 64"):
        InternVLAdapter(model, tok)

"""AdaptToken on the tiny LLaVA-OneVision (model_type ``llava_onevision``) and real sample-video
frames.

References are built without the adapter's code. transformers': the chat template, the
placeholder expansion ``LlavaOnevisionProcessor.replace_video_token`` (called unbound: the
processor cannot be built here, its video processor needs torchvision) with the processor's
``num_image_tokens`` (patches per frame, 729 on the hub), the base patch of
``LlavaOnevisionImageProcessorPil`` (resize to ``size``, rescale, normalise: the video
processor's per-frame rule), the model's own forward, ``get_video_features`` (SigLIP, 2x2
bilinear pooling, trailing newline) and ``generate``. Hand-written here: which columns a pruned
run keeps, greedy decoding by full recomputation at compact positions
(``test_pipeline.greedy_by_recomputation``).
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
from adapttoken_ext.models.llava_onevision import LlavaOnevisionAdapter
from adapttoken_ext.models.tiny import build_tiny_model
from adapttoken_ext.video import VideoReader, sample_video

SIDE = 100  # the tiny SigLIP's image_size: 7 x 7 patches of 14 px (as 384 px gives 27 x 27)
TPF = 16    # tokens per frame after the 2x2 bilinear pooling: ceil(7 / 2)^2
ALL = dict(frames=32, max_pixels=SIDE * SIDE)  # every frame of side_video


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llava_ov"), "llava_onevision")


@pytest.fixture(scope="module")
def side_video(tmp_path_factory):
    """32 bikes frames at the tower's size, so no resize rule is involved (lossless H.264)."""
    with av.open(str(sample_video("bikes.mp4"))) as c:
        src = [f.to_ndarray(format="rgb24", width=SIDE, height=SIDE)
               for i, f in enumerate(c.decode(video=0)) if i % 7 == 0][:32]
    return _write_video(tmp_path_factory.mktemp("side") / "side.mp4", torch.from_numpy(np.stack(src)))


def _pipeline(tiny_dir, **cfg):
    return AdaptToken(LlavaOnevisionAdapter.from_pretrained(str(tiny_dir)), AdaptTokenConfig(**cfg))


def _hf_model(tiny_dir, attn="sdpa"):
    from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(str(tiny_dir), attn_implementation=attn).eval()
    return model, AutoTokenizer.from_pretrained(str(tiny_dir))


def _hf_inputs(tiny_dir, tok, model, frames, question=QUESTION, options=OPTIONS):
    """The unpruned inputs as LlavaOnevisionProcessor builds them from frames uint8 [T, H, W, 3]."""
    from PIL import Image
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )
    from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor
    pre = json.loads((tiny_dir / "preprocessor_config.json").read_text())
    text = question + ("\n" + "\n".join(options) + "\n" + MC_INSTRUCTION if options else "")
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    vc = model.config.vision_config
    proc = SimpleNamespace(num_image_tokens=(vc.image_size // vc.patch_size) ** 2, video_token="<video>")
    video = LlavaOnevisionProcessor.replace_video_token(proc, {"pixel_values_videos": [frames]}, 0)
    input_ids = tok(prompt.replace("<video>", video, 1), return_tensors="pt")["input_ids"]
    ip = LlavaOnevisionImageProcessorPil(size={"height": SIDE, "width": SIDE},
                                         image_mean=pre["image_mean"], image_std=pre["image_std"])
    pv = torch.stack([ip([Image.fromarray(f.numpy())], return_tensors="pt")["pixel_values"][0, 0] for f in frames])
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values_videos=pv[None])


def test_group_pass_matches_transformers_eager(tiny_dir, side_video):
    """The pipeline's group pass (compact 1-D positions, the newline after the video, queries
    after the last visual token) against HF's eager forward of the group as a video."""
    at = _pipeline(tiny_dir, units_per_group=8, budget=40, **ALL)
    ad = at.adapter
    eager, tok = _hf_model(tiny_dir, "eager")
    frames = _decode_all(side_video)
    with VideoReader(side_video) as r:
        for opts in (OPTIONS, None):
            plan = stages.make_plan(ad, r.info, at.config, QUESTION, opts)
            assert len(plan.groups) == 4 and plan.grid == (4, 4) and plan.size == (SIDE, SIDE)
            for g in (0, 3):
                spy = Spy(ad)
                enc = stages.encode_group(ad, r, plan, g)
                res = stages.score_group(ad, at.capture, plan, enc, "max")
                ad.prefill = spy._f
                fr = torch.stack([frames[i] for i in plan.unit_frames(plan.groups[g])])
                inp = _hf_inputs(tiny_dir, tok, eager, fr, QUESTION, opts)
                assert torch.equal(spy.calls[0]["seq"].input_ids, inp["input_ids"][0])
                with torch.no_grad():
                    out = eager(**inp, output_attentions=True)
                vid = (inp["input_ids"][0] == eager.config.video_token_id).nonzero().flatten()
                assert vid.numel() == 8 * TPF + 1  # the last one is the newline
                vis = vid[:-1]
                a = out.attentions[at.reference_layer][0, :, int(vis[-1]) + 1:, vis].double()
                torch.testing.assert_close(res.scores.double(), a.amax(dim=(0, 1)), rtol=1e-4, atol=1e-6)
                torch.testing.assert_close(spy.calls[0]["logits"], out.logits[0, -1], rtol=1e-4, atol=1e-4)
                want = (_letter_entropy(out.logits[0, -1], tok) if opts else
                        torch.distributions.Categorical(logits=out.logits[0, -1].double()).entropy())
                assert res.entropy == pytest.approx(float(want), rel=1e-4, abs=1e-6)
                assert res.max_entropy == pytest.approx(math.log(4 if opts else len(tok)))


def test_keep_all_matches_transformers_generate(tiny_dir, side_video, monkeypatch):
    """Budget = all tokens, one group: the final pass is HF's own unpruned forward (logits to
    1e-4) and greedy decoding over 8 tokens equals HF's ``generate``."""
    at = _pipeline(tiny_dir, units_per_group=32, budget=10**6, redundancy_threshold=None,
                   max_new_tokens=8, **ALL)
    spy, ids = Spy(at.adapter), _capture_ids(monkeypatch)
    res = at.answer(side_video, QUESTION, OPTIONS, progress=False)
    model, tok = _hf_model(tiny_dir)
    inp = _hf_inputs(tiny_dir, tok, model, torch.stack(_decode_all(side_video)))
    with torch.no_grad():
        hf = model.generate(**inp, max_new_tokens=8, do_sample=False)[0, inp["input_ids"].shape[1]:].tolist()
        logits = model(**inp).logits[0, -1]
    cut = next((i for i, t in enumerate(hf) if t == model.generation_config.eos_token_id), len(hf))
    assert len(res.selected_tokens) == 32 * TPF
    final = spy.calls[-1]
    assert torch.equal(final["seq"].input_ids, inp["input_ids"][0])
    torch.testing.assert_close(final["logits"], logits, rtol=1e-4, atol=1e-4)
    assert ids[0] == hf[:cut] and len(ids[0]) >= 1


def test_pruned_decoding_at_compact_positions(tiny_dir, side_video, monkeypatch):
    """A run that drops the last frames: the text, the kept video tokens and the newline of
    HF's unpruned input in their order at compact positions 0..len-1 (method.md step 9),
    then greedy decoding by full recomputation through HF's forward with token s at len + s."""
    at = _pipeline(tiny_dir, units_per_group=8, budget=24, group_layout="contiguous",
                   force_stop_after=2, max_new_tokens=10, **ALL)
    spy, ids = Spy(at.adapter), _capture_ids(monkeypatch)
    res = at.answer(side_video, QUESTION, OPTIONS, progress=False)
    model, tok = _hf_model(tiny_dir)
    inp = _hf_inputs(tiny_dir, tok, model, torch.stack(_decode_all(side_video)))
    full = inp["input_ids"][0]
    frame_of = {f: i for i, f in enumerate(res.frames)}
    keys = sorted(frame_of[t["frame"]] * TPF + t["h"] * 4 + t["w"] for t in res.selected_tokens)
    assert max(keys) < 16 * TPF  # frames 16..31 (groups 2, 3) are all dropped
    vid = (full == model.config.video_token_id).nonzero().flatten()
    keep = torch.ones_like(full, dtype=torch.bool)
    keep[vid[:-1]] = False  # every video token but the newline ...
    keep[vid[keys]] = True  # ... unless kept
    cols = keep.nonzero().flatten()
    final = next(c for c in spy.calls if c["use_cache"])["seq"]
    n = cols.numel()
    assert torch.equal(final.input_ids, full[cols]) and torch.equal(final.positions, torch.arange(n)[None])
    assert final.next_position == n < full.numel()
    with torch.no_grad():
        emb = model.get_input_embeddings()(full)
        emb[vid] = model.model.get_video_features(inp["pixel_values_videos"], return_dict=True).pooler_output[0]
    want = greedy_by_recomputation(model, emb[cols], torch.arange(n), n, 10, {model.generation_config.eos_token_id})
    assert len(want) >= 8
    assert ids[0] == want


def test_cli_answer_writes_json(tiny_dir, tmp_path, capsys):
    """``adapttoken answer --model <tiny LLaVA-OneVision dir>`` on bikes.mp4 writes the JSON contract."""
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

"""AdaptToken on tiny GLM-4.1V, GLM-4.6V and GLM-4.5V (MoE) models and real sample frames (method.md steps 0-9).

References are built without the adapter's code: the chat template, then the video
placeholder expanded by transformers' own ``Glm4vProcessor.replace_video_token`` /
``Glm46VProcessor.replace_video_token`` (per unit ``<|begin_of_image|>`` + tokens +
``<|end_of_image|>`` + its first frame's time text, from ``VideoMetadata.timestamps``),
``mm_token_type_ids`` by the processor's ``create_mm_token_type_ids``, pixel values by
``Glm4vVideoProcessor.patchify`` after the processor's fused float32 CLIP normalisation
(written out here: the processor runs it, and the resize, through torchvision, which
this machine lacks, so the frames are written at a size GLM's ``smart_resize`` keeps), PyAV decoding, and the model's own forward, ``get_rope_index``,
vision tower and ``generate``."""
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

FAMILIES = ["glm4v", "glm46v", "glm4v_moe"]
FPS = 0.5  # frames 2 s apart: a unit's first-frame time and its mean time differ (t and t + 1)
CLIP = {"frames": 16, "max_pixels": 112 * 224}  # every frame of clip16: 8 units of 2x4 tokens
CLASSES = {"glm4v": ("Glm4vForConditionalGeneration", "glm4v.processing_glm4v", "Glm4vProcessor"),
           "glm46v": ("Glm46VForConditionalGeneration", "glm46v.processing_glm46v", "Glm46VProcessor"),
           "glm4v_moe": ("Glm4vMoeForConditionalGeneration", "glm4v.processing_glm4v", "Glm4vProcessor")}


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory):
    return request.param, build_tiny_model(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def clip16(tmp_path_factory):
    """16 distinct bikes frames at 56x112 (a size GLM's smart_resize keeps), 2 s apart."""
    with av.open(str(sample_video("bikes.mp4"))) as c:
        src = [f.to_ndarray(format="rgb24", width=112, height=56)
               for i, f in enumerate(c.decode(video=0)) if i % 9 == 0][:16]
    return _write_video(tmp_path_factory.mktemp("clip") / "clip16.mp4", torch.from_numpy(np.stack(src)),
                        times_ms=[round(i * 1000 / FPS) for i in range(16)])


def _model(family, path, **kw):
    import transformers
    return getattr(transformers, CLASSES[family][0]).from_pretrained(path, **kw).eval()


def _processor(family, tok):
    """The processor's methods on a stand-in holding only what they read (its
    constructor wants the image and video processors, whose resize needs torchvision)."""
    import importlib
    cls = getattr(importlib.import_module(f"transformers.models.{CLASSES[family][1]}"), CLASSES[family][2])
    proc = SimpleNamespace(video_processor=SimpleNamespace(merge_size=2), image_token="<|image|>",
                           image_token_id=tok.convert_tokens_to_ids("<|image|>"),
                           video_start_id=tok.convert_tokens_to_ids("<|begin_of_video|>"),
                           video_end_id=tok.convert_tokens_to_ids("<|end_of_video|>"))
    proc.replace_frame_token_id = lambda t, num_image_tokens=1: cls.replace_frame_token_id(proc, t, num_image_tokens)
    return cls, proc


def _hf_inputs(family, tok, frames, indices, question=QUESTION, options=OPTIONS):
    """Unpruned inputs as the family's processor builds them from uint8 frames [T, H, W, 3]
    sampled at ``indices`` of a ``FPS`` video."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from transformers.models.glm4v.video_processing_glm4v import Glm4vVideoProcessor
    from transformers.video_utils import VideoMetadata
    text = question + ("\n" + "\n".join(options) + "\n" + MC_INSTRUCTION if options else "")
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, enable_thinking=False)
    # the video processor's fused rescale-and-normalize, in float32 as it runs it
    # (_fuse_mean_std_and_rescale_factor, then (x - mean) / std)
    mean = (torch.tensor(OPENAI_CLIP_MEAN) * (1.0 / (1 / 255.0)))[:, None, None]
    std = (torch.tensor(OPENAI_CLIP_STD) * (1.0 / (1 / 255.0)))[:, None, None]
    x = (frames.permute(0, 3, 1, 2).float() - mean) / std
    pv, gt, gh, gw = Glm4vVideoProcessor.patchify(None, x[None], 14, 2, 2)
    grid = torch.tensor([[gt, gh, gw]])
    cls, proc = _processor(family, tok)
    meta = VideoMetadata(total_num_frames=max(indices) + 1, fps=FPS, frames_indices=list(indices))
    repl = cls.replace_video_token(proc, {"video_grid_thw": grid, "video_metadata": [meta]}, 0)
    assert prompt.count("<|video|>") == 1
    ids = tok(prompt.replace("<|video|>", repl))["input_ids"]
    mm = torch.tensor(cls.create_mm_token_type_ids(proc, [ids]))
    ids = torch.tensor([ids])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": pv[0],
            "video_grid_thw": grid, "mm_token_type_ids": mm}


def _pipeline(path, **cfg):
    return AdaptToken(models.load(str(path)), AdaptTokenConfig(**cfg))


def test_group_pass_matches_transformers_eager(family_dir, clip16):
    """Scores at the reference layer (rows after the last visual token: the last unit's
    ``<|end_of_image|>`` and time text, ``<|end_of_video|>``, the question), logits and
    entropies of the pipeline's group pass equal HF's eager forward of the group's frames
    as a video."""
    from transformers import AutoTokenizer
    family, path = family_dir
    at = _pipeline(path, units_per_group=4, budget=20, **CLIP)
    eager = _model(family, path, attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(path)
    frames = _decode_all(clip16)
    with VideoReader(clip16) as r:
        for opts in (OPTIONS, None):
            plan = stages.make_plan(at.adapter, r.info, at.config, QUESTION, opts)
            assert len(plan.groups) == 2
            for g in (0, 1):
                spy = Spy(at.adapter)
                res = stages.score_group(at.adapter, at.capture, plan, stages.encode_group(at.adapter, r, plan, g), "max")
                at.adapter.prefill = spy._f
                idx = plan.unit_frames(plan.groups[g])
                inp = _hf_inputs(family, tok, torch.stack([frames[i] for i in idx]), idx, QUESTION, opts)
                assert torch.equal(spy.calls[0]["seq"].input_ids, inp["input_ids"][0])
                with torch.no_grad():
                    out = eager(**inp, output_attentions=True)
                vid = (inp["mm_token_type_ids"][0] == 2).nonzero().flatten()
                ve = int(vid[-1]) + 1  # queries: every row after the last visual token (step 3)
                a = out.attentions[at.reference_layer][0, :, ve:, vid].double()
                torch.testing.assert_close(res.scores.double(), a.amax(dim=(0, 1)), rtol=1e-4, atol=1e-6)
                torch.testing.assert_close(spy.calls[0]["logits"], out.logits[0, -1], rtol=1e-4, atol=1e-4)
                want = (_letter_entropy(out.logits[0, -1], tok) if opts else
                        torch.distributions.Categorical(logits=out.logits[0, -1].double()).entropy())
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
    model, tok = _model(family, path), AutoTokenizer.from_pretrained(path)
    inp = _hf_inputs(family, tok, torch.stack(_decode_all(clip16)), res.frames)
    with torch.no_grad():
        logits = model(**inp).logits[0, -1]
        out = model.generate(**inp, max_new_tokens=8, do_sample=False)[0, inp["input_ids"].shape[1]:].tolist()
    assert torch.equal(spy.calls[-1]["seq"].input_ids, inp["input_ids"][0])
    torch.testing.assert_close(spy.calls[-1]["logits"], logits, rtol=1e-4, atol=1e-4)
    cut = next((i for i, t in enumerate(out) if t in at.adapter.eos_token_ids), len(out))
    assert ids[0] == out[:cut] and len(ids[0]) >= 1


def test_pruned_decoding_matches_full_recomputation(family_dir, clip16, monkeypatch):
    """A run that drops units 4-7 feeds the kept columns of HF's unpruned sequence (their
    ids, time texts and 3-D positions; a dropped unit loses its whole block and its time
    text) and decodes at max(full positions) + 1 + s: checked by full recomputation
    through the language model."""
    from transformers import AutoTokenizer
    family, path = family_dir
    at = _pipeline(path, units_per_group=4, budget=12, group_layout="contiguous", force_stop_after=1,
                   max_new_tokens=10, **CLIP)
    spy, ids = Spy(at.adapter), _capture_ids(monkeypatch)
    res = at.answer(clip16, QUESTION, OPTIONS, progress=False)
    final = next(c for c in spy.calls if c["use_cache"])
    model, tok = _model(family, path), AutoTokenizer.from_pretrained(path)
    inp = _hf_inputs(family, tok, torch.stack(_decode_all(clip16)), res.frames)
    rows, cols = res.grid
    tpu = rows * cols
    unit = {f: i // 2 for i, f in enumerate(res.frames) if i % 2 == 0}
    keys = torch.tensor([unit[t["frame"]] * tpu + t["h"] * cols + t["w"] for t in res.selected_tokens])
    kept_units = set((keys // tpu).tolist())
    assert max(kept_units) < 4 and len(kept_units) >= 2
    full, cfg = inp["input_ids"][0], model.config
    vid = (inp["mm_token_type_ids"][0] == 2).nonzero().flatten()
    # unit u: its <|begin_of_image|> up to the next one (the last: up to <|end_of_video|>)
    starts = (full == cfg.image_start_token_id).nonzero().flatten().tolist()
    ends = starts[1:] + [int((full == cfg.video_end_token_id).nonzero()[0])]
    assert len(starts) == 8 and all(int(full[e - 1]) != cfg.image_end_token_id for e in ends)  # a time text each
    dropped = {c for u in range(8) if u not in kept_units for c in range(starts[u], ends[u])}
    kept_vis = set(vid[keys].tolist())
    keep = torch.tensor([c for c in range(len(full)) if c not in dropped and (c in kept_vis or c not in set(vid.tolist()))])
    with torch.no_grad():
        pos, _ = model.model.get_rope_index(inp["input_ids"], inp["mm_token_type_ids"],
                                            video_grid_thw=inp["video_grid_thw"])
        enc = model.model.get_video_features(inp["pixel_values_videos"], inp["video_grid_thw"], return_dict=True)
    vis = torch.cat(enc.pooler_output)[keys]
    nxt = int(pos.max()) + 1  # over the full sequence
    pos = pos[:, 0, keep]
    assert torch.equal(final["seq"].input_ids, full[keep])  # kept units keep their time texts
    assert torch.equal(final["seq"].positions, pos)  # and their unpruned positions
    lm, cur = model.model.language_model, full[keep]
    emb = model.get_input_embeddings()(cur)
    emb[torch.isin(keep, vid)] = vis
    want = []
    with torch.no_grad():
        for s in range(10):
            h = lm(inputs_embeds=emb[None], position_ids=pos[:, None]).last_hidden_state
            t = int(model.lm_head(h[0, -1]).argmax())
            if t in at.adapter.eos_token_ids:
                break
            want.append(t)
            emb = torch.cat([emb, model.get_input_embeddings()(torch.tensor([t]))])
            pos = torch.cat([pos, torch.full((3, 1), nxt + s)], dim=1)
    assert len(want) >= 8
    assert ids[0] == want


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


def test_geometry_at_the_default_size(tmp_path_factory):
    """308x560 frames (the default ``max_pixels``) keep their size under GLM's rule: 11x20
    tokens per 2-frame unit, as Qwen2.5-VL's; the reference layer is round(0.7 L)."""
    from transformers.models.glm4v.video_processing_glm4v import smart_resize
    ad = models.load(str(build_tiny_model(tmp_path_factory.mktemp("glm"), "glm4v")))
    size = ad.frame_size(720, 1280, 308 * 560)
    assert size == smart_resize(2, 720, 1280, 2, 28, 112 * 112, 2 * 308 * 560)
    assert ad.frame_size(308, 560, 308 * 560) == (308, 560) and ad.unit_grid(308, 560) == (11, 20)
    assert ad.default_reference_layer() == round(0.7 * ad.num_layers)

"""AdaptToken on the tiny Qwen2-VL and real sample frames (method.md steps 0-9).

References are built without the adapter's code: the chat template with the video
placeholder expanded by transformers' own ``Qwen2VLProcessor.replace_video_token``, pixel
values by the image processor's ``patchify`` on still units (``test_pipeline._hf_pixels``),
PyAV decoding, and the model's own forward and vision tower. Positions are Qwen2-VL's
trained rule written out here (:func:`_trained_positions`: Qwen's reference
``get_rope_index``, transformers 4.x, ``t_index = arange(t)``, the text after the video from
its maximum + 1); transformers 5.x's ``get_rope_index`` gives the same video positions but
starts the text after the video at ``max(h, w)`` (checked below), so ``generate`` is no
reference and greedy decoding is checked by full recomputation at explicit positions."""
import json
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from test_pipeline import (
    DUP,
    OPTIONS,
    QUESTION,
    Spy,
    _capture_ids,
    _decode_all,
    _hf_pixels,
    _letter_entropy,
    _write_video,
    greedy_by_recomputation,
)

from adapttoken_ext import AdaptToken, AdaptTokenConfig, models, stages
from adapttoken_ext.config import MC_INSTRUCTION
from adapttoken_ext.models.tiny import build_tiny_model
from adapttoken_ext.video import VideoReader, sample_video


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("qwen2_vl"), "qwen2_vl")


@pytest.fixture(scope="module")
def dup_video(tmp_path_factory):
    """As ``test_pipeline.dup_video``: 32 distinct bikes frames at 84x168, each written twice
    (every unit a still: transformers' image patchify is its reference), 25 fps."""
    with av.open(str(sample_video("bikes.mp4"))) as c:
        src = [f.to_ndarray(format="rgb24", width=168, height=84)
               for i, f in enumerate(c.decode(video=0)) if i % 7 == 0][:32]
    frames = torch.from_numpy(np.stack(src)).repeat_interleave(2, dim=0)
    return _write_video(tmp_path_factory.mktemp("dup") / "dup.mp4", frames)


def _pipeline(path, **cfg):
    return AdaptToken(models.load(str(path)), AdaptTokenConfig(**cfg))


def _model(path, **kw):
    from transformers import Qwen2VLForConditionalGeneration
    return Qwen2VLForConditionalGeneration.from_pretrained(str(path), **kw).eval()


def _hf_inputs(tok, model, frames, question=QUESTION, options=OPTIONS):
    """Unpruned inputs as Qwen2VLProcessor builds them from uint8 still-unit frames
    [T, H, W, 3]: the chat template, its one ``<|video_pad|>`` replaced by the processor's
    ``replace_video_token`` (on a stand-in holding what it reads: the processor's constructor
    wants the video processor, whose resize needs torchvision, which this machine lacks)."""
    from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
    text = question + ("\n" + "\n".join(options) + "\n" + MC_INSTRUCTION if options else "")
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    pv, grid = _hf_pixels(frames)
    proc = SimpleNamespace(video_processor=SimpleNamespace(merge_size=2), video_token="<|video_pad|>")
    repl = Qwen2VLProcessor.replace_video_token(proc, {"video_grid_thw": grid}, 0)
    assert prompt.count("<|video_pad|>") == 1
    ids = torch.tensor([tok(prompt.replace("<|video_pad|>", repl), add_special_tokens=False)["input_ids"]])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": pv,
            "video_grid_thw": grid, "mm_token_type_ids": (ids == model.config.video_token_id).int() * 2}


def _trained_positions(input_ids, video_token_id, units, rows, cols):
    """Qwen2-VL's M-RoPE ids as trained, by hand, for one video of ``units`` temporal patches
    of ``rows x cols`` merged tokens: text before it at ``0..P-1``, token (t, h, w) at
    ``(P + t, P + h, P + w)`` (one temporal position per patch, whatever the frame rate), the
    text after it from the video's maximum + 1, i.e. ``P + max(units, rows, cols)``. int64 ``[3, L]``."""
    ids = [int(i) for i in input_ids]
    P = ids.index(video_token_id)
    out = [(i, i, i) for i in range(P)]
    out += [(P + t, P + h, P + w) for t in range(units) for h in range(rows) for w in range(cols)]
    assert ids[P:len(out)] == [video_token_id] * (len(out) - P) and video_token_id not in ids[len(out):]
    start = P + max(units, rows, cols)
    out += [(start + j,) * 3 for j in range(len(ids) - len(out))]
    return torch.tensor(out).T


def _hf_positions(model, inp):
    t, h, w = inp["video_grid_thw"][0].tolist()
    m = model.config.vision_config.spatial_merge_size
    return _trained_positions(inp["input_ids"][0], model.config.video_token_id, t, h // m, w // m)


def test_positions_are_the_trained_rule(tiny_dir, dup_video):
    """The adapter's full-video positions equal the rule written out here; transformers 5.x's
    ``get_rope_index`` agrees on every video position (so ``T = P + t``, no seconds or
    tokens-per-second scaling) but starts the question at ``P + max(h, w)`` (the 5.x advance),
    not the trained ``P + units``."""
    ad = models.load(str(tiny_dir))
    assert ad.model.model.visual.__class__.__name__ == "Qwen2VisionTransformerPretrainedModel"
    with VideoReader(dup_video) as r:
        plan = stages.make_plan(ad, r.info, AdaptTokenConfig(**DUP), QUESTION, OPTIONS)
    seq = ad.sequence(plan.prompt, plan.clip(range(plan.num_units), whole_video=True), plan.grid)
    rows, cols = plan.grid
    assert (plan.num_units, rows, cols) == (32, 3, 6)
    want = _trained_positions(seq.input_ids, ad.video_token_id, 32, rows, cols)
    assert torch.equal(seq.positions, want)
    assert seq.next_position == int(want.max()) + 1
    grid = torch.tensor([[32, 2 * rows, 2 * cols]])
    hf, _ = ad.model.model.get_rope_index(seq.input_ids[None], (seq.input_ids == ad.video_token_id).int()[None] * 2,
                                          video_grid_thw=grid)
    vis = seq.input_ids == ad.video_token_id
    assert torch.equal(hf[:, 0, vis], want[:, vis])
    P, q = int(vis.nonzero()[0]), int(vis.nonzero()[-1]) + 1
    assert int(hf[0, 0, q]) == P + max(rows, cols) and int(want[0, q]) == P + 32


def test_group_pass_matches_transformers_eager(tiny_dir, dup_video):
    """The pipeline's group pass against HF's eager forward of the group as a video: ids
    equal the processor's, positions the trained rule, scores at the reference layer (rows
    after the video), logits and option / vocabulary entropies equal."""
    from transformers import AutoTokenizer
    at = _pipeline(tiny_dir, units_per_group=8, budget=40, **DUP)
    ad = at.adapter
    assert at.reference_layer == round(0.7 * ad.num_layers) == 3
    eager = _model(tiny_dir, attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    frames = _decode_all(dup_video)
    with VideoReader(dup_video) as r:
        for opts in (OPTIONS, None):
            plan = stages.make_plan(ad, r.info, at.config, QUESTION, opts)
            assert len(plan.groups) == 4
            for g in (0, 3):
                spy = Spy(ad)
                res = stages.score_group(ad, at.capture, plan, stages.encode_group(ad, r, plan, g), "max")
                ad.prefill = spy._f
                fr = torch.stack([frames[i] for i in plan.unit_frames(plan.groups[g])])
                inp = _hf_inputs(tok, eager, fr, QUESTION, opts)
                pos = _hf_positions(eager, inp)
                assert torch.equal(spy.calls[0]["seq"].input_ids, inp["input_ids"][0])
                assert torch.equal(spy.calls[0]["seq"].positions, pos)
                with torch.no_grad():
                    out = eager(**inp, position_ids=pos[:, None], output_attentions=True)
                logits = out.logits[0, -1]
                vid = (inp["input_ids"][0] == eager.config.video_token_id).nonzero().flatten()
                vs, ve = int(vid[0]), int(vid[-1]) + 1
                a = out.attentions[at.reference_layer][0, :, ve:, vs:ve].double()
                torch.testing.assert_close(res.scores.double(), a.amax(dim=(0, 1)), rtol=1e-4, atol=1e-6)
                torch.testing.assert_close(spy.calls[0]["logits"], logits, rtol=1e-4, atol=1e-4)
                want = (_letter_entropy(logits, tok) if opts else
                        torch.distributions.Categorical(logits=logits.double()).entropy())
                assert res.entropy == pytest.approx(float(want), rel=1e-4, abs=1e-6)


def _reference_embeddings(model, inp):
    """Input embeddings of the unpruned sequence with the model's own vision tower output."""
    ids = inp["input_ids"][0]
    emb = model.get_input_embeddings()(ids)
    emb[ids == model.config.video_token_id] = torch.cat(model.model.get_video_features(
        inp["pixel_values_videos"], inp["video_grid_thw"], return_dict=True).pooler_output)
    return emb


def test_keep_all_matches_transformers_forward(tiny_dir, dup_video, monkeypatch):
    """Budget = all tokens, no redundancy removal, one group: the final pass is HF's own
    unpruned forward at the trained positions (logits within 1e-4), and greedy decoding
    equals HF's forward recomputed token by token after the maximum position."""
    from transformers import AutoTokenizer
    at = _pipeline(tiny_dir, units_per_group=64, budget=10**6, redundancy_threshold=None,
                   max_new_tokens=8, **DUP)
    spy, ids = Spy(at.adapter), _capture_ids(monkeypatch)
    res = at.answer(dup_video, QUESTION, OPTIONS, progress=False)
    assert len(res.selected_tokens) == 32 * 18
    model, tok = _model(tiny_dir), AutoTokenizer.from_pretrained(str(tiny_dir))
    inp = _hf_inputs(tok, model, torch.stack(_decode_all(dup_video)))
    pos = _hf_positions(model, inp)
    with torch.no_grad():
        logits = model(**inp, position_ids=pos[:, None]).logits[0, -1]
        emb = _reference_embeddings(model, inp)
    want = greedy_by_recomputation(model, emb, pos, int(pos.max()) + 1, 8, set(at.adapter.eos_token_ids))
    assert torch.equal(spy.calls[-1]["seq"].input_ids, inp["input_ids"][0])
    assert torch.equal(spy.calls[-1]["seq"].positions, pos)
    torch.testing.assert_close(spy.calls[-1]["logits"], logits, rtol=1e-4, atol=1e-4)
    assert ids[0] == want and len(want) >= 1


def test_pruned_decoding_matches_full_recomputation(tiny_dir, dup_video, monkeypatch):
    """A run that drops the last units decodes at the trained positions: the kept columns of
    the unpruned sequence (processor ids, the model's vision tower, :func:`_trained_positions`),
    then greedy decoding by full recomputation, token s at max(full positions) + 1 + s."""
    from transformers import AutoTokenizer
    at = _pipeline(tiny_dir, units_per_group=8, budget=60, group_layout="contiguous",
                   force_stop_after=2, max_new_tokens=10, **DUP)
    spy, ids = Spy(at.adapter), _capture_ids(monkeypatch)
    res = at.answer(dup_video, QUESTION, OPTIONS, progress=False)
    model, tok = _model(tiny_dir), AutoTokenizer.from_pretrained(str(tiny_dir))
    inp = _hf_inputs(tok, model, torch.stack(_decode_all(dup_video)))
    rows, cols = res.grid
    unit = {f: i // 2 for i, f in enumerate(res.frames) if i % 2 == 0}
    keys = torch.tensor([unit[t["frame"]] * rows * cols + t["h"] * cols + t["w"] for t in res.selected_tokens])
    assert int(keys.max()) // (rows * cols) < 16  # units 16..31 (groups 2, 3) are all dropped
    full = inp["input_ids"][0]
    vid = (full == model.config.video_token_id).nonzero().flatten()
    pos = _hf_positions(model, inp)
    with torch.no_grad():
        emb = _reference_embeddings(model, inp)
    kept = torch.cat([torch.arange(int(vid[0])), vid[keys], torch.arange(int(vid[-1]) + 1, len(full))])
    final = next(c for c in spy.calls if c["use_cache"])
    assert torch.equal(final["seq"].input_ids, full[kept])
    assert torch.equal(final["seq"].positions, pos[:, kept])  # gathered, not recomputed
    want = greedy_by_recomputation(model, emb[kept], pos[:, kept], int(pos.max()) + 1, 10,
                                   set(at.adapter.eos_token_ids))
    assert len(want) >= 8
    assert ids[0] == want


def test_cli_answer_writes_json(tiny_dir, tmp_path, capsys):
    from adapttoken_ext.cli import main
    out = tmp_path / "r.json"
    rc = main(["answer", "--video", str(sample_video("bikes.mp4")), "--question", QUESTION,
               "--options", *OPTIONS, "--model", str(tiny_dir), "--frames", "32", "--budget", "20",
               "--units-per-group", "4", "--max-pixels", str(112 * 224), "--json", str(out), "--quiet"])
    assert rc == 0 and "answer:" in capsys.readouterr().out
    d = json.loads(out.read_text())
    assert d["model"] == str(tiny_dir) and len(d["groups"]) == 4
    assert sum(g["budget"] for g in d["groups"]) == 20 == len(d["selected_tokens"])
    assert all({"frame", "time_s", "h", "w", "score"} <= set(t) for t in d["selected_tokens"])


def test_tiny_model_id_picks_its_family():
    from adapttoken_ext.models.qwen2_vl import Qwen2VLAdapter
    at = AdaptToken.from_pretrained("adapttoken/tiny-qwen2_vl")
    assert type(at.adapter) is Qwen2VLAdapter and at.tiny and at.name == "adapttoken/tiny-qwen2_vl"

"""EntropySelect in the pipeline: the --method entropyselect mode and the local_entropy /
fused scorers, on the tiny Qwen2.5-VL and bikes.mp4. References: EntropySelect applied
directly to the whole video's vision tokens (one vision-tower call over every unit, not
the per-group scan under test), and the final pass's own inputs."""
import json

import pytest
import torch

from adapttoken_ext import AdaptToken, AdaptTokenConfig, stages
from adapttoken_ext.models.qwen2_5_vl import Qwen2_5_VLAdapter
from adapttoken_ext.models.tiny import build_tiny_model
from adapttoken_ext.video import VideoReader, sample_video

QUESTION = "What are the people doing?"
OPTIONS = ["A. Riding bikes", "B. Cooking", "C. Chess", "D. Swimming"]
SMALL = dict(frames=64, max_pixels=112 * 224, units_per_group=8, budget=40)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def bikes():
    return str(sample_video("bikes.mp4"))


def whole_video(at, video, cfg):
    """Frames of the plan, every unit's tokens from one vision-tower call, and
    EntropySelect's fused scores over all units: [units, rows, cols]."""
    with VideoReader(video) as r:
        plan = stages.make_plan(at.adapter, r.info, cfg, QUESTION, OPTIONS)
        frames = r.get_frames(plan.frames, *plan.size)
    emb = at.adapter.encode(frames).embeds
    tokens = emb.view(plan.num_units, *plan.grid, -1)
    return plan, emb, cfg.entropy_select().scores(tokens, frames)


class FinalInputs:
    """Records the visual embeddings of the last prefill (the final pass)."""

    def __init__(self, adapter):
        self.visual, self._f = None, adapter.prefill
        adapter.prefill = self

    def __call__(self, seq, visual, use_cache=False):
        self.visual = visual.embeds
        return self._f(seq, visual, use_cache)


def test_entropyselect_mode_matches_direct_selection(tiny_dir, bikes):
    cfg = AdaptTokenConfig(**SMALL)
    at = AdaptToken(Qwen2_5_VLAdapter.from_pretrained(str(tiny_dir)), cfg)
    plan, emb, scores = whole_video(at, bikes, cfg)
    want = cfg.entropy_select()
    budgets = want.frame_budgets(scores)
    keys = want.select(scores, budgets)
    spy = FinalInputs(at.adapter)
    res = at.answer(bikes, QUESTION, OPTIONS, progress=False, method="entropyselect")
    tpu, cols = plan.tokens_per_unit, plan.grid[1]
    got = [(t["frame"], t["h"], t["w"]) for t in res.selected_tokens]
    assert got == [(plan.frames[k // tpu * plan.unit], k % tpu // cols, k % cols) for k in keys.tolist()]
    torch.testing.assert_close(torch.tensor([t["score"] for t in res.selected_tokens]),
                               scores.flatten()[keys], rtol=0, atol=1e-5)
    torch.testing.assert_close(spy.visual.float(), emb[keys].float(), rtol=1e-4, atol=1e-4)
    assert res.method == "entropyselect" and len(res.selected_tokens) == cfg.budget
    assert [g.budget for g in res.groups] == [int(budgets[u].sum()) for u in plan.groups]
    assert all(g.entropy is None for g in res.groups)
    assert res.timings_s["group_prefill"] == 0 and res.timings_s["vision_encoder"] > 0
    with pytest.raises(ValueError, match="method"):
        at.answer(bikes, QUESTION, method="nonesuch")


@pytest.mark.parametrize("scorer", ["local_entropy", "fused"])
def test_scorers_rank_inside_groups(tiny_dir, bikes, scorer):
    """local_entropy: each group keeps its top B_g by EntropySelect's score; fused: the
    group pass's attention score over its maximum, times that score."""
    cfg = AdaptTokenConfig(**SMALL, scorer=scorer, redundancy_threshold=None)
    at = AdaptToken(Qwen2_5_VLAdapter.from_pretrained(str(tiny_dir)), cfg)
    plan, _, scores = whole_video(at, bikes, cfg)
    tpu, cols = plan.tokens_per_unit, plan.grid[1]
    if scorer == "fused":
        with VideoReader(bikes) as r:
            enc = stages.encode_group(at.adapter, r, plan, 0, scorer=cfg.entropy_select())
        att = stages.score_group(at.adapter, at.capture, plan, enc).scores
        fused = stages.score_group(at.adapter, at.capture, plan, enc, scorer="fused").scores
        local = scores[plan.groups[0]].flatten()
        torch.testing.assert_close(enc.local, local, rtol=0, atol=1e-5)
        torch.testing.assert_close(fused, att / att.max() * enc.local, rtol=1e-6, atol=0)
        return
    res = at.answer(bikes, QUESTION, OPTIONS, progress=False)
    by_frame = {f: i // plan.unit for i, f in enumerate(plan.frames) if i % plan.unit == 0}
    kept = {by_frame[t["frame"]] * tpu + t["h"] * cols + t["w"] for t in res.selected_tokens}
    for g, units in zip(res.groups, plan.groups):
        s = scores[units].flatten()
        group_keys = (torch.tensor(units)[:, None] * tpu + torch.arange(tpu)).flatten()
        top = group_keys[sorted(range(s.numel()), key=lambda i: (-float(s[i]), i))[: g.budget]]
        assert {k for k in kept if k // tpu in units} == set(top.tolist())
    assert sum(g.budget for g in res.groups) == cfg.budget


def test_cli_entropyselect_writes_the_json_contract(tiny_dir, bikes, tmp_path, capsys):
    from adapttoken_ext.cli import main
    out = tmp_path / "es.json"
    rc = main(["answer", "--video", bikes, "--question", QUESTION, "--options", *OPTIONS,
               "--model", str(tiny_dir), "--frames", "32", "--budget", "20", "--units-per-group", "4",
               "--max-pixels", str(112 * 224), "--method", "entropyselect", "--json", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0 and "answer:" in text
    d = json.loads(out.read_text())
    for key in ("answer", "model", "frames", "timestamps_s", "groups", "budget", "selected_tokens",
                "stopped_after_group", "timings_s", "peak_memory_bytes", "method"):
        assert key in d
    assert d["method"] == "entropyselect" and len(d["groups"]) == 4
    assert sum(g["budget"] for g in d["groups"]) == 20 == len(d["selected_tokens"])
    assert set(d["selected_tokens"][0]) == {"frame", "time_s", "h", "w", "score"}
    assert set(d["timings_s"]) >= {"decode", "vision_encoder", "scoring", "selection",
                                   "final_prefill", "generate", "total"}


def test_config_errors():
    with pytest.raises(ValueError, match="scorer"):
        AdaptTokenConfig(scorer="clip").validate()
    with pytest.raises(ValueError, match="es_window"):
        AdaptTokenConfig(es_window=4).validate()
    with pytest.raises(ValueError, match="es_alpha"):
        AdaptTokenConfig(es_alpha=2.0).validate()
    with pytest.raises(ValueError, match="es_temperature"):
        AdaptTokenConfig(es_temperature=0.0).validate()
    with pytest.raises(ValueError, match="es_grid"):
        AdaptTokenConfig(es_grid=0).validate()


@pytest.mark.parametrize("cfg", [dict(lite=True), dict(force_stop_after=1), dict(scorer="fused")])
def test_entropyselect_refuses_group_pass_settings(tiny_dir, bikes, cfg):
    """Settings of the group passes, which EntropySelect does not run, are refused, not ignored."""
    at = AdaptToken(Qwen2_5_VLAdapter.from_pretrained(str(tiny_dir)), AdaptTokenConfig(**SMALL, **cfg))
    with pytest.raises(ValueError, match="method: 'entropyselect' has no group passes"):
        at.answer(bikes, QUESTION, OPTIONS, progress=False, method="entropyselect")

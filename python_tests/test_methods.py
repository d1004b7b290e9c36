"""The selection methods at a matched budget (README "Baselines", issue 23 section 1).

References do not share the code under test: expected unit sets and budget shares are
written out here (exact fractions), and uniform's final pass is checked against
transformers' own forward on the full video's inputs (the processor's rules, the model's
vision tower, Qwen2.5-VL's trained positions; helpers of ``test_pipeline``), pruned here."""
import json
import math
from fractions import Fraction

import pytest
import torch
from test_pipeline import (DUP, OPTIONS, QUESTION, Spy, _decode_all, _hf_inputs, _hf_positions, _pipeline,
                           make_dup_video)

from adapttoken_ext import cli
from adapttoken_ext.models.tiny import build_tiny_model
from adapttoken_ext.video import sample_video

SMALL = {"frames": 64, "max_pixels": 112 * 224, "units_per_group": 8}  # bikes: 32 units of 3 x 8 tokens
TPU = 24


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def bikes():
    return str(sample_video("bikes.mp4"))


@pytest.fixture(scope="module")
def dup_video(tmp_path_factory, bikes):
    return make_dup_video(tmp_path_factory.mktemp("dup"), bikes)


class EncodeSpy:
    """Counts the frames given to ``adapter.encode`` (the vision tower)."""

    def __init__(self, adapter):
        self.frames, self._f = 0, adapter.encode
        adapter.encode = self

    def __call__(self, frames):
        self.frames += frames.shape[0]
        return self._f(frames)


def _units(res):
    """Kept (frame, h, w) grouped by frame: {first frame of the unit: set of (h, w)}."""
    out = {}
    for t in res.selected_tokens:
        out.setdefault(t["frame"], set()).add((t["h"], t["w"]))
    return out


def _keys(res):
    frames = res.frames
    return [(frames.index(t["frame"]) // 2, t["h"], t["w"]) for t in res.selected_tokens]


def test_uniform_keeps_whole_evenly_spaced_units_and_runs_no_group_pass(tiny_dir, bikes):
    at = _pipeline(tiny_dir, budget=5 * TPU + 7, **SMALL)  # not a multiple: 5 whole units
    spy, enc = Spy(at.adapter), EncodeSpy(at.adapter)
    res = at.answer(bikes, QUESTION, OPTIONS, progress=False, method="uniform")
    kept = _units(res)
    n, U = 5, 32
    want = [math.floor(Fraction(2 * i + 1, 2 * n) * U) for i in range(n)]  # centres of n equal spans
    assert sorted(kept) == [res.frames[2 * u] for u in want]
    assert all(v == {(h, w) for h in range(3) for w in range(8)} for v in kept.values())
    assert len(res.selected_tokens) == n * TPU <= at.config.budget
    assert len(spy.calls) == 1 and spy.calls[0]["use_cache"]  # the final pass only
    assert enc.frames == 2 * n  # only the kept units were decoded and encoded
    assert res.timings_s["group_prefill"] == 0 and res.method == "uniform"
    assert sum(g.selected for g in res.groups) == n * TPU


def test_uniform_and_random_keep_every_token_of_a_short_video(tiny_dir, bikes):
    at = _pipeline(tiny_dir, budget=10**6, **SMALL)
    for m in ("uniform", "random"):
        assert len(at.answer(bikes, QUESTION, OPTIONS, progress=False, method=m).selected_tokens) == 32 * TPU


def test_uniform_below_one_unit_names_budget(tiny_dir, bikes):
    with pytest.raises(ValueError, match="budget"):
        _pipeline(tiny_dir, budget=TPU - 1, **SMALL).answer(bikes, QUESTION, OPTIONS, progress=False,
                                                            method="uniform")


def test_random_keeps_exactly_b_reproducibly_by_seed(tiny_dir, bikes):
    def run(seed):
        at = _pipeline(tiny_dir, budget=50, seed=seed, **SMALL)
        spy, enc = Spy(at.adapter), EncodeSpy(at.adapter)
        res = at.answer(bikes, QUESTION, OPTIONS, progress=False, method="random")
        assert len(spy.calls) == 1
        assert enc.frames == 2 * len({k[0] for k in _keys(res)})  # only units holding a draw
        return _keys(res)
    a, b, c = run(0), run(0), run(1)
    assert len(a) == len(set(a)) == 50 and a == sorted(a)
    assert a == b and a != c
    assert len({k[0] for k in a}) > 10  # spread over the video, not one block


def test_flexselect_gives_equal_capped_group_budgets(tiny_dir, bikes):
    # 60 frames: 30 units in 4 interleaved groups of 8, 8, 7, 7 units (192, 192, 168, 168 tokens)
    cfg = dict(SMALL, frames=60, redundancy_threshold=None)
    for budget, want in ((90, [23, 23, 22, 22]), (700, [182, 182, 168, 168])):
        flex = _pipeline(tiny_dir, budget=budget, **cfg).answer(bikes, QUESTION, OPTIONS, progress=False,
                                                                method="flexselect")
        assert [g.budget for g in flex.groups] == want  # B/G, largest remainder, cap re-spread
        assert [g.selected for g in flex.groups] == want and len(flex.selected_tokens) == budget
        assert all(g.entropy is not None for g in flex.groups)  # the group passes still run
        assert flex.reencodes == 0  # the candidates held were bounded by the equal shares
        ada = _pipeline(tiny_dir, budget=budget, **cfg).answer(bikes, QUESTION, OPTIONS, progress=False)
        assert [g.entropy for g in ada.groups] == pytest.approx([g.entropy for g in flex.groups])
    assert [g.budget for g in ada.groups] != want  # the random model's entropies differ: AdaptToken weighs them


def test_flexselect_ranks_by_attention_like_adapttoken(tiny_dir, bikes):
    """Same budgets (one group) and no step 7: the same top tokens with the same scores."""
    cfg = dict(SMALL, units_per_group=64, budget=60, redundancy_threshold=None)
    a = _pipeline(tiny_dir, **cfg).answer(bikes, QUESTION, OPTIONS, progress=False)
    f = _pipeline(tiny_dir, **cfg).answer(bikes, QUESTION, OPTIONS, progress=False, method="flexselect")
    assert a.selected_tokens == f.selected_tokens and a.answer == f.answer


def test_uniform_final_pass_matches_transformers_on_its_units(tiny_dir, dup_video):
    """The final pass of ``uniform`` is transformers' forward over the prompt, the kept units'
    visual tokens and the question, at the full video's trained positions."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    at = _pipeline(tiny_dir, units_per_group=8, budget=4 * 18, **DUP)
    spy = Spy(at.adapter)
    res = at.answer(dup_video, QUESTION, OPTIONS, progress=False, method="uniform")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tiny_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    inp = _hf_inputs(tok, model, torch.stack(_decode_all(dup_video)), 2 / 25)
    pos = _hf_positions(model, inp, 2 / 25)
    ids = inp["input_ids"][0]
    vid = ids == model.config.video_token_id
    with torch.no_grad():
        emb = model.get_input_embeddings()(ids)
        emb[vid] = torch.cat(model.model.get_video_features(
            inp["pixel_values_videos"], inp["video_grid_thw"], return_dict=True).pooler_output)
        units = [8 * i + 4 for i in range(4)]  # centres of 4 spans of 8 units
        unit_of = torch.full_like(ids, -1)
        unit_of[vid] = torch.arange(int(vid.sum())) // 18
        keep = ~vid | torch.isin(unit_of, torch.tensor(units))
        logits = model(inputs_embeds=emb[keep][None], position_ids=pos[:, keep][:, None],
                       attention_mask=torch.ones(1, int(keep.sum()), dtype=torch.long)).logits[0, -1]
    assert sorted({t["frame"] // 2 for t in res.selected_tokens}) == units
    assert torch.equal(spy.calls[-1]["seq"].positions, pos[:, keep])
    torch.testing.assert_close(spy.calls[-1]["logits"], logits, rtol=1e-4, atol=1e-4)


def test_unknown_method_names_method(tiny_dir, bikes):
    at = _pipeline(tiny_dir, budget=40, **SMALL)
    for call in (lambda: at.answer(bikes, QUESTION, method="nonesuch"),
                 lambda: at.answer_many(bikes, [QUESTION], method="nonesuch")):
        with pytest.raises(ValueError, match="method"):
            call()


@pytest.mark.parametrize("method", ["uniform", "random", "flexselect"])
def test_methods_refuse_lite(tiny_dir, bikes, method):
    with pytest.raises(ValueError, match="method"):
        _pipeline(tiny_dir, budget=48, lite=True, **SMALL).answer(bikes, QUESTION, method=method)


def test_answer_many_takes_a_method(tiny_dir, bikes):
    at = _pipeline(tiny_dir, budget=48, **SMALL)
    one = at.answer(bikes, QUESTION, OPTIONS, progress=False, method="uniform")
    many = at.answer_many(bikes, [(QUESTION, OPTIONS)], progress=False, method="uniform")[0]
    assert many.method == "uniform" and many.selected_tokens == one.selected_tokens
    assert many.answer == one.answer


def test_cli_method_uniform_writes_the_json(tiny_dir, bikes, tmp_path, capsys):
    out = tmp_path / "u.json"
    rc = cli.main(["answer", "--model", str(tiny_dir), "--video", bikes, "--question", QUESTION,
                   "--options", *OPTIONS, "--frames", "64", "--budget", "50", "--units-per-group", "8",
                   "--max-pixels", str(112 * 224), "--method", "uniform", "--json", str(out), "--quiet"])
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["method"] == "uniform" and len(d["selected_tokens"]) == 2 * TPU
    assert "uniform keeps every token" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["answer", "--video", bikes, "--question", "q", "--method", "nonesuch"])
    assert "--method" in capsys.readouterr().err


def test_flexselect_ignores_very_different_entropies(tiny_dir, bikes, monkeypatch):
    """Group entropies forced far apart (0.01 to ln 4): AdaptToken's budgets follow them,
    FlexSelect's stay B/G, and its candidates were held for those equal shares (no re-encode)."""
    from adapttoken_ext import stages
    forced = iter([0.01, 1.38, 0.7, 1.2] * 2)
    monkeypatch.setattr(stages, "answer_entropy", lambda logits, ids: torch.tensor(next(forced)))
    cfg = dict(SMALL, budget=90, redundancy_threshold=None, temperature=0.1)
    flex = _pipeline(tiny_dir, **cfg).answer(bikes, QUESTION, OPTIONS, progress=False, method="flexselect")
    ada = _pipeline(tiny_dir, **cfg).answer(bikes, QUESTION, OPTIONS, progress=False)
    assert [g.entropy for g in flex.groups] == pytest.approx([0.01, 1.38, 0.7, 1.2])
    assert [g.budget for g in flex.groups] == [23, 23, 22, 22] and flex.reencodes == 0
    assert ada.groups[0].budget > 60  # the confident group takes most of AdaptToken's budget


def test_lmms_eval_model_args_take_a_method(tiny_dir):
    pytest.importorskip("lmms_eval")
    from adapttoken_ext.integrations.lmms_eval import AdaptTokenLMMS
    with pytest.raises(ValueError, match="method"):
        AdaptTokenLMMS(pretrained=str(tiny_dir), method="nonesuch")
    with pytest.raises(ValueError, match="method"):
        AdaptTokenLMMS(pretrained=str(tiny_dir), method="uniform", lite=True)
    assert AdaptTokenLMMS(pretrained=str(tiny_dir), method="random", seed=3).method == "random"

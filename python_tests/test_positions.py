"""Position ids as the models were trained (method.md "Positions", steps 2 and 9).

References: Qwen2.5-VL's trained M-RoPE rule written out by hand here
(``test_pipeline._trained_positions``: Qwen's reference ``get_rope_index``, transformers
4.x, vLLM), not transformers 5.x's ``get_rope_index``; and real checkpoints' config values,
typed below from their public ``config.json`` files (no download): the planned positions at
4096 frames of an hour-long video are computed without running any model.
"""
import math

import pytest
import torch
from test_pipeline import _trained_positions

from adapttoken_ext import AdaptTokenConfig, stages
from adapttoken_ext.models import adapter_class, mrope
from adapttoken_ext.models.tiny import build_tiny_model
from adapttoken_ext.video import VideoInfo

OPTIONS = ["A. a", "B. b", "C. c", "D. d"]
HOUR = VideoInfo(num_frames=3600 * 25, fps=25.0, width=1280, height=720)  # 1 h of 720p

# public config.json values of the checkpoints the paper runs (text max_position_embeddings,
# and the vision values that set the token grid and the temporal positions)
REAL = {
    "qwen2_5_vl": ("Qwen/Qwen2.5-VL-7B-Instruct", 128000,
                   {"tokens_per_second": 2, "patch_size": 14, "spatial_merge_size": 2}, {}),
    "qwen3_vl": ("Qwen/Qwen3-VL-8B-Instruct", 262144, {"patch_size": 16, "spatial_merge_size": 2}, {}),
    "internvl": ("OpenGVLab/InternVL3-8B-hf", 32768, {"image_size": [448, 448], "patch_size": [14, 14]},
                 {"downsample_ratio": 0.5, "image_seq_length": 256}),
    "llava_onevision": ("llava-hf/llava-onevision-qwen2-7b-ov-hf", 32768,
                        {"image_size": 384, "patch_size": 14}, {}),
}


# ---- the Qwen2/2.5-VL rule ----------------------------------------------------------------

@pytest.mark.parametrize("P, units, rows, cols, S, spu, tps", [
    (5, 1, 2, 3, 4, 2.0, 2),       # one temporal patch
    (7, 8, 2, 3, 40, 2.0, 2),      # 8 units 2 s apart: the question after T = 7 + 28
    (3, 8, 6, 7, 9, 0.08, 2),      # short clip: max(h, w) ends the video, not T
    (11, 13, 4, 5, 6, 0.32, 2),
    (2, 9, 3, 3, 5, 1 / 3, 25),    # Qwen2.5-VL's processor default tokens_per_second
    (4, 17, 1, 2, 3, 0.7, 4),      # floor of 0.7 * 4 * t: 2, 5, 8, 11, ...
    (20, 2048, 2, 3, 50, 3600 * 2 / 4096, 2),  # 4096 frames of an hour: T reaches 20 + 7197
])
def test_qwen2_vl_positions_match_the_trained_rule(P, units, rows, cols, S, spu, tps):
    n = units * rows * cols
    ids = torch.tensor([1] * P + [9] * n + [2] * S)
    want = _trained_positions(ids, 9, units, rows, cols, spu, tps)
    pos, nxt = mrope.qwen2_vl_positions(P, units, rows, cols, S, spu, tps)
    assert torch.equal(pos, want)
    video_max = max(P + math.floor((units - 1) * spu * tps), P + rows - 1, P + cols - 1)
    assert pos[:, P + n].tolist() == [video_max + 1] * 3  # the question starts at max(video) + 1
    assert nxt == video_max + 1 + S == int(pos[0, -1]) + 1  # the first generated token after it


def test_temporal_offsets_floor_the_exact_product_and_name_bad_values():
    assert mrope.temporal_offsets(6, 0.5, 3) == [0, 1, 3, 4, 6, 7]  # 1.5 t floored
    assert mrope.temporal_offsets(3, 0.1, 10) == [0, 1, 2]  # 0.1 is a hair above 1/10
    for args, name in (((3, -1.0, 2), "second_per_grid_t"), ((3, 1.0, float("nan")), "tokens_per_second")):
        with pytest.raises(ValueError, match=name):
            mrope.temporal_offsets(*args)


# ---- every family at 4096 frames, with real checkpoints' values ------------------------------

@pytest.fixture(scope="module")
def real_like(tmp_path_factory):
    """Per family: the tiny model's adapter with the real checkpoint's position and grid
    values in its config (nothing runs the model)."""
    out = {}
    for family, (_, max_pos, vision, top) in REAL.items():
        cls = adapter_class(family)
        ad = cls.from_pretrained(str(build_tiny_model(tmp_path_factory.mktemp(family), family)))
        ad.model.config.get_text_config().max_position_embeddings = max_pos
        for k, v in vision.items():
            setattr(ad.model.config.vision_config, k, v)
        for k, v in top.items():
            setattr(ad.model.config, k, v)
        out[family] = cls(ad.model, ad.tokenizer)
    return out


def _worst_keep(full, budget: int) -> torch.Tensor:
    """``budget`` visual keys that make the longest pruned sequence: one token in each of the
    units with the most text (a unit's columns that are not visual tokens), the rest from
    the start."""
    vis = full.visual_key >= 0
    unit, keys = full.unit[vis], full.visual_key[vis]
    text = torch.bincount(full.unit[~vis & (full.unit >= 0)], minlength=int(unit.max()) + 1)
    units, counts = torch.unique_consecutive(unit, return_counts=True)
    first = keys[(torch.cumsum(counts, 0) - counts)[torch.argsort(text[units], descending=True, stable=True)]]
    first = first[:budget]
    rest = keys[~torch.isin(keys, first)][: budget - first.numel()]
    return torch.cat([first, rest]).sort().values


@pytest.mark.parametrize("family, budget", [("qwen2_5_vl", 7040), ("qwen3_vl", 7040),
                                            ("llava_onevision", 7040), ("internvl", 2048)])
def test_final_positions_stay_inside_the_context_at_4096_frames(real_like, family, budget):
    """The default 4096 frames of an hour-long video: the plan passes its position check,
    and the longest final sequence the budget allows (every kept token in a unit of its own)
    plus the generated tokens stays below max_position_embeddings."""
    ad, limit = real_like[family], REAL[family][1]
    plan = stages.make_plan(ad, HOUR, AdaptTokenConfig(budget=budget), "What happens?", OPTIONS)
    assert len(plan.frames) == 4096
    full = ad.sequence(plan.prompt, plan.clip(range(plan.num_units), whole_video=True), plan.grid)
    final = full.prune(_worst_keep(full, budget))
    last = final.next_position + plan.max_new_tokens - 1
    assert int(final.positions.max()) < final.next_position <= last < limit
    if family == "qwen2_5_vl":  # the question after the video's last temporal position, ~7,200
        P, vis = len(plan.prompt.prefix), full.visual_columns
        q = int(vis[-1]) + 1
        assert int(full.positions[0, q]) == int(full.positions[:, P:q].max()) + 1 > 7000
    if full.compact:  # 1-D RoPE: compact 0..len-1, where the full video would reach ~1M
        assert torch.equal(final.positions[0], torch.arange(len(final))) and len(full) > 8 * 10**5


def test_internvl_default_budget_at_4096_frames_is_an_error(real_like):
    """InternVL writes ``Frame{i}: <img>...</img>`` around every kept frame: 7040 tokens
    spread over 4096 frames cannot fit in 32,768 positions. A clear error, before any model
    work, naming what to change."""
    with pytest.raises(ValueError, match=r"frames/budget: .*4096 frames and budget 7040.*32768"):
        stages.make_plan(real_like["internvl"], HOUR, AdaptTokenConfig(), "What happens?", OPTIONS)


def test_position_check_is_exact(real_like):
    """The check's boundary: a limit one past the last final position passes, the last
    position itself is an error (Qwen2.5-VL: the full maximum + max_new_tokens, by the
    trained rule; InternVL: the longest pruning's length - 1 + max_new_tokens)."""
    info = VideoInfo(num_frames=64, fps=25.0, width=168, height=84)
    cfg = AdaptTokenConfig(frames=64, max_pixels=112 * 224, units_per_group=8, budget=40, max_new_tokens=5)
    ad = real_like["qwen2_5_vl"]
    plan = stages.make_plan(ad, info, cfg, "What happens?", OPTIONS)
    U, (rows, cols) = plan.num_units, plan.grid
    ids = torch.tensor(plan.prompt.prefix + [ad.video_token_id] * (U * rows * cols) + plan.prompt.suffix)
    by_hand = _trained_positions(ids, ad.video_token_id, U, rows, cols, plan.seconds_per_unit,
                                 ad.model.config.vision_config.tokens_per_second)
    last = int(by_hand.max()) + 5  # generated tokens 0..4 after the maximum
    internvl = real_like["internvl"]
    iplan = stages.make_plan(internvl, info, cfg, "What happens?", OPTIONS)
    full = internvl.sequence(iplan.prompt, iplan.clip(range(iplan.num_units), whole_video=True), iplan.grid)
    ilast = len(full.prune(_worst_keep(full, 40))) - 1 + 5
    for a, lst in ((ad, last), (internvl, ilast)):
        text = a.model.config.get_text_config()
        keep = text.max_position_embeddings
        try:
            text.max_position_embeddings = lst + 1
            stages.make_plan(a, info, cfg, "What happens?", OPTIONS)
            text.max_position_embeddings = lst
            with pytest.raises(ValueError, match=f"frames/budget: .*reach position {lst} .*embeddings {lst}"):
                stages.make_plan(a, info, cfg, "What happens?", OPTIONS)
        finally:
            text.max_position_embeddings = keep

"""Random baseline (README "Baselines"): ``min(B, N)`` of the video's ``N`` visual tokens
drawn uniformly without replacement, seeded by ``cfg.seed`` (the same seed, video and
settings keep the same tokens). Only the units holding a drawn token are encoded; no
language-model work before the final pass (method.md step 9)."""
from __future__ import annotations

import torch

from . import Context, Selection, encode_keys, no_group_passes


def check(cfg) -> None:
    """Raises ValueError naming ``method`` for Lite, ``force_stop_after`` or ``scorer``."""
    no_group_passes(cfg, "random")


def select(ctx: Context) -> Selection:
    """Draw the tokens (``torch.randperm`` on a generator seeded with ``cfg.seed``), then
    encode their units."""
    n = ctx.plan.num_units * ctx.plan.tokens_per_unit
    with ctx.timer("selection"):
        gen = torch.Generator().manual_seed(ctx.cfg.seed)
        keys = torch.randperm(n, generator=gen)[: ctx.cfg.budget].sort().values
    return encode_keys(ctx, keys)

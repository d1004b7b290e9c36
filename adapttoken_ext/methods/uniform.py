"""The plain model's baseline (README "Baselines", the paper's baseline row): every token of
``n = min(floor(B / tokens_per_unit), units)`` units evenly spaced in time; no group pass and
no language-model work before the final pass (method.md step 9).

Whole units only, so it keeps ``n * tokens_per_unit`` tokens: exactly ``B`` when ``B`` is a
multiple of ``tokens_per_unit`` (the matched budgets of the benchmark are), otherwise up to
``tokens_per_unit - 1`` fewer; every token when the video has fewer than ``B``."""
from __future__ import annotations

import torch

from . import Context, Selection, encode_keys, no_group_passes


def check(cfg) -> None:
    """Raises ValueError naming ``method`` for Lite, ``force_stop_after`` or ``scorer``."""
    no_group_passes(cfg, "uniform")


def units(num_units: int, n: int) -> list[int]:
    """``n`` of ``num_units`` units evenly spaced: the one at the centre of each of ``n``
    equal spans, ``floor((2i + 1) * num_units / (2n))``."""
    return [(2 * i + 1) * num_units // (2 * n) for i in range(n)]


def select(ctx: Context) -> Selection:
    """Encode and keep the units of :func:`units` (module docstring).

    Raises:
        ValueError: naming ``budget`` when it is below one unit's tokens.
    """
    plan, tpu = ctx.plan, ctx.plan.tokens_per_unit
    n = min(ctx.cfg.budget // tpu, plan.num_units)
    if n == 0:
        raise ValueError(f"budget: method 'uniform' keeps whole units, and {ctx.cfg.budget} is "
                         f"less than one unit's {tpu} tokens")
    u = torch.tensor(units(plan.num_units, n))
    keys = (u[:, None] * tpu + torch.arange(tpu)).flatten()
    return encode_keys(ctx, keys)

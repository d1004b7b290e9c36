"""AdaptToken (method.md steps 1-8, the default method): group passes, entropy-weighted
budgets, per-group attention top-k, redundancy removal; ``cfg.lite`` for AdaptToken-Lite."""
from __future__ import annotations

from .. import stages
from . import Context, Selection


def check(cfg) -> None:
    """Every AdaptToken setting applies."""


def select(ctx: Context, entropy_weighted: bool = True) -> Selection:
    """Steps 2-4 and 8 (:func:`stages.scan_groups`), then 5-7
    (:func:`stages.allocate_and_select`). ``entropy_weighted=False`` gives every group
    the same weight in step 5 (FlexSelect's rule, ``methods.flexselect``). A refill's
    re-encoding counts as decode and vision time, not selection."""
    cfg, timer = ctx.cfg, ctx.timer
    records, cands, stopped = stages.scan_groups(ctx.adapter, ctx.capture, ctx.reader, ctx.plan, cfg,
                                                 timer, ctx.progress, ctx.encode, entropy_weighted)

    def encode(g):
        return ctx.encode(g) if ctx.encode else stages.encode_group(ctx.adapter, ctx.reader, ctx.plan, g, timer)
    before = timer.t["decode"] + timer.t["vision_encoder"]
    with timer("selection"):
        keys, scores, visual = stages.allocate_and_select(ctx.plan, cfg, records, cands, encode,
                                                          entropy_weighted)
    timer.t["selection"] -= timer.t["decode"] + timer.t["vision_encoder"] - before
    return Selection(records, keys, scores, visual, stopped, cands[0].counter.peak,
                     sum(c.reencodes for c in cands))

"""EntropySelect alone as a baseline (README "EntropySelect"): the vision tower over every
group (no language model), a global question-agnostic selection of ``cfg.budget`` tokens
(:class:`adapttoken_ext.entropyselect.EntropySelect`: per-unit budgets, grid quotas, one
sort), then the shared final pass (method.md step 9)."""
from __future__ import annotations

import torch

from ..models.base import Visual
from ..stages import GroupRecord, encode_group, progress_bar
from . import Context, Selection, no_group_passes


def check(cfg) -> None:
    """Raises ValueError naming ``method`` for Lite, ``force_stop_after`` or ``scorer``."""
    no_group_passes(cfg, "entropyselect")


def select(ctx: Context) -> Selection:
    """Score every group's tokens, then select globally. Every token's embedding is held on
    the host until the selection (``N x hidden``, in the model's dtype); the records'
    ``entropy`` is None, ``budget`` and ``selected`` their units' budgets and kept tokens,
    and the scores are the fused EntropySelect scores."""
    adapter, reader, plan, timer = ctx.adapter, ctx.reader, ctx.plan, ctx.timer
    es, tpu = ctx.cfg.entropy_select(), plan.tokens_per_unit
    reader.plan(plan.frames, *plan.size)  # every group is decoded, cached encodings or not
    scores = torch.empty(plan.num_units, *plan.grid)
    parts, rows_of = [], []
    for g in progress_bar(range(len(plan.groups)), ctx.progress, desc="groups"):
        enc = encode_group(adapter, reader, plan, g, timer, es)
        scores[enc.units] = enc.local.view(len(enc.units), *plan.grid)
        parts.append(Visual(enc.visual.embeds.cpu(), {k: v.cpu() for k, v in enc.visual.side.items()}))
        rows_of.append((torch.tensor(enc.units)[:, None] * tpu + torch.arange(tpu)).flatten())
    with timer("selection"):
        budgets = es.frame_budgets(scores)
        keys = es.select(scores, budgets)
        part = torch.empty(plan.num_units * tpu, dtype=torch.int64)  # key -> (group, row)
        row = torch.empty_like(part)
        for i, r in enumerate(rows_of):
            part[r], row[r] = i, torch.arange(r.numel())
        by_part = torch.argsort(part[keys], stable=True)  # no copy of all the held tokens
        picked = Visual.cat([p.take(row[keys[by_part][part[keys[by_part]] == i]])
                             for i, p in enumerate(parts)])
        visual = picked.take(torch.argsort(by_part))
    records = []
    for g, units in enumerate(plan.groups):
        b = int(budgets[units].sum())
        records.append(GroupRecord(g, plan.unit_frames(units), len(units) * tpu, None, b, b))
    return Selection(records, keys, scores.flatten()[keys], visual,
                     rows_peak=sum(r.num_tokens for r in records))

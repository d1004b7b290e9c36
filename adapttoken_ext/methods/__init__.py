"""Token-selection methods behind one interface, compared at a matched budget (README "Baselines").

Every method is a module here with two functions:

- ``check(cfg)``: raise ValueError naming the setting that does not apply to the method,
  before any model work;
- ``select(ctx) -> Selection``: choose at most ``cfg.budget`` visual tokens of the video.

The pipeline (:meth:`adapttoken_ext.pipeline.AdaptToken.answer`) looks a method up by name
(:func:`get`) and gives its :class:`Selection` to the shared final pass
(:func:`adapttoken_ext.stages.final_pass`, method.md step 9): same prompt, same positions.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from ..models.base import Visual
from ..stages import GroupRecord, Plan, Timer

METHODS = ("adapttoken", "uniform", "flexselect", "entropyselect", "random")
"""Registered method names; each is the module ``adapttoken_ext.methods.<name>``."""


@dataclass
class Context:
    """What a method may use: the model ``adapter``, the score ``capture`` of the
    reference layer, the open video ``reader``, the question's ``plan`` (steps 0-1), the
    config, the stage ``timer``, ``progress`` (a tqdm bar over groups) and ``encode``
    (``g -> GroupEncoding`` from a cache, or None: encode with ``stages.encode_group``)."""
    adapter: object
    capture: object
    reader: object
    plan: Plan
    cfg: object
    timer: Timer
    progress: bool = False
    encode: object = None


@dataclass
class Selection:
    """A method's kept tokens, ready for the final pass.

    ``records``: a :class:`GroupRecord` per visited group (``entropy`` None where the
    method runs no group pass); ``keys``: int64 ``[K]`` ascending visual-token keys
    (``unit * tokens_per_unit + h * cols + w``); ``scores``: float32 ``[K]`` (the method's
    ranking score, 0 where it ranks nothing); ``visual``: the kept tokens' embeddings and
    side inputs in key order (host); ``stopped``: Lite's stop group or None;
    ``rows_peak``: the most candidate embeddings held on the host at once;
    ``reencodes``: groups encoded again for step 7's refill."""
    records: list[GroupRecord]
    keys: torch.Tensor
    scores: torch.Tensor
    visual: Visual
    stopped: int | None = None
    rows_peak: int = 0
    reencodes: int = 0


def get(name: str):
    """The method module registered as ``name`` (one of :data:`METHODS`).

    Raises:
        ValueError: naming ``method`` for an unknown name.
    """
    if name not in METHODS:
        raise ValueError(f"method: must be one of {', '.join(METHODS)}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name}")


def no_group_passes(cfg, name: str) -> None:
    """``check`` of the methods that run no group pass: Lite, ``force_stop_after`` and
    ``scorer`` (steps 3 and 8) do not apply to them."""
    if cfg.lite or cfg.force_stop_after is not None or cfg.scorer != "attention":
        raise ValueError(f"method: {name!r} has no group passes, so lite, force_stop_after "
                         "and scorer do not apply; leave them at their defaults")


def encode_keys(ctx: Context, keys: torch.Tensor) -> Selection:
    """Decode and encode only the units that hold ``keys`` (int64, ascending), in chunks of
    ``units_per_group`` units, keeping just those tokens (no language-model work). One
    record per group says how many of its tokens were kept (``entropy`` None).
    ``rows_peak`` counts the kept rows plus one chunk's encoding."""
    plan, tpu = ctx.plan, ctx.plan.tokens_per_unit
    units = torch.unique(keys // tpu).tolist()
    ctx.reader.plan(plan.unit_frames(units), *plan.size)
    parts, held, peak, step = [], 0, 0, ctx.cfg.units_per_group
    for i in range(0, len(units), step):
        chunk = units[i:i + step]
        with ctx.timer("decode"):
            frames = ctx.reader.get_frames(plan.unit_frames(chunk), *plan.size)
        with ctx.timer("vision_encoder"):
            visual = ctx.adapter.encode(frames)
        mine = keys[(keys >= chunk[0] * tpu) & (keys < (chunk[-1] + 1) * tpu)]
        slot = torch.full((plan.num_units,), -1, dtype=torch.int64)
        slot[chunk] = torch.arange(len(chunk))
        rows = slot[mine // tpu] * tpu + mine % tpu  # row of each key in this encoding
        part = visual.take(rows)
        parts.append(Visual(part.embeds.cpu(), {k: v.cpu() for k, v in part.side.items()}))
        peak = max(peak, held + len(visual))
        held += len(part)
        del visual
    kept_units = torch.bincount(keys // tpu, minlength=plan.num_units)
    records = []
    for g, us in enumerate(plan.groups):
        n = int(kept_units[us].sum())
        records.append(GroupRecord(g, plan.unit_frames(us), len(us) * tpu, None, n, n))
    return Selection(records, keys, torch.zeros(keys.numel()), Visual.cat(parts), rows_peak=peak)

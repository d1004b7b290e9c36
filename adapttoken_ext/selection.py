"""The AdaptToken selection algorithm on plain tensors (method.md steps 1, 5, 7 and 8).

Nothing here knows a model: groups are lists of unit indices, scores and embeddings are
tensors. The pipeline (``adapttoken_ext.pipeline``) feeds it what the model produced:
:func:`make_groups` (step 1), :func:`allocate_budget` (step 5), :func:`budget_bound` (step 5
before all groups are seen, to bound the candidates held), :func:`stop_threshold` (step 8)
and :func:`select_tokens` (steps 6-7).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["make_groups", "allocate_budget", "budget_bound", "stop_threshold", "Candidates",
           "select_tokens"]


def make_groups(num_units: int, units_per_group: int, layout: str = "interleaved") -> list[list[int]]:
    """Split ``num_units`` temporal units into ``G = ceil(num_units / units_per_group)`` groups
    (method.md step 1).

    ``"interleaved"``: unit ``i`` goes to group ``i mod G``, so every group spans the whole
    timeline sparsely. ``"contiguous"``: consecutive runs of ``units_per_group`` units.
    Each group lists its units in ascending order.
    """
    if num_units <= 0:
        raise ValueError(f"num_units: must be > 0, got {num_units}")
    if units_per_group <= 0:
        raise ValueError(f"units_per_group: must be > 0, got {units_per_group}")
    G = math.ceil(num_units / units_per_group)
    if layout == "interleaved":
        return [list(range(g, num_units, G)) for g in range(G)]
    if layout == "contiguous":
        return [list(range(g * units_per_group, min(num_units, (g + 1) * units_per_group)))
                for g in range(G)]
    raise ValueError(f"group_layout: must be 'interleaved' or 'contiguous', got {layout!r}")


def _water_fill(entropy, capacity, budget: int, temperature: float, floor: int):
    """Validated real-valued step-5 allocation: ``(base, share, total)`` where ``base`` (int64)
    is the floor part, ``share`` (float64) the water-filled rest and ``total = min(B, sum N)``."""
    H = torch.as_tensor(entropy, dtype=torch.float64).flatten()
    cap = torch.as_tensor(capacity, dtype=torch.int64).flatten()
    if H.numel() != cap.numel() or H.numel() == 0:
        raise ValueError("entropy, capacity: must be non-empty and of equal length")
    if budget <= 0:
        raise ValueError(f"budget: must be > 0, got {budget}")
    if not temperature > 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    if floor < 0:
        raise ValueError(f"per_group_floor: must be >= 0, got {floor}")
    if (cap < 0).any():
        raise ValueError("capacity: must be >= 0")
    finite = H[torch.isfinite(H)]
    H = torch.nan_to_num(H, nan=finite.max().item() if finite.numel() else 0.0)
    base = torch.clamp(cap, max=floor)
    if base.sum() > budget:
        raise ValueError(f"per_group_floor: {floor} per group needs {int(base.sum())} tokens, "
                         f"more than the budget {budget}")
    total = min(budget, int(cap.sum()))
    room = (cap - base).double()
    remaining = float(total - int(base.sum()))
    share = torch.zeros_like(room)
    active = room > 0
    while remaining > 0 and active.any():  # water-filling over the uncapped groups
        # softmax over the active groups only: exact weights, no underflow to all-zero
        wa = torch.softmax(torch.where(active, -H / temperature, -math.inf), dim=0)
        s = remaining * wa
        over = active & (s >= room)  # an active group's share is still 0
        if not over.any():
            share = share + s
            break
        remaining -= float(room[over].sum())
        share[over] = room[over]
        active &= ~over
    return base, share, total


def allocate_budget(entropy: torch.Tensor, capacity: torch.Tensor, budget: int,
                    temperature: float = 1.0, floor: int = 0) -> torch.Tensor:
    """Split the global token budget across groups by entropy (method.md step 5).

    ``w_g = softmax_g(-H_g / T)``. Each group first gets ``min(floor, N_g)``; the rest of
    ``B`` is spread by ``w`` and capped at capacity ``N_g``, the overflow re-spread over the
    uncapped groups by the same weights (water-filling), then rounded by largest remainder
    (ties to the lower group index) so that the budgets sum to ``min(B, sum N_g)`` exactly.
    A NaN entropy counts as the largest finite one.

    Args:
        entropy: ``[G]`` entropies in nats.
        capacity: int ``[G]`` visual tokens per group, ``N_g >= 0``.
        budget: ``B > 0``.
        temperature: ``T > 0``.
        floor: per-group minimum ``b_min >= 0``; ``sum min(b_min, N_g)`` must not exceed ``B``.

    Returns:
        int64 ``[G]`` budgets with ``0 <= B_g <= N_g``.

    Raises:
        ValueError: naming the bad argument (``per_group_floor`` for ``floor``).
    """
    base, share, total = _water_fill(entropy, capacity, budget, temperature, floor)
    room = torch.as_tensor(capacity, dtype=torch.int64).flatten() - base
    alloc = torch.floor(share + 1e-9).to(torch.int64)
    left = total - int(base.sum()) - int(alloc.sum())
    if left > 0:  # largest remainder; a stable sort puts the lower index first on ties
        frac = torch.where(alloc < room, share - alloc.double(), torch.full_like(share, -1.0))
        order = torch.sort(-frac, stable=True).indices
        alloc[order[:left]] += 1
    return base + alloc


def budget_bound(entropy: torch.Tensor, capacity: torch.Tensor, budget: int, h_max: float,
                 temperature: float = 1.0, floor: int = 0, lite: bool = False) -> torch.Tensor:
    """Upper bound on each visited group's final budget, whatever the unvisited groups bring
    (method.md step 5; with ``lite``, step 8). Bounds the candidates the pipeline must hold.

    Water-filled shares are monotone: a group's real share only shrinks when other groups'
    weights grow or groups are added. So the worst completion has every unvisited group at
    entropy ``h_max`` (under Lite, which visits at least one more group and may stop after
    any, only the next group). The bound is ``min(N_g, B, min(b_min, N_g) + ceil(share_g))``
    for that completion. It uses ``ceil`` of the real share, not the rounded worst-case
    budget, because largest-remainder rounding is not monotone (Alabama paradox). A NaN
    visited entropy (mapped by :func:`allocate_budget` to the final set's largest finite
    entropy, unknown here) gets ``min(N_g, B)``. With every group visited the bound is the
    exact :func:`allocate_budget`.

    Args:
        entropy: float ``[V]`` entropies (nats) of the groups visited so far, the first ``V``
            in visit order.
        capacity: int64 ``[G]`` token counts ``N_g`` of all groups in visit order, ``G >= V``.
        budget, temperature, floor: as in :func:`allocate_budget`.
        h_max: the largest entropy an unvisited group can have (``ln K``, or ``ln vocab``).
        lite: the run may stop after any later group (AdaptToken-Lite).

    Returns:
        int64 ``[V]`` bounds ``B_g`` for every completion's :func:`allocate_budget`.

    Raises:
        ValueError: ``capacity`` shorter than ``entropy``, ``h_max`` not finite, or as
            :func:`allocate_budget` for the worst completion.
    """
    H = torch.as_tensor(entropy, dtype=torch.float64).flatten()
    cap = torch.as_tensor(capacity, dtype=torch.int64).flatten()
    V, G = H.numel(), cap.numel()
    if V > G:
        raise ValueError(f"capacity: {G} groups, fewer than the {V} entropies")
    if not math.isfinite(h_max):
        raise ValueError(f"h_max: must be finite, got {h_max}")
    if V == G:
        return allocate_budget(H, cap, budget, temperature, floor)
    rest = 1 if lite else G - V
    worst = torch.cat([H, torch.full((rest,), float(h_max), dtype=torch.float64)])
    base, share, _ = _water_fill(worst, cap[: V + rest], budget, temperature, floor)
    most = torch.clamp(cap[:V], max=budget)
    bound = torch.minimum(base[:V] + torch.ceil(share[:V]).to(torch.int64), most)
    return torch.where(torch.isnan(H), most, bound)


def stop_threshold(num_options: int | None) -> float:
    """AdaptToken-Lite's default ``tau`` (method.md step 8): ``0.1 ln K``, or 0.1 nats
    in full-vocabulary mode (``num_options`` None)."""
    return 0.1 * math.log(num_options) if num_options else 0.1


@dataclass
class Candidates:
    """One group's ranked candidate tokens (method.md step 6), best first.

    Attributes:
        keys: int64 ``[C]`` global keys ``unit * tokens_per_unit + h * cols + w``.
        scores: float32 ``[C]``, descending (candidate order is rank order).
        embeddings: ``[C, hidden]`` post-merger embeddings, any float dtype.
    """
    keys: torch.Tensor
    scores: torch.Tensor
    embeddings: torch.Tensor

    def __post_init__(self):
        C = self.keys.shape[0] if self.keys.dim() == 1 else -1
        if C < 0 or self.keys.dtype != torch.int64:
            raise ValueError("keys: must be a 1-D int64 tensor")
        if tuple(self.scores.shape) != (C,):
            raise ValueError(f"scores: must have shape [{C}], got {tuple(self.scores.shape)}")
        if self.embeddings.dim() != 2 or self.embeddings.shape[0] != C:
            raise ValueError(f"embeddings: must have shape [{C}, hidden], "
                             f"got {tuple(self.embeddings.shape)}")


def select_tokens(candidates: list[Candidates], budgets: torch.Tensor, tokens_per_unit: int,
                  encoded_units: torch.Tensor, threshold: float | None,
                  more: Callable[[int], Candidates | None] | None = None,
                  max_rounds: int = 10_000) -> list[torch.Tensor]:
    """Per-group top-``B_g`` selection with location-aware redundancy removal and refill
    (method.md steps 6-7).

    Group g's selection ``S_g`` is its first ``B_g`` candidates that are not dropped
    (``threshold`` None: its first ``B_g``, step 6). When its candidates run out first,
    ``more(g)`` is called for the next ones, which are appended to ``candidates[g]`` in
    place, until ``B_g`` is reached or it returns None (step 7, refill).

    Step 7's rule. A token at (unit u, location l)'s partner is the token at l in the
    previous entry of ``encoded_units`` (under Lite, unvisited units are skipped). A round
    walks, per location, the selected and dropped tokens in temporal order with a
    reference ``ref``: a token whose unit does not directly follow the previous walked one
    in ``encoded_units`` breaks the chain (``ref`` = None); a dropped token passes the
    chain on (``ref`` unchanged), so a token whose partner was dropped meets the nearest
    earlier kept token at l; a kept token x with ``cosine(x, ref) > threshold`` (float32; a
    zero vector has cosine 0) drops the lower-scored of the two (x on a tie) and the
    survivor becomes ``ref``, otherwise ``ref = x``. Drops are sticky; after a round with
    drops every ``S_g`` is recomputed (refilled) and walked again, until a round drops
    nothing or ``max_rounds`` rounds ran.

    Args:
        candidates: per group, its :class:`Candidates` (extended in place by ``more``).
        budgets: int64 ``[G]`` budgets ``B_g``.
        tokens_per_unit: ``rows * cols`` tokens in a unit.
        encoded_units: int64 ``[E]`` strictly increasing units that were encoded; every
            candidate's unit must be among them.
        threshold: cosine threshold ``delta``; None disables step 7.
        more: ``more(g)`` gives group g's next candidates (descending score), or None.
        max_rounds: round limit.

    Returns:
        Per group, int64 indices into its (possibly extended) candidates, in candidate order.

    Raises:
        ValueError: naming the bad argument.
    """
    b = torch.as_tensor(budgets, dtype=torch.int64).flatten().tolist()
    if len(b) != len(candidates) or min(b, default=0) < 0:
        raise ValueError(f"budgets: must be {len(candidates)} values >= 0")
    if tokens_per_unit <= 0:
        raise ValueError(f"tokens_per_unit: must be > 0, got {tokens_per_unit}")
    enc = torch.as_tensor(encoded_units, dtype=torch.int64).flatten()
    if enc.numel() > 1 and not (enc[1:] > enc[:-1]).all():
        raise ValueError("encoded_units: must be strictly increasing")
    dropped = [torch.zeros(c.keys.numel(), dtype=torch.bool) for c in candidates]
    exhausted = [more is None] * len(candidates)

    def selected(g):  # S_g, refilled through more() until B_g or exhausted
        while True:
            s = torch.nonzero(~dropped[g]).flatten()[: b[g]]
            nxt = None if s.numel() >= b[g] or exhausted[g] else more(g)
            if nxt is None or nxt.keys.numel() == 0:
                exhausted[g] |= s.numel() < b[g]
                return s
            c = candidates[g]  # extended in place: the caller's object sees the new candidates
            c.keys = torch.cat([c.keys, nxt.keys])
            c.scores = torch.cat([c.scores, nxt.scores.to(c.scores.dtype)])
            c.embeddings = torch.cat([c.embeddings, nxt.embeddings.to(c.embeddings.dtype)])
            dropped[g] = torch.cat([dropped[g], torch.zeros(nxt.keys.numel(), dtype=torch.bool)])

    sel = [selected(g) for g in range(len(candidates))]
    for _ in range(max_rounds if threshold is not None else 0):
        walk = [torch.cat([s, torch.nonzero(d).flatten()]) for s, d in zip(sel, dropped)]
        if sum(w.numel() for w in walk) == 0:
            break
        gid = torch.cat([torch.full((w.numel(),), g) for g, w in enumerate(walk)])
        idx = torch.cat(walk)
        key = torch.cat([c.keys[w] for c, w in zip(candidates, walk)])
        unit, loc = key // tokens_per_unit, key % tokens_per_unit
        pos = torch.searchsorted(enc, unit)  # index in encoded_units: partners are pos, pos+1
        if (pos >= enc.numel()).any() or (enc[pos] != unit).any():
            raise ValueError("encoded_units: a candidate's unit was not encoded")
        # Walk order: by location, then time. Small per-token arrays are permuted into it;
        # the embeddings are not (a large copy), so they are read through ``order``.
        order = torch.argsort(loc * (enc.numel() + 1) + pos)
        gid, idx, loc, pos = gid[order], idx[order], loc[order], pos[order]
        score = torch.cat([c.scores[w].float() for c, w in zip(candidates, walk)])[order]
        drop = torch.cat([d[w] for d, w in zip(dropped, walk)])[order]
        was = drop.clone()
        emb = torch.cat([c.embeddings[w].float() for c, w in zip(candidates, walk)])
        emb = torch.nn.functional.normalize(emb, dim=1)  # a zero vector stays 0: cosine 0
        start = torch.searchsorted(loc, loc)  # first walked token at each token's location
        rank = torch.arange(loc.numel()) - start
        ref = torch.full((loc.numel(),), -1)   # per location (at its start): ref, or -1
        last = torch.full((loc.numel(),), -2)  # and the previous walked token's pos
        for t in torch.argsort(rank).split(torch.bincount(rank).tolist()):
            at = start[t]  # t: every location's k-th walked token, walked together
            r = torch.where(pos[t] == last[at] + 1, ref[at], -1)  # a gap breaks the chain
            last[at] = pos[t]
            kept = ~drop[t]
            has = kept & (r >= 0)
            sim = torch.zeros_like(kept)
            sim[has] = (emb[order[t[has]]] * emb[order[r[has]]]).sum(1) > threshold
            x_loses = sim & (score[t] <= score[r.clamp(min=0)])  # x on a tie
            drop[t[x_loses]] = True
            drop[r[sim & ~x_loses]] = True
            ref[at] = torch.where(kept & ~x_loses, t, r)  # a dropped token passes ref on
        new = drop & ~was
        if not new.any():
            break
        for g, i in zip(gid[new].tolist(), idx[new].tolist()):
            dropped[g][i] = True
        sel = [selected(g) for g in range(len(candidates))]
    return sel

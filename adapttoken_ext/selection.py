"""The AdaptToken selection algorithm on plain tensors (method.md steps 1, 5, 7 and 8).

Nothing here knows a model: groups are lists of unit indices, scores and embeddings are
tensors. The pipeline (``adapttoken_ext.pipeline``) feeds it what the model produced.
"""
from __future__ import annotations

import math

import torch

__all__ = ["make_groups", "allocate_budget", "budget_bound", "stop_threshold", "remove_redundant"]


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
    """
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
    room = (cap - base).double()
    remaining = float(min(budget, int(cap.sum())) - int(base.sum()))
    w = torch.softmax(-H / temperature, dim=0)
    share = torch.zeros_like(room)
    active = room > 0
    while remaining > 0 and active.any():  # water-filling over the uncapped groups
        wa = torch.where(active, w, torch.zeros_like(w))
        if wa.sum() <= 0:  # weights underflowed: spread evenly
            wa = active.double()
        s = remaining * wa / wa.sum()
        over = active & (s >= room - share)
        if not over.any():
            share = share + s
            break
        remaining -= float((room - share)[over].sum())
        share[over] = room[over]
        active &= ~over
    alloc = torch.floor(share + 1e-9).to(torch.int64)
    left = int(min(budget, int(cap.sum())) - int(base.sum()) - int(alloc.sum()))
    if left > 0:  # largest remainder; a stable sort puts the lower index first on ties
        frac = torch.where(alloc < room.long(), share - alloc.double(), torch.full_like(share, -1.0))
        order = torch.sort(-frac, stable=True).indices
        alloc[order[:left]] += 1
    return base + alloc


def budget_bound(entropy: torch.Tensor, unvisited: int, h_max: float, budget: int,
                 min_capacity: int, temperature: float = 1.0, floor: int = 0,
                 lite: bool = False) -> torch.Tensor:
    """Largest budget each visited group can still receive (bounds the candidates kept).

    While groups remain unvisited, a visited group's final ``B_g`` (:func:`allocate_budget`
    over all groups) is at most ``floor + B * w_g / W_min + 1``, where ``W_min`` adds to the
    visited weights the least weight the rest can bring: ``e^{-h_max / T}`` per unvisited
    group (entropy never exceeds ``h_max``: ``ln K`` or ``ln V``), or one such group under
    Lite, which may stop after any later group. Caps cannot raise a share while
    ``B <= min_capacity``; otherwise the bound is ``B``.

    Args:
        entropy: ``[V]`` entropies of the visited groups (NaN: treated conservatively).
        unvisited: groups not visited yet.
        h_max: the largest possible entropy in nats.
        min_capacity: the smallest capacity ``N_g`` over all groups.

    Returns:
        int64 ``[V]`` upper bounds, each at most ``budget``.
    """
    H = torch.as_tensor(entropy, dtype=torch.float64).flatten()
    full = torch.full(H.shape, budget, dtype=torch.int64)
    if unvisited <= 0 or budget > min_capacity:
        return full
    log_w_num = -torch.nan_to_num(H, nan=0.0) / temperature
    log_w_den = -torch.nan_to_num(H, nan=h_max) / temperature
    n_rest = 1 if lite else unvisited
    rest = torch.tensor([math.log(n_rest) - h_max / temperature], dtype=torch.float64)
    log_total = torch.logsumexp(torch.cat([log_w_den, rest]), dim=0)
    share = budget * torch.exp(log_w_num - log_total)
    return torch.minimum(full, floor + torch.ceil(share).to(torch.int64) + 1)


def stop_threshold(num_options: int | None) -> float:
    """AdaptToken-Lite's default ``tau`` (method.md step 8): ``0.1 ln K``, or 0.1 nats
    in full-vocabulary mode (``num_options`` None)."""
    return 0.1 * math.log(num_options) if num_options else 0.1


def remove_redundant(keys: list[torch.Tensor], scores: list[torch.Tensor],
                     embeddings: list[torch.Tensor], budgets: torch.Tensor, unit_stride: int,
                     threshold: float | None, max_rounds: int = 100) -> list[torch.Tensor]:
    """Per-group selection with location-aware redundancy removal and refill (method.md steps 6-7).

    Each group's candidates come sorted by descending score. Its selection is the first
    ``B_g`` candidates not dropped. A selected token at key ``k`` (``unit * unit_stride +
    h * cols + w``) is redundant with the selected token at ``k - unit_stride`` (same
    (h, w), previous sampled unit) when their embeddings' cosine similarity exceeds
    ``threshold``; of such a pair the lower-scored one is dropped (the later one on a tie)
    and the group refills from its next candidates. Rounds repeat until nothing changes
    (at most ``max_rounds``).

    Args:
        keys: per group, int64 ``[C_g]`` global token keys of the candidates.
        scores: per group, float32 ``[C_g]``, descending.
        embeddings: per group, ``[C_g, hidden]`` candidate embeddings (any float dtype).
        budgets: int64 ``[G]``; a group with fewer candidates left selects fewer.
        unit_stride: tokens per unit.
        threshold: cosine threshold ``delta``; None disables removal.

    Returns:
        Per group, int64 indices into that group's candidates, in candidate order.
    """
    dropped = [torch.zeros(k.numel(), dtype=torch.bool) for k in keys]

    def current():
        return [torch.nonzero(~d).flatten()[: int(b)] for d, b in zip(dropped, budgets.tolist())]

    sel = current()
    if threshold is None:
        return sel
    for _ in range(max_rounds):
        gid = torch.cat([torch.full((s.numel(),), g, dtype=torch.long) for g, s in enumerate(sel)])
        pos = torch.cat(sel)
        if pos.numel() < 2:
            break
        k = torch.cat([keys[g][s] for g, s in enumerate(sel)])
        sc = torch.cat([scores[g][s] for g, s in enumerate(sel)])
        e = torch.cat([embeddings[g][s] for g, s in enumerate(sel)])
        order = torch.argsort(k)
        k, sc, gid, pos, e = k[order], sc[order], gid[order], pos[order], e[order]
        prev = torch.searchsorted(k, k - unit_stride)
        prev_c = prev.clamp(max=k.numel() - 1)
        has = (prev < k.numel()) & (k[prev_c] == k - unit_stride)
        cur_i = torch.nonzero(has).flatten()
        if cur_i.numel() == 0:
            break
        prv_i = prev_c[cur_i]
        cos = torch.nn.functional.cosine_similarity(e[cur_i].float(), e[prv_i].float(), dim=-1)
        red = cos > threshold
        if not red.any():
            break
        cur_i, prv_i = cur_i[red], prv_i[red]
        loser = torch.where(sc[prv_i] >= sc[cur_i], cur_i, prv_i)
        for i in loser.unique().tolist():
            dropped[int(gid[i])][int(pos[i])] = True
        sel = current()
    return sel

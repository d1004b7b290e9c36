"""The AdaptToken selection algorithm on plain tensors (method.md steps 1, 5, 7 and 8).

Nothing here knows a model: groups are lists of unit indices, scores and embeddings are
tensors. The pipeline (``adapttoken_ext.pipeline``) feeds it what the model produced:
:func:`make_groups` (step 1), :func:`allocate_budget` (step 5), :func:`budget_bound` (step 5
before all groups are seen, to bound the candidates held), :func:`stop_threshold` (step 8)
and :func:`select_tokens` (steps 6-7).
"""
from __future__ import annotations

import bisect
import math

import torch

__all__ = ["make_groups", "allocate_budget", "budget_bound", "stop_threshold", "RowCounter",
           "GroupCandidates", "select_tokens"]


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


class RowCounter:
    """Candidate embedding rows held on the host, now and at most (shared by the groups)."""

    def __init__(self):
        self.rows = self.peak = 0

    def add(self, n: int) -> None:
        self.rows += n
        self.peak = max(self.peak, self.rows)


class GroupCandidates:
    """One group's candidates for steps 6-7 (method.md): every token of the group ranked by
    score, the embeddings and side rows of the ranks the selection may still use, and the
    policy for re-encoding the group.

    The ranking (keys, scores, encoding rows of all ``N`` tokens) is cheap and always held.
    Embedding rows are held for ranks ``[0, hold)`` from the start (copied from ``embeds``,
    which is not kept) and for the ranks fetched since; a dropped token's row is freed at
    once (:meth:`forget`). The re-encoding policy: when the selection fetches a rank whose
    row is not held, ``encode()`` re-encodes the group and that encoding serves every
    later fetch until :meth:`release` frees it (the end of the group's refill), so a
    group is re-encoded at most once. With ``encode`` None only ranks ``[0, hold)`` are
    candidates.

    Args:
        keys: int64 ``[N]`` global keys ``unit * tokens_per_unit + h * cols + w``, best first.
        scores: float32 ``[N]``, descending (candidate order is rank order).
        rows: int64 ``[N]``: each rank's row in the group's encoding.
        embeds: ``[R, hidden]`` the group's encoding (any float dtype and device).
        side: per-token side inputs, each ``[R, ...]`` in the same rows.
        hold: ranks whose rows are held from the start.
        encode: ``() -> (embeds, side)``: the group's encoding again, same rows; or None.
        counter: the :class:`RowCounter` counting held rows (one per run).

    Attributes:
        reencodes: how often ``encode`` was called.
        redundant: tokens of the group that :func:`select_tokens` dropped as redundant.

    Raises:
        ValueError: naming ``keys``, ``scores``, ``rows`` or ``embeds`` on bad shapes.
    """

    def __init__(self, keys, scores, rows, embeds, side=None, hold=None, encode=None,
                 counter: RowCounter | None = None):
        N = keys.shape[0] if keys.dim() == 1 else -1
        if N < 0 or keys.dtype != torch.int64:
            raise ValueError("keys: must be a 1-D int64 tensor")
        if tuple(scores.shape) != (N,):
            raise ValueError(f"scores: must have shape [{N}], got {tuple(scores.shape)}")
        if tuple(rows.shape) != (N,) or rows.dtype != torch.int64:
            raise ValueError(f"rows: must be int64 of shape [{N}]")
        if embeds.dim() != 2 or (N and int(rows.max()) >= embeds.shape[0]) or (N and int(rows.min()) < 0):
            raise ValueError(f"embeds: must be [rows, hidden] covering every row, got {tuple(embeds.shape)}")
        hold = N if hold is None else max(0, min(int(hold), N))
        self.keys, self.scores, self.rows = keys, scores.float(), rows
        self.encode, self.counter = encode, counter or RowCounter()
        self.reencodes = 0
        self.redundant = 0  # tokens step 7 dropped (set by select_tokens)
        self._limit = hold  # the candidates without ``encode``
        self._shape = (tuple(embeds.shape[1:]), embeds.dtype,
                       {k: (tuple(v.shape[1:]), v.dtype) for k, v in (side or {}).items()})
        self._emb: dict[int, torch.Tensor] = {}
        self._side: dict[int, dict] = {}
        self._live = None
        self._copy(range(hold), embeds, side or {})

    def __len__(self) -> int:
        """The number of candidates: all ``N`` tokens, or the held ranks without ``encode``."""
        return self.keys.numel() if self.encode is not None else self._limit

    def _copy(self, ranks, embeds, side) -> None:
        ranks = [r for r in ranks if r not in self._emb]
        if not ranks:
            return
        idx = self.rows[torch.tensor(ranks)]
        block = embeds[idx.to(embeds.device)].cpu()
        parts = {k: v[idx.to(v.device)].cpu() for k, v in side.items()}
        for i, r in enumerate(ranks):  # own copies: a freed row frees its memory
            self._emb[r] = block[i].clone()
            self._side[r] = {k: v[i].clone() for k, v in parts.items()}
        self.counter.add(len(ranks))

    def fetch(self, start: int, stop: int) -> None:
        """Hold the rows of ranks ``[start, stop)``, re-encoding the group if one is missing."""
        if all(r in self._emb for r in range(start, stop)):
            return
        if self._live is None:
            self._live = self.encode()
            self.reencodes += 1
        self._copy(range(start, stop), *self._live)

    def embedding(self, r: int) -> torch.Tensor:
        return self._emb[r]

    def forget(self, r: int) -> None:
        """Free the row of rank ``r`` (a dropped token)."""
        if self._emb.pop(r, None) is not None:
            self._side.pop(r)
            self.counter.add(-1)

    def trim(self, n: int) -> None:
        """Free the rows of ranks ``>= n`` (the group's budget bound shrank)."""
        self._limit = min(self._limit, n)
        for r in [r for r in self._emb if r >= n]:
            self.forget(r)

    def release(self) -> None:
        """End of the group's refill: free the live encoding (if any)."""
        self._live = None

    def take(self, ranks: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``(embeds [k, hidden], side)`` of held ranks ``ranks``, stacked in that order."""
        r = ranks.tolist()
        shape, dtype, side = self._shape
        if not r:
            return (torch.zeros((0, *shape), dtype=dtype),
                    {k: torch.zeros((0, *s), dtype=d) for k, (s, d) in side.items()})
        return (torch.stack([self._emb[i] for i in r]),
                {k: torch.stack([self._side[i][k] for i in r]) for k in side})


_UNWALKED, _KEPT, _DROPPED = 0, 1, 2


class _Resolver:
    """The state of :func:`select_tokens` (method.md step 7): per group, each rank's status
    and the next unwalked rank; per location, its walked tokens in temporal order."""

    def __init__(self, groups, budgets, tpu, enc, threshold):
        self.groups, self.b, self.thr = groups, budgets, threshold
        self.pos, self.loc = [], []
        for c in groups:
            unit = c.keys // tpu
            pos = torch.searchsorted(enc, unit)
            if len(c) and ((pos >= enc.numel()).any() or (enc[pos.clamp(max=enc.numel() - 1)] != unit).any()):
                raise ValueError("encoded_units: a candidate's unit was not encoded")
            self.pos.append(pos.tolist())
            self.loc.append((c.keys % tpu).tolist())
        self.score = [c.scores.tolist() for c in groups]
        self.state = [bytearray(len(c)) for c in groups]
        self.next = [0] * len(groups)
        self.kept = [0] * len(groups)
        self.dropped = [0] * len(groups)
        self.at: dict[int, list] = {}   # location -> walked [(pos, group, rank)], sorted
        self.norm: dict[tuple, float] = {}
        self.sim: dict[tuple, bool] = {}

    def admit(self, g: int, n: int) -> set:
        """Keep group g's next ``n`` unwalked ranks; returns their locations."""
        r0 = self.next[g]
        r1 = min(len(self.groups[g]), r0 + n)
        self.groups[g].fetch(r0, r1)
        touched = set()
        for r in range(r0, r1):
            self.state[g][r] = _KEPT
            bisect.insort(self.at.setdefault(self.loc[g][r], []), (self.pos[g][r], g, r))
            touched.add(self.loc[g][r])
        self.next[g], self.kept[g] = r1, self.kept[g] + r1 - r0
        return touched

    def _norm(self, t):
        if t not in self.norm:
            self.norm[t] = float(self.groups[t[0]].embedding(t[1]).float().norm())
        return self.norm[t]

    def similar(self, a, x) -> bool:
        """cosine(a, x) > threshold (float32; a zero vector has cosine 0)."""
        key = (a, x) if a < x else (x, a)
        if key not in self.sim:
            na, nx = self._norm(a), self._norm(x)
            dot = float(torch.dot(self.groups[a[0]].embedding(a[1]).float(),
                                  self.groups[x[0]].embedding(x[1]).float()))
            self.sim[key] = (dot / (na * nx) if na > 0 and nx > 0 else 0.0) > self.thr
        return self.sim[key]

    def _drop(self, t) -> None:
        g, r = t
        self.state[g][r] = _DROPPED
        self.kept[g] -= 1
        self.dropped[g] += 1
        self.groups[g].forget(r)

    def walk(self, loc: int) -> bool:
        """One temporal walk of a location (the chain rule); True if it dropped a token."""
        ref, last, dropped = None, -2, False
        for p, g, r in self.at[loc]:
            if p != last + 1:  # a unit in between holds no walked token: the chain breaks
                ref = None
            last = p
            if self.state[g][r] == _DROPPED:  # a dropped token passes ref on
                continue
            x = (g, r)
            if ref is not None and self.similar(ref, x):
                dropped = True
                if self.score[g][r] <= self.score[ref[0]][ref[1]]:  # x on a tie
                    self._drop(x)
                    continue
                self._drop(ref)
            ref = x
        return dropped

    def settle(self, touched) -> None:
        for loc in sorted(touched):
            while self.walk(loc):
                pass

    def _kept_in_run(self, walked, i, step, p):
        """The first kept token from ``walked[i]`` on in direction ``step`` (-1, +1) whose
        positions continue ``p`` without a gap, through dropped tokens; or None."""
        while 0 <= i < len(walked) and walked[i][0] == p + step:
            _, g, r = walked[i]
            if self.state[g][r] == _KEPT:
                return g, r
            i, p = i + step, p + step
        return None

    def refill(self, g: int) -> None:
        """Admit group g's next ranks one by one until it keeps ``B_g`` or has none left:
        a candidate is kept unless it is redundant with a kept token it would meet at its
        location (its ``ref``, or the next kept token, which would take it as ``ref``)."""
        c = self.groups[g]
        while self.kept[g] < self.b[g] and self.next[g] < len(c):
            r0 = self.next[g]
            r1 = min(len(c), r0 + self.b[g] - self.kept[g])
            c.fetch(r0, r1)  # one batch of rows (re-encodes the group at most once)
            for r in range(r0, r1):  # at most the shortfall: never more than B_g kept
                self.next[g] = r + 1
                p, walked, x = self.pos[g][r], self.at.setdefault(self.loc[g][r], []), (g, r)
                i = bisect.bisect_left(walked, (p,))
                before = self._kept_in_run(walked, i - 1, -1, p)
                after = self._kept_in_run(walked, i, +1, p)
                if (before and self.similar(before, x)) or (after and self.similar(x, after)):
                    self.state[g][r] = _DROPPED  # a refill never displaces a kept token
                    self.dropped[g] += 1
                    c.forget(r)
                    continue
                self.state[g][r] = _KEPT
                self.kept[g] += 1
                walked.insert(i, (p, g, r))
        c.release()


def select_tokens(groups: list[GroupCandidates], budgets: torch.Tensor, tokens_per_unit: int,
                  encoded_units: torch.Tensor, threshold: float | None) -> list[torch.Tensor]:
    """Per-group top-``B_g`` selection with location-aware redundancy removal and refill
    (method.md steps 6-7): one resolution pass over the locations, then one refill per
    group in batches.

    ``threshold`` None: group g keeps its first ``B_g`` candidates (step 6).

    Step 7's rule. Partners: the tokens at the same location in consecutive entries of
    ``encoded_units`` (under Lite, unvisited units are skipped).

    1. *Resolution.* Every group admits its first ``B_g`` candidates. Each location's
       admitted tokens are walked in temporal order with a reference ``ref``: a token
       whose unit does not directly follow the previous walked one breaks the chain
       (``ref`` = None); a dropped token passes ``ref`` on, so a token whose partner was
       dropped meets the nearest earlier kept token at its location; a kept token x with
       ``cosine(x, ref) > threshold`` (float32; a zero vector has cosine 0) drops the
       lower-scored of the two (x on a tie) and the survivor becomes ``ref``, otherwise
       ``ref = x``. Drops are sticky; a location is walked again until a walk drops nothing.
    2. *Refill.* Groups in order, each once: group g takes its next-ranked candidates, in
       rank order, until it keeps ``B_g`` or has none left. A candidate x is kept unless it
       is redundant (cosine > ``threshold``) with a kept token it would meet on its
       location's chain: its ``ref`` (the nearest earlier kept token, through dropped
       tokens, with no gap) or the next kept token after it (likewise), whose ``ref`` x
       would become. A redundant candidate is dropped and leaves the chain as it was: a
       refill never displaces a kept token, so no group loses tokens after its turn.

    The result is a fixed point of step 1's walk over the kept and resolution-dropped
    tokens, and a group keeps fewer than ``B_g`` tokens only when all its candidates were
    taken (it ran out of non-redundant candidates). Each group's rows come from its
    :class:`GroupCandidates`: a refill needing rows it does not hold re-encodes the group,
    at most once, and frees that encoding when the group's refill ends; a dropped token's
    row is freed at once. So the rows held stay within the scan's plus the refill batches'.

    Args:
        groups: per group, its :class:`GroupCandidates`; each one's ``redundant`` is set to
            the number of its tokens dropped in steps 1-2.
        budgets: int64 ``[G]`` budgets ``B_g``.
        tokens_per_unit: ``rows * cols`` tokens in a unit.
        encoded_units: int64 ``[E]`` strictly increasing units that were encoded; every
            candidate's unit must be among them.
        threshold: cosine threshold ``delta``; None disables step 7.

    Returns:
        Per group, int64 ranks of the kept tokens, ascending.

    Raises:
        ValueError: naming the bad argument.
    """
    b = torch.as_tensor(budgets, dtype=torch.int64).flatten().tolist()
    if len(b) != len(groups) or min(b, default=0) < 0:
        raise ValueError(f"budgets: must be {len(groups)} values >= 0")
    if tokens_per_unit <= 0:
        raise ValueError(f"tokens_per_unit: must be > 0, got {tokens_per_unit}")
    enc = torch.as_tensor(encoded_units, dtype=torch.int64).flatten()
    if enc.numel() > 1 and not (enc[1:] > enc[:-1]).all():
        raise ValueError("encoded_units: must be strictly increasing")
    res = _Resolver(groups, b, tokens_per_unit, enc, threshold)
    touched = set().union(*[res.admit(g, b[g]) for g in range(len(groups))])
    if threshold is not None:
        res.settle(touched)
        for g in range(len(groups)):
            res.refill(g)
    for g, c in enumerate(groups):
        c.redundant = res.dropped[g]
    return [torch.tensor([r for r, s in enumerate(st) if s == _KEPT], dtype=torch.int64)
            for st in res.state]

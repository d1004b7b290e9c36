"""EntropySelect: text-agnostic visual-token selection by local entropy and structural
saliency, on tensors (no model knowledge).

Source: "Training-Free Local Entropy Token Compression for Video LLMs" (OpenReview
1fvPaaFuy2, 2026); its code is not public. Steps below follow the README section
"EntropySelect", each marked **[stated]** (by the abstract) or **[chosen]** (by us):

1. [stated] Local entropy ``e`` of each token's cosine similarities to its ``k x k``
   window (:func:`adapttoken_ext.ops.local_entropy`). [chosen] Direction: *low* entropy
   ranks first (``1 - e``): on the sample videos low ``e`` goes with tokens that their
   best neighbour predicts worst (python_tests/test_entropyselect.py measures it).
2. [stated "gradient-based"] Structural saliency ``g``: [chosen] Sobel gradient magnitude
   of the frame's luma (BT.601), averaged over each token's pixel patch and over the frames
   of its temporal unit, min-max normalised per unit to ``[0, 1]``.
3. [chosen] Fusion ``score = alpha * e' + (1 - alpha) * g``, ``e'`` the per-unit min-max
   normalised ``1 - e``.
4. [stated] Per-unit budgets proportional to the unit's mean score, by largest remainder
   (:func:`adapttoken_ext.selection.allocate_budget`, capped at the unit's tokens).
5. [stated] Coverage: each unit's grid is cut into ``q x q`` cells; each cell first gets
   its top ``floor(B_t / q^2)`` tokens by score, the rest of ``B_t`` goes by score.
6. [stated] One global sort by score, ``O(N log N)``, independent of the retention ratio.

A temporal unit (``adapter.unit`` frames, 2 for Qwen2.5-VL) is one token grid: ``tokens``
is ``[T, Hg, Wg, C]`` over units and ``frames`` holds ``u * T`` frames.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import ops, selection

__all__ = ["EntropySelect", "Selection", "sobel_saliency"]

_LUMA = (0.299, 0.587, 0.114)  # BT.601


class Selection(NamedTuple):
    """``indices``: int64 ``[K]`` kept tokens, ascending, into the flattened ``[T, Hg, Wg]``
    grid (``t * Hg * Wg + h * Wg + w``); ``scores``: float32 ``[K]`` their fused scores;
    ``budgets``: int64 ``[T]`` per-unit budgets (sum ``min(B, T * Hg * Wg)``)."""
    indices: torch.Tensor
    scores: torch.Tensor
    budgets: torch.Tensor


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Per leading index, ``(x - min) / (max - min)`` over the rest; 0 where constant."""
    flat = x.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (flat - lo) / span.clamp(min=1e-30), 0.0).view_as(x)


def sobel_saliency(frames: torch.Tensor, grid: tuple[int, int], unit: int = 1) -> torch.Tensor:
    """Structural saliency (step 2): Sobel gradient magnitude of each frame's luma, averaged
    over each token's pixel patch (adaptive average pooling to the grid) and over the
    ``unit`` frames of each temporal unit, min-max normalised per unit.

    Args:
        frames: ``[unit * T, 3, H, W]`` RGB, any real dtype and scale (uint8 0-255 or float).
        grid: ``(Hg, Wg)`` tokens per unit, ``Hg <= H`` and ``Wg <= W``.
        unit: frames per temporal unit.

    Returns:
        float32 ``[T, Hg, Wg]`` in ``[0, 1]``.
    """
    n = frames.shape[0]
    luma = torch.einsum("nchw,c->nhw", frames.float(), frames.new_tensor(_LUMA, dtype=torch.float32))
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=frames.device)
    x = torch.nn.functional.pad(luma[:, None], (1, 1, 1, 1), mode="replicate")
    g = torch.nn.functional.conv2d(x, torch.stack([k, k.t()])[:, None])  # d/dx, d/dy
    mag = torch.nn.functional.adaptive_avg_pool2d(g.square().sum(1).sqrt(), grid)
    return _minmax(mag.view(n // unit, unit, *grid).mean(1))


class EntropySelect:
    """EntropySelect at a budget of ``budget`` visual tokens (module docstring, steps 1-6).

    Args:
        budget: ``B > 0`` tokens kept in all.
        window: ``k``, odd ``>= 3`` (chosen 3).
        temperature: ``T > 0`` of the similarity softmax (chosen 0.1).
        alpha: weight of the entropy term in ``[0, 1]`` (chosen 0.5).
        grid: ``q >= 1``, cells per side for the coverage quotas (chosen 2).

    Raises:
        ValueError: naming the bad argument.
    """

    def __init__(self, budget: int, window: int = 3, temperature: float = 0.1,
                 alpha: float = 0.5, grid: int = 2):
        def integer(v):
            return isinstance(v, int) and not isinstance(v, bool)
        if not integer(budget) or budget <= 0:
            raise ValueError(f"budget: must be a positive integer, got {budget!r}")
        if not integer(window) or window < 3 or window % 2 == 0:
            raise ValueError(f"window: must be an odd integer >= 3, got {window!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature: must be finite and > 0, got {temperature!r}")
        if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
            raise ValueError(f"alpha: must be in [0, 1], got {alpha!r}")
        if not integer(grid) or grid < 1:
            raise ValueError(f"grid: must be an integer >= 1, got {grid!r}")
        self.budget, self.window, self.temperature = budget, window, float(temperature)
        self.alpha, self.grid = float(alpha), grid

    def scores(self, tokens: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Fused score of every token (steps 1-3).

        Args:
            tokens: ``[T, Hg, Wg, C]`` float32/float16/bfloat16 visual tokens of ``T`` units.
            frames: ``[u * T, 3, H, W]`` the units' frames (``u >= 1`` frames per unit).

        Returns:
            float32 ``[T, Hg, Wg]`` in ``[0, 1]`` on ``frames``' device; higher ranks first.

        Raises:
            ValueError: naming ``tokens`` or ``frames`` for bad shapes.
        """
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 4:
            raise ValueError(f"tokens: must be a 4-D tensor [T, Hg, Wg, C], got "
                             f"{getattr(tokens, 'shape', type(tokens).__name__)}")
        if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames: must be a 4-D tensor [u * T, 3, H, W], got "
                             f"{getattr(frames, 'shape', type(frames).__name__)}")
        T, Hg, Wg, _ = tokens.shape
        if T == 0 or frames.shape[0] % T or frames.shape[0] == 0:
            raise ValueError(f"frames: {frames.shape[0]} frames is not a positive multiple of "
                             f"the {T} token grids")
        if frames.shape[2] < Hg or frames.shape[3] < Wg:
            raise ValueError(f"frames: {tuple(frames.shape[2:])} pixels, smaller than the "
                             f"{Hg} x {Wg} token grid")
        e = ops.local_entropy(tokens, self.window, self.temperature).to(frames.device)
        g = sobel_saliency(frames, (Hg, Wg), frames.shape[0] // T)
        return self.alpha * _minmax(1.0 - e) + (1.0 - self.alpha) * g

    def frame_budgets(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-unit budgets (step 4): shares proportional to each unit's mean score, capped
        at its ``Hg * Wg`` tokens, rounded by largest remainder; int64 ``[T]`` summing to
        ``min(B, T * Hg * Wg)``. A zero mean gets no share (all zero: equal shares)."""
        T = scores.shape[0]
        mean = scores.double().flatten(1).mean(1).cpu()
        # allocate_budget weighs groups by softmax(-H / 1); H = -ln(mean) gives mean / sum(mean)
        return selection.allocate_budget(-torch.log(mean), torch.full((T,), scores[0].numel()),
                                         self.budget)

    def select(self, scores: torch.Tensor, budgets: torch.Tensor) -> torch.Tensor:
        """Kept flat indices, ascending (steps 5-6): grid-cell quotas, then the rest by score.

        Args:
            scores: float ``[T, Hg, Wg]``; NaN ranks last.
            budgets: int64 ``[T]``, ``0 <= B_t <= Hg * Wg``.
        """
        T, Hg, Wg = scores.shape
        q = self.grid
        flat = scores.detach().float().flatten().cpu()
        order = torch.sort(flat.nan_to_num(nan=-math.inf), descending=True, stable=True).indices
        t, hw = order // (Hg * Wg), order % (Hg * Wg)
        cell = t * q * q + (hw // Wg * q // Hg) * q + (hw % Wg * q // Wg)
        b = torch.as_tensor(budgets, dtype=torch.int64).cpu()
        keep = _rank_within(cell) < (b // (q * q))[t]            # each cell's quota first
        rest = b - torch.bincount(t[keep], minlength=T)
        later = ~keep
        keep[later] = _rank_within(t[later]) < rest[t[later]]  # then the unit's rest by score
        return order[keep].sort().values

    def __call__(self, tokens: torch.Tensor, frames: torch.Tensor) -> Selection:
        """Select ``min(B, T * Hg * Wg)`` tokens of ``tokens`` (steps 1-6); see :meth:`scores`."""
        s = self.scores(tokens, frames)
        budgets = self.frame_budgets(s)
        idx = self.select(s, budgets)
        return Selection(idx, s.flatten().cpu()[idx], budgets)


def _rank_within(group: torch.Tensor) -> torch.Tensor:
    """For entries already in rank order, each entry's rank among those of its group."""
    by_group = torch.sort(group, stable=True)
    start = torch.searchsorted(by_group.values, by_group.values)
    rank = torch.empty_like(group)
    rank[by_group.indices] = torch.arange(group.numel()) - start
    return rank

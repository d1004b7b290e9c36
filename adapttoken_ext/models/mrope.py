"""M-RoPE position ids of the Qwen2-VL / Qwen2.5-VL layout, as the models were trained (method.md
"Positions", steps 2 and 9).

``[text before the video][one video][text after it]`` gets 3-row ids ``(T, H, W)``:

- the text before the video at ``0..s-1`` on all three rows;
- video token ``(t, h, w)`` (temporal patch ``t`` of the clip, cell ``(h, w)`` of the merged
  grid) at ``T = s + floor(t * second_per_grid_t * tokens_per_second)``, ``H = s + h``,
  ``W = s + w`` (Qwen2-VL: ``T = s + t``, its reference ``t_index = arange(t)``; call with
  ``second_per_grid_t = tokens_per_second = 1``);
- the text after the video from ``max(all video positions) + 1`` on, one step per token;
- the first generated token one after the last text position.

This is Qwen's reference ``get_rope_index`` (transformers 4.x, both families; vLLM:
``st_idx = llm_pos_ids_list[-1].max() + 1``). transformers 5.x instead advances by
``max(h, w)`` after a video, in both families (``current_pos += max(grid_thw[1],
grid_thw[2]) // spatial_merge_size``), which puts the question inside the video's time
range once the video is longer than a few seconds.

Integer work only: the temporal offset is the floor of the exact product of the float
``second_per_grid_t`` and ``tokens_per_second`` (no float rounding), then int64 tensors.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch

__all__ = ["qwen2_vl_positions", "temporal_offsets", "video_positions"]


def temporal_offsets(units: int, second_per_grid_t: float, tokens_per_second: float) -> list[int]:
    """``floor(t * second_per_grid_t * tokens_per_second)`` for ``t = 0..units-1``.

    Raises:
        ValueError: naming ``second_per_grid_t`` / ``tokens_per_second`` when negative or not finite.
    """
    for name, v in (("second_per_grid_t", second_per_grid_t), ("tokens_per_second", tokens_per_second)):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name}: must be a finite number >= 0, got {v!r}")
    step = Fraction(second_per_grid_t) * Fraction(tokens_per_second)
    return [math.floor(t * step) for t in range(units)]


def video_positions(start: int, units: int, rows: int, cols: int, second_per_grid_t: float,
                    tokens_per_second: float) -> torch.Tensor:
    """int64 ``[3, units * rows * cols]`` ``(T, H, W)`` ids of a video's tokens in (t, h, w)
    raster order, the video starting at position ``start`` (``rows x cols``: merged grid)."""
    t = torch.tensor(temporal_offsets(units, second_per_grid_t, tokens_per_second), dtype=torch.long)
    T = t.view(units, 1, 1).expand(units, rows, cols)
    H = torch.arange(rows).view(1, rows, 1).expand(units, rows, cols)
    W = torch.arange(cols).view(1, 1, cols).expand(units, rows, cols)
    return torch.stack([T, H, W]).reshape(3, -1) + start


def qwen2_vl_positions(prefix: int, units: int, rows: int, cols: int, suffix: int,
                       second_per_grid_t: float, tokens_per_second: float) -> tuple[torch.Tensor, int]:
    """Position ids of ``[prefix tokens][units x rows x cols video tokens][suffix tokens]``.

    Returns:
        ``(positions, next_position)``: int64 ``[3, prefix + units*rows*cols + suffix]`` and
        the position of the first generated token (the maximum plus one).
    """
    before = torch.arange(prefix).expand(3, prefix)
    video = video_positions(prefix, units, rows, cols, second_per_grid_t, tokens_per_second)
    after_start = int(video.max()) + 1 if video.numel() else prefix
    after = torch.arange(after_start, after_start + suffix).expand(3, suffix)
    pos = torch.cat([before, video, after], dim=1)
    return pos, int(pos.max()) + 1 if pos.numel() else 0

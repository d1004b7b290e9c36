"""Qwen2-VL adapter (model_type ``qwen2_vl``: ``Qwen/Qwen2-VL-7B-Instruct``,
``Qwen/Qwen2-VL-72B-Instruct``): the :class:`~.base.VideoAdapter` interface.

The Qwen2.5-VL adapter (:mod:`.qwen2_5_vl`): the same processor layout (one run of
``<|video_pad|>`` tokens, 2x2 spatial merge, temporal units of 2 frames, patchify), the same
M-RoPE rule (:mod:`.mrope`). Two differences, both read from transformers' Qwen2-VL code:

- the vision tower has full attention in every block (no window attention, no
  ``fullatt_block_indexes``); the model class runs it, so nothing here changes;
- the temporal position of temporal patch ``t`` is ``t`` itself: Qwen's reference
  ``get_rope_index`` (transformers 4.x) uses ``t_index = arange(llm_grid_t)``, with no
  ``second_per_grid_t`` or ``tokens_per_second`` (the config has neither), i.e. a time
  scale of one position per temporal patch whatever the frame rate (method.md "Positions").

transformers 5.x's Qwen2-VL ``get_rope_index`` has Qwen2.5-VL's ``max(h, w)`` advance after
a video (``current_pos += max(grid_thw[1], grid_thw[2]) // spatial_merge_size``), so, as for
Qwen2.5-VL, the trained rule is used, not transformers'.
"""
from __future__ import annotations

from .base import Clip
from .qwen2_5_vl import Qwen2_5_VLAdapter


class Qwen2VLAdapter(Qwen2_5_VLAdapter):
    """Wraps a ``Qwen2VLForConditionalGeneration`` (same arguments and errors as
    :class:`~.qwen2_5_vl.Qwen2_5_VLAdapter`)."""

    MODEL_CLASS = "Qwen2VLForConditionalGeneration"

    def time_scale(self, clip: Clip) -> tuple[float, float]:
        """One temporal position per temporal patch (``t_index = arange(t)``), whatever
        ``clip.seconds_per_unit``."""
        return 1, 1

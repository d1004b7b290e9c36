"""Qwen3-VL MoE adapter (model_type ``qwen3_vl_moe``: ``Qwen/Qwen3-VL-30B-A3B-Instruct``,
``-235B-A22B-Instruct``): the :class:`~.base.VideoAdapter` interface.

The Qwen3-VL adapter (:mod:`.qwen3_vl`) unchanged: the same vision tower with DeepStack
(``deepstack_visual_indexes``, three layers in the released configs), the same
``Qwen3VLProcessor`` video layout and ``get_rope_index``. Only the language model's MLPs
differ (sparse mixture-of-experts): routing is per token and changes nothing in the video
layout, the positions or the attention the score hook reads (method.md steps 2-3, 9).
"""
from __future__ import annotations

from .qwen3_vl import Qwen3VLAdapter


class Qwen3VLMoeAdapter(Qwen3VLAdapter):
    """Wraps a ``Qwen3VLMoeForConditionalGeneration`` (same arguments and errors as
    :class:`~.qwen2_5_vl.Qwen2_5_VLAdapter`)."""

    MODEL_CLASS = "Qwen3VLMoeForConditionalGeneration"

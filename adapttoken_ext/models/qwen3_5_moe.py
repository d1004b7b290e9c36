"""Qwen3.5 MoE adapter (model_type ``qwen3_5_moe``: ``Qwen/Qwen3.5-35B-A3B``,
``-122B-A10B``, ``-397B-A17B``): the :class:`~.base.VideoAdapter` interface.

The Qwen3.5 adapter (:mod:`.qwen3_5`) unchanged: no DeepStack, ``Qwen3VLProcessor``'s
video layout, and the hybrid language model of ``config.layer_types`` (one full-attention
layer after every three Gated DeltaNet layers in the released configs), so the reference
layer is the full-attention layer nearest ``round(0.7 * L)`` (method.md step 3). The MLPs
are sparse mixtures of experts with a shared expert; routing is per token and changes
nothing in the video layout or positions.
"""
from __future__ import annotations

from .qwen3_5 import Qwen3_5Adapter


class Qwen3_5MoeAdapter(Qwen3_5Adapter):
    """Wraps a ``Qwen3_5MoeForConditionalGeneration`` (same arguments and errors as
    :class:`~.qwen2_5_vl.Qwen2_5_VLAdapter`)."""

    MODEL_CLASS = "Qwen3_5MoeForConditionalGeneration"

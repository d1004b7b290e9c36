"""Qwen3.5 adapter (model_type ``qwen3_5``): the :class:`~.base.VideoAdapter` interface.

Qwen3.5 takes video as Qwen3-VL does (``Qwen3VLProcessor``: timestamped blocks per
temporal patch, the same ``get_rope_index``; see :mod:`.qwen3_vl`), with no DeepStack.
Its language model is hybrid: ``config.layer_types`` mixes ``linear_attention`` (Gated
DeltaNet, a recurrent state and no positions) and ``full_attention`` layers. Only a
full-attention layer has query-key attention to rank visual tokens (method.md step 3),
so the reference layer must be one. Pruning changes what the linear layers see; the
final pass is the model's own forward over the pruned sequence (step 9).
"""
from __future__ import annotations

from .qwen3_vl import Qwen3VLAdapter


class Qwen3_5Adapter(Qwen3VLAdapter):
    """Wraps a ``Qwen3_5ForConditionalGeneration`` (same arguments and errors as
    :class:`~.qwen2_5_vl.Qwen2_5_VLAdapter`)."""

    MODEL_CLASS = "Qwen3_5ForConditionalGeneration"

    @property
    def full_attention_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.text_config.layer_types) if t == "full_attention"]

    def default_reference_layer(self) -> int:
        """method.md step 3: the full-attention layer nearest ``round(0.7 * num_layers)``
        (the earlier one on a tie)."""
        target = round(0.7 * self.num_layers)
        return min(self.full_attention_layers, key=lambda i: (abs(i - target), i))

    def reference_attention(self, layer: int):
        """The attention module of full-attention decoder layer ``layer``.

        Raises:
            ValueError: naming ``reference_layer`` when it is out of range or a
                linear-attention layer, and listing the full-attention layers.
        """
        if 0 <= layer < self.num_layers and layer not in self.full_attention_layers:
            raise ValueError(f"reference_layer: layer {layer} is a linear-attention layer; "
                             f"use a full-attention layer: {self.full_attention_layers}")
        return super().reference_attention(layer)

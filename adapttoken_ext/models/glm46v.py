"""GLM-4.6V adapter (model_type ``glm46v``: ``zai-org/GLM-4.6V``, ``zai-org/GLM-4.6V-Flash``):
the :class:`~.base.VideoAdapter` interface.

The GLM-4V adapter (:mod:`.glm4v`: vision tower, frame blocks, 3-D positions); only the
time text after each unit's block differs: ``Glm46VProcessor`` writes
``"{t:.1f} seconds"``, ``t`` the unit's first frame time. The language model is the
checkpoint's ``text_config`` (GLM-4V's text model, or its MoE variant).
"""
from __future__ import annotations

from .glm4v import Glm4vAdapter


class Glm46VAdapter(Glm4vAdapter):
    """Wraps a ``Glm46VForConditionalGeneration`` (same arguments and errors as
    :class:`~.qwen2_5_vl.Qwen2_5_VLAdapter`)."""

    MODEL_CLASS = "Glm46VForConditionalGeneration"

    def time_ids(self, t: float) -> list[int]:
        return self.tokenizer.encode(f"{t:.1f} seconds", add_special_tokens=False)

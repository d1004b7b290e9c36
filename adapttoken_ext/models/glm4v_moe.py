"""GLM-4.5V adapter (model_type ``glm4v_moe``: ``zai-org/GLM-4.5V``): the
:class:`~.base.VideoAdapter` interface.

The GLM-4.1V adapter (:mod:`.glm4v`) unchanged: the same vision tower, ``Glm4vProcessor``'s
frame blocks with the ``int(t)`` time text, and ``get_rope_index``. Only the language model's
MLPs differ (routed and shared experts after the first dense layer); routing is per token
and changes nothing in the video layout, the positions or the attention that ranks tokens.
"""
from __future__ import annotations

from .glm4v import Glm4vAdapter


class Glm4vMoeAdapter(Glm4vAdapter):
    """Wraps a ``Glm4vMoeForConditionalGeneration`` (same arguments and errors as
    :class:`~.qwen2_5_vl.Qwen2_5_VLAdapter`)."""

    MODEL_CLASS = "Glm4vMoeForConditionalGeneration"

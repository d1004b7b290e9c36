"""The part shared by families with 1-D RoPE and one frame per unit (InternVL,
LLaVA-OneVision): the chat prompt split at a text placeholder and 1-D positions. The rest of
the language-model side is :class:`~.common.ChatVideoAdapter`; a family module adds its
vision tower and the layout of its video tokens.

1-D positions (method.md step 9): a sequence's columns sit at ``0..L-1`` as in the model's
own unpruned forward (the group pass: the group as a short video). The final pass uses
**compact** positions: the pruned sequence, kept columns in their original order, at
``0..len-1``, and generated token ``s`` at ``len + s``. Full-video positions would run to
``L_full`` (about 1M at 4096 frames), far past the trained context.
"""
from __future__ import annotations

import torch

from .base import Prompt, Sequence
from .common import ChatVideoAdapter, split_chat


class Rope1DAdapter(ChatVideoAdapter):
    """Base of the 1-D-RoPE adapters (a :class:`~adapttoken_ext.models.base.VideoAdapter`
    once a subclass adds ``frame_size``, ``unit_grid``, ``encode`` and ``sequence``;
    arguments and errors as :class:`~.common.ChatVideoAdapter`)."""

    video_placeholder = "<video>"  # the chat template's video text
    unit = 1                       # frames per temporal unit: no temporal merging

    def prompt(self, question: str, options: list[str] | None, instruction: str | None) -> Prompt:
        """Token ids around the chat template's video placeholder (method.md step 2)."""
        return Prompt(*split_chat(self.tokenizer, question, options, instruction, self.video_placeholder))

    @staticmethod
    def one_d(ids: torch.Tensor, visual_key: torch.Tensor, unit: torch.Tensor) -> Sequence:
        """A :class:`Sequence` at the model's own 1-D positions ``0..L-1`` (``[1, L]``), pruned
        to compact positions (method.md step 9)."""
        n = ids.numel()
        return Sequence(ids, visual_key, unit, torch.arange(n)[None], n, compact=True)

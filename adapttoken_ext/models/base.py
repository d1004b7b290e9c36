"""The model-adapter interface: everything the pipeline may call on a model family.

One module per family (``qwen2_5_vl.py``, ...) implements :class:`VideoAdapter`; the
pipeline (``adapttoken_ext.pipeline``) never branches on a family name. The data types
here are family-agnostic:

- a visual token is identified by its **key** ``unit * tokens_per_unit + h * cols + w``
  (``unit``: temporal unit of ``adapter.unit`` frames; ``(h, w)``: its cell in the unit's
  ``rows x cols`` token grid, method.md notation);
- a :class:`Sequence` is a prompt with a clip's visual tokens, column by column: text ids,
  the visual key of each visual column, the unit each column belongs to (visual tokens,
  and text that exists for a unit, such as a per-unit timestamp or ``Frame{i}:`` label),
  and position ids of any rank (M-RoPE ``[3, L]``, 1-D ``[1, L]``) from the model's trained
  rules. Pruning (method.md step 9) is generic: :meth:`Sequence.prune` gathers M-RoPE
  positions and renumbers 1-D ones compactly;
- :class:`Visual` holds the visual token embeddings with any per-token side inputs
  (e.g. DeepStack features), so pruning takes the same rows of both.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Prompt", "Clip", "Visual", "Sequence", "DecodeState", "VideoAdapter"]


@dataclass
class Prompt:
    """Token ids before (``prefix``) and after (``suffix``: question, options, instruction,
    assistant prefix) the video, as the family's chat template renders them (step 2)."""
    prefix: list[int]
    suffix: list[int]


@dataclass
class Clip:
    """The units of a video shown to the model in one pass, in temporal order.

    ``units``: global unit indices, ascending. ``timestamps_s``: presentation time in
    seconds of each unit: the mean of its first and last frames' times (Qwen3-VL's
    temporal-patch time). ``seconds_per_unit``: the sampling interval
    between consecutive units of this clip (a group of an interleaved layout spans
    ``G`` times the full video's interval). ``frame_times_s``: the time in seconds of
    every frame of the clip, unit by unit (``len(units) * unit``; GLM-4V labels a unit
    with its first frame's time)."""
    units: list[int]
    timestamps_s: list[float]
    seconds_per_unit: float
    frame_times_s: list[float] = field(default_factory=list)


@dataclass
class Visual:
    """Visual tokens of a clip in (unit, h, w) raster order.

    ``embeds``: ``[N, hidden]`` in the language model's dtype. ``side``: per-token side
    inputs, each a tensor whose first dimension is ``N`` (pruned with the same rows)."""
    embeds: torch.Tensor
    side: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def take(self, rows: torch.Tensor) -> "Visual":
        """The given rows (int64 indices, any device) of the embeddings and side inputs."""
        return Visual(self.embeds[rows.to(self.embeds.device)],
                      {k: v[rows.to(v.device)] for k, v in self.side.items()})

    @staticmethod
    def cat(parts: list["Visual"]) -> "Visual":
        keys = parts[0].side.keys() if parts else ()
        return Visual(torch.cat([p.embeds for p in parts]),
                      {k: torch.cat([p.side[k] for p in parts]) for k in keys})


@dataclass
class Sequence:
    """A prompt with visual tokens, one entry per column (all tensors on the host).

    Attributes:
        input_ids: int64 ``[L]``; visual columns hold the model's placeholder id.
        visual_key: int64 ``[L]``: the visual token key, or -1 for text.
        unit: int64 ``[L]``: the unit a column belongs to, or -1 for prompt text.
        positions: int64 ``[R, L]`` position ids (R = 3 for M-RoPE, 1 for 1-D RoPE).
        next_position: where the first generated token sits.
        compact: how pruning places the kept columns (method.md step 9). False (M-RoPE
            families): each keeps its full-sequence position and ``next_position`` (the
            full sequence's maximum + 1) is kept. True (1-D RoPE families): the pruned
            sequence gets compact positions ``0..len-1`` and ``next_position = len``.
    """
    input_ids: torch.Tensor
    visual_key: torch.Tensor
    unit: torch.Tensor
    positions: torch.Tensor
    next_position: int
    compact: bool = False

    def __len__(self) -> int:
        return self.input_ids.numel()

    @property
    def visual_columns(self) -> torch.Tensor:
        """int64 ``[N]`` column indices of the visual tokens, ascending."""
        return torch.nonzero(self.visual_key >= 0).flatten()

    def visual_span(self) -> tuple[int, int]:
        """``(start, end)``: the columns from the first visual token to one past the last.
        The text after ``end`` is the question: its queries rank the visual keys (step 3)."""
        cols = self.visual_columns
        if cols.numel() == 0:
            raise ValueError("sequence: has no visual tokens")
        return int(cols[0]), int(cols[-1]) + 1

    def prune(self, keep_keys: torch.Tensor) -> "Sequence":
        """Keep prompt text, the visual tokens whose key is in ``keep_keys``, and the text
        of units that keep at least one visual token, in their original order (method.md
        step 9). Text ids are kept as they are (a ``Frame{i}:`` label keeps its full-video
        number). Positions: the kept columns' full-sequence positions, or with
        ``compact`` ``0..len-1`` and decoding from ``len``."""
        keep_keys = torch.as_tensor(keep_keys, dtype=torch.long).flatten()
        vis = self.visual_key >= 0
        kept_vis = vis & torch.isin(self.visual_key, keep_keys)
        kept_units = torch.unique(self.unit[kept_vis])
        cols = (self.unit < 0) | kept_vis | (~vis & torch.isin(self.unit, kept_units))
        if int(kept_vis.sum()) != torch.unique(keep_keys).numel():
            raise ValueError("keep_keys: some keys are not visual tokens of this sequence")
        n = int(cols.sum())
        if self.compact:
            positions, nxt = torch.arange(n).expand(self.positions.shape[0], n), n
        else:
            positions, nxt = self.positions[:, cols], self.next_position
        return replace(self, input_ids=self.input_ids[cols], visual_key=self.visual_key[cols],
                       unit=self.unit[cols], positions=positions, next_position=nxt)


    def final_position_bound(self, budget: int) -> int:
        """The largest position id that :meth:`prune` of this full sequence to at most
        ``budget`` visual tokens can give a column (method.md step 9), generated tokens
        not counted. Gathered positions: the full maximum, ``next_position - 1``, whatever
        is kept. Compact positions: the length of the longest such pruning minus one, i.e.
        all prompt text, ``min(budget, N)`` visual tokens and the text of the
        ``min(budget, units)`` units with the most text (each kept in a unit of its own)."""
        if not self.compact:
            return self.next_position - 1
        vis = self.visual_key >= 0
        units = torch.unique(self.unit[vis])
        _, text = torch.unique(self.unit[~vis & (self.unit >= 0)], return_counts=True)
        most = int(text.sort(descending=True).values[:min(budget, units.numel())].sum())
        return int((self.unit < 0).sum()) + min(budget, int(vis.sum())) + most - 1


@dataclass
class DecodeState:
    """What greedy decoding carries between steps; owned by the adapter. ``position``: the
    position id of the next token to feed (method.md step 9)."""
    past: Any
    position: int


@runtime_checkable
class VideoAdapter(Protocol):
    """What the pipeline calls on a model family (method.md steps 0-9).

    Attributes:
        model: the wrapped ``transformers`` model.
        unit: frames per temporal unit (2 for Qwen2.5-VL, 1 without temporal merging).
        num_layers: decoder layers of the language model.
        eos_token_ids: token ids that end generation (generation config, chat template).
        input_device: the device of the input embedding layer (inputs go there).
    """
    model: Any
    unit: int
    num_layers: int
    eos_token_ids: set[int]

    @property
    def input_device(self) -> torch.device: ...

    def default_reference_layer(self) -> int:
        """Step 3: the layer whose attention ranks tokens (``round(0.7 * layers)``)."""

    def frame_size(self, height: int, width: int, max_pixels: int) -> tuple[int, int]:
        """Step 0: (height, width) every frame is resized to, by the family's rules."""

    def unit_grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of visual tokens per unit for frames of that size."""

    def prompt(self, question: str, options: list[str] | None, instruction: str | None) -> Prompt:
        """Step 2: the chat-template token ids around the video."""

    def option_token_ids(self, letters: list[str]) -> list[list[int]]:
        """Step 4: per option letter, every single-token surface form it can take as the
        first answer token (``"A"``, ``" A"``, ...). ValueError naming ``options`` if a
        letter has none."""

    def encode(self, frames: torch.Tensor) -> Visual:
        """Step 1: the vision tower on uint8 frames ``[n_units * unit, 3, H, W]`` (frames of
        consecutive units of one clip); ``[n_units * rows * cols]`` tokens. Independent of
        the question, so an encoding can serve several questions."""

    def sequence(self, prompt: Prompt, clip: Clip, grid: tuple[int, int]) -> Sequence:
        """Steps 2 and 9: ``[prefix][clip's visual tokens and their text][suffix]`` with
        position ids from the model's own rules, the clip treated as a whole video."""

    def prefill(self, seq: Sequence, visual: Visual, use_cache: bool = False
                ) -> tuple[torch.Tensor, DecodeState | None]:
        """One forward over ``seq`` with ``visual`` (``len(visual)`` = visual columns) in its
        visual columns. Returns the last position's logits ``[vocab]`` (on the output
        layer's device) and, with ``use_cache``, the state to decode from."""

    def decode_step(self, state: DecodeState, token_id: int) -> tuple[torch.Tensor, DecodeState]:
        """Feed one generated token at ``state.position``; the next logits and state."""

    def install_score_hook(self, layer: int):
        """Step 3: a :class:`~adapttoken_ext.models.attention_hook.ScoreCapture` on the
        attention of decoder layer ``layer`` (ValueError naming ``reference_layer`` if out
        of range)."""

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids, special tokens skipped."""

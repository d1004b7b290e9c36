"""Qwen3-VL adapter (model_type ``qwen3_vl``): the :class:`~.base.VideoAdapter` interface.

What differs from Qwen2.5-VL (whose adapter this extends: geometry, patchify, prompt,
option letters, loading are the same):

- **Timestamped video blocks.** ``Qwen3VLProcessor`` replaces the chat template's
  ``<|video_pad|>`` with one block per temporal patch (unit of 2 frames),
  ``<{t:.1f} seconds><|vision_start|><|video_pad|>…<|vision_end|>``, ``t`` the mean time
  of the patch's first and last frames; the template's own ``<|vision_start|>`` and
  ``<|vision_end|>`` stay around the blocks. Each block's text belongs to its unit, so
  pruning (method.md step 9, :meth:`~.base.Sequence.prune`) drops the timestamp and
  brackets of a patch whose tokens are all dropped, and a patch with a kept token keeps
  its timestamp.
- **Interleaved M-RoPE** from the model's own ``get_rope_index`` over the unpruned ids
  (it splits the video grid per temporal patch); the kept columns keep those positions.
  Unlike Qwen2.5-VL's (:mod:`.mrope`), this is the trained rule: each one-frame block
  and each text run start at the maximum position so far + 1, as in Qwen's reference
  code (method.md "Positions").
- **DeepStack.** The vision tower also returns features of some of its layers, added to
  the first decoder layers' hidden states at the visual positions. They travel as
  :class:`~.base.Visual` side inputs (``deepstack0``, ...), so pruning gathers them with
  the same indices as the visual tokens; the model's own ``visual_pos_masks`` then marks
  exactly the kept visual columns.
- Prefill goes through the model's own forward with precomputed ``mm_encoder_outputs``.
"""
from __future__ import annotations

import torch

from .attention_hook import flash_kwargs
from .base import DecodeState, Prompt, Sequence, Visual
from .common import execution_device
from .qwen2_5_vl import Qwen2_5_VLAdapter

# transformers' IMAGENET_STANDARD_MEAN / _STD: Qwen3-VL's video processor defaults
_HALF = (0.5, 0.5, 0.5)


class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    """Wraps a ``Qwen3VLForConditionalGeneration`` (same arguments and errors as
    :class:`~.qwen2_5_vl.Qwen2_5_VLAdapter`)."""

    MODEL_CLASS = "Qwen3VLForConditionalGeneration"
    MEAN, STD = _HALF, _HALF

    def __init__(self, model, tokenizer, preprocessor: dict | None = None):
        super().__init__(model, tokenizer, preprocessor)
        cfg = model.config
        self.vision_start_id, self.vision_end_id = cfg.vision_start_token_id, cfg.vision_end_token_id

    def timestamp_ids(self, t: float) -> list[int]:
        """Ids of the processor's timestamp text ``<{t:.1f} seconds>`` (t in seconds)."""
        return self.tokenizer.encode(f"<{t:.1f} seconds>", add_special_tokens=False)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> Visual:
        """Vision tower on uint8 frames ``[n_units * 2, 3, H, W]`` (method.md step 1):
        ``[n_units * rows * cols, hidden]`` embeddings and, as side inputs, the DeepStack
        features ``deepstack{i}`` of the same rows (none for towers without DeepStack)."""
        visual = self.model.model.visual
        dev = execution_device(visual)
        pv, grid = self.pixel_values(frames.to(dev))
        out = self.model.model.get_video_features(pv.to(visual.dtype), grid.to(dev), return_dict=True)
        side = {f"deepstack{i}": torch.cat(f).to(self.dtype)
                for i, f in enumerate(getattr(out, "deepstack_features", None) or [])}
        return Visual(torch.cat(out.pooler_output).to(self.dtype), side)

    def sequence(self, prompt: Prompt, clip, grid) -> Sequence:
        """``[prefix]`` then per unit ``<t seconds><|vision_start|>[rows x cols video
        tokens]<|vision_end|>`` then ``[suffix]``, with ``t`` from ``clip.timestamps_s`` and
        M-RoPE ids ``[3, L]`` from the model's ``get_rope_index`` (method.md steps 2, 9)."""
        rows, cols = grid
        tpu = rows * cols
        ids, unit, key = list(prompt.prefix), [-1] * len(prompt.prefix), [-1] * len(prompt.prefix)
        for u, t in zip(clip.units, clip.timestamps_s):
            text = self.timestamp_ids(t) + [self.vision_start_id]
            ids += text + [self.video_token_id] * tpu + [self.vision_end_id]
            unit += [u] * (len(text) + tpu + 1)
            key += [-1] * len(text) + list(range(u * tpu, (u + 1) * tpu)) + [-1]
        ids += prompt.suffix
        unit += [-1] * len(prompt.suffix)
        key += [-1] * len(prompt.suffix)
        ids = torch.tensor(ids)
        pos, _ = self.model.model.get_rope_index(
            ids[None], mm_token_type_ids=((ids == self.video_token_id).int() * 2)[None],
            video_grid_thw=torch.tensor([[len(clip.units), rows * self.merge, cols * self.merge]]))
        pos = pos[:, 0]
        return Sequence(ids, torch.tensor(key), torch.tensor(unit), pos, int(pos.max()) + 1)

    def _encoder_outputs(self, visual: Visual) -> dict:
        """``visual`` as the ``mm_encoder_outputs`` the model's forward accepts."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        out = BaseModelOutputWithPooling(pooler_output=(visual.embeds,))
        ds = [visual.side[k] for k in sorted(visual.side, key=lambda k: int(k[len("deepstack"):]))]
        if ds:
            out.deepstack_features = [(d,) for d in ds]
        return {"video": out}

    @torch.no_grad()
    def prefill(self, seq: Sequence, visual: Visual, use_cache: bool = False):
        """The model's own forward over ``seq`` with ``visual`` (and its DeepStack rows) as
        precomputed encoder outputs in the visual columns, at ``seq.positions``."""
        logits, past = self._run(seq.input_ids, seq.positions, None, use_cache, self._encoder_outputs(visual))
        return logits, (DecodeState(past, seq.next_position) if use_cache else None)

    @torch.no_grad()
    def decode_step(self, state: DecodeState, token_id: int):
        """Feed ``token_id`` at ``state.position`` (same id on the 3 M-RoPE rows)."""
        pos = torch.full((3, 1), state.position, dtype=torch.long)
        logits, past = self._run(torch.tensor([token_id]), pos, state.past, True, None)
        return logits, DecodeState(past, state.position + 1)

    def _run(self, ids, positions, past, use_cache, mm):
        # 3-row position ids: transformers takes no text row from them, so a pruned
        # (non-contiguous) sequence is not read as packed; no mask is needed for one sequence
        dev = self.input_device
        seen = past.get_seq_length() if past is not None else 0
        out = self.model(input_ids=ids[None].to(dev), position_ids=positions[:, None].to(dev),
                         cache=past, use_cache=use_cache, logits_to_keep=1,
                         mm_encoder_outputs=mm, **flash_kwargs(self.model, len(ids), seen + len(ids), dev))
        return out.logits[0, -1], out.cache

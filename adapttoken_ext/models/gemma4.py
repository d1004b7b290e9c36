"""Gemma 4 adapter (model_type ``gemma4``: ``google/gemma-4-31B-it``, ``-26B-A4B-it``,
``-E4B-it``, ``-E2B-it``): the :class:`~.base.VideoAdapter` interface.

- **Frames.** A unit is one frame. ``Gemma4VideoProcessor`` resizes each frame, aspect
  kept, to sides that are multiples of ``patch_size * pooling_kernel_size`` (16 * 3 = 48
  px) within a patch budget, cuts 16 px patches and the vision tower pools 3x3 patches
  into one soft token; here the budget is ``max_pixels / 16^2`` patches. Pixels are only
  rescaled to [0, 1] (the tower maps them to [-1, 1] itself).
- **Per-frame text.** ``Gemma4Processor.replace_video_token`` writes each frame as
  ``mm:ss <boi>[soft tokens]<eoi>``, frames joined by a space. The time text (with the
  space before it) belongs to its frame, so pruning (method.md step 9) drops it with a
  frame whose tokens are all dropped; kept frames keep their full-video time.
- **Attention.** The language model mixes sliding-window layers (``sliding_window``
  keys back) and global layers (``config.text_config.layer_types``). With
  ``use_bidirectional_attention == "vision"`` (the larger checkpoints) the tokens of one
  frame (a contiguous run of soft tokens, found from ``mm_token_type_ids``) also attend to
  each other bidirectionally, in the sliding-window layers only; global layers stay
  causal. Text tokens are causal in every layer. So the reference layer is a global
  layer (a sliding-window query cannot see the early visual keys), and there the model's
  own softmax is the causal one ``attention_scores`` computes (method.md step 3). The
  prefill passes ``mm_token_type_ids``, so the sliding layers see each kept frame's
  tokens as one block, as they would for that frame alone. Flash attention drops these
  blocks, so it is refused and sdpa is the default.
- **Positions** are 1-D (:mod:`.rope1d`). Prefill and decoding feed token ids with the
  visual rows as ``mm_encoder_outputs``: the per-layer embeddings of the small models are
  looked up from the token ids.
"""
from __future__ import annotations

import torch

from .base import Clip, DecodeState, Sequence, Visual
from .common import execution_device
from .rope1d import Rope1DAdapter


def _check_attention(name: str | None, arg: str) -> None:
    if name and name.startswith("flash_attention"):
        raise ValueError(f"{arg}: {name} drops Gemma 4's bidirectional attention within a frame; "
                         "use sdpa or eager")


class Gemma4Adapter(Rope1DAdapter):
    """Wraps a ``Gemma4ForConditionalGeneration`` (arguments and errors as
    :class:`~.common.ChatVideoAdapter`)."""

    MODEL_CLASS = "Gemma4ForConditionalGeneration"
    MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # Gemma4VideoProcessor: rescale only
    END_OF_TURN = "<turn|>"
    video_placeholder = "<|video|>"

    def __init__(self, model, tokenizer, preprocessor: dict | None = None):
        """Raises ValueError naming ``model`` when it runs flash attention (see
        :meth:`from_pretrained`)."""
        _check_attention(model.config._attn_implementation, "model")
        super().__init__(model, tokenizer, preprocessor)
        cfg = model.config
        self.patch = cfg.vision_config.patch_size
        self.pool = cfg.vision_config.pooling_kernel_size
        self.video_token_id, self.boi_id, self.eoi_id = cfg.video_token_id, cfg.boi_token_id, cfg.eoi_token_id

    @classmethod
    def from_pretrained(cls, name_or_path: str, device="cpu", dtype=None, device_map=None,
                        attn_implementation: str | None = None):
        """As :meth:`.common.ChatVideoAdapter.from_pretrained`, with sdpa by default: flash
        attention drops the bidirectional frame blocks of the sliding layers (transformers
        5.23 drops them silently; 5.24 marks Gemma 4 as not supporting it).

        Raises:
            ValueError: naming ``attn_implementation`` for a flash attention backend.
        """
        _check_attention(attn_implementation, "attn_implementation")
        return super().from_pretrained(name_or_path, device=device, dtype=dtype, device_map=device_map,
                                       attn_implementation=attn_implementation or "sdpa")

    # ---- geometry ------------------------------------------------------------------------
    def frame_size(self, height: int, width: int, max_pixels: int) -> tuple[int, int]:
        """The video processor's aspect-preserving size for a budget of
        ``max_pixels / patch^2`` patches (method.md step 0)."""
        from transformers.models.gemma4.processing_gemma4 import (
            get_aspect_ratio_preserving_size,
        )
        return get_aspect_ratio_preserving_size(height, width, self.patch, max_pixels // self.patch ** 2, self.pool)

    def unit_grid(self, height: int, width: int) -> tuple[int, int]:
        """Soft-token grid (rows, cols) of one frame: one token per 3x3 patches."""
        side = self.patch * self.pool
        return height // side, width // side

    # ---- vision ----------------------------------------------------------------------------
    def patches(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 frames ``[n, 3, H, W]`` as the video processor lays them out: pixel values
        ``[n, P, 3*patch*patch]`` (patch raster order, channels last) and patch positions
        ``[n, P, 2]`` as (x, y), padded (zeros, position -1) to ``P`` = the smallest
        supported soft-token budget times ``pool^2`` that holds the frame's ``ph*pw``
        patches, as the processor pads to its ``max_soft_tokens`` (70 at 308x560): the
        tower then sees the processor's exact input."""
        from transformers.models.gemma4.image_processing_pil_gemma4 import (
            _SUPPORTED_SOFT_TOKENS,
        )
        n, c, h, w = frames.shape
        p, k = self.patch, (h // self.patch) * (w // self.patch)
        x = self.normalize(frames).reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(n, k, -1)
        ys, xs = torch.meshgrid(torch.arange(h // p), torch.arange(w // p), indexing="ij")
        pos = torch.stack([xs, ys], dim=-1).reshape(1, k, 2).expand(n, k, 2).to(frames.device)
        size = next((b * self.pool ** 2 for b in _SUPPORTED_SOFT_TOKENS if b * self.pool ** 2 >= k), k)
        return (torch.nn.functional.pad(x, (0, 0, 0, size - k)),
                torch.nn.functional.pad(pos, (0, 0, 0, size - k), value=-1))

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> Visual:
        """Vision tower, 3x3 pooling and projection on uint8 frames ``[n, 3, H, W]``
        (method.md step 1): ``[n * rows * cols, hidden]`` in frame then raster order."""
        tower = self.model.model.vision_tower
        pv, pos = self.patches(frames.to(execution_device(tower)))
        out = self.model.model.get_video_features(pv.to(tower.dtype), pos, return_dict=True,
                                                  num_frames_per_video=torch.tensor([len(frames)]))
        return Visual(torch.cat(out.pooler_output).to(self.dtype))

    # ---- language model --------------------------------------------------------------------
    @staticmethod
    def time_text(t: float) -> str:
        """The processor's ``mm:ss`` of a frame at ``t`` seconds."""
        return f"{int(t // 60):02d}:{int(t % 60):02d}"

    def sequence(self, prompt, clip: Clip, grid: tuple[int, int]) -> Sequence:
        """``[prefix]`` then per frame ``" "? "mm:ss " <boi> [rows x cols] <eoi>`` then
        ``[suffix]`` as ``Gemma4Processor`` expands the video placeholder, at 1-D positions
        (method.md steps 2, 9)."""
        tpu = grid[0] * grid[1]
        texts = self.tokenizer([(" " if i else "") + self.time_text(t) + " " for i, t in enumerate(clip.timestamps_s)],
                               add_special_tokens=False)["input_ids"]
        ids, key, unit = list(prompt.prefix), [-1] * len(prompt.prefix), [-1] * len(prompt.prefix)
        for u, text in zip(clip.units, texts):
            ids += list(text) + [self.boi_id] + [self.video_token_id] * tpu + [self.eoi_id]
            key += [-1] * (len(text) + 1) + list(range(u * tpu, (u + 1) * tpu)) + [-1]
            unit += [u] * (len(text) + tpu + 2)
        ids += prompt.suffix
        key += [-1] * len(prompt.suffix)
        unit += [-1] * len(prompt.suffix)
        return self.one_d(torch.tensor(ids), torch.tensor(key), torch.tensor(unit))

    @torch.no_grad()
    def prefill(self, seq: Sequence, visual: Visual, use_cache: bool = False):
        """The model's own forward over ``seq``'s ids with ``visual`` as precomputed video
        encoder outputs, at ``seq.positions``, with ``mm_token_type_ids`` marking the visual
        columns (each frame's kept tokens: one bidirectional block in the sliding layers)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        mm = {"video": BaseModelOutputWithPooling(pooler_output=(visual.embeds,))}
        types = (seq.visual_key >= 0).long() * 2
        logits, past = self._run(seq.input_ids, seq.positions, None, use_cache, mm, types)
        return logits, (DecodeState(past, seq.next_position) if use_cache else None)

    @torch.no_grad()
    def decode_step(self, state: DecodeState, token_id: int):
        """Feed ``token_id`` at ``state.position`` (a text token: causal in every layer)."""
        pos = torch.full((1, 1), state.position, dtype=torch.long)
        logits, past = self._run(torch.tensor([token_id]), pos, state.past, True, None, None)
        return logits, DecodeState(past, state.position + 1)

    def _run(self, ids, positions, past, use_cache, mm, types):
        dev = self.input_device
        seen = past.get_seq_length() if past is not None else 0
        out = self.model(input_ids=ids[None].to(dev), position_ids=positions.to(dev),
                         attention_mask=torch.ones(1, seen + ids.numel(), dtype=torch.long, device=dev),
                         mm_token_type_ids=None if types is None else types[None].to(dev),
                         cache=past, use_cache=use_cache, logits_to_keep=1, mm_encoder_outputs=mm)
        return out.logits[0, -1], out.cache

    # ---- reference layer (method.md step 3) ------------------------------------------------
    @property
    def global_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.text_config.layer_types) if t == "full_attention"]

    def default_reference_layer(self) -> int:
        """The global (full-attention) layer nearest ``round(0.7 * num_layers)`` (the
        earlier one on a tie)."""
        target = round(0.7 * self.num_layers)
        return min(self.global_layers, key=lambda i: (abs(i - target), i))

    def reference_attention(self, layer: int):
        """The attention module of global decoder layer ``layer``.

        Raises:
            ValueError: naming ``reference_layer`` when it is out of range or a
                sliding-window layer, and listing the global layers.
        """
        if 0 <= layer < self.num_layers and layer not in self.global_layers:
            raise ValueError(f"reference_layer: layer {layer} is a sliding-window layer, whose queries do not "
                             f"see keys more than {self.text_config.sliding_window} tokens back; use a global "
                             f"layer: {self.global_layers}")
        return super().reference_attention(layer)

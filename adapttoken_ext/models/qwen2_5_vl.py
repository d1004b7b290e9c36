"""Qwen2.5-VL adapter (model_type ``qwen2_5_vl``): the :class:`~.base.VideoAdapter` interface.

The video placeholder run, M-RoPE positions by the trained rule (:mod:`.mrope`, not
transformers 5.x's ``get_rope_index``), the 2x2 spatial merge, temporal units of ``temporal_patch_size`` (2) frames, pixel patchification and the
vision tower. The pipeline (``adapttoken_ext.pipeline``) sees only the interface.
"""
from __future__ import annotations

import torch

from .base import Clip, Prompt, Sequence, Visual
from .common import ChatVideoAdapter, chat_ids, execution_device
from .mrope import qwen2_vl_positions


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int):
    """Qwen2-VL's frame size rule: sides multiples of ``factor``, area in [min, max] pixels,
    aspect ratio kept (transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as sr
    return sr(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


class Qwen2_5_VLAdapter(ChatVideoAdapter):
    """Wraps a ``Qwen2_5_VLForConditionalGeneration`` and its tokenizer (a
    :class:`~adapttoken_ext.models.base.VideoAdapter`; arguments and errors as
    :class:`~.common.ChatVideoAdapter`)."""

    MODEL_CLASS = "Qwen2_5_VLForConditionalGeneration"
    POSITION_ROWS = 3  # M-RoPE

    def __init__(self, model, tokenizer, preprocessor: dict | None = None):
        super().__init__(model, tokenizer, preprocessor)
        vc = model.config.vision_config
        self.patch = vc.patch_size
        self.merge = vc.spatial_merge_size
        self.unit = vc.temporal_patch_size  # frames per temporal unit (method.md notation)
        self.video_token_id = model.config.video_token_id
        # temporal position ids per second of video (M-RoPE, method.md "Positions")
        self.tokens_per_second = getattr(vc, "tokens_per_second", None)

    # ---- geometry ------------------------------------------------------------------------
    def frame_size(self, height: int, width: int, max_pixels: int, min_pixels: int = 56 * 56):
        """Resized (height, width) of every frame (method.md step 0)."""
        return smart_resize(height, width, self.patch * self.merge, min_pixels, max_pixels)

    def unit_grid(self, height: int, width: int) -> tuple[int, int]:
        """LLM token grid (rows, cols) of one unit after the 2x2 merge."""
        return height // (self.patch * self.merge), width // (self.patch * self.merge)

    # ---- prompt ----------------------------------------------------------------------------
    def prompt(self, question: str, options: list[str] | None, instruction: str | None) -> Prompt:
        """Token ids before and after the video placeholder (method.md step 2)."""
        ids = chat_ids(self.tokenizer, question, options, instruction)
        if ids.count(self.video_token_id) != 1:
            raise ValueError("tokenizer: chat template must render one video placeholder")
        i = ids.index(self.video_token_id)
        return Prompt(ids[:i], ids[i + 1:])

    # ---- vision ----------------------------------------------------------------------------
    def pixel_values(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patchify uint8 frames ``[n_units * unit, 3, H, W]`` as Qwen2-VL's video processor does.

        Returns ``(pixel_values [n_units*gh*gw, 3*unit*patch*patch], grid_thw [1, 3])``.
        """
        t, c, h, w = frames.shape
        p, m, u = self.patch, self.merge, self.unit
        x = self.normalize(frames)
        gt, gh, gw = t // u, h // p, w // p
        x = x.view(gt, u, c, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gt * gh * gw, c * u * p * p)
        return x, torch.tensor([[gt, gh, gw]])

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> Visual:
        """Vision tower on uint8 frames ``[n_units * unit, 3, H, W]`` (method.md step 1).

        Returns ``[n_units * rows * cols, hidden]`` embeddings in temporal then raster order,
        on the vision tower's device.
        """
        visual = self.model.model.visual
        dev = execution_device(visual)
        pv, grid = self.pixel_values(frames.to(dev))  # normalise where the tower runs
        out = self.model.model.get_video_features(pv.to(visual.dtype), grid.to(dev), return_dict=True)
        return Visual(torch.cat(out.pooler_output, dim=0).to(self.dtype))

    # ---- language model --------------------------------------------------------------------
    def time_scale(self, clip: Clip) -> tuple[float, float]:
        """``(second_per_grid_t, tokens_per_second)`` of the temporal M-RoPE ids: Qwen2.5-VL's
        temporal patches are ``clip.seconds_per_unit`` apart, at the config's
        ``tokens_per_second`` (method.md "Positions")."""
        return clip.seconds_per_unit, self.tokens_per_second

    def sequence(self, prompt: Prompt, clip: Clip, grid: tuple[int, int]) -> Sequence:
        """``[prefix][units x rows x cols video tokens][suffix]`` with M-RoPE ids ``[3, L]``
        by the trained rule (:func:`.mrope.qwen2_vl_positions`: the suffix starts at the
        video's maximum position + 1; method.md "Positions", steps 2, 9). The clip's units
        are one video whose temporal patches are ``seconds_per_unit`` apart."""
        rows, cols = grid
        tpu, P = rows * cols, len(prompt.prefix)
        n = len(clip.units) * tpu
        ids = torch.tensor(prompt.prefix + [self.video_token_id] * n + prompt.suffix)
        pos, nxt = qwen2_vl_positions(P, len(clip.units), rows, cols, len(prompt.suffix),
                                      *self.time_scale(clip))
        units = torch.full_like(ids, -1)
        units[P:P + n] = torch.tensor(clip.units).repeat_interleave(tpu)
        key = torch.full_like(ids, -1)
        key[P:P + n] = units[P:P + n] * tpu + torch.arange(n) % tpu
        return Sequence(ids, key, units, pos, nxt)

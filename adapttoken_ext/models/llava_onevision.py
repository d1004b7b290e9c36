"""LLaVA-OneVision / LLaVA-Video adapter (model_type ``llava_onevision``,
``LlavaOnevisionForConditionalGeneration``; e.g. ``llava-hf/llava-onevision-qwen2-7b-ov-hf``,
``llava-hf/LLaVA-Video-7B-Qwen2-hf``): the :class:`~.base.VideoAdapter` interface.

Every frame is resized to the SigLIP tower's ``image_size`` (384 px: 27 x 27 patches of 14 px),
projected, and pooled 2x2 bilinearly to ``ceil(27 / 2)^2 = 196`` tokens, and one learned
newline token (``image_newline``) follows the whole video, all by the model's own
``get_video_features``; ``LlavaOnevisionProcessor.replace_video_token`` writes
``frames * 196 + 1`` video placeholders. A unit is one frame (no per-frame text). The newline
column belongs to the prompt (never pruned) and gets ``image_newline`` in :meth:`prefill`;
like every column after the last visual token it is one of the scoring queries (step 3).
"""
from __future__ import annotations

import math

import torch

from .base import Clip, Prompt, Sequence, Visual
from .common import execution_device
from .rope1d import Rope1DAdapter


class LlavaOnevisionAdapter(Rope1DAdapter):
    """Wraps a ``LlavaOnevisionForConditionalGeneration`` and its tokenizer.

    Raises:
        ValueError: naming ``tokenizer`` when it has no chat template.
    """

    MODEL_CLASS = "LlavaOnevisionForConditionalGeneration"  # MEAN, STD: CLIP's, as its processor

    def __init__(self, model, tokenizer, preprocessor: dict | None = None):
        super().__init__(model, tokenizer, preprocessor)
        vc = model.config.vision_config
        self.video_placeholder = getattr(tokenizer, "video_token", None) or "<video>"
        self.video_token_id = model.config.video_token_id
        self.tile = vc.image_size
        pooled = math.ceil(vc.image_size // vc.patch_size / 2)  # apply_pooling's output side
        self.grid = (pooled, pooled)

    # ---- geometry ------------------------------------------------------------------------
    def frame_size(self, height: int, width: int, max_pixels: int) -> tuple[int, int]:
        """Every frame is resized to the tower's square ``image_size`` (method.md step 0);
        the video's size and ``max_pixels`` do not change it."""
        return self.tile, self.tile

    def unit_grid(self, height: int, width: int) -> tuple[int, int]:
        """LLM token grid (rows, cols) of one frame after the 2x2 pooling (14 x 14 at 384 px)."""
        return self.grid

    # ---- vision ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> Visual:
        """SigLIP, projector and 2x2 bilinear pooling on uint8 frames ``[n, 3, H, W]``
        (method.md step 1) by ``get_video_features``: ``[n * rows * cols, hidden]`` in frame
        then raster order, without the trailing newline token (added in :meth:`prefill`)."""
        tower = self.model.model.vision_tower
        pv = self.normalize(frames.to(execution_device(tower)))
        out = self.model.model.get_video_features(pv[None].to(tower.dtype), return_dict=True)
        return Visual(out.pooler_output[0, :-1].to(self.dtype))

    # ---- language model --------------------------------------------------------------------
    def sequence(self, prompt: Prompt, clip: Clip, grid: tuple[int, int]) -> Sequence:
        """``[prefix][units x rows x cols video tokens][newline][suffix]`` as
        ``LlavaOnevisionProcessor`` expands the video placeholder, at 1-D positions
        (method.md steps 2, 9)."""
        tpu, P = grid[0] * grid[1], len(prompt.prefix)
        n = len(clip.units) * tpu
        ids = torch.tensor(prompt.prefix + [self.video_token_id] * (n + 1) + prompt.suffix)
        unit = torch.full_like(ids, -1)
        unit[P:P + n] = torch.tensor(clip.units).repeat_interleave(tpu)
        key = torch.full_like(ids, -1)
        key[P:P + n] = unit[P:P + n] * tpu + torch.arange(n) % tpu
        return self.one_d(ids, key, unit)

    def fill_extra(self, seq: Sequence, emb: torch.Tensor) -> None:
        """The video's trailing newline column (a placeholder that is no visual token) gets
        the model's ``image_newline`` embedding."""
        newline = ((seq.input_ids == self.video_token_id) & (seq.visual_key < 0)).to(emb.device)
        emb[newline] = self.model.model.image_newline.to(emb.device, emb.dtype)

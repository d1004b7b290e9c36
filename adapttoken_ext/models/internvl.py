"""InternVL adapter (model_type ``internvl``, ``InternVLForConditionalGeneration``; e.g.
``OpenGVLab/InternVL3-8B-hf``, ``OpenGVLab/InternVL3_5-8B-HF``,
``OpenGVLab/InternVL2_5-8B-MPO-hf``): the :class:`~.base.VideoAdapter` interface.

A video is one tile per frame at the vision tower's ``image_size`` (448 px, no dynamic
tiling), ``(image_size / patch_size * downsample_ratio)^2`` tokens per frame after the pixel
shuffle (256), each frame in the text ``InternVLProcessor.replace_video_token`` writes:
``Frame{i}: <img><IMG_CONTEXT>...</img>``, frames joined by ``"\\n"``. A unit is one frame
with its text (the ``"\\n"`` before it, its ``Frame{i}: `` label, ``<img>`` and ``</img>``), so
:meth:`Sequence.prune` drops that text with a frame whose tokens are all dropped
(method.md step 9); kept frames keep their full-video label ``Frame{i}`` and positions.
Transformers does the vision tower, pixel shuffle and projector (``get_image_features``).
"""
from __future__ import annotations

import torch

from .base import Clip, Prompt, Sequence, Visual
from .common import execution_device
from .rope1d import Rope1DAdapter


def _pair(x):
    return tuple(x) if isinstance(x, (list, tuple)) else (x, x)


class InternVLAdapter(Rope1DAdapter):
    """Wraps an ``InternVLForConditionalGeneration`` and its tokenizer (which names
    ``start_image_token``, ``end_image_token``, ``context_image_token``, ``video_token``
    as the hub checkpoints' tokenizers do; ``<img>``, ``</img>``, ``<IMG_CONTEXT>``,
    ``<video>`` otherwise).

    Raises:
        ValueError: naming ``tokenizer`` without a chat template, or ``model`` when the tile
            size does not give ``config.image_seq_length`` tokens per frame.
    """

    MODEL_CLASS = "InternVLForConditionalGeneration"  # MEAN, STD: CLIP's, as its processor

    def __init__(self, model, tokenizer, preprocessor: dict | None = None):
        super().__init__(model, tokenizer, preprocessor)
        cfg = model.config
        self.video_placeholder = getattr(tokenizer, "video_token", None) or "<video>"
        self.tile = _pair(cfg.vision_config.image_size)
        patch = _pair(cfg.vision_config.patch_size)
        self.grid = (int(self.tile[0] // patch[0] * cfg.downsample_ratio),
                     int(self.tile[1] // patch[1] * cfg.downsample_ratio))
        if self.grid[0] * self.grid[1] != cfg.image_seq_length:
            raise ValueError(f"model: {self.tile} px tiles give {self.grid} tokens per frame, "
                             f"config.image_seq_length is {cfg.image_seq_length}")
        self.image_token_id = cfg.image_token_id
        ids = tokenizer.convert_tokens_to_ids
        self.start_id = ids(getattr(tokenizer, "start_image_token", None) or "<img>")
        self.end_id = ids(getattr(tokenizer, "end_image_token", None) or "</img>")

    # ---- geometry ------------------------------------------------------------------------
    def frame_size(self, height: int, width: int, max_pixels: int) -> tuple[int, int]:
        """Every frame becomes one ``image_size`` tile (method.md step 0); the video's size
        and ``max_pixels`` do not change it (InternVL's video processor resizes to the tile)."""
        return self.tile

    def unit_grid(self, height: int, width: int) -> tuple[int, int]:
        """LLM token grid (rows, cols) of one frame after the pixel shuffle (16 x 16 at 448 px)."""
        return self.grid

    # ---- vision ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> Visual:
        """Vision tower, pixel shuffle and projector on uint8 tiles ``[n, 3, H, W]`` (method.md
        step 1): ``[n * rows * cols, hidden]`` in frame then raster order."""
        tower = self.model.model.vision_tower
        pv = self.normalize(frames.to(execution_device(tower)))
        out = self.model.model.get_image_features(pv.to(tower.dtype), return_dict=True)
        return Visual(out.pooler_output.flatten(0, 1).to(self.dtype))

    # ---- language model --------------------------------------------------------------------
    def sequence(self, prompt: Prompt, clip: Clip, grid: tuple[int, int]) -> Sequence:
        """``[prefix][per frame: "\\n"? "Frame{i}: " <img> rows*cols x <IMG_CONTEXT> </img>]
        [suffix]`` as ``InternVLProcessor`` expands the clip's video placeholder (frames
        numbered from 1 within the clip), at 1-D positions (method.md steps 2, 9)."""
        tpu = grid[0] * grid[1]
        labels = self.tokenizer([("\n" if i else "") + f"Frame{i + 1}: " for i in range(len(clip.units))],
                                add_special_tokens=False)["input_ids"]
        ids, key, unit = [list(prompt.prefix)], [[-1] * len(prompt.prefix)], [[-1] * len(prompt.prefix)]
        for u, label in zip(clip.units, labels):
            ids.append(list(label) + [self.start_id] + [self.image_token_id] * tpu + [self.end_id])
            n = len(label) + 1
            key.append([-1] * n + list(range(u * tpu, (u + 1) * tpu)) + [-1])
            unit.append([u] * (n + tpu + 1))
        ids.append(list(prompt.suffix))
        key.append([-1] * len(prompt.suffix))
        unit.append([-1] * len(prompt.suffix))
        flat = [torch.tensor([x for part in p for x in part], dtype=torch.long) for p in (ids, key, unit)]
        return self.one_d(*flat)

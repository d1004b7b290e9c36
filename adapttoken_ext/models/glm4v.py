"""GLM-4.1V adapter (model_type ``glm4v``: ``zai-org/GLM-4.1V-9B-Thinking``,
``-9B-Base``): the :class:`~.base.VideoAdapter` interface.

GLM-4V's vision tower, patches and temporal units are Qwen2-VL's (14 px patches, 2x2
merge, 2 frames per unit, CLIP normalisation), so this extends the Qwen2.5-VL adapter.
What differs:

- **Frame blocks with a time text.** ``Glm4vProcessor`` replaces the chat template's
  ``<|video|>`` (inside ``<|begin_of_video|>…<|end_of_video|>``) with one block per unit,
  ``<|begin_of_image|>`` + the unit's ``<|image|>`` tokens + ``<|end_of_image|>`` + the
  time text ``str(int(t))``, ``t`` the time in seconds of the unit's *first* frame
  (``metadata.timestamps[::2]``). The time text follows its block and belongs to its
  unit, so pruning (method.md step 9) drops the block and its time text together.
- **Frame size.** GLM's ``smart_resize`` rounds the sides to multiples of 28 (Qwen2-VL
  floors beyond the pixel budget), with the budget per frame here (``--max-pixels``).
- **3-D positions** from the model's own ``get_rope_index``: each unit is its own
  ``1 x rows x cols`` grid at ``(s, s + h, s + w)``, ``s`` the position after the text
  before it, and the text after it starts at ``s + max(rows, cols)``, one past the
  block's largest position. This is the trained rule (GLM's reference code and
  transformers 4.x agree), so the kept columns keep these positions (step 9).
"""
from __future__ import annotations

import torch

from .base import Clip, Prompt, Sequence, Visual
from .common import chat_ids, execution_device
from .qwen2_5_vl import Qwen2_5_VLAdapter


class Glm4vAdapter(Qwen2_5_VLAdapter):
    """Wraps a ``Glm4vForConditionalGeneration`` (same arguments and errors as
    :class:`~.qwen2_5_vl.Qwen2_5_VLAdapter`)."""

    MODEL_CLASS = "Glm4vForConditionalGeneration"
    END_OF_TURN = "<|user|>"  # GLM's template ends an assistant turn at the next role token

    def __init__(self, model, tokenizer, preprocessor: dict | None = None):
        super().__init__(model, tokenizer, preprocessor)
        cfg = model.config
        self.placeholder_id = cfg.video_token_id  # the template's <|video|>
        self.video_token_id = cfg.image_token_id  # the processor's expansion uses <|image|>
        self.image_start_id, self.image_end_id = cfg.image_start_token_id, cfg.image_end_token_id

    def frame_size(self, height: int, width: int, max_pixels: int, min_pixels: int = 112 * 112):
        """GLM's ``smart_resize`` for one unit (2 frames) at ``max_pixels`` per frame and
        at least ``min_pixels`` per unit (method.md step 0). The processor applies both
        bounds to the whole video instead (``size``: at most 28*28*2*30000 pixels over all
        frames), which would shrink every frame of a long video; here the resolution is
        per frame, as for every family."""
        from transformers.models.glm4v.video_processing_glm4v import smart_resize
        u = self.unit
        return smart_resize(u, height, width, temporal_factor=u, factor=self.patch * self.merge,
                            min_pixels=min_pixels, max_pixels=u * max_pixels)

    def prompt(self, question: str, options: list[str] | None, instruction: str | None) -> Prompt:
        """Token ids before and after the template's ``<|video|>`` (method.md step 2)."""
        ids = chat_ids(self.tokenizer, question, options, instruction)
        if ids.count(self.placeholder_id) != 1:
            raise ValueError("tokenizer: chat template must render one <|video|> placeholder")
        i = ids.index(self.placeholder_id)
        return Prompt(ids[:i], ids[i + 1:])

    def time_ids(self, t: float) -> list[int]:
        """Ids of the processor's time text after a unit's block (``t``: its first frame, s)."""
        return self.tokenizer.encode(str(int(t)), add_special_tokens=False)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> Visual:
        """Vision tower on uint8 frames ``[n_units * 2, 3, H, W]`` (method.md step 1):
        ``[n_units * rows * cols, hidden]`` in temporal then raster order."""
        visual = self.model.model.visual
        dev = execution_device(visual)
        pv, grid = self.pixel_values(frames.to(dev))
        out = self.model.model.get_video_features(pv.to(visual.dtype), grid.to(dev), return_dict=True)
        return Visual(torch.cat(out.pooler_output).to(self.dtype))

    def sequence(self, prompt: Prompt, clip: Clip, grid) -> Sequence:
        """``[prefix]`` then per unit ``<|begin_of_image|>[rows x cols]<|end_of_image|>{t}``
        then ``[suffix]``, ``t`` the unit's first frame time (``clip.frame_times_s``), with
        3-D positions ``[3, L]`` from the model's ``get_rope_index`` (method.md steps 2, 9)."""
        rows, cols = grid
        tpu = rows * cols
        ids, unit, key = list(prompt.prefix), [-1] * len(prompt.prefix), [-1] * len(prompt.prefix)
        for i, u in enumerate(clip.units):
            text = self.time_ids(clip.frame_times_s[i * self.unit])
            ids += [self.image_start_id] + [self.video_token_id] * tpu + [self.image_end_id] + text
            unit += [u] * (tpu + 2 + len(text))
            key += [-1] + list(range(u * tpu, (u + 1) * tpu)) + [-1] * (1 + len(text))
        ids += prompt.suffix
        unit += [-1] * len(prompt.suffix)
        key += [-1] * len(prompt.suffix)
        ids, key = torch.tensor(ids), torch.tensor(key)
        pos, _ = self.model.model.get_rope_index(
            ids[None], mm_token_type_ids=((key >= 0).int() * 2)[None],
            video_grid_thw=torch.tensor([[len(clip.units), rows * self.merge, cols * self.merge]]))
        pos = pos[:, 0]
        return Sequence(ids, key, torch.tensor(unit), pos, int(pos.max()) + 1)

"""Qwen2.5-VL adapter (model_type ``qwen2_5_vl``): the :class:`~.base.VideoAdapter` interface.

The video placeholder run, ``get_rope_index`` with ``mm_token_type_ids``, the 2x2 spatial
merge, temporal units of ``temporal_patch_size`` (2) frames, pixel patchification and the
vision tower. The pipeline (``adapttoken_ext.pipeline``) sees only the interface.
"""
from __future__ import annotations

import torch

from . import attention_hook as hook
from .base import Clip, DecodeState, Prompt, Sequence, Visual
from .common import chat_ids, eos_token_ids, execution_device, load_json, load_kwargs, option_forms

# transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD, Qwen2.5-VL's preprocessor defaults
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int):
    """Qwen2-VL's frame size rule: sides multiples of ``factor``, area in [min, max] pixels,
    aspect ratio kept (transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as sr
    return sr(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


class Qwen2_5_VLAdapter:
    """Wraps a ``Qwen2_5_VLForConditionalGeneration`` and its tokenizer (a
    :class:`~adapttoken_ext.models.base.VideoAdapter`).

    Args:
        model: the loaded model (any dtype; one device or a ``device_map``).
        tokenizer: its tokenizer, with a chat template.
        preprocessor: the checkpoint's ``preprocessor_config.json`` as a dict (image mean/std).

    Raises:
        ValueError: naming ``tokenizer`` when it has no chat template.
    """

    MODEL_CLASS = "Qwen2_5_VLForConditionalGeneration"  # transformers' class of the family
    MEAN, STD = _CLIP_MEAN, _CLIP_STD  # the processor's defaults when the checkpoint has none

    def __init__(self, model, tokenizer, preprocessor: dict | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        cfg = model.config
        self.text_config = cfg.text_config
        vc = cfg.vision_config
        self.patch = vc.patch_size
        self.merge = vc.spatial_merge_size
        self.unit = vc.temporal_patch_size  # frames per temporal unit (method.md notation)
        pre = preprocessor or {}
        self.mean = torch.tensor(pre.get("image_mean", self.MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.get("image_std", self.STD)).view(1, 3, 1, 1)
        self.video_token_id = cfg.video_token_id
        self.num_layers = self.text_config.num_hidden_layers
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("tokenizer: has no chat template")
        self.eos_token_ids = eos_token_ids(model, tokenizer, "<|im_end|>")

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str, device="cpu", dtype=None, device_map=None,
                        attn_implementation: str | None = None):
        """Load a checkpoint (hub id or local path).

        Args:
            device: where the whole model goes when ``device_map`` is None.
            dtype: torch dtype; None: bfloat16 on CUDA, float32 on CPU.
            device_map: None, ``"auto"`` or a dict (``transformers``/accelerate semantics),
                for models split across devices.
            attn_implementation: None picks flash_attention_2 on CUDA when installed, else sdpa.
        """
        import transformers
        model = getattr(transformers, cls.MODEL_CLASS).from_pretrained(
            name_or_path, **load_kwargs(device, dtype, device_map, attn_implementation))
        tok = transformers.AutoTokenizer.from_pretrained(name_or_path)
        if tok.chat_template is None:  # older checkpoints keep it beside the processor
            tok.chat_template = load_json(name_or_path, "chat_template.json").get("chat_template")
        pre = (load_json(name_or_path, "video_preprocessor_config.json")
               or load_json(name_or_path, "preprocessor_config.json"))
        return cls(model, tok, pre)

    @property
    def input_device(self) -> torch.device:
        return execution_device(self.model.get_input_embeddings())

    @property
    def dtype(self):
        return self.model.dtype

    def default_reference_layer(self) -> int:
        """method.md step 3: ``round(0.7 * num_layers)`` (20 of 28 for Qwen2.5-VL-7B)."""
        return min(self.num_layers - 1, round(0.7 * self.num_layers))

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

    def option_token_ids(self, letters: list[str]) -> list[list[int]]:
        """Single-token surface forms of each option letter (method.md step 4)."""
        return option_forms(self.tokenizer, letters)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---- vision ----------------------------------------------------------------------------
    def pixel_values(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patchify uint8 frames ``[n_units * unit, 3, H, W]`` as Qwen2-VL's video processor does.

        Returns ``(pixel_values [n_units*gh*gw, 3*unit*patch*patch], grid_thw [1, 3])``.
        """
        t, c, h, w = frames.shape
        p, m, u = self.patch, self.merge, self.unit
        x = (frames.float() / 255.0 - self.mean.to(frames.device)) / self.std.to(frames.device)
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
    def sequence(self, prompt: Prompt, clip: Clip, grid: tuple[int, int]) -> Sequence:
        """``[prefix][units x rows x cols video tokens][suffix]`` with M-RoPE ids ``[3, L]``
        from the model's own ``get_rope_index`` (integer work only; method.md steps 2, 9).
        The clip's units are one video whose temporal patches are ``seconds_per_unit`` apart."""
        rows, cols = grid
        tpu, P = rows * cols, len(prompt.prefix)
        n = len(clip.units) * tpu
        ids = torch.tensor(prompt.prefix + [self.video_token_id] * n + prompt.suffix)
        mm = torch.zeros_like(ids, dtype=torch.int32)
        mm[P:P + n] = 2
        pos, _ = self.model.model.get_rope_index(
            ids[None], mm_token_type_ids=mm[None],
            video_grid_thw=torch.tensor([[len(clip.units), rows * self.merge, cols * self.merge]]),
            second_per_grid_ts=torch.tensor([clip.seconds_per_unit]))
        pos = pos[:, 0]
        units = torch.full_like(ids, -1)
        units[P:P + n] = torch.tensor(clip.units).repeat_interleave(tpu)
        key = torch.full_like(ids, -1)
        key[P:P + n] = units[P:P + n] * tpu + torch.arange(n) % tpu
        return Sequence(ids, key, units, pos, int(pos.max()) + 1)

    @torch.no_grad()
    def prefill(self, seq: Sequence, visual: Visual, use_cache: bool = False):
        """One forward over ``seq`` with ``visual.embeds`` in its visual columns.

        An explicit all-ones attention mask and 3-row position ids keep transformers from
        reading pruned (non-contiguous) positions as packed sequences (method.md step 9).
        """
        dev = self.input_device
        emb = self.model.get_input_embeddings()(seq.input_ids.to(dev))
        emb[seq.visual_columns.to(dev)] = visual.embeds.to(dev, emb.dtype)
        logits, past = self._forward(emb, seq.positions, None, use_cache)
        return logits, (DecodeState(past, seq.next_position) if use_cache else None)

    @torch.no_grad()
    def decode_step(self, state: DecodeState, token_id: int):
        """Feed ``token_id`` at ``state.position`` (same id on the 3 M-RoPE rows)."""
        emb = self.model.get_input_embeddings()(torch.tensor([token_id], device=self.input_device))
        pos = torch.full((3, 1), state.position, dtype=torch.long)
        logits, past = self._forward(emb, pos, state.past, True)
        return logits, DecodeState(past, state.position + 1)

    def _forward(self, emb, positions, past, use_cache):
        dev = emb.device
        seen = past.get_seq_length() if past is not None else 0
        mask = torch.ones(1, seen + emb.shape[0], dtype=torch.long, device=dev)
        out = self.model(inputs_embeds=emb[None], position_ids=positions[:, None].to(dev),
                         attention_mask=mask, past_key_values=past, use_cache=use_cache,
                         logits_to_keep=1)
        return out.logits[0, -1], out.past_key_values

    def reference_attention(self, layer: int):
        """The self-attention module of decoder layer ``layer``."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"reference_layer: must be in [0, {self.num_layers}), got {layer}")
        return self.model.model.language_model.layers[layer].self_attn

    def install_score_hook(self, layer: int) -> "hook.ScoreCapture":
        return hook.ScoreCapture(self.reference_attention(layer))

"""Qwen2.5-VL adapter: everything the pipeline needs that is specific to this model family.

The video placeholder run, ``get_rope_index`` with ``mm_token_type_ids``, the 2x2 spatial
merge, temporal units of ``temporal_patch_size`` (2) frames, pixel patchification and the
vision tower. The pipeline (``adapttoken_ext.pipeline``) sees only tensors and this
interface; another model family adds a module beside this one.
"""
from __future__ import annotations

import json

import torch

from . import attention_hook as hook

# transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD, Qwen2.5-VL's preprocessor defaults
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int):
    """Qwen2-VL's frame size rule: sides multiples of ``factor``, area in [min, max] pixels,
    aspect ratio kept (transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as sr
    return sr(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def _load_json(name_or_path: str, filename: str) -> dict:
    from transformers.utils import cached_file
    try:
        path = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False)
    except OSError:
        path = None
    if not path:
        return {}
    with open(path) as f:
        return json.load(f)


class Qwen2_5_VLAdapter:
    """Wraps a ``Qwen2_5_VLForConditionalGeneration`` and its tokenizer.

    Args:
        model: the loaded model (any dtype/device).
        tokenizer: its tokenizer, with a chat template.
        preprocessor: the checkpoint's ``preprocessor_config.json`` as a dict (image mean/std).
    """

    family = "qwen2_5_vl"

    def __init__(self, model, tokenizer, preprocessor: dict | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        cfg = model.config
        self.config = cfg
        self.text_config = cfg.text_config
        vc = cfg.vision_config
        self.patch = vc.patch_size
        self.merge = vc.spatial_merge_size
        self.unit = vc.temporal_patch_size  # frames per temporal unit (method.md notation)
        self.tokens_per_second = vc.tokens_per_second
        pre = preprocessor or {}
        self.mean = torch.tensor(pre.get("image_mean", _CLIP_MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.get("image_std", _CLIP_STD)).view(1, 3, 1, 1)
        self.video_token_id = cfg.video_token_id
        self.num_layers = self.text_config.num_hidden_layers
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("tokenizer: has no chat template")
        eos = cfg.text_config.eos_token_id if cfg.text_config.eos_token_id is not None else cfg.eos_token_id
        self.eos_token_ids = set([eos] if isinstance(eos, int) else list(eos or []))
        self.eos_token_ids.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str, device="cpu", dtype=None):
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
        if dtype is None:
            dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        from transformers.utils import is_flash_attn_2_available
        attn = "flash_attention_2" if torch.device(device).type == "cuda" and is_flash_attn_2_available() else "sdpa"
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            name_or_path, dtype=dtype, attn_implementation=attn).to(device)
        tok = AutoTokenizer.from_pretrained(name_or_path)
        if tok.chat_template is None:  # older checkpoints keep it beside the processor
            tok.chat_template = _load_json(name_or_path, "chat_template.json").get("chat_template")
        return cls(model, tok, _load_json(name_or_path, "preprocessor_config.json"))

    @property
    def device(self):
        return self.model.device

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
    def prompt_ids(self, question: str, options: list[str] | None, instruction: str | None):
        """Token ids before and after the visual tokens (method.md step 2)."""
        text = question.strip()
        if options:
            text += "\n" + "\n".join(options)
        if instruction:
            text += "\n" + instruction
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        ids = list(ids)
        if ids.count(self.video_token_id) != 1:
            raise ValueError("tokenizer: chat template must render one video placeholder")
        i = ids.index(self.video_token_id)
        return ids[:i], ids[i + 1:]

    def option_token_ids(self, letters: list[str]) -> list[int]:
        """Token id of each option letter as the first answer token (method.md step 4)."""
        out = []
        for letter in letters:
            ids = self.tokenizer.encode(letter, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"options: letter {letter!r} is not a single token")
            out.append(ids[0])
        return out

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---- vision ----------------------------------------------------------------------------
    def pixel_values(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patchify uint8 frames ``[n_units * unit, 3, H, W]`` as Qwen2-VL's video processor does.

        Returns ``(pixel_values [n_units*gh*gw, 3*unit*patch*patch], grid_thw [1, 3])``.
        """
        t, c, h, w = frames.shape
        p, m, u = self.patch, self.merge, self.unit
        x = (frames.float() / 255.0 - self.mean) / self.std
        gt, gh, gw = t // u, h // p, w // p
        x = x.view(gt, u, c, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gt * gh * gw, c * u * p * p)
        return x, torch.tensor([[gt, gh, gw]])

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """Vision tower on uint8 frames ``[n_units * unit, 3, H, W]``.

        Returns ``[n_units * rows * cols, hidden]`` visual token embeddings in temporal then
        raster order (method.md step 1: run per group).
        """
        pv, grid = self.pixel_values(frames)
        pv = pv.to(self.device, self.model.model.visual.dtype)
        out = self.model.model.get_video_features(pv, grid.to(self.device), return_dict=True)
        return torch.cat(out.pooler_output, dim=0).to(self.dtype)

    # ---- language model --------------------------------------------------------------------
    def position_ids(self, prefix_len: int, units: int, rows: int, cols: int, suffix_len: int,
                     seconds_per_unit: float) -> torch.Tensor:
        """M-RoPE ids ``[3, L]`` of ``[prefix][units x rows x cols visual][suffix]`` from the
        model's own ``get_rope_index`` (integer work only; method.md steps 2 and 9)."""
        n = units * rows * cols
        ids = torch.zeros(1, prefix_len + n + suffix_len, dtype=torch.long)
        ids[0, prefix_len:prefix_len + n] = self.video_token_id
        mm = torch.zeros_like(ids, dtype=torch.int32)
        mm[0, prefix_len:prefix_len + n] = 2
        grid = torch.tensor([[units, rows * self.merge, cols * self.merge]])
        pos, _ = self.model.model.get_rope_index(
            ids, mm_token_type_ids=mm, video_grid_thw=grid,
            second_per_grid_ts=torch.tensor([seconds_per_unit]))
        return pos[:, 0]

    def embed(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return self.model.get_input_embeddings()(ids)

    @torch.no_grad()
    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor,
                past_key_values=None, use_cache: bool = False, logits_to_keep: int = 1):
        """One forward of the language model on ``[L, hidden]`` embeddings at ``[3, L]`` positions.

        An explicit all-ones attention mask and 3-row position ids keep transformers from
        reading pruned (non-contiguous) positions as packed sequences (method.md step 9).
        """
        L = inputs_embeds.shape[0]
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        mask = torch.ones(1, past + L, dtype=torch.long, device=self.device)
        out = self.model(inputs_embeds=inputs_embeds[None], position_ids=position_ids[:, None].to(self.device),
                         attention_mask=mask, past_key_values=past_key_values, use_cache=use_cache,
                         logits_to_keep=logits_to_keep)
        return out.logits[0], out.past_key_values

    def reference_attention(self, layer: int):
        """The self-attention module of decoder layer ``layer``."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"reference_layer: must be in [0, {self.num_layers}), got {layer}")
        return self.model.model.language_model.layers[layer].self_attn

    def install_hook(self, layer: int) -> "hook.ScoreCapture":
        return hook.install(self.model, self.text_config, self.reference_attention(layer))


def seconds_per_unit(unit: int, sampled_frames: int, duration_s: float, stride: int = 1) -> float:
    """Seconds between consecutive units of a sequence whose units are ``stride`` apart."""
    return stride * unit * duration_s / max(1, sampled_frames) if duration_s > 0 else float(stride * unit)


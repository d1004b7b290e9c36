"""The language-model side shared by families with 1-D RoPE and one frame per unit
(InternVL, LLaVA-OneVision): loading, the chat prompt, 1-D positions, prefill, decoding and
the score hook. A family module adds its vision tower and the layout of its video tokens.

1-D positions (method.md step 9): a sequence's columns sit at ``0..L-1`` as in the model's
own unpruned forward; pruning keeps each kept column's position, and generated token ``s``
sits at ``L_full + s`` (``max(full positions) + 1 + s``), where HF's ``generate`` puts it.
"""
from __future__ import annotations

import torch

from . import attention_hook as hook
from .base import DecodeState, Prompt, Sequence, Visual
from .common import (
    eos_token_ids,
    execution_device,
    load_json,
    load_kwargs,
    option_forms,
    split_chat,
)


class Rope1DAdapter:
    """Base of the 1-D-RoPE adapters (a :class:`~adapttoken_ext.models.base.VideoAdapter`
    once a subclass adds ``frame_size``, ``unit_grid``, ``encode`` and ``sequence``).

    Args:
        model: the loaded ``model_class`` model (any dtype; one device or a ``device_map``).
        tokenizer: its tokenizer, with a chat template.
        preprocessor: the checkpoint's video (or image) preprocessor config as a dict
            (``image_mean``, ``image_std``; the family's defaults when absent).

    Raises:
        ValueError: naming ``tokenizer`` when it has no chat template.
    """

    model_class = ""             # transformers class name, set by the family
    end_of_turn = "<|im_end|>"   # the chat template's end-of-turn token
    video_placeholder = "<video>"
    image_mean: tuple = ()       # the family's video processor defaults
    image_std: tuple = ()
    unit = 1                     # frames per temporal unit: no temporal merging

    def __init__(self, model, tokenizer, preprocessor: dict | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.text_config = model.config.get_text_config()
        self.num_layers = self.text_config.num_hidden_layers
        pre = preprocessor or {}
        self.mean = torch.tensor(pre.get("image_mean", self.image_mean)).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.get("image_std", self.image_std)).view(1, 3, 1, 1)
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("tokenizer: has no chat template")
        self.eos_token_ids = eos_token_ids(model, tokenizer, self.end_of_turn)

    @classmethod
    def from_pretrained(cls, name_or_path: str, device="cpu", dtype=None, device_map=None,
                        attn_implementation: str | None = None):
        """Load a checkpoint (hub id or local path).

        Args:
            device: where the whole model goes when ``device_map`` is None.
            dtype: torch dtype; None: bfloat16 on CUDA, float32 on CPU.
            device_map: None, ``"auto"`` or a dict (``transformers``/accelerate semantics).
            attn_implementation: None picks flash_attention_2 on CUDA when installed, else sdpa.
        """
        import transformers
        model = getattr(transformers, cls.model_class).from_pretrained(
            name_or_path, **load_kwargs(device, dtype, device_map, attn_implementation))
        tok = transformers.AutoTokenizer.from_pretrained(name_or_path)
        if tok.chat_template is None:  # some checkpoints keep it beside the processor
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
        """method.md step 3: ``round(0.7 * num_layers)`` (20 of 28 for a 28-layer model)."""
        return min(self.num_layers - 1, round(0.7 * self.num_layers))

    # ---- prompt --------------------------------------------------------------------------
    def prompt(self, question: str, options: list[str] | None, instruction: str | None) -> Prompt:
        """Token ids around the chat template's video placeholder (method.md step 2)."""
        return Prompt(*split_chat(self.tokenizer, question, options, instruction, self.video_placeholder))

    def option_token_ids(self, letters: list[str]) -> list[list[int]]:
        """Single-token surface forms of each option letter (method.md step 4)."""
        return option_forms(self.tokenizer, letters)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[T, 3, H, W]`` -> float32 rescaled by 1/255 and normalised by the
        preprocessor's mean and std, as the family's video processor does."""
        dev = frames.device
        return (frames.float() / 255.0 - self.mean.to(dev)) / self.std.to(dev)

    # ---- language model ------------------------------------------------------------------
    @staticmethod
    def one_d(ids: torch.Tensor, visual_key: torch.Tensor, unit: torch.Tensor) -> Sequence:
        """A :class:`Sequence` at the model's own 1-D positions ``0..L-1`` (``[1, L]``)."""
        n = ids.numel()
        return Sequence(ids, visual_key, unit, torch.arange(n)[None], n)

    def fill_extra(self, seq: Sequence, emb: torch.Tensor) -> None:
        """Embeddings of columns that are neither text nor visual tokens (none here)."""

    @torch.no_grad()
    def prefill(self, seq: Sequence, visual: Visual, use_cache: bool = False):
        """One forward over ``seq`` with ``visual.embeds`` in its visual columns, at its 1-D
        positions. An explicit all-ones attention mask keeps transformers from reading
        pruned (non-contiguous) positions as packed sequences (method.md step 9)."""
        dev = self.input_device
        emb = self.model.get_input_embeddings()(seq.input_ids.to(dev))
        emb[seq.visual_columns.to(dev)] = visual.embeds.to(dev, emb.dtype)
        self.fill_extra(seq, emb)
        logits, past = self._forward(emb, seq.positions, None, use_cache)
        return logits, (DecodeState(past, seq.next_position) if use_cache else None)

    @torch.no_grad()
    def decode_step(self, state: DecodeState, token_id: int):
        """Feed ``token_id`` at position ``state.position``."""
        emb = self.model.get_input_embeddings()(torch.tensor([token_id], device=self.input_device))
        logits, past = self._forward(emb, torch.tensor([[state.position]]), state.past, True)
        return logits, DecodeState(past, state.position + 1)

    def _forward(self, emb, positions, past, use_cache):
        dev = emb.device
        seen = past.get_seq_length() if past is not None else 0
        mask = torch.ones(1, seen + emb.shape[0], dtype=torch.long, device=dev)
        out = self.model(inputs_embeds=emb[None], position_ids=positions.to(dev),
                         attention_mask=mask, past_key_values=past, use_cache=use_cache,
                         logits_to_keep=1)
        return out.logits[0, -1], out.past_key_values

    def reference_attention(self, layer: int):
        """The self-attention module of decoder layer ``layer``."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"reference_layer: must be in [0, {self.num_layers}), got {layer}")
        return self.model.model.language_model.layers[layer].self_attn

    def install_score_hook(self, layer: int) -> hook.ScoreCapture:
        return hook.ScoreCapture(self.reference_attention(layer))

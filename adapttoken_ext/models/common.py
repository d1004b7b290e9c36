"""What any chat-template model family shares: loading options, prompts, option letters,
EOS ids, and :class:`ChatVideoAdapter`, the base of every family adapter. Family modules
import these; nothing here knows a family."""
from __future__ import annotations

import json

import torch

from .attention_hook import ScoreCapture, flash_kwargs
from .base import DecodeState

# transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD: the video processors' defaults of
# Qwen2.5-VL, InternVL and LLaVA-OneVision
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_json(name_or_path: str, filename: str) -> dict:
    from transformers.utils import cached_file
    try:
        path = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False)
    except OSError:
        path = None
    if not path:
        return {}
    with open(path) as f:
        return json.load(f)


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` computes: accelerate's execution device when the model was
    dispatched with a ``device_map`` (offloaded weights sit on ``meta``), else the device
    of its first parameter."""
    hook = getattr(module, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")
    return next(module.parameters()).device


def load_kwargs(device, dtype, device_map, attn_implementation) -> dict:
    """``from_pretrained`` keyword arguments: the weights go straight to ``device`` (or are
    split by ``device_map``), dtype bf16 when any part runs on CUDA else fp32, attention
    flash_attention_2 on CUDA when installed else sdpa.

    Raises:
        ValueError: naming ``device`` when it is not a device name, or CUDA is missing.
    """
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device: {device!r} is not a device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asked for, but torch sees no CUDA device")
    if device_map is None:
        device_map = {"": dev}
    places = ([str(v) for v in device_map.values()] if isinstance(device_map, dict)
              else ["cuda"] if torch.cuda.is_available() else [])
    on_cuda = any(p.startswith("cuda") or p.isdigit() for p in places)
    if dtype is None:
        dtype = torch.bfloat16 if on_cuda else torch.float32
    if attn_implementation is None:
        from transformers.utils import is_flash_attn_2_available
        attn_implementation = "flash_attention_2" if on_cuda and is_flash_attn_2_available() else "sdpa"
    return dict(dtype=dtype, attn_implementation=attn_implementation, device_map=device_map)


def _messages(question: str, options, instruction) -> list[dict]:
    """One user turn ``[video][question, options, instruction]``."""
    text = question.strip()
    if options:
        text += "\n" + "\n".join(options)
    if instruction:
        text += "\n" + instruction
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]


def chat_ids(tokenizer, question: str, options, instruction) -> list[int]:
    """Token ids of one user turn ``[video][question, options, instruction]`` and the
    assistant prefix, rendered by the tokenizer's chat template. Thinking models (Qwen3.5)
    get ``enable_thinking=False``: the answer, and its option letter, comes first (step 4);
    templates without the switch ignore it."""
    messages = _messages(question, options, instruction)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        enable_thinking=False)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def split_chat(tokenizer, question: str, options, instruction, placeholder: str
               ) -> tuple[list[int], list[int]]:
    """Token ids before and after the video ``placeholder`` text (e.g. ``"<video>"``) of the
    chat template's rendering of one user turn and the assistant prefix (method.md step 2).

    Each side is tokenized as the family's processor tokenizes the expanded text: the
    placeholder's expansion starts and ends at special tokens, so tokenizing the two sides
    apart gives the same ids; special tokens (BOS) are added to the first side only when the
    rendering does not start with them (``ProcessorMixin.apply_chat_template``'s rule).

    Raises:
        ValueError: naming ``tokenizer`` when the template does not render the placeholder once.
    """
    text = tokenizer.apply_chat_template(_messages(question, options, instruction),
                                         add_generation_prompt=True, tokenize=False,
                                         enable_thinking=False)
    if text.count(placeholder) != 1:
        raise ValueError(f"tokenizer: chat template must render one {placeholder!r} placeholder")
    before, after = text.split(placeholder)
    bos = tokenizer.bos_token
    first = tokenizer(before, add_special_tokens=not (bos and before.startswith(bos)))["input_ids"]
    return list(first), list(tokenizer(after, add_special_tokens=False)["input_ids"])


def option_forms(tokenizer, letters: list[str]) -> list[list[int]]:
    """Per letter, the ids of its single-token forms ``"A"`` and ``" A"`` (method.md step 4).

    Raises:
        ValueError: naming ``options`` when a letter has no single-token form.
    """
    out = []
    for letter in letters:
        forms = []
        for text in (letter, " " + letter):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(ids) == 1 and ids[0] not in forms:
                forms.append(ids[0])
        if not forms:
            raise ValueError(f"options: letter {letter!r} is not a single token for this tokenizer")
        out.append(forms)
    return out


def eos_token_ids(model, tokenizer, end_of_turn: str | None = None) -> set[int]:
    """Ids that end generation: the generation config's, the model config's, the
    tokenizer's EOS and the chat template's end-of-turn token."""
    ids = set()
    for v in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
              getattr(model.config.get_text_config(), "eos_token_id", None),
              getattr(model.config, "eos_token_id", None), tokenizer.eos_token_id):
        ids.update([v] if isinstance(v, int) else list(v or []))
    if end_of_turn is not None:
        t = tokenizer.convert_tokens_to_ids(end_of_turn)
        if isinstance(t, int) and t != tokenizer.unk_token_id:
            ids.add(t)
    return ids


class ChatVideoAdapter:
    """The part of a :class:`~.base.VideoAdapter` every chat-template family shares:
    loading, devices, the default reference layer (method.md step 3), option letters,
    frame normalisation, prefill and decoding from input embeddings at explicit positions
    (step 9), and the score hook. A family subclass sets ``MODEL_CLASS`` (and ``MEAN`` /
    ``STD`` when its processor's defaults differ) and adds the geometry, ``prompt``,
    ``encode`` and ``sequence``.

    Args:
        model: the loaded ``MODEL_CLASS`` model (any dtype; one device or a ``device_map``).
        tokenizer: its tokenizer, with a chat template.
        preprocessor: the checkpoint's video (or image) preprocessor config as a dict
            (``image_mean``, ``image_std``; ``MEAN``, ``STD`` when absent).

    Raises:
        ValueError: naming ``tokenizer`` when it has no chat template.
    """

    MODEL_CLASS = ""             # transformers' class of the family
    MEAN, STD = CLIP_MEAN, CLIP_STD
    END_OF_TURN = "<|im_end|>"   # the chat template's end-of-turn token
    POSITION_ROWS = 1            # rows of position ids: 1-D RoPE (3 for M-RoPE)

    def __init__(self, model, tokenizer, preprocessor: dict | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.text_config = model.config.get_text_config()
        self.num_layers = self.text_config.num_hidden_layers
        pre = preprocessor or {}
        self.mean = torch.tensor(pre.get("image_mean", self.MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.get("image_std", self.STD)).view(1, 3, 1, 1)
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("tokenizer: has no chat template")
        self.eos_token_ids = eos_token_ids(model, tokenizer, self.END_OF_TURN)

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

    def option_token_ids(self, letters: list[str]) -> list[list[int]]:
        """Single-token surface forms of each option letter (method.md step 4)."""
        return option_forms(self.tokenizer, letters)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[T, 3, H, W]`` -> float32 rescaled by 1/255 and normalised by the
        preprocessor's mean and std, as the family's video processor does: fused, in
        float32, ``(x - 255 mean) / (255 std)`` (transformers' ``rescale_and_normalize``),
        so the pixels are bitwise the processor's (models with mixture-of-experts layers
        amplify a one-ulp difference to 1e-4 in the attention)."""
        dev = frames.device
        return (frames.float() - self.mean.to(dev) * 255.0) / (self.std.to(dev) * 255.0)

    def fill_extra(self, seq, emb: torch.Tensor) -> None:
        """Embeddings of columns that are neither text nor visual tokens (none by default)."""

    @torch.no_grad()
    def prefill(self, seq, visual, use_cache: bool = False):
        """One forward over ``seq`` with ``visual.embeds`` in its visual columns, at
        ``seq.positions``. An explicit all-ones attention mask keeps transformers from
        reading pruned (non-contiguous) positions as packed sequences (method.md step 9)."""
        dev = self.input_device
        emb = self.model.get_input_embeddings()(seq.input_ids.to(dev))
        emb[seq.visual_columns.to(dev)] = visual.embeds.to(dev, emb.dtype)
        self.fill_extra(seq, emb)
        logits, past = self._forward(emb, seq.positions, None, use_cache)
        return logits, (DecodeState(past, seq.next_position) if use_cache else None)

    @torch.no_grad()
    def decode_step(self, state, token_id: int):
        """Feed ``token_id`` at ``state.position`` (the same id on every position row)."""
        emb = self.model.get_input_embeddings()(torch.tensor([token_id], device=self.input_device))
        pos = torch.full((self.POSITION_ROWS, 1), state.position)
        logits, past = self._forward(emb, pos, state.past, True)
        return logits, DecodeState(past, state.position + 1)

    def _forward(self, emb, positions, past, use_cache):
        dev = emb.device
        seen = past.get_seq_length() if past is not None else 0
        mask = torch.ones(1, seen + emb.shape[0], dtype=torch.long, device=dev)
        # M-RoPE ids [3, L] become [3, batch, L]; 1-D ids [1, L] are already [batch, L]
        pos = positions[:, None] if self.POSITION_ROWS > 1 else positions
        out = self.model(inputs_embeds=emb[None], position_ids=pos.to(dev), attention_mask=mask,
                         cache=past, use_cache=use_cache, logits_to_keep=1,
                         **flash_kwargs(self.model, emb.shape[0], seen + emb.shape[0], dev))
        return out.logits[0, -1], out.cache

    def reference_attention(self, layer: int):
        """The self-attention module of decoder layer ``layer``.

        Raises:
            ValueError: naming ``reference_layer`` when it is out of range.
        """
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"reference_layer: must be in [0, {self.num_layers}), got {layer}")
        return self.model.model.language_model.layers[layer].self_attn

    def install_score_hook(self, layer: int):
        """Step 3: a :class:`~.attention_hook.ScoreCapture` on layer ``layer``'s attention."""
        return ScoreCapture(self.reference_attention(layer))

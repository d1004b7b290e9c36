"""Helpers that any chat-template model family shares: loading options, prompts, option
letters, EOS ids. Family modules import these; nothing here knows a family."""
from __future__ import annotations

import json

import torch


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

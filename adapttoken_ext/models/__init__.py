"""Model adapters, one module per model family, behind :class:`base.VideoAdapter`.
Only these modules know transformers' model classes."""
from __future__ import annotations

import importlib

from .base import VideoAdapter

# config.model_type -> "module:class" of its adapter
ADAPTERS = {
    "qwen2_vl": "qwen2_vl:Qwen2VLAdapter",
    "qwen2_5_vl": "qwen2_5_vl:Qwen2_5_VLAdapter",
    "qwen3_vl": "qwen3_vl:Qwen3VLAdapter",
    "qwen3_5": "qwen3_5:Qwen3_5Adapter",
    "qwen3_vl_moe": "qwen3_vl_moe:Qwen3VLMoeAdapter",
    "qwen3_5_moe": "qwen3_5_moe:Qwen3_5MoeAdapter",
    "glm4v": "glm4v:Glm4vAdapter",
    "glm46v": "glm46v:Glm46VAdapter",
    "glm4v_moe": "glm4v_moe:Glm4vMoeAdapter",
    "gemma4": "gemma4:Gemma4Adapter",
    "internvl": "internvl:InternVLAdapter",
    "llava_onevision": "llava_onevision:LlavaOnevisionAdapter",
}


def adapter_class(model_type: str):
    """The adapter class for a ``config.model_type``.

    Raises:
        ValueError: naming ``model`` and listing the supported types.
    """
    if model_type not in ADAPTERS:
        raise ValueError(f"model: model_type {model_type!r} is not supported "
                         f"(supported: {', '.join(sorted(ADAPTERS))})")
    module, cls = ADAPTERS[model_type].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def load(name_or_path: str, device="cpu", dtype=None, device_map=None,
         attn_implementation: str | None = None) -> VideoAdapter:
    """Load a checkpoint (hub id or local path) and wrap it in its family's adapter, picked
    from ``config.model_type``.

    Args:
        device: the device of the whole model when ``device_map`` is None.
        dtype: torch dtype (None: bf16 on CUDA, fp32 on CPU).
        device_map: None, ``"auto"`` or a dict, as ``transformers`` takes it.
        attn_implementation: None (flash_attention_2 on CUDA when installed, else sdpa),
            or any name ``transformers`` knows.

    Raises:
        ValueError: the checkpoint's ``model_type`` has no adapter.
        OSError: no checkpoint at ``name_or_path``.
    """
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(name_or_path)
    return adapter_class(cfg.model_type).from_pretrained(
        name_or_path, device=device, dtype=dtype, device_map=device_map,
        attn_implementation=attn_implementation)

"""Model adapters, one module per model family. Only these modules know transformers."""
from __future__ import annotations


def load(name_or_path: str, device="cpu", dtype=None):
    """Load a checkpoint (hub id or local path) and wrap it in its family's adapter.

    Raises:
        ValueError: the checkpoint's ``model_type`` has no adapter.
    """
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(name_or_path)
    if cfg.model_type == "qwen2_5_vl":
        from .qwen2_5_vl import Qwen2_5_VLAdapter
        return Qwen2_5_VLAdapter.from_pretrained(name_or_path, device=device, dtype=dtype)
    raise ValueError(f"model: model_type {cfg.model_type!r} is not supported (supported: qwen2_5_vl)")

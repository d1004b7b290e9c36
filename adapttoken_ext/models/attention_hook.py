"""Capture visual-token scores inside the model's own attention (method.md step 3).

No copied modeling code and no eager attention: an attention function registered with
``transformers.AttentionInterface`` wraps the model's implementation (sdpa,
flash_attention_2, ...). At the reference layer, while a capture is armed, it also calls
``torch.ops.adapttoken.attention_scores`` on the rotated query and key it receives
(``[B, Hq, Lq, D]`` and ``[B, Hkv, Lk, D]``, GQA packed, K never repeated).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from .. import ops


def _wrapped_function(name: str, module):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    if name == "eager":  # eager lives in the modeling module, not in the registry
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[name]


def _attention(module, query, key, value, attention_mask, **kwargs):
    cap: ScoreCapture | None = getattr(module, "_adapttoken_capture", None)
    if cap is not None and cap.armed is not None:
        qs, vs, ve = cap.armed
        sync = torch.cuda.synchronize if query.is_cuda else (lambda: None)
        sync()
        t0 = time.perf_counter()
        cap.scores = ops.attention_scores(query, key, qs, vs, ve, kwargs.get("scaling"), cap.reduce)
        sync()
        cap.elapsed, cap.armed = time.perf_counter() - t0, None
    impl = getattr(module, "_adapttoken_wrapped", None) or "sdpa"
    return _wrapped_function(impl, module)(module, query, key, value, attention_mask, **kwargs)


@dataclass
class ScoreCapture:
    """Arm before a forward; read ``scores`` (float32 ``[B, visual_end - visual_start]``) after."""
    module: torch.nn.Module
    reduce: str = "max"
    armed: tuple | None = None
    scores: torch.Tensor | None = None
    elapsed: float = 0.0  # seconds spent in attention_scores on the last capture

    def arm(self, query_start: int, visual_start: int, visual_end: int, reduce: str = "max"):
        """Score keys ``[visual_start, visual_end)`` with query rows ``>= query_start`` on the next call."""
        self.armed, self.reduce, self.scores = (query_start, visual_start, visual_end), reduce, None

    def take(self) -> torch.Tensor:
        if self.scores is None:
            raise RuntimeError("attention hook: the reference layer did not run with the capture armed")
        s, self.scores = self.scores, None
        return s


def install(model, text_config, attention_module) -> ScoreCapture:
    """Route the language model's attention through the wrapper; capture at ``attention_module``.

    ``text_config._attn_implementation`` names the wrapped implementation. The wrapper is
    registered as ``adapttoken_<impl>`` with the same mask format, so the model builds the
    same masks as before.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    impl = text_config._attn_implementation or "sdpa"
    if impl.startswith("adapttoken_"):
        impl = impl[len("adapttoken_"):]
    name = f"adapttoken_{impl}"
    AttentionInterface.register(name, _attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
    for m in model.modules():  # every text attention module delegates to the same impl
        if getattr(m, "config", None) is text_config and hasattr(m, "layer_idx"):
            m._adapttoken_wrapped = impl
    cap = ScoreCapture(attention_module)
    attention_module._adapttoken_capture = cap
    if text_config._attn_implementation != name:
        model.set_attn_implementation({"text_config": name})
    return cap

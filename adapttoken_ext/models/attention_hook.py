"""Capture visual-token scores inside the model's own attention (method.md step 3).

No copied modeling code, no eager attention, no change to the model's configuration: while
a capture is armed, a forward pre-hook on the reference layer's attention module wraps the
function ``transformers`` resolves for that module's own ``config._attn_implementation``
(sdpa, flash_attention_2, flex_attention, eager, or any registered name). The wrapper calls
``torch.ops.adapttoken.attention_scores`` on the rotated query and key it receives
(``[B, Hq, Lq, D]`` and ``[B, Hkv, Lk, D]``, GQA packed, K never repeated) and then the
original function, under its own name. The forward hook restores the lookup, also when
the forward raises. Unarmed forwards (decoding, other layers) are untouched.

The override uses the instance-local mapping of ``ALL_ATTENTION_FUNCTIONS`` for the
duration of one layer's forward, so it is not thread-safe across models that run
concurrently in one process.
"""
from __future__ import annotations

import sys
import time

import torch

from .. import ops

# The module's captures and hook handles live on the module under this attribute, shared so
# that several captures on one module (two AdaptToken objects on one model) compose instead
# of stealing each other's scores; the last capture removed deletes it.
_ENTRY = "_adapttoken_score_hooks"


def _interface():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    return ALL_ATTENTION_FUNCTIONS


def _pre_hook(module, args, kwargs):
    entry = getattr(module, _ENTRY)
    armed = [c for c in entry["captures"] if c.armed is not None]
    if not armed:
        return
    name = module.config._attn_implementation
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    local = _interface()._local_mapping
    entry["saved"] = (name, local.get(name))
    original = _interface().get_interface(name, eager)

    def attention(mod, query, key, value, attention_mask, **kw):
        if mod is module:
            for cap in armed:
                cap._score(query, key, kw.get("scaling") or mod.scaling)
        return original(mod, query, key, value, attention_mask, **kw)

    local[name] = attention


def _post_hook(module, args, kwargs, output):
    entry = getattr(module, _ENTRY, None)
    if entry is None or "saved" not in entry:
        return
    name, previous = entry.pop("saved")
    local = _interface()._local_mapping
    if previous is None:
        local.pop(name, None)
    else:
        local[name] = previous


class ScoreCapture:
    """Scores of one reference layer's attention, on demand.

    Arm before a forward; read :meth:`take` (float32 ``[B, visual_end - visual_start]``)
    after. :meth:`remove` detaches it; once every capture of a module is removed, the
    module has no hooks and no attribute of ours left.
    """

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.armed: tuple | None = None
        self.reduce = "max"
        self.scores: torch.Tensor | None = None
        self.elapsed = 0.0  # seconds spent in attention_scores on the last capture
        entry = getattr(module, _ENTRY, None)
        if entry is None:
            entry = {"captures": [], "handles": [
                module.register_forward_pre_hook(_pre_hook, with_kwargs=True),
                module.register_forward_hook(_post_hook, with_kwargs=True, always_call=True)]}
            setattr(module, _ENTRY, entry)
        entry["captures"].append(self)

    def arm(self, query_start: int, visual_start: int, visual_end: int, reduce: str = "max"):
        """Score keys ``[visual_start, visual_end)`` with query rows ``>= query_start`` on the
        next forward of the module."""
        self.armed, self.reduce, self.scores = (query_start, visual_start, visual_end), reduce, None

    def _score(self, query, key, scaling):
        (qs, vs, ve), self.armed = self.armed, None  # disarmed even if scoring raises
        sync = (lambda: torch.cuda.synchronize(query.device)) if query.is_cuda else (lambda: None)
        sync()
        t0 = time.perf_counter()
        self.scores = ops.attention_scores(query, key, qs, vs, ve, scaling, self.reduce)
        sync()
        self.elapsed = time.perf_counter() - t0

    def disarm(self) -> None:
        self.armed = None

    def take(self) -> torch.Tensor:
        """The scores of the last armed forward (and disarm)."""
        self.armed = None
        if self.scores is None:
            raise RuntimeError("attention hook: the reference layer did not run with the capture armed")
        s, self.scores = self.scores, None
        return s

    def remove(self) -> None:
        """Detach this capture; the last one on the module removes its hooks and attribute."""
        entry = getattr(self.module, _ENTRY, None)
        if entry is None or self not in entry["captures"]:
            return
        entry["captures"].remove(self)
        if not entry["captures"]:
            for h in entry["handles"]:
                h.remove()
            delattr(self.module, _ENTRY)

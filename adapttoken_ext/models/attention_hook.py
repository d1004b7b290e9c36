"""Capture visual-token scores inside the model's own attention (method.md step 3).

No copied modeling code, no eager attention, no change to the model's configuration: while
a capture is armed, a forward pre-hook on the reference layer's attention module wraps the
function ``transformers`` resolves for that module's own ``config._attn_implementation``
(sdpa, flash_attention_2, flex_attention, eager, or any registered name). The wrapper calls
``torch.ops.adapttoken.attention_scores`` on the rotated query and key it receives
(``[B, Hq, Lq, D]`` and ``[B, Hkv, Lk, D]``, GQA packed, K never repeated) and then the
original function, under its own name. The forward hook restores the lookup, also when
the forward raises. Unarmed forwards (decoding, other layers) are untouched.

Threads: the override uses the instance-local mapping of ``ALL_ATTENTION_FUNCTIONS``,
which is process-global, for the duration of one layer's forward. Two pipelines running
in two threads (on one model or two) are safe: a capture is armed for the thread that
armed it, only that thread's forward scores it and swaps the mapping, and a process-wide
lock holds from the swap to its restore, so swaps never interleave (an armed reference
layer's forward runs one thread at a time; every other forward runs freely and passes
through the wrapper untouched).

Flash attention: :func:`flash_kwargs` gives the ``cu_seq_lens_q/k`` and
``max_length_q/k`` transformers' flash path takes for one unpadded sequence, so that it
never infers sequence boundaries from position ids (``_is_packed_sequence``), which pruned
or M-RoPE positions could fool.
"""
from __future__ import annotations

import sys
import threading
import time

import torch

from .. import ops

# The module's captures and hook handles live on the module under this attribute, shared so
# that several captures on one module (two AdaptToken objects on one model) compose instead
# of stealing each other's scores; the last capture removed deletes it.
_ENTRY = "_adapttoken_score_hooks"


# The swap of the process-global mapping, from pre-hook to post-hook, one thread at a time.
_SWAP = threading.RLock()


def flash_kwargs(model, query_length: int, key_length: int, device) -> dict:
    """Keyword arguments for a forward of one unpadded sequence of ``query_length`` new
    tokens over ``key_length`` keys (cached ones included), when ``model`` runs a flash
    attention backend (transformers' ``is_flash_attention_requested`` on its text
    config): int32
    ``cu_seq_lens_q = [0, query_length]``, ``cu_seq_lens_k = [0, key_length]`` and the
    maximum lengths, as transformers' ``_flash_attention_forward`` takes them. Empty for
    other backends, which ignore them."""
    from transformers.utils.generic import is_flash_attention_requested
    if not is_flash_attention_requested(model.config.get_text_config()):
        return {}
    def cu(n):
        return torch.tensor([0, n], dtype=torch.int32, device=device)
    return dict(cu_seq_lens_q=cu(query_length), cu_seq_lens_k=cu(key_length),
                max_length_q=query_length, max_length_k=key_length)


def _interface():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    return ALL_ATTENTION_FUNCTIONS


def _pre_hook(module, args, kwargs):
    entry = getattr(module, _ENTRY)
    me = threading.get_ident()
    armed = [c for c in entry["captures"] if c.armed is not None and c.thread == me]
    if not armed:
        return
    _SWAP.acquire()  # released by the post-hook, which runs also when the forward raises
    try:
        name = module.config._attn_implementation
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        local = _interface()._local_mapping
        original = _interface().get_interface(name, eager)

        def attention(mod, query, key, value, attention_mask, **kw):
            if mod is module and threading.get_ident() == me:
                for cap in armed:
                    cap._score(query, key, kw.get("scaling") or mod.scaling)
            return original(mod, query, key, value, attention_mask, **kw)

        entry["saved"][me] = (name, local.get(name))
        local[name] = attention
    except BaseException:
        _SWAP.release()
        raise


def _post_hook(module, args, kwargs, output):
    entry = getattr(module, _ENTRY, None)
    saved = entry["saved"].pop(threading.get_ident(), None) if entry is not None else None
    if saved is None:
        return
    name, previous = saved
    local = _interface()._local_mapping
    if previous is None:
        local.pop(name, None)
    else:
        local[name] = previous
    _SWAP.release()


class ScoreCapture:
    """Scores of one reference layer's attention, on demand.

    Arm before a forward; read :meth:`take` (float32 ``[B, visual_end - visual_start]``)
    after. The capture is armed for the calling thread: the forward must run there. :meth:`remove` detaches it; once every capture of a module is removed, the
    module has no hooks and no attribute of ours left.
    """

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.armed: tuple | None = None
        self.thread: int | None = None  # the thread that armed it
        self.reduce = "max"
        self.scores: torch.Tensor | None = None
        self.elapsed = 0.0  # seconds spent in attention_scores on the last capture
        entry = getattr(module, _ENTRY, None)
        if entry is None:
            entry = {"captures": [], "saved": {}, "handles": [
                module.register_forward_pre_hook(_pre_hook, with_kwargs=True),
                module.register_forward_hook(_post_hook, with_kwargs=True, always_call=True)]}
            setattr(module, _ENTRY, entry)
        entry["captures"].append(self)

    def arm(self, query_start: int, visual_start: int, visual_end: int, reduce: str = "max"):
        """Score keys ``[visual_start, visual_end)`` with query rows ``>= query_start`` on the
        next forward of the module in this thread."""
        self.armed, self.reduce, self.scores = (query_start, visual_start, visual_end), reduce, None
        self.thread = threading.get_ident()

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

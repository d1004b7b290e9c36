"""Loads the compiled op library, or registers the reference ops in its place.

Either way the ops are ``torch.ops.adapttoken.*``. ``ADAPTTOKEN_DISABLE_EXT=1``
forces the reference.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from . import reference

# Must equal csrc/registration.cpp (python_tests/test_library.py checks it).
SCHEMAS = {
    "attention_scores": "attention_scores(Tensor query, Tensor key, int query_start, "
    "int visual_start, int visual_end, float scale, str reduce=\"max\") -> Tensor",
    "segmented_topk": "segmented_topk(Tensor scores, Tensor offsets, Tensor k, "
    "bool sort_by_index=True) -> (Tensor values, Tensor indices)",
    "softmax_entropy": "softmax_entropy(Tensor logits, Tensor? index=None, "
    "float temperature=1.0) -> Tensor",
    "select": "select(Tensor query, Tensor key, int query_start, Tensor visual_offsets, "
    "Tensor budgets, float scale, str reduce=\"max\") -> (Tensor indices, Tensor scores)",
    "local_entropy": "local_entropy(Tensor tokens, int window=3, float temperature=0.1) -> Tensor",
}

_libraries: list[torch.library.Library] = []  # keep registrations alive


def _load_extension() -> str | None:
    """Loads adapttoken_ext._C; returns None on success, else why it failed."""
    if os.environ.get("ADAPTTOKEN_DISABLE_EXT", "0") not in ("", "0"):
        return "ADAPTTOKEN_DISABLE_EXT is set"
    spec = importlib.util.find_spec("adapttoken_ext._C")
    if spec is None or not spec.origin:
        return ("adapttoken_ext._C is not built here (in a checkout: pip install "
                "--no-build-isolation -e .; a non-editable install is shadowed by the source "
                "tree when Python runs in the checkout's root)")
    try:
        torch.ops.load_library(spec.origin)
    except (OSError, RuntimeError) as e:
        return f"adapttoken_ext._C failed to load: {e}"
    return None


def _register_reference(dispatch_key: str, define: bool) -> None:
    lib = torch.library.Library("adapttoken", "DEF" if define else "IMPL")
    for name, schema in SCHEMAS.items():
        if define:
            lib.define(schema)
        lib.impl(name, getattr(reference, name), dispatch_key)
    _libraries.append(lib)


load_error = _load_extension()
if load_error is None:
    backend = "extension"
    # A build without CUDA kernels still runs CUDA tensors, through the reference.
    if not torch._C._dispatch_has_kernel_for_dispatch_key("adapttoken::select", "CUDA"):
        _register_reference("CUDA", define=False)
        cuda_backend = "reference"
    else:
        cuda_backend = "extension"
else:
    backend = cuda_backend = "reference"
    if os.environ.get("ADAPTTOKEN_DISABLE_EXT", "0") in ("", "0"):
        warnings.warn(f"adapttoken_ext: using the slow PyTorch reference ops: {load_error}",
                      RuntimeWarning, stacklevel=2)
    _register_reference("CompositeExplicitAutograd", define=True)

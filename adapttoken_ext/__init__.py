"""adapttoken_ext: fused kernels for AdaptToken, entropy-guided visual-token selection
for long-video MLLMs (arXiv 2603.28696).

``import adapttoken_ext`` registers ``torch.ops.adapttoken.*``: the compiled C++/CUDA
kernels when available, else the pure-PyTorch reference (with a warning).
``backend`` and ``cuda_backend`` say which serves CPU and CUDA tensors.
"""

from ._library import backend, cuda_backend, load_error
from .ops import attention_scores, local_entropy, segmented_topk, select, softmax_entropy

__version__ = "0.1.0"


def __getattr__(name):  # the pipeline imports transformers: load it on first use
    if name in ("AdaptToken", "AdaptTokenResult"):
        from . import pipeline
        return getattr(pipeline, name)
    if name == "AdaptTokenConfig":
        from .config import AdaptTokenConfig
        return AdaptTokenConfig
    raise AttributeError(f"module 'adapttoken_ext' has no attribute {name!r}")


__all__ = [
    "AdaptToken",
    "AdaptTokenConfig",
    "AdaptTokenResult",
    "attention_scores",
    "backend",
    "cuda_backend",
    "load_error",
    "local_entropy",
    "segmented_topk",
    "select",
    "softmax_entropy",
]

"""Builds adapttoken_ext._C, the op library, against the installed torch.

Install with ``pip install --no-build-isolation .`` so the build sees the torch you
run with (build isolation would fetch another torch). Switches:
  ADAPTTOKEN_SKIP_CUDA=1   build CPU kernels only, even with CUDA torch and nvcc;
  ADAPTTOKEN_FORCE_CUDA=1  build the CUDA kernels even where torch sees no GPU;
  TORCH_CUDA_ARCH_LIST     CUDA archs, default "8.0+PTX;9.0a;10.0;12.0": SASS for
                           Ampere, Hopper and Blackwell (sm_100, sm_120), and compute_80
                           PTX that the driver JIT-compiles for any newer GPU.
The library uses only the LibTorch stable ABI (torch >= 2.10), so one build
serves later torch releases too.
"""

import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern),
                                                              recursive=True))


def extension():
    import torch

    cpu_sources = _sources("csrc/*.cpp") + _sources("csrc/kernels/cpu/*.cpp")
    cuda_sources = _sources("csrc/*.cu") + _sources("csrc/kernels/cuda/*.cu")
    stable = ["-DTORCH_TARGET_VERSION=0x020a000000000000", "-DPy_LIMITED_API=0x03090000"]
    cxx = ["-O3", "-std=c++17", "-ffp-contract=fast", "-fvisibility=hidden", *stable]

    want_cuda = not _flag("ADAPTTOKEN_SKIP_CUDA") and (
        _flag("ADAPTTOKEN_FORCE_CUDA") or (torch.version.cuda and torch.cuda.is_available()))
    if want_cuda and cuda_sources and CUDA_HOME is not None:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0+PTX;9.0a;10.0;12.0")
        return CUDAExtension(
            "adapttoken_ext._C", cpu_sources + cuda_sources, py_limited_api=True,
            extra_compile_args={"cxx": cxx + ["-DUSE_CUDA"],
                                "nvcc": ["-O3", "-std=c++17", "-DUSE_CUDA", *stable]})
    if want_cuda:
        print("adapttoken_ext: building CPU kernels only "
              f"({'no CUDA sources yet' if not cuda_sources else 'nvcc not found'})")
    return CppExtension("adapttoken_ext._C", cpu_sources, py_limited_api=True,
                        extra_compile_args={"cxx": cxx})


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)

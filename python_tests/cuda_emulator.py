"""Builds and loads the CUDA emulator driver: csrc/cuda_ops.cu and csrc/kernels/cuda/*.cu
compiled by g++ against csrc/emulator/ and registered, for CPU tensors, as
``torch.ops.adapttoken_emu.*`` (see csrc/emulator/README.md).

``ADAPTTOKEN_EMU_SANITIZE=1`` builds it with AddressSanitizer and UBSan instead (the
test process must then preload libasan: see .ci/run).
"""
from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
SOURCES = [CSRC / "emulator" / "emu.cpp"] + sorted((CSRC / "emulator" / "driver").glob("*.cpp"))
ORDERS = {"forward": 0, "reverse": 1, "random": 2}


def sanitize() -> bool:
    return os.environ.get("ADAPTTOKEN_EMU_SANITIZE", "0") not in ("", "0")


def build() -> ctypes.CDLL:
    """Compiles (incrementally, with ninja) and loads the driver; returns its C handle."""
    name = "adapttoken_emu_asan" if sanitize() else "adapttoken_emu"
    flags = ["-std=c++17", "-Dadapttoken=adapttoken_emu", "-DTORCH_TARGET_VERSION=0x020a000000000000",
             "-Wall", "-Wno-unknown-pragmas", "-Wno-sign-compare", "-Wno-unused-parameter"]
    if sanitize():
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
        flags += ["-O1", "-g", "-fno-omit-frame-pointer", *san]
        ldflags = san
    else:
        flags += ["-O2"]
        ldflags = []
    build_dir = ROOT / "build" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    path = cpp_extension.load(
        name, [str(s) for s in SOURCES], extra_cflags=flags, extra_ldflags=ldflags,
        extra_include_paths=[str(CSRC / "emulator" / "include")], build_directory=str(build_dir),
        is_python_module=False, verbose=False)
    lib = ctypes.CDLL(path or str(build_dir / f"{name}.so"))
    lib.emu_set_order.argtypes = [ctypes.c_int, ctypes.c_ulonglong]
    lib.emu_stats.argtypes = [ctypes.POINTER(ctypes.c_ulonglong)]
    return lib


def set_order(lib: ctypes.CDLL, order: str, seed: int = 1) -> None:
    """Blocks of a grid and threads of a block run in this order (random: seeded)."""
    lib.emu_set_order(ORDERS[order], seed)


def stats(lib: ctypes.CDLL) -> tuple[int, int, int]:
    """(launches, blocks, fiber switches) since the driver loaded."""
    out = (ctypes.c_ulonglong * 3)()
    lib.emu_stats(out)
    return tuple(out)


def run_selftest() -> subprocess.CompletedProcess:
    """Builds and runs csrc/emulator/selftest.cpp (the emulator's own rules, no torch)."""
    exe = ROOT / "build" / ("emu_selftest_asan" if sanitize() else "emu_selftest")
    exe.parent.mkdir(parents=True, exist_ok=True)
    flags = (["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
             if sanitize() else ["-O2"])
    subprocess.run(["g++", "-std=c++17", *flags, "-Wall", "-I", str(CSRC / "emulator" / "include"),
                    str(CSRC / "emulator" / "selftest.cpp"), str(CSRC / "emulator" / "emu.cpp"),
                    "-o", str(exe)], check=True, capture_output=True, text=True)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=120, env=env,
                          check=False)


ops = torch.ops.adapttoken_emu

"""CMake build smoke test: the op library and the C++ example build against libtorch."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_build_and_example(tmp_path):
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build),
                    f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                   check=True, capture_output=True, text=True)
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, capture_output=True,
                   text=True)
    run = subprocess.run([str(build / "adapttoken_example")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "select indices" in run.stdout and run.stdout.rstrip().endswith("ok")

import os

import pytest
import torch

import adapttoken_ext
from adapttoken_ext import reference

# Devices to run on; CUDA cases are skipped cleanly on machines without a GPU.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA device")),
]

# The two implementations that must agree, errors included: the registered op
# (compiled kernels when built) and the pure-PyTorch reference.
IMPLS = {
    "op": adapttoken_ext.ops,
    "reference": reference,
}


def pytest_configure(config):
    """The op tests compare the compiled kernels with the reference: with no compiled _C
    loaded they would compare the reference with itself and prove nothing, so stop early
    unless asked to test the reference alone."""
    if adapttoken_ext.backend != "extension" and os.environ.get("ADAPTTOKEN_ALLOW_REFERENCE") != "1":
        pytest.exit(f"adapttoken_ext._C is not loaded ({adapttoken_ext.load_error}); the tests would "
                    "compare the reference ops with themselves. Build it in the checkout with "
                    "`pip install --no-build-isolation -e .`, or set ADAPTTOKEN_ALLOW_REFERENCE=1 "
                    "to test the reference alone.", returncode=3)


def pytest_report_header(config):
    return (f"adapttoken_ext backend: {adapttoken_ext.backend} "
            f"(cuda: {adapttoken_ext.cuda_backend}); torch {torch.__version__}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

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


def pytest_report_header(config):
    return (f"adapttoken_ext backend: {adapttoken_ext.backend} "
            f"(cuda: {adapttoken_ext.cuda_backend}); torch {torch.__version__}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

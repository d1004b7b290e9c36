"""softmax_entropy against torch.distributions.Categorical and the reference."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adapttoken_ext import ops, reference
from conftest import DEVICES


def categorical_entropy(logits, index=None, temperature=1.0):
    x = logits.double()
    if index is not None:
        x = x[..., index]
    return torch.distributions.Categorical(logits=x / temperature).entropy()


def check(logits, index=None, temperature=1.0, atol=1e-5):
    got = ops.softmax_entropy(logits, index, temperature)
    assert got.dtype == torch.float32 and got.shape == logits.shape[:-1]
    want = categorical_entropy(logits, index, temperature)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=atol)
    ref = reference.softmax_entropy(logits, index, temperature)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_vocab_rows(device, dtype):
    logits = (torch.randn(4, 3, 5003, device=device) * 4).to(dtype)
    check(logits, atol=2e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_index_and_temperature(device):
    logits = torch.randn(6, 1000, device=device) * 3
    index = torch.tensor([17, 3, 999, 500], device=device)  # e.g. option letters A-D
    for t in (0.5, 1.0, 2.5):
        check(logits, index, t)
    h = ops.softmax_entropy(logits, index)
    assert bool((h >= 0).all()) and bool((h <= math.log(4) + 1e-6).all())


@pytest.mark.parametrize("device", DEVICES)
def test_bounds_uniform_and_one_hot(device):
    uniform = torch.zeros(1, 7, device=device)
    torch.testing.assert_close(ops.softmax_entropy(uniform), torch.tensor([math.log(7)],
                               device=device))
    one_hot = torch.full((1, 7), float("-inf"), device=device)
    one_hot[0, 3] = 5.0
    assert ops.softmax_entropy(one_hot).item() == 0.0


def test_neg_inf_entries_and_nan_rows():
    x = torch.randn(5, 300)
    x[0, :250] = float("-inf")             # -inf has probability 0
    x[1, :] = float("-inf")                # all -inf: NaN
    x[2, 17] = float("nan")                # NaN: NaN
    x[3, 5] = float("inf")                 # +inf: NaN
    for impl in (ops, reference):
        h = impl.softmax_entropy(x)
        torch.testing.assert_close(h[0].double(), categorical_entropy(x[0]), rtol=1e-5, atol=1e-6)
        assert torch.isnan(h[1:4]).all(), impl
        torch.testing.assert_close(h[4].double(), categorical_entropy(x[4]), rtol=1e-5, atol=1e-6)


def test_non_contiguous_and_1d():
    base = torch.randn(300, 8)
    logits = base.t()  # [8, 300] with column stride 8
    assert not logits.is_contiguous()
    check(logits)
    check(torch.randn(1234))
    check(torch.randn(2, 10, 3)[:, ::3, :])


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 4), V=st.integers(1, 2100), data=st.data(),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       spread=st.floats(0.01, 30.0), temperature=st.floats(0.05, 5.0))
def test_fuzz(rows, V, data, dtype, spread, temperature):
    logits = (torch.randn(rows, V) * spread).to(dtype)
    index = None
    if data.draw(st.booleans()):
        K = data.draw(st.integers(1, min(V, 10)))
        index = torch.randperm(V)[:K]
    check(logits, index, temperature, atol=5e-5)

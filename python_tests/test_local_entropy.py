"""local_entropy (EntropySelect step 1) against a float64 loop written here, and the reference."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adapttoken_ext import ops, reference
from conftest import DEVICES, IMPLS

ERRORS = (RuntimeError, ValueError, TypeError)


def loop_entropy(tokens, window, temperature):
    """Token by token in float64: cosine to each existing neighbour of the k x k window,
    Categorical entropy of softmax(s / T), divided by ln(number of neighbours)."""
    x = tokens.double().cpu()
    T, H, W, _ = x.shape
    r = window // 2
    out = torch.zeros(T, H, W, dtype=torch.float64)
    for t in range(T):
        for h in range(H):
            for w in range(W):
                sims = []
                for hh in range(max(0, h - r), min(H, h + r + 1)):
                    for ww in range(max(0, w - r), min(W, w + r + 1)):
                        if (hh, ww) == (h, w):
                            continue
                        a, b = x[t, h, w], x[t, hh, ww]
                        na, nb = a.norm(), b.norm()
                        sims.append(0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb)))
                if len(sims) >= 2:
                    p = torch.distributions.Categorical(logits=torch.tensor(sims) / temperature)
                    out[t, h, w] = p.entropy() / math.log(len(sims))
    return out


def check(tokens, window=3, temperature=0.1, atol=2e-5):
    got = ops.local_entropy(tokens, window, temperature)
    assert got.dtype == torch.float32 and got.shape == tokens.shape[:3]
    assert got.device == tokens.device
    torch.testing.assert_close(got.double().cpu(), loop_entropy(tokens, window, temperature),
                               rtol=0, atol=atol)
    torch.testing.assert_close(got, reference.local_entropy(tokens, window, temperature),
                               rtol=0, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_against_float64_loop(device, dtype):
    tokens = torch.randn(2, 5, 6, 70, device=device).to(dtype)
    check(tokens)
    check(tokens, 5, 0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_bounds_and_one_wide_grids(device):
    e = ops.local_entropy(torch.randn(3, 4, 9, 40, device=device), 3, 0.05)
    assert bool((e >= 0).all()) and bool((e <= 1 + 1e-6).all())
    # a 1 x 1 grid has no neighbour and a 1-wide grid's ends have one: e = 0 there
    assert ops.local_entropy(torch.randn(2, 1, 1, 8, device=device)).eq(0).all()
    e = ops.local_entropy(torch.randn(1, 1, 5, 8, device=device))
    assert e[0, 0, 0] == 0 and e[0, 0, 4] == 0 and bool((e[0, 0, 1:4] > 0).all())
    check(torch.randn(1, 1, 5, 8, device=device))
    check(torch.randn(1, 6, 1, 8, device=device), 5)


def test_uniform_and_isolated_token():
    """Identical neighbours give a uniform distribution (e = 1); one odd token among them
    leaves its own e at 1 and lowers its neighbours' (the ring sees 1 unlike token of n)."""
    tokens = torch.ones(1, 5, 5, 4)
    tokens[0, 2, 2] = torch.tensor([1.0, -1.0, 1.0, -1.0])  # orthogonal to the background
    e = ops.local_entropy(tokens, 3, 0.1)
    assert e[0, 2, 2] == pytest.approx(1.0, abs=1e-6)
    assert e[0, 0, 4] == pytest.approx(1.0, abs=1e-6)  # far from it
    assert float(e[0, 1:4, 1:4].flatten()[[0, 1, 2, 3, 5, 6, 7, 8]].max()) < 0.95
    check(tokens)


def test_zero_vectors_and_nan():
    tokens = torch.randn(1, 3, 4, 16)
    tokens[0, 1, 1] = 0  # cosine 0 with every neighbour
    check(tokens)
    tokens[0, 0, 0, 3] = float("nan")
    for impl in IMPLS.values():
        e = impl.local_entropy(tokens)
        assert torch.isnan(e[0, :2, :2]).all() and not torch.isnan(e[0, :, 3]).any(), impl


def test_non_contiguous():
    base = torch.randn(3, 40, 6, 5)  # [T, C, W, H] storage
    tokens = base.permute(0, 3, 2, 1)
    assert not tokens.is_contiguous()
    check(tokens)
    check(torch.randn(4, 4, 4, 64)[::2, :, 1:, ::3])


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 2), H=st.integers(1, 7), W=st.integers(1, 7), C=st.integers(1, 80),
       window=st.sampled_from([3, 5, 7]), temperature=st.floats(0.02, 5.0),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       seed=st.integers(0, 2**16))
def test_fuzz(T, H, W, C, window, temperature, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(T, H, W, C, generator=g).to(dtype)
    check(tokens, window, temperature, atol=1e-4)


@pytest.fixture(params=list(IMPLS))
def impl(request):
    return IMPLS[request.param]


def test_errors(impl):
    f = impl.local_entropy
    x = torch.randn(2, 3, 4, 8)
    for bad, match in ((x[0], "tokens must be 4-D"), (x[None], "tokens must be 4-D"),
                       (x.double(), "tokens must be float32"), (x.int(), "tokens must be float32"),
                       (torch.randn(2, 0, 4, 8), "tokens must have no empty dimension")):
        with pytest.raises(ERRORS, match=match):
            f(bad, 3, 0.1)
    for window in (2, 4, 1, -3):
        with pytest.raises(ERRORS, match="window must be an odd integer >= 3"):
            f(x, window, 0.1)
    for t in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ERRORS, match="temperature must be finite and > 0"):
            f(x, 3, t)


def test_torch_compile_fullgraph():
    tokens = torch.randn(2, 4, 5, 24)

    def f(x):
        return ops.local_entropy(x, 3, 0.2) * 2

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(tokens), f(tokens))

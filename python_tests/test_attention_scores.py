"""attention_scores against an independent float64 formulation and the reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adapttoken_ext import ops, reference
from conftest import DEVICES


def dense_scores_f64(query, key, query_start, visual_start, visual_end, scale, reduce):
    """Per-head softmax of the full causally masked q k^T, in float64."""
    q, k = query.double(), key.double()
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    pos = torch.arange(query_start, Lq, device=q.device) + (Lk - Lq)
    hidden = pos[:, None] < torch.arange(Lk, device=q.device)[None, :]
    rows = []
    for h in range(Hq):
        logits = torch.einsum("btd,bjd->btj", q[:, h, query_start:], k[:, h // (Hq // Hkv)])
        logits = (logits * scale).masked_fill(hidden, float("-inf"))
        rows.append(torch.softmax(logits, dim=-1)[..., visual_start:visual_end])
    p = torch.cat(rows, dim=1)  # [B, Hq * T, V]
    return p.amax(dim=1) if reduce == "max" else p.mean(dim=1)


def make_qk(B, Hq, Hkv, Lq, Lk, D, dtype, device, layout="contiguous"):
    """Random query (times 2, for peakier softmaxes) and key in the given layout."""
    if layout == "hf":  # [B, L, H, D] storage viewed as [B, H, L, D], as after a transpose
        q = (2 * torch.randn(B, Lq, Hq, D, device=device)).to(dtype).transpose(1, 2)
        k = torch.randn(B, Lk, Hkv, D, device=device).to(dtype).transpose(1, 2)
    elif layout == "sliced":  # a strided slice along the sequence and head_dim
        q = (2 * torch.randn(B, Hq, Lq * 2, D * 2, device=device)).to(dtype)[:, :, ::2, ::2]
        k = torch.randn(B, Hkv, Lk * 2, D * 2, device=device).to(dtype)[:, :, 1::2, ::2]
    else:
        q = (2 * torch.randn(B, Hq, Lq, D, device=device)).to(dtype)
        k = torch.randn(B, Hkv, Lk, D, device=device).to(dtype)
    return q, k


def check(q, k, query_start, vs, ve, reduce, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    got = ops.attention_scores(q, k, query_start, vs, ve, scale, reduce)
    want = dense_scores_f64(q, k, query_start, vs, ve, scale, reduce)
    assert got.dtype == torch.float32 and got.shape == (q.shape[0], ve - vs)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
    ref = reference.attention_scores(q, k, query_start, vs, ve, scale, reduce)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gqa", [1, 2, 7])
@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_dtypes_gqa_reduce(device, dtype, gqa, reduce):
    q, k = make_qk(2, 2 * gqa, 2, 11, 301, 40, dtype, device)
    check(q, k, 3, 7, 290, reduce)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["hf", "sliced"])
def test_non_contiguous(device, layout):
    q, k = make_qk(1, 6, 3, 9, 70, 24, torch.bfloat16, device, layout)
    assert not q.is_contiguous() and not k.is_contiguous()
    check(q, k, 2, 0, 70, "max")
    check(q, k, 2, 5, 60, "mean")


@pytest.mark.parametrize("device", DEVICES)
def test_causal_keys_after_text_start(device):
    # Visual range overlapping the text queries: later keys are hidden from
    # earlier rows, and the last key is seen by the last row only.
    q, k = make_qk(1, 4, 2, 10, 40, 16, torch.float32, device)
    check(q, k, 0, 25, 40, "max")
    check(q, k, 0, 25, 40, "mean")


@pytest.mark.parametrize("device", DEVICES)
def test_sizes_around_tiles(device):
    # Key counts around the 256-key chunk and rows around the micro-tile.
    for Lk in (1, 255, 256, 257, 513):
        q, k = make_qk(1, 3, 1, 1, Lk, 8, torch.float32, device)
        check(q, k, 0, 0, Lk, "max")
    q, k = make_qk(1, 7, 7, 33, 600, 130, torch.float32, device)
    check(q, k, 1, 100, 599, "mean")


@pytest.mark.parametrize("device", DEVICES)
def test_lq_equal_lk(device):
    q, k = make_qk(1, 4, 4, 50, 50, 8, torch.float32, device)
    check(q, k, 0, 0, 50, "max")


def test_probability_mass_mean():
    # With every query seeing every visual key and no text keys, mean scores over
    # all keys sum to 1 per row, so the means sum to 1 as well.
    q = torch.randn(1, 4, 3, 16)
    k = torch.randn(1, 2, 3, 16)
    # Lq == Lk: the query rows are keys too; take the last row, which sees all.
    s = ops.attention_scores(q, k, 2, 0, 3, reduce="mean")
    torch.testing.assert_close(s.sum(), torch.tensor(1.0), rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 2), Hkv=st.integers(1, 3), G=st.integers(1, 3), D=st.integers(1, 33),
       Lk=st.integers(1, 300), data=st.data(),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       reduce=st.sampled_from(["max", "mean"]))
def test_fuzz_against_reference(B, Hkv, G, D, Lk, data, dtype, reduce):
    Lq = data.draw(st.integers(1, min(Lk, 40)))
    query_start = data.draw(st.integers(0, Lq - 1))
    vs = data.draw(st.integers(0, Lk - 1))
    ve = data.draw(st.integers(vs + 1, Lk))
    scale = data.draw(st.floats(0.01, 2.0))
    q, k = make_qk(B, G * Hkv, Hkv, Lq, Lk, D, dtype, "cpu")
    check(q, k, query_start, vs, ve, reduce, scale)

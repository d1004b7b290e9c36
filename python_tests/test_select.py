"""select against its definition: float64 scores, then per-group top-k with the tie rule."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adapttoken_ext import ops, reference
from conftest import DEVICES
from test_attention_scores import dense_scores_f64, make_qk


def check(q, k, query_start, offsets, budgets, reduce="max"):
    scale = q.shape[-1] ** -0.5
    v0, v1 = int(offsets[0]), int(offsets[-1])
    dense = dense_scores_f64(q, k, query_start, v0, v1, scale, reduce)[0]
    indices, scores = ops.select(q, k, query_start, offsets, budgets, reduce=reduce)
    assert indices.dtype == torch.int64 and scores.dtype == torch.float32
    assert torch.all(indices[1:] > indices[:-1]), "ascending"
    pos = 0
    for g in range(len(budgets)):
        s, e, b = int(offsets[g]), int(offsets[g + 1]), int(budgets[g])
        got = indices[pos:pos + b]
        assert bool(((got >= s) & (got < e)).all())
        # Every kept key scores at least as high as every dropped key of the group.
        kept = torch.zeros(e - s, dtype=torch.bool, device=got.device)
        kept[got - s] = True
        group = dense[s - v0:e - v0]
        if 0 < b < e - s:
            assert group[kept].min() >= group[~kept].max() - 1e-6
        pos += b
    torch.testing.assert_close(scores.double(), dense[indices - v0], rtol=1e-4, atol=1e-6)
    ref_i, ref_s = reference.select(q, k, query_start, offsets, budgets, scale, reduce)
    assert torch.equal(indices, ref_i)
    torch.testing.assert_close(scores, ref_s, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_groups(device, reduce):
    q, k = make_qk(1, 14, 2, 20, 420, 32, torch.bfloat16, device)
    offsets = torch.tensor([5, 105, 105, 300, 400], device=device)
    budgets = torch.tensor([10, 0, 195, 1], device=device)  # empty group, k = length
    check(q, k, 4, offsets, budgets, reduce)


@settings(max_examples=30, deadline=None)
@given(G=st.integers(1, 5), data=st.data())
def test_fuzz(G, data):
    lengths = [data.draw(st.integers(0, 40)) for _ in range(G)]
    if sum(lengths) == 0:
        lengths[0] = 1
    v0 = data.draw(st.integers(0, 10))
    Lq = data.draw(st.integers(1, 12))
    Lk = v0 + sum(lengths) + data.draw(st.integers(Lq, Lq + 5))
    offsets = torch.tensor([v0] + (v0 + torch.tensor(lengths).cumsum(0)).tolist())
    budgets = torch.tensor([data.draw(st.integers(0, n)) for n in lengths])
    q, k = make_qk(1, 4, 2, Lq, Lk, 16, torch.float32, "cpu")
    check(q, k, data.draw(st.integers(0, Lq - 1)), offsets, budgets)

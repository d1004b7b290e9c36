"""segmented_topk against torch.topk per segment with the tie rule, and the reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adapttoken_ext import ops, reference
from conftest import DEVICES


def expected_indices(seg: torch.Tensor, k: int) -> list[int]:
    """Top-k index set of one segment from torch.topk: ties to the lower index, NaN last."""
    real = torch.nonzero(~torch.isnan(seg)).flatten()
    nans = torch.nonzero(torch.isnan(seg)).flatten()
    if k > len(real):
        return sorted(real.tolist() + nans[: k - len(real)].tolist())
    if k == 0:
        return []
    vals = seg[real]
    thr = torch.topk(vals, k).values[-1]
    above = real[vals > thr]
    tied = real[vals == thr][: k - len(above)]
    return sorted(above.tolist() + tied.tolist())


def check(scores, offsets, k):
    for impl in (ops, reference):
        values, indices = impl.segmented_topk(scores, offsets, k)
        assert values.dtype == torch.float32 and indices.dtype == torch.int64
        assert len(indices) == int(k.sum())
        pos = 0
        for g in range(len(k)):
            s, e, kg = int(offsets[g]), int(offsets[g + 1]), int(k[g])
            got = indices[pos:pos + kg].cpu()
            want = [s + i for i in expected_indices(scores[s:e].cpu(), kg)]
            assert got.tolist() == want, f"segment {g}"
            pos += kg
        torch.testing.assert_close(values, scores[indices], equal_nan=True)

        # Descending-score order: values non-increasing (NaN last), ties by index.
        v2, i2 = impl.segmented_topk(scores, offsets, k, sort_by_index=False)
        pos = 0
        for g in range(len(k)):
            kg = int(k[g])
            seg_i, seg_v = i2[pos:pos + kg].cpu(), v2[pos:pos + kg].cpu()
            assert sorted(seg_i.tolist()) == indices[pos:pos + kg].tolist()
            key = [(bool(torch.isnan(v)), -float(v) if not torch.isnan(v) else 0.0, int(i))
                   for v, i in zip(seg_v, seg_i)]
            assert key == sorted(key)
            pos += kg


@pytest.mark.parametrize("device", DEVICES)
def test_segments_ties_empty_and_full(device):
    # Small integers give many ties; -0.0 ties with 0.0.
    scores = torch.randint(0, 4, (200,)).float()
    scores[::7] = -0.0
    offsets = torch.tensor([0, 0, 50, 50, 51, 120, 200])
    k = torch.tensor([0, 10, 0, 1, 69, 33])  # empty segments, k = 0, k = length
    check(scores.to(device), offsets.to(device), k.to(device))


@pytest.mark.parametrize("device", DEVICES)
def test_nan_and_inf(device):
    scores = torch.tensor([float("nan"), float("-inf"), 1.0, float("inf"), float("nan"),
                           -2.0, float("-inf")])
    for kk in range(8):
        check(scores.to(device), torch.tensor([0, 7], device=device),
              torch.tensor([kk], device=device))


def test_non_contiguous_scores():
    base = torch.randn(400)
    scores = base[::2]
    assert not scores.is_contiguous()
    check(scores, torch.tensor([0, 64, 200]), torch.tensor([5, 17]))


def test_large_segments():
    scores = torch.randn(100_000)
    offsets = torch.tensor([0, 30_000, 30_000, 99_000, 100_000])
    check(scores, offsets, torch.tensor([1000, 0, 7000, 1000]))


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 60), min_size=1, max_size=8), data=st.data(),
       distinct=st.integers(1, 10))
def test_fuzz(lengths, data, distinct):
    n = sum(lengths)
    scores = torch.randint(0, distinct, (n,)).float()
    if n and data.draw(st.booleans()):
        scores[data.draw(st.integers(0, n - 1))] = float("nan")
    offsets = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist())
    k = torch.tensor([data.draw(st.integers(0, length)) for length in lengths])
    check(scores, offsets, k)
    for sort_by_index in (True, False):
        a = ops.segmented_topk(scores, offsets, k, sort_by_index)
        b = reference.segmented_topk(scores, offsets, k, sort_by_index)
        assert torch.equal(a[1], b[1])
        torch.testing.assert_close(a[0], b[0], equal_nan=True)

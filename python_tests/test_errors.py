"""Bad input raises an exception naming the argument, in the op and in the reference."""

import pytest
import torch

from conftest import IMPLS

ERRORS = (RuntimeError, ValueError, TypeError, IndexError)


def qk(B=1, Hq=4, Hkv=2, Lq=5, Lk=20, D=8, dtype=torch.float32):
    return torch.randn(B, Hq, Lq, D, dtype=dtype), torch.randn(B, Hkv, Lk, D, dtype=dtype)


def raises(match, fn, *args, **kwargs):
    with pytest.raises(ERRORS, match=match):
        fn(*args, **kwargs)


@pytest.fixture(params=list(IMPLS))
def impl(request):
    return IMPLS[request.param]


def test_attention_scores_errors(impl):
    f = impl.attention_scores
    q, k = qk()
    s = 0.3
    raises("query must be 4-D", f, q[0], k, 0, 0, 10, s)
    raises("key must be 4-D", f, q, k[0], 0, 0, 10, s)
    raises("query must be float32", f, q.double(), k.double(), 0, 0, 10, s)
    raises("query must be float32", f, q.to(torch.int32), k.to(torch.int32), 0, 0, 10, s)
    raises("key dtype", f, q, k.half(), 0, 0, 10, s)
    raises("query heads", f, *qk(Hq=3, Hkv=2), 0, 0, 10, s)
    raises("key batch size", f, q, torch.randn(2, 2, 20, 8), 0, 0, 10, s)
    raises("key head_dim", f, q, torch.randn(1, 2, 20, 4), 0, 0, 10, s)
    raises("query length", f, *qk(Lq=30, Lk=20), 0, 0, 10, s)
    raises("query must have no empty", f, *qk(Lq=0), 0, 0, 10, s)
    raises("key must have no empty", f, q, torch.randn(1, 0, 20, 8), 0, 0, 10, s)
    raises("query_start", f, q, k, 5, 0, 10, s)
    raises("query_start", f, q, k, -1, 0, 10, s)
    raises("visual_start", f, q, k, 0, 10, 10, s)
    raises("visual_start", f, q, k, 0, -1, 10, s)
    raises("visual_end", f, q, k, 0, 0, 21, s)
    raises("scale", f, q, k, 0, 0, 10, float("nan"))
    raises("reduce", f, q, k, 0, 0, 10, s, "sum")


def test_segmented_topk_errors(impl):
    f = impl.segmented_topk
    s = torch.randn(10)
    off = torch.tensor([0, 4, 10])
    k = torch.tensor([1, 2])
    raises("scores must be 1-D", f, s[None], off, k)
    raises("scores must be float32", f, s.double(), off, k)
    raises("offsets must be int64", f, s, off.int(), k)
    raises("k must be int64", f, s, off, k.float())
    raises("offsets must be 1-D", f, s, off[None], k)
    raises("offsets must hold at least 2", f, s, torch.tensor([0]), torch.tensor([], dtype=torch.long))
    raises("k must have 2 entries", f, s, off, torch.tensor([1]))
    raises("offsets must start at 0 and end at 10", f, s, torch.tensor([1, 4, 10]), k)
    raises("offsets must start at 0 and end at 10", f, s, torch.tensor([0, 4, 9]), k)
    raises("offsets must be non-decreasing", f, s, torch.tensor([0, 11, 10]), k)
    raises(r"k\[1\] = 7", f, s, off, torch.tensor([1, 7]))
    raises(r"k\[0\] = -1", f, s, off, torch.tensor([-1, 2]))


def test_softmax_entropy_errors(impl):
    f = impl.softmax_entropy
    x = torch.randn(3, 10)
    raises("logits must have at least 1 dimension", f, torch.tensor(1.0))
    raises("logits must be float32", f, x.double())
    raises("logits must have a non-empty last dimension", f, torch.randn(3, 0))
    raises("temperature", f, x, None, 0.0)
    raises("temperature", f, x, None, -1.0)
    raises("temperature", f, x, None, float("inf"))
    raises("index must be int64", f, x, torch.tensor([1.0]))
    raises("index must be 1-D", f, x, torch.tensor([[1]]))
    raises("index must not be empty", f, x, torch.tensor([], dtype=torch.long))
    raises("index holds 10", f, x, torch.tensor([1, 10]))
    raises("index holds -1", f, x, torch.tensor([-1]))


def test_select_errors(impl):
    f = impl.select
    q, k = qk()
    off = torch.tensor([2, 8, 15])
    b = torch.tensor([3, 3])
    s = 0.3
    raises("batch size 1", f, *qk(B=2), 0, off, b, s)
    raises("query_start", f, q, k, 7, off, b, s)
    raises("visual_offsets must be int64", f, q, k, 0, off.float(), b, s)
    raises("budgets must have 2 entries", f, q, k, 0, off, torch.tensor([3]), s)
    raises("visual_offsets must satisfy", f, q, k, 0, torch.tensor([2, 8, 21]), b, s)
    raises("visual_offsets must satisfy", f, q, k, 0, torch.tensor([-1, 8, 15]), b, s)
    raises("visual_offsets must satisfy", f, q, k, 0, torch.tensor([5, 5]), torch.tensor([0]), s)
    raises("visual_offsets must be non-decreasing", f, q, k, 0, torch.tensor([2, 16, 15]), b, s)
    raises(r"budgets\[1\] = 8", f, q, k, 0, off, torch.tensor([3, 8]), s)
    raises("reduce", f, q, k, 0, off, b, s, "min")

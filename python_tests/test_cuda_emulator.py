"""The CUDA kernels and cuda_ops.cu, run on the CPU by the SIMT emulator (csrc/emulator/),
against the CPU kernels (torch.ops.adapttoken.* on CPU tensors) and float64 references.

Every case runs with the blocks of each grid and the threads of each block in forward and
reverse order (and the cheap ones in a seeded random order too): a result that depends on
the order is a race. The emulator itself fails a launch on a divergent __syncthreads, a
warp collective whose lanes disagree, a deadlock, reuse of CUB temp storage without a
barrier, too much shared memory or a bad launch configuration.
"""
from __future__ import annotations

import math

import cuda_emulator
import pytest
import torch
from test_attention_scores import dense_scores_f64, make_qk
from test_local_entropy import loop_entropy
from test_segmented_topk import expected_indices
from test_softmax_entropy import categorical_entropy

cpu = torch.ops.adapttoken
emu = cuda_emulator.ops
ORDERS = ["forward", "reverse", "random"]
TWO_ORDERS = ["forward", "reverse"]


@pytest.fixture(scope="module")
def lib():
    return cuda_emulator.build()


@pytest.fixture(params=ORDERS)
def order(request, lib):
    cuda_emulator.set_order(lib, request.param, seed=12345)
    return request.param


@pytest.fixture(params=TWO_ORDERS)
def order2(request, lib):
    cuda_emulator.set_order(lib, request.param)
    return request.param


def same(got, want, rtol=1e-4, atol=1e-6):
    """Close, NaN where `want` has NaN, same dtype and shape."""
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want.to(got.dtype) if want.is_floating_point() else want,
                               rtol=rtol, atol=atol, equal_nan=True)


# ---- attention_scores (method.md step 3) --------------------------------------------

def check_attention(q, k, query_start, vs, ve, reduce, scale=None, atol=1e-6):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    got = emu.attention_scores(q, k, query_start, vs, ve, scale, reduce)
    same(got, cpu.attention_scores(q, k, query_start, vs, ve, scale, reduce), atol=atol)
    want = dense_scores_f64(q, k, query_start, vs, ve, scale, reduce)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=atol, equal_nan=True)
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gqa", [1, 2, 7])
@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_attention_dtypes_gqa_reduce(order2, dtype, gqa, reduce):
    q, k = make_qk(2, 2 * gqa, 2, 11, 301, 40, dtype, "cpu")
    check_attention(q, k, 3, 7, 290, reduce)


@pytest.mark.parametrize("layout", ["hf", "sliced"])
def test_attention_strided_and_transposed(order, layout):
    q, k = make_qk(1, 6, 3, 9, 70, 24, torch.bfloat16, "cpu", layout)
    assert not q.is_contiguous() and not k.is_contiguous()
    check_attention(q, k, 2, 0, 70, "max")
    check_attention(q, k, 2, 5, 60, "mean")


def test_attention_causal_overlap_and_square(order):
    q, k = make_qk(1, 4, 2, 10, 40, 16, torch.float32, "cpu")
    check_attention(q, k, 0, 25, 40, "max")
    check_attention(q, k, 0, 25, 40, "mean")
    q, k = make_qk(1, 4, 4, 50, 50, 8, torch.float32, "cpu")
    check_attention(q, k, 0, 0, 50, "max")


def test_attention_odd_sizes(order2):
    # Key counts around the 32-key tile and the 256-key split, D = 1, odd and 256 (the
    # CUDA maximum), one query row.
    for Lk, D in ((1, 1), (31, 3), (33, 5), (255, 7), (256, 1), (257, 9), (513, 2)):
        q, k = make_qk(1, 3, 1, 1, Lk, D, torch.float32, "cpu")
        check_attention(q, k, 0, 0, Lk, "max")
    q, k = make_qk(1, 2, 1, 3, 40, 256, torch.float32, "cpu")
    check_attention(q, k, 1, 3, 37, "mean")
    q, k = make_qk(1, 7, 7, 33, 600, 130, torch.float32, "cpu")
    check_attention(q, k, 1, 100, 599, "mean")


def test_attention_many_rows_28_4_heads_d128(order2):
    # 70 used text rows: pass 1 takes two 64-row blocks; Qwen2.5-VL-7B's 28 query and 4
    # KV heads at head_dim 128.
    q, k = make_qk(1, 28, 4, 75, 300, 128, torch.bfloat16, "cpu")
    check_attention(q, k, 5, 10, 290, "max")
    check_attention(q, k, 5, 10, 290, "mean")


def test_attention_long_keys_past_split_change(lib):
    # Past 131,072 keys a split holds Lk / 512 keys instead of 256 (513 splits here).
    cuda_emulator.set_order(lib, "reverse")
    Lk = 131072 + 3000
    q, k = make_qk(1, 2, 1, 2, Lk, 8, torch.float32, "cpu")
    # Probabilities near 1 / Lk: an absolute tolerance of 1e-9.
    check_attention(q, k, 0, 100, Lk - 50, "max", atol=1e-9)
    check_attention(q, k, 0, Lk - 4000, Lk - 2, "mean", atol=1e-9)


def test_attention_nan_key_max(order2):
    # The case: one NaN key makes every row's softmax NaN (reference and CPU
    # kernel), so every score is NaN, for max as for mean.
    q, k = make_qk(1, 4, 2, 6, 100, 16, torch.float32, "cpu")
    k[0, 1, 50, 3] = float("nan")
    for reduce in ("max", "mean"):
        got = check_attention(q, k, 0, 10, 90, reduce)
        assert bool(got.isnan().all())


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_attention_infinite_key(order2, value):
    q, k = make_qk(1, 4, 2, 6, 100, 16, torch.float32, "cpu")
    k[0, 0, 40, 0] = value
    for reduce in ("max", "mean"):
        check_attention(q, k, 0, 10, 90, reduce)


def test_attention_nan_tile_and_nan_query(order2):
    # A whole 32-key tile of NaN at a split's start (warp_max over NaN only), and a NaN in
    # one query row.
    q, k = make_qk(1, 2, 1, 3, 600, 8, torch.float32, "cpu")
    k[0, 0, 256:288] = float("nan")
    for reduce in ("max", "mean"):
        check_attention(q, k, 0, 0, 600, reduce)
    q, k = make_qk(1, 2, 1, 3, 600, 8, torch.float32, "cpu")
    q[0, 1, 2, 0] = float("nan")
    for reduce in ("max", "mean"):
        check_attention(q, k, 0, 0, 600, reduce)


# ---- softmax_entropy (method.md step 4) ---------------------------------------------

def check_entropy(logits, index=None, temperature=1.0, atol=1e-5):
    got = emu.softmax_entropy(logits, index, temperature)
    same(got, cpu.softmax_entropy(logits, index, temperature), rtol=1e-5, atol=atol)
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_entropy_vector_path_and_tail(order, dtype):
    # V = 1003: row 0 starts 16-byte aligned (the 16-byte loads), later rows do not.
    logits = (3 * torch.randn(4, 1003)).to(dtype)
    got = check_entropy(logits)
    torch.testing.assert_close(got.double(), categorical_entropy(logits), rtol=1e-5, atol=1e-5)
    aligned = (3 * torch.randn(3, 4096)).to(dtype)
    got = check_entropy(aligned, temperature=0.7)
    torch.testing.assert_close(got.double(), categorical_entropy(aligned, None, 0.7),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_entropy_vocab_rows(order2, dtype):
    logits = (torch.randn(4, 3, 5003) * 4).to(dtype)
    got = check_entropy(logits, atol=2e-5)
    torch.testing.assert_close(got.double(), categorical_entropy(logits), rtol=1e-5, atol=2e-5)


def test_entropy_index_temperature_uniform_one_hot(order):
    logits = torch.randn(6, 1000) * 3
    index = torch.tensor([17, 3, 999, 500])
    for t in (0.5, 1.0, 2.5):
        got = check_entropy(logits, index, t)
        torch.testing.assert_close(got.double(), categorical_entropy(logits, index, t),
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(check_entropy(torch.zeros(1, 7)), torch.tensor([math.log(7)]))
    one_hot = torch.full((1, 7), float("-inf"))
    one_hot[0, 3] = 5.0
    assert check_entropy(one_hot).item() == 0.0


def test_entropy_index_strided_transposed(order):
    logits = 2 * torch.randn(3, 5, 300)
    index = torch.tensor([0, 299, 5, 5, 17, 120])  # repeats count twice
    got = check_entropy(logits, index, 0.5)
    torch.testing.assert_close(got.double(), categorical_entropy(logits, index, 0.5),
                               rtol=1e-5, atol=1e-5)
    for view in (logits[:, :, ::3], logits.transpose(0, 2)[:7], torch.randn(1)):
        got = check_entropy(view)
        torch.testing.assert_close(got.double(), categorical_entropy(view), rtol=1e-5, atol=1e-5)


def test_entropy_special_values(order2):
    x = torch.randn(6, 777)
    x[0, 3] = float("nan")
    x[1, 700] = float("inf")
    x[2, ::2] = float("-inf")  # probability 0
    x[3] = float("-inf")  # all -inf: NaN
    x[4, :776] = float("-inf")  # one finite entry: entropy 0
    got = check_entropy(x)
    assert got[:2].isnan().all() and got[3].isnan() and got[4] == 0
    torch.testing.assert_close(got[2].double(), categorical_entropy(x[2, 1::2]), rtol=1e-5, atol=1e-5)


# ---- local_entropy (EntropySelect step 1) -------------------------------------------

def check_local(tokens, window=3, temperature=0.1, f64=True, atol=2e-5):
    got = emu.local_entropy(tokens, window, temperature)
    same(got, cpu.local_entropy(tokens, window, temperature), rtol=0, atol=atol)
    if f64:
        torch.testing.assert_close(got.double(), loop_entropy(tokens, window, temperature),
                                   rtol=0, atol=atol, equal_nan=True)
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_local_dtypes_tiles_and_halo(order2, dtype):
    # W = 37: two 32-token tiles per row, the second with a halo from the first; C = 70:
    # two 64-channel chunks.
    tokens = torch.randn(2, 3, 37, 70).to(dtype)
    check_local(tokens, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_local_against_float64_loop(order2, dtype):
    tokens = torch.randn(2, 5, 6, 70).to(dtype)
    check_local(tokens)
    check_local(tokens, 5, 0.5)


def test_local_windows_and_narrow_grids(order2):
    check_local(torch.randn(1, 9, 40, 5), 5, 0.3)
    check_local(torch.randn(1, 16, 16, 3), 15, 0.2, f64=False)  # the CUDA maximum window
    for shape in ((1, 1, 1, 4), (1, 1, 2, 4), (1, 2, 1, 4), (2, 1, 33, 6), (1, 33, 1, 6)):
        check_local(torch.randn(shape))
    check_local(torch.randn(1, 6, 1, 8), 5)
    check_local(torch.randn(3, 4, 9, 40), 3, 0.05)


def test_local_views_zero_vectors_and_nan(order2):
    base = torch.randn(2, 40, 6, 11)
    check_local(base.permute(0, 2, 1, 3))  # [T, 6, 40, C], strides not dense
    check_local(torch.randn(1, 5, 50, 24)[:, :, ::2, 1::3])
    tokens = torch.randn(1, 4, 35, 8)
    tokens[0, 1, 2] = 0  # zero vector: cosine 0
    check_local(tokens)
    tokens[0, 2, 33, 5] = float("nan")
    got = check_local(tokens, f64=False)
    assert got[0, 1:4, 32:35].isnan().all() and not got[0, 0].isnan().any()


# ---- segmented_topk (method.md step 6) ----------------------------------------------

def check_topk(scores, offsets, k):
    for sort_by_index in (True, False):
        values, indices = emu.segmented_topk(scores, offsets, k, sort_by_index)
        want_v, want_i = cpu.segmented_topk(scores, offsets, k, sort_by_index)
        assert torch.equal(indices, want_i), f"sort_by_index={sort_by_index}"
        same(values, want_v, rtol=0, atol=0)
        if sort_by_index:
            pos = 0
            for g in range(len(k)):
                s, e, kg = int(offsets[g]), int(offsets[g + 1]), int(k[g])
                want = [s + i for i in expected_indices(scores[s:e], kg)]
                assert indices[pos:pos + kg].tolist() == want, f"segment {g}"
                pos += kg


def test_topk_ties_empty_full(order):
    scores = torch.randint(0, 4, (200,)).float()
    scores[::7] = -0.0  # ties with 0.0
    offsets = torch.tensor([0, 0, 50, 50, 51, 120, 200])
    k = torch.tensor([0, 10, 0, 1, 69, 33])  # empty segments, k = 0, k = n
    check_topk(scores, offsets, k)
    check_topk(scores, torch.tensor([0, 200]), torch.tensor([0]))  # nothing selected


def test_topk_nan_inf_and_strided(order):
    scores = torch.randn(3000)[::2].clone()
    scores[::9] = float("nan")
    scores[5::11] = float("inf")
    scores[7::13] = float("-inf")
    check_topk(scores, torch.tensor([0, 700, 1500]), torch.tensor([690, 400]))
    specials = torch.tensor([float("nan"), float("-inf"), 1.0, float("inf"), float("nan"), -2.0,
                             float("-inf")])
    for kk in range(8):
        check_topk(specials, torch.tensor([0, 7]), torch.tensor([kk]))
    strided = torch.randn(1401)[::2]
    check_topk(strided, torch.tensor([0, 1, 701]), torch.tensor([1, 333]))


def test_topk_keys_differ_in_the_last_radix_byte(order2):
    # Scores one ulp apart (1 + i 2^-23) share their top 24 bits: only the radix select's
    # last 8-bit pass tells them apart.
    scores = (1 + torch.randperm(300).double() * 2**-23).float()
    check_topk(scores, torch.tensor([0, 300]), torch.tensor([100]))


def test_topk_large_segment_many_chunks(order2):
    # 5000 scores: ten 512-thread compaction chunks, ties across chunk borders.
    scores = torch.randint(0, 50, (5000,)).float()
    check_topk(scores, torch.tensor([0, 5000]), torch.tensor([1234]))
    check_topk(scores, torch.tensor([0, 2500, 5000]), torch.tensor([2500, 1]))


def test_topk_refuses_more_than_int_max_to_sort(lib):
    # CUB's segmented sort counts items in an int: more than 2^31 - 1 selected scores must
    # be refused, not narrowed. (A stride-0 view: 2^31 + 1 scores of no memory.)
    n = 2**31 + 1
    scores = torch.zeros(1).expand(n)
    with pytest.raises(ValueError, match="at most 2147483647 selected scores"):
        emu.segmented_topk(scores, torch.tensor([0, n]), torch.tensor([n]), False)


# ---- select (cuda_ops.cu's composition, method.md steps 3 and 6) --------------------

@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_select_groups_gqa7(order2, reduce):
    q, k = make_qk(1, 14, 2, 20, 420, 32, torch.bfloat16, "cpu")
    offsets = torch.tensor([5, 105, 105, 300, 400])
    budgets = torch.tensor([10, 0, 195, 1])  # empty group, k = length
    got_i, got_s = emu.select(q, k, 4, offsets, budgets, 32 ** -0.5, reduce)
    want_i, want_s = cpu.select(q, k, 4, offsets, budgets, 32 ** -0.5, reduce)
    assert torch.equal(got_i, want_i)
    same(got_s, want_s)


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_select_groups(order, reduce):
    q, k = make_qk(1, 4, 2, 8, 260, 16, torch.bfloat16, "cpu")
    offsets = torch.tensor([12, 40, 40, 100, 101, 250])
    budgets = torch.tensor([5, 0, 60, 1, 0])  # k = 0, k = n, an empty group
    scale = 0.25
    got_i, got_s = emu.select(q, k, 2, offsets, budgets, scale, reduce)
    want_i, want_s = cpu.select(q, k, 2, offsets, budgets, scale, reduce)
    assert torch.equal(got_i, want_i)
    same(got_s, want_s)
    dense = dense_scores_f64(q, k, 2, 12, 250, scale, reduce)[0]
    torch.testing.assert_close(got_s.double(), dense[got_i - 12], rtol=1e-4, atol=1e-6)


# ---- the emulator's own rules -------------------------------------------------------

def test_emulator_counts_launches_blocks_and_switches(lib):
    # The op really runs in the emulator: one launch of one block per row.
    before = cuda_emulator.stats(lib)
    emu.softmax_entropy(torch.randn(2, 100), None, 1.0)
    after = cuda_emulator.stats(lib)
    assert after[0] == before[0] + 1 and after[1] == before[1] + 2 and after[2] > before[2]


def test_emulator_reports_rule_breaks():
    # Each snippet breaks one CUDA rule in a kernel of its own; the emulator must fail the
    # launch with a message naming the rule. Built and run as a separate small program.
    result = cuda_emulator.run_selftest()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout

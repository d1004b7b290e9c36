"""Pure-PyTorch twins of every ``torch.ops.adapttoken`` op.

Same semantics, errors included, as the C++/CUDA kernels, written the obvious
way: they materialise the full attention and softmax matrices, so they are slow
and memory-hungry on long inputs. They serve as the fallback when the compiled
extension cannot load, and as the reference in tests and benchmarks.

The ``check_*`` helpers hold the metadata validation shared with the fake
kernels in :mod:`adapttoken_ext.ops`.
"""

from __future__ import annotations

import math

import torch

__all__ = ["attention_scores", "segmented_topk", "softmax_entropy", "select", "local_entropy"]

_FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)


def _fail(op: str, exc: type[Exception], msg: str):
    raise exc(f"adapttoken.{op}: {msg}")


def _check_rank(op: str, t: torch.Tensor, name: str, dim: int, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        _fail(op, TypeError, f"{name} must be a tensor, got {type(t).__name__}")
    if t.dim() != dim:
        _fail(op, ValueError, f"{name} must be {dim}-D {layout}, got shape {list(t.shape)}")


def _check_dtype(op: str, t: torch.Tensor, name: str, dtypes: tuple) -> None:
    if t.dtype not in dtypes:
        want = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
        _fail(op, TypeError, f"{name} must be {want}, got {str(t.dtype).removeprefix('torch.')}")


def _check_same_device(op: str, ref: torch.Tensor, ref_name: str, t: torch.Tensor, name: str):
    if t.device != ref.device:
        _fail(op, ValueError, f"{name} must be on the same device as {ref_name}")


def check_attention(op, query, key, query_start, scale, reduce):
    """Validates (query, key, query_start, scale, reduce); returns (B, Hq, Hkv, Lq, Lk, D)."""
    _check_rank(op, query, "query", 4, "[B, Hq, Lq, D]")
    _check_rank(op, key, "key", 4, "[B, Hkv, Lk, D]")
    _check_dtype(op, query, "query", _FLOAT_TYPES)
    if key.dtype != query.dtype:
        _fail(op, TypeError, f"key dtype {key.dtype} must match query dtype {query.dtype}")
    _check_same_device(op, query, "query", key, "key")
    B, Hq, Lq, D = query.shape
    Hkv, Lk = key.shape[1], key.shape[2]
    if min(B, Hq, Lq, D) <= 0:
        _fail(op, ValueError, f"query must have no empty dimension, got shape {list(query.shape)}")
    if min(Hkv, Lk) <= 0:
        _fail(op, ValueError, f"key must have no empty dimension, got shape {list(key.shape)}")
    if key.shape[0] != B:
        _fail(op, ValueError, f"key batch size {key.shape[0]} must equal query batch size {B}")
    if key.shape[3] != D:
        _fail(op, ValueError, f"key head_dim {key.shape[3]} must equal query head_dim {D}")
    if Hq % Hkv:
        _fail(op, ValueError, f"query heads ({Hq}) must be a multiple of key heads ({Hkv})")
    if Lq > Lk:
        _fail(op, ValueError, f"query length {Lq} must not exceed key length {Lk}")
    if not 0 <= query_start < Lq:
        _fail(op, IndexError, f"query_start must be in [0, {Lq}), got {query_start}")
    if not math.isfinite(scale):
        _fail(op, ValueError, f"scale must be finite, got {scale}")
    if reduce not in ("max", "mean"):
        _fail(op, ValueError, f"reduce must be 'max' or 'mean', got {reduce!r}")
    return B, Hq, Hkv, Lq, Lk, D


def check_visual_range(op, visual_start, visual_end, Lk):
    if not 0 <= visual_start < visual_end <= Lk:
        _fail(op, IndexError,
              f"visual_start and visual_end must satisfy 0 <= visual_start < visual_end <= {Lk} "
              f"(key length), got visual_start={visual_start}, visual_end={visual_end}")


def check_segment_tensors(op, offsets, offsets_name, k, k_name) -> int:
    """Metadata checks of offsets [G + 1] and per-segment counts [G]; returns G."""
    _check_rank(op, offsets, offsets_name, 1, "[G + 1]")
    _check_dtype(op, offsets, offsets_name, (torch.int64,))
    _check_rank(op, k, k_name, 1, "[G]")
    _check_dtype(op, k, k_name, (torch.int64,))
    if offsets.shape[0] < 2:
        _fail(op, ValueError,
              f"{offsets_name} must hold at least 2 entries (one segment), got {offsets.shape[0]}")
    if k.shape[0] != offsets.shape[0] - 1:
        _fail(op, ValueError, f"{k_name} must have {offsets.shape[0] - 1} entries "
                              f"(one per segment), got {k.shape[0]}")
    return k.shape[0]


def _check_segment_values(op, offsets, offsets_name, k, k_name, first, last, what):
    off, kk = offsets.tolist(), k.tolist()
    if off[0] != first or off[-1] != last:
        _fail(op, ValueError, f"{offsets_name} must start at {first} and end at {last} ({what}), "
                              f"got {off[0]} and {off[-1]}")
    for g, kg in enumerate(kk):
        length = off[g + 1] - off[g]
        if length < 0:
            _fail(op, ValueError, f"{offsets_name} must be non-decreasing, got {off[g]} > "
                                  f"{off[g + 1]} at segment {g}")
        if not 0 <= kg <= length:
            _fail(op, ValueError, f"{k_name}[{g}] = {kg} must be in [0, {length}] "
                                  f"(the segment length)")


def check_softmax_entropy(logits, index, temperature):
    op = "softmax_entropy"
    if not isinstance(logits, torch.Tensor) or logits.dim() < 1:
        _fail(op, ValueError, "logits must have at least 1 dimension [..., V]")
    _check_dtype(op, logits, "logits", _FLOAT_TYPES)
    if logits.shape[-1] <= 0:
        _fail(op, ValueError,
              f"logits must have a non-empty last dimension, got shape {list(logits.shape)}")
    if not (math.isfinite(temperature) and temperature > 0):
        _fail(op, ValueError, f"temperature must be finite and > 0, got {temperature}")
    if index is not None:
        _check_rank(op, index, "index", 1, "[K]")
        _check_dtype(op, index, "index", (torch.int64,))
        _check_same_device(op, logits, "logits", index, "index")
        if index.shape[0] == 0:
            _fail(op, ValueError, "index must not be empty")


def check_local_entropy(tokens, window, temperature):
    op = "local_entropy"
    _check_rank(op, tokens, "tokens", 4, "[T, Hg, Wg, C]")
    _check_dtype(op, tokens, "tokens", _FLOAT_TYPES)
    if min(tokens.shape) <= 0:
        _fail(op, ValueError, f"tokens must have no empty dimension, got shape {list(tokens.shape)}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 3 or window % 2 == 0:
        _fail(op, ValueError, f"window must be an odd integer >= 3, got {window}")
    if not (math.isfinite(temperature) and temperature > 0):
        _fail(op, ValueError, f"temperature must be finite and > 0, got {temperature}")


def attention_scores(query, key, query_start, visual_start, visual_end, scale, reduce="max"):
    """Reference of :func:`adapttoken_ext.ops.attention_scores` (method.md step 3).

    Builds the full [B, Hq, T, Lk] probability matrix in float32.
    """
    op = "attention_scores"
    B, Hq, Hkv, Lq, Lk, D = check_attention(op, query, key, query_start, scale, reduce)
    check_visual_range(op, visual_start, visual_end, Lk)
    G = Hq // Hkv
    q = query[:, :, query_start:].float()
    # GQA as Hugging Face's repeat_kv does it: query head h reads KV head h // G.
    k = key.float()[:, :, None].expand(B, Hkv, G, Lk, D).reshape(B, Hq, Lk, D)
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, Hq, T, Lk]
    # Query row i sits at key position Lk - Lq + i and sees keys <= that position.
    pos = torch.arange(Lk - Lq + query_start, Lk, device=query.device)
    hidden = torch.arange(Lk, device=query.device)[None, :] > pos[:, None]
    logits = logits.masked_fill(hidden, float("-inf"))
    p = torch.softmax(logits, dim=-1)[..., visual_start:visual_end]
    p = p.reshape(B, -1, visual_end - visual_start)
    return p.amax(dim=1) if reduce == "max" else p.mean(dim=1)


def _rank(scores: torch.Tensor) -> torch.Tensor:
    """Indices of `scores` from best to worst: larger first, ties by lower index, NaN last."""
    nan = torch.isnan(scores)
    order = torch.sort(scores.masked_fill(nan, float("-inf")), descending=True, stable=True).indices
    return order[torch.sort(nan[order].to(torch.int8), stable=True).indices]


def segmented_topk(scores, offsets, k, sort_by_index=True):
    """Reference of :func:`adapttoken_ext.ops.segmented_topk` (method.md step 6)."""
    op = "segmented_topk"
    _check_rank(op, scores, "scores", 1, "[N]")
    _check_dtype(op, scores, "scores", (torch.float32,))
    check_segment_tensors(op, offsets, "offsets", k, "k")
    _check_same_device(op, scores, "scores", offsets, "offsets")
    _check_same_device(op, scores, "scores", k, "k")
    _check_segment_values(op, offsets, "offsets", k, "k", 0, scores.shape[0],
                          "the number of scores")
    chosen = []
    for start, end, kg in zip(offsets[:-1].tolist(), offsets[1:].tolist(), k.tolist()):
        top = _rank(scores[start:end])[:kg]
        if sort_by_index:
            top = top.sort().values
        chosen.append(top + start)
    indices = torch.cat(chosen).to(torch.int64)
    return scores[indices], indices


def softmax_entropy(logits, index=None, temperature=1.0):
    """Reference of :func:`adapttoken_ext.ops.softmax_entropy` (method.md step 4)."""
    check_softmax_entropy(logits, index, temperature)
    x = logits.float()
    if index is not None:
        V = x.shape[-1]
        if bool(((index < 0) | (index >= V)).any()):
            bad = index[(index < 0) | (index >= V)][0].item()
            _fail("softmax_entropy", IndexError,
                  f"index holds {bad}, out of range [0, {V}) for logits' last dimension")
        x = x.index_select(-1, index)
    p = torch.softmax(x / temperature, dim=-1)
    return torch.special.entr(p).sum(dim=-1)


def select(query, key, query_start, visual_offsets, budgets, scale, reduce="max"):
    """Reference of :func:`adapttoken_ext.ops.select` (method.md steps 3 and 6)."""
    op = "select"
    B, Hq, Hkv, Lq, Lk, D = check_attention(op, query, key, query_start, scale, reduce)
    if B != 1:
        _fail(op, ValueError, f"query and key must have batch size 1, got {B}")
    check_segment_tensors(op, visual_offsets, "visual_offsets", budgets, "budgets")
    _check_same_device(op, query, "query", visual_offsets, "visual_offsets")
    _check_same_device(op, query, "query", budgets, "budgets")
    v0, v1 = int(visual_offsets[0]), int(visual_offsets[-1])
    if not 0 <= v0 < v1 <= Lk:
        _fail(op, IndexError, f"visual_offsets must satisfy 0 <= visual_offsets[0] < "
                              f"visual_offsets[-1] <= {Lk} (key length), got {v0} and {v1}")
    _check_segment_values(op, visual_offsets, "visual_offsets", budgets, "budgets", v0, v1,
                          "its own first and last entries")
    scores = attention_scores(query, key, query_start, v0, v1, scale, reduce)[0]
    values, indices = segmented_topk(scores, visual_offsets - v0, budgets, True)
    return indices + v0, values


def local_entropy(tokens, window=3, temperature=0.1):
    """Reference of :func:`adapttoken_ext.ops.local_entropy` (EntropySelect step 1).

    Gathers every token's ``k x k`` window (``[T, Hg, Wg, C, k, k]`` in float32), so its
    memory grows with ``k^2 * C`` per token.
    """
    check_local_entropy(tokens, window, temperature)
    T, H, W, C = tokens.shape
    r = window // 2
    x = tokens.float()
    norm = x.norm(dim=-1, keepdim=True)
    x = torch.where(norm == 0, torch.zeros_like(x), x / norm)  # a zero vector has cosine 0
    win = torch.nn.functional.pad(x, (0, 0, r, r, r, r)).unfold(1, window, 1).unfold(2, window, 1)
    sim = torch.einsum("thwc,thwcij->thwij", x, win).reshape(T, H, W, window * window)
    inside = torch.nn.functional.pad(torch.ones(H, W, device=x.device), (r, r, r, r))
    inside = inside.unfold(0, window, 1).unfold(1, window, 1).reshape(H, W, window * window).bool()
    inside[..., window * window // 2] = False  # not the token itself
    p = torch.softmax((sim / temperature).masked_fill(~inside, float("-inf")), dim=-1)
    ent = torch.special.entr(p).masked_fill(~inside, 0.0).sum(dim=-1)
    n = inside.sum(dim=-1)
    return torch.where(n >= 2, ent / n.clamp(min=2).double().log().float(), torch.zeros_like(ent))

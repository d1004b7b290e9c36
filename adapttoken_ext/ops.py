"""Python API of the ``torch.ops.adapttoken`` ops, with fake kernels for torch.compile.

Each function calls the registered op: the C++/CUDA kernels when the extension
is loaded, else the pure-PyTorch twins in :mod:`adapttoken_ext.reference`
(``adapttoken_ext.backend`` tells which). Step numbers refer to
``shared/method.md`` of this project.
"""

from __future__ import annotations

import torch

from . import _library  # noqa: F401  (defines torch.ops.adapttoken)
from . import reference as _ref

__all__ = ["attention_scores", "segmented_topk", "softmax_entropy", "select", "local_entropy"]


def attention_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    query_start: int,
    visual_start: int,
    visual_end: int,
    scale: float | None = None,
    reduce: str = "max",
) -> torch.Tensor:
    """Cross-modal attention score of each visual key (method.md step 3).

    For every used query row ``i >= query_start`` (the text queries) and query head
    ``h``, ``p = softmax(q[h, i] . k[h // (Hq / Hkv)] * scale)`` over the keys the row
    can see (causal: row ``i`` sits at key position ``Lk - Lq + i``), accumulated in
    float32. The score of visual key ``j`` is the max, or with ``reduce="mean"`` the
    mean, of ``p[..., visual_start + j]`` over heads and used rows; a key a row cannot
    see contributes 0. The ``[B, Hq, T, Lk]`` matrix is never built: extra memory is
    O(B*Hq*T + B*Lk) (two passes: row log-sum-exp, then the reduced probabilities).

    Args:
        query: ``[B, Hq, Lq, D]`` float32/float16/bfloat16, after RoPE, as Hugging Face
            attention modules receive it; any strides.
        key: ``[B, Hkv, Lk, D]``, same dtype and device, ``Hq % Hkv == 0`` (GQA),
            ``Lq <= Lk``; K is never repeated in memory.
        query_start: first used query row, ``0 <= query_start < Lq``.
        visual_start, visual_end: the scored keys, ``0 <= visual_start < visual_end <= Lk``.
        scale: logit scale; default ``D ** -0.5``.
        reduce: ``"max"`` (default, method.md step 3) or ``"mean"``.

    Returns:
        float32 ``[B, visual_end - visual_start]``: probabilities in [0, 1].

    Raises:
        RuntimeError (compiled kernels) or ValueError/TypeError/IndexError (reference),
        naming the argument, for a bad dtype, rank, shape relation, range or ``reduce``.
    """
    if scale is None:
        scale = query.shape[-1] ** -0.5
    return torch.ops.adapttoken.attention_scores(
        query, key, query_start, visual_start, visual_end, scale, reduce)


def segmented_topk(
    scores: torch.Tensor,
    offsets: torch.Tensor,
    k: torch.Tensor,
    sort_by_index: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k[g]`` of every segment of ``scores`` (method.md step 6).

    Segment ``g`` is ``scores[offsets[g]:offsets[g + 1]]``; empty segments are allowed.
    Ties go to the lower index, so the result is deterministic; NaN ranks below
    everything, -inf included.

    Args:
        scores: float32 ``[N]``.
        offsets: int64 ``[G + 1]``, non-decreasing, ``offsets[0] == 0``, ``offsets[G] == N``.
        k: int64 ``[G]``, ``0 <= k[g] <= offsets[g + 1] - offsets[g]``.
        sort_by_index: order inside a segment: ascending index (default) or, if false,
            descending score.

    Returns:
        ``(values, indices)``: float32 and int64 ``[sum(k)]``, concatenated segment by
        segment; ``indices`` are global positions into ``scores``.

    Raises:
        RuntimeError or ValueError/TypeError, naming the argument, for bad dtypes,
        ranks, offsets or ``k``.
    """
    return torch.ops.adapttoken.segmented_topk(scores, offsets, k, sort_by_index)


def softmax_entropy(
    logits: torch.Tensor,
    index: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Shannon entropy, in nats, of ``softmax(logits / temperature)`` per row (method.md step 4).

    One pass with the online-softmax recurrence (running max, sum of exp and sum of
    exp times logit), accumulated in float32. With ``index``, only those columns are
    used, e.g. the option letters' token ids, giving ``0 <= H <= ln K``.

    ``-inf`` entries have probability 0. A row that is all ``-inf``, or that holds a
    NaN or ``+inf``, gives NaN.

    Args:
        logits: ``[..., V]`` float32/float16/bfloat16, ``V > 0``; any strides.
        index: optional int64 ``[K]``, ``K > 0``, values in ``[0, V)``.
        temperature: finite, ``> 0``.

    Returns:
        float32 ``logits.shape[:-1]``, in nats.

    Raises:
        RuntimeError or ValueError/TypeError/IndexError, naming the argument.
    """
    return torch.ops.adapttoken.softmax_entropy(logits, index, temperature)


def select(
    query: torch.Tensor,
    key: torch.Tensor,
    query_start: int,
    visual_offsets: torch.Tensor,
    budgets: torch.Tensor,
    scale: float | None = None,
    reduce: str = "max",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score visual keys and keep the top ``budgets[g]`` of each group (method.md steps 3, 6).

    One call for FlexSelect- or FastV-style pruning inside one sequence:
    :func:`attention_scores` over ``[visual_offsets[0], visual_offsets[G])``, then
    :func:`segmented_topk` per group.

    Args:
        query, key, query_start, scale, reduce: as in :func:`attention_scores`; batch 1.
        visual_offsets: int64 ``[G + 1]``, absolute key positions, non-decreasing;
            group ``g`` is keys ``[visual_offsets[g], visual_offsets[g + 1])``.
        budgets: int64 ``[G]``, ``0 <= budgets[g] <=`` the group's length.

    Returns:
        ``(indices, scores)``: int64 absolute key indices in ascending order and their
        float32 scores, ``[sum(budgets)]``.

    Raises:
        as :func:`attention_scores` and :func:`segmented_topk`.
    """
    if scale is None:
        scale = query.shape[-1] ** -0.5
    return torch.ops.adapttoken.select(
        query, key, query_start, visual_offsets, budgets, scale, reduce)


def local_entropy(tokens: torch.Tensor, window: int = 3, temperature: float = 0.1) -> torch.Tensor:
    """EntropySelect's local entropy of each visual token (README "EntropySelect", step 1).

    For the token at ``(t, h, w)``, ``s_j`` is its cosine similarity to each other token
    ``j`` of the ``window x window`` spatial window around it in frame ``t`` (border tokens
    use the neighbours that exist; a zero vector has cosine 0), ``p = softmax(s / temperature)``
    and the result is ``e = H(p) / ln n`` in ``[0, 1]``, ``n`` the number of neighbours;
    ``e = 0`` when ``n < 2``. Entropy in nats, accumulated in float32 (dot products) and
    float64 (softmax). One pass per token over its window: no ``[N, k^2, C]`` gather; extra
    memory is ``window * Wg * C`` floats per thread (CPU). A NaN in a window gives NaN.

    Low ``e`` means the token's similarities are peaked: it resembles a few neighbours and
    not the others (object boundaries, small objects); a token in a flat region or one
    equally unlike all of its neighbours has ``e`` near 1.

    Args:
        tokens: ``[T, Hg, Wg, C]`` float32/float16/bfloat16 visual tokens (frames or temporal
            units, merged-token grid rows and columns, hidden size); any strides.
        window: ``k``, an odd integer ``>= 3`` (chosen default 3).
        temperature: ``T``, finite, ``> 0`` (chosen default 0.1).

    Returns:
        float32 ``[T, Hg, Wg]``.

    Raises:
        RuntimeError (compiled kernels) or ValueError/TypeError (reference), naming
        ``tokens``, ``window`` or ``temperature``: wrong rank, dtype or empty dimension, an
        even window or one below 3, a temperature that is not finite and positive.
    """
    return torch.ops.adapttoken.local_entropy(tokens, window, temperature)


# Fake kernels: output metadata for FakeTensor tracing (torch.compile, export).
# They run the metadata checks; checks that read data happen in the real kernels.

@torch.library.register_fake("adapttoken::attention_scores")
def _(query, key, query_start, visual_start, visual_end, scale, reduce="max"):
    B, _, _, _, Lk, _ = _ref.check_attention(
        "attention_scores", query, key, query_start, scale, reduce)
    _ref.check_visual_range("attention_scores", visual_start, visual_end, Lk)
    return query.new_empty((B, visual_end - visual_start), dtype=torch.float32)


@torch.library.register_fake("adapttoken::segmented_topk")
def _(scores, offsets, k, sort_by_index=True):
    _ref.check_segment_tensors("segmented_topk", offsets, "offsets", k, "k")
    n = torch.library.get_ctx().new_dynamic_size()
    return scores.new_empty(n, dtype=torch.float32), scores.new_empty(n, dtype=torch.int64)


@torch.library.register_fake("adapttoken::softmax_entropy")
def _(logits, index=None, temperature=1.0):
    _ref.check_softmax_entropy(logits, index, temperature)
    return logits.new_empty(logits.shape[:-1], dtype=torch.float32)


@torch.library.register_fake("adapttoken::select")
def _(query, key, query_start, visual_offsets, budgets, scale, reduce="max"):
    _ref.check_attention("select", query, key, query_start, scale, reduce)
    _ref.check_segment_tensors("select", visual_offsets, "visual_offsets", budgets, "budgets")
    n = torch.library.get_ctx().new_dynamic_size()
    return query.new_empty(n, dtype=torch.int64), query.new_empty(n, dtype=torch.float32)


@torch.library.register_fake("adapttoken::local_entropy")
def _(tokens, window=3, temperature=0.1):
    _ref.check_local_entropy(tokens, window, temperature)
    return tokens.new_empty(tokens.shape[:3], dtype=torch.float32)

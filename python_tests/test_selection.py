"""The selection algorithm on plain tensors (method.md steps 1, 5, 7, 8)."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from adapttoken_ext import selection


def test_make_groups_layouts():
    inter = selection.make_groups(10, 4, "interleaved")
    assert inter == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    cont = selection.make_groups(10, 4, "contiguous")
    assert cont == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for groups in (inter, cont):
        assert sorted(u for g in groups for u in g) == list(range(10))
    with pytest.raises(ValueError, match="group_layout"):
        selection.make_groups(10, 4, "random")
    with pytest.raises(ValueError, match="units_per_group"):
        selection.make_groups(10, 0)


def _allocation_f64(H, cap, B, T):
    """Independent float64 water-filling: repeat spreading by weights, pin capped groups."""
    H, cap = [float(h) for h in H], [int(c) for c in cap]
    w = [math.exp(-h / T) for h in H]
    fixed = {}
    while True:
        free = [g for g in range(len(H)) if g not in fixed]
        rem = min(B, sum(cap)) - sum(fixed.values())
        tot = sum(w[g] for g in free)
        over = [g for g in free if rem * w[g] / tot >= cap[g]]
        if not over:
            return {g: (fixed[g] if g in fixed else rem * w[g] / tot) for g in range(len(H))}
        for g in over:
            fixed[g] = cap[g]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3), st.integers(0, 50)), min_size=1, max_size=12),
       st.integers(1, 300), st.sampled_from([0.3, 1.0, 2.0]))
def test_allocate_budget_matches_float64_waterfill(groups, B, T):
    H = torch.tensor([g[0] for g in groups])
    cap = torch.tensor([g[1] for g in groups])
    if cap.sum() == 0:
        cap[0] = 1
    b = selection.allocate_budget(H, cap, B, T)
    assert int(b.sum()) == min(B, int(cap.sum()))
    assert (b >= 0).all() and (b <= cap).all()
    exact = _allocation_f64(H.tolist(), cap.tolist(), B, T)
    for g in range(len(groups)):  # largest remainder: within one token of the exact share
        assert abs(int(b[g]) - exact[g]) < 1 + 1e-6


def test_allocate_budget_prefers_low_entropy_and_floor():
    b = selection.allocate_budget(torch.tensor([0.1, 1.0, 2.0]), torch.tensor([100, 100, 100]), 60)
    assert b[0] > b[1] > b[2] and int(b.sum()) == 60
    f = selection.allocate_budget(torch.tensor([0.0, 9.0, 9.0]), torch.tensor([100, 100, 3]), 60, floor=5)
    assert f[1] >= 5 and f[2] == 3 and int(f.sum()) == 60
    with pytest.raises(ValueError, match="per_group_floor"):
        selection.allocate_budget(torch.tensor([0.0, 0.0]), torch.tensor([10, 10]), 5, floor=3)
    with pytest.raises(ValueError, match="budget"):
        selection.allocate_budget(torch.tensor([0.0]), torch.tensor([10]), 0)


def test_stop_threshold():
    assert selection.stop_threshold(4) == pytest.approx(0.1 * math.log(4))
    assert selection.stop_threshold(None) == pytest.approx(0.1)


def test_remove_redundant_drops_lower_score_and_refills():
    # one row x one column per unit: key == unit. Units 0 and 1 carry the same embedding.
    e = torch.eye(4)
    emb = torch.stack([e[0], e[0], e[1], e[2]])
    keys = [torch.tensor([1, 0, 2, 3])]       # candidates in descending-score order
    scores = [torch.tensor([0.9, 0.8, 0.5, 0.4])]
    embs = [emb[keys[0]]]
    sel = selection.remove_redundant(keys, scores, embs, torch.tensor([2]), 1, 0.9)
    # unit 0 (score 0.8) duplicates unit 1 (0.9): dropped, refilled by unit 2.
    assert keys[0][sel[0]].tolist() == [1, 2]
    off = selection.remove_redundant(keys, scores, embs, torch.tensor([2]), 1, None)
    assert keys[0][off[0]].tolist() == [1, 0]


def test_remove_redundant_across_groups_and_tie_keeps_earlier():
    emb = torch.ones(2, 3)
    keys = [torch.tensor([0]), torch.tensor([1])]
    scores = [torch.tensor([0.5]), torch.tensor([0.5])]
    sel = selection.remove_redundant(keys, scores, [emb[:1], emb[1:]], torch.tensor([1, 1]), 1, 0.9)
    assert [s.numel() for s in sel] == [1, 0]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0, 1.3863), min_size=2, max_size=10), st.integers(1, 9),
       st.integers(1, 200), st.sampled_from([0.5, 1.0]), st.integers(0, 3), st.booleans())
def test_budget_bound_holds_whatever_the_unvisited_groups(H, visited, B, T, floor, lite):
    """No completion of the unvisited entropies (in [0, ln 4]) gives a visited group more."""
    visited = min(visited, len(H) - 1)
    cap = torch.full((len(H),), 200)
    bound = selection.budget_bound(torch.tensor(H[:visited]), len(H) - visited, math.log(4),
                                   B, 200, T, floor, lite)
    ends = range(visited + 1, len(H) + 1) if lite else [len(H)]  # Lite may stop after any later group
    for end in ends:
        if floor * end > B:
            continue
        b = selection.allocate_budget(torch.tensor(H[:end]), cap[:end], B, T, floor)
        assert (b[:visited] <= bound).all(), (b, bound)

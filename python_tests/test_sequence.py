"""The family-agnostic sequence pruning of method.md step 9 (models/base.py)."""
import pytest
import torch

from adapttoken_ext.models.base import Sequence, Visual


def _sequence():
    """[p p][t0 v v v][t1 v v v][t2 v v v][q q]: per-unit text t_u (a timestamp, say) and
    3 visual tokens per unit; positions of rank 2, deliberately non-contiguous."""
    cols = [("p", -1, -1), ("p", -1, -1)]
    for u in range(3):
        cols.append(("t", u, -1))
        cols += [("v", u, u * 3 + j) for j in range(3)]
    cols += [("q", -1, -1), ("q", -1, -1)]
    L = len(cols)
    ids = torch.tensor([{"p": 1, "t": 2, "v": 9, "q": 3}[c[0]] for c in cols])
    pos = torch.stack([torch.arange(L) * 10, torch.arange(L) * 10 + 1])
    seq = Sequence(ids, torch.tensor([c[2] for c in cols]), torch.tensor([c[1] for c in cols]), pos, 999)
    return seq, cols


@pytest.mark.parametrize("keep", [[], [0], [4, 5], [0, 8], list(range(9))])
def test_prune_keeps_prompt_kept_tokens_and_their_units_text(keep):
    seq, cols = _sequence()
    want = [i for i, (kind, u, k) in enumerate(cols)
            if kind in "pq" or (kind == "v" and k in keep) or (kind == "t" and any(x // 3 == u for x in keep))]
    got = seq.prune(torch.tensor(keep, dtype=torch.long))
    assert got.input_ids.tolist() == [int(seq.input_ids[i]) for i in want]
    assert got.positions.tolist() == seq.positions[:, want].tolist()
    assert got.visual_key.tolist() == [cols[i][2] for i in want]
    assert got.next_position == 999
    assert got.visual_columns.tolist() == [j for j, i in enumerate(want) if cols[i][0] == "v"]


@pytest.mark.parametrize("keep", [[0], [4, 5], [0, 8], list(range(9))])
def test_compact_prune_renumbers_kept_columns_in_order(keep):
    """1-D RoPE (method.md step 9): the same columns, at 0..len-1 on every row, decoding
    from len; the full sequence's next_position is dropped."""
    seq, _ = _sequence()
    seq.compact = True
    got = seq.prune(torch.tensor(keep, dtype=torch.long))
    full = _sequence()[0].prune(torch.tensor(keep, dtype=torch.long))
    n = len(full)
    assert torch.equal(got.input_ids, full.input_ids) and torch.equal(got.visual_key, full.visual_key)
    assert got.positions.tolist() == [list(range(n))] * 2
    assert got.next_position == n


def test_final_position_bound_is_the_longest_pruning():
    """Gathered positions: the full maximum whatever is kept. Compact: the longest pruning
    to at most ``budget`` tokens (found here by trying every key set), minus one. Unit 1
    has more text than the others, so a budget of one picks it."""
    import itertools
    seq, _ = _sequence()
    assert seq.final_position_bound(1) == seq.final_position_bound(50) == 998
    ids, key, unit = seq.input_ids, seq.visual_key, seq.unit
    extra = torch.tensor([2]), torch.tensor([-1]), torch.tensor([1])  # a second text column of unit 1
    at = int((unit == 1).nonzero()[0])
    cat = [torch.cat([x[:at], e, x[at:]]) for x, e in zip((ids, key, unit), extra)]
    seq = Sequence(*cat, torch.arange(len(cat[0]))[None], len(cat[0]), compact=True)
    keys = seq.visual_key[seq.visual_key >= 0].tolist()
    longest = [max(len(seq.prune(torch.tensor(c, dtype=torch.long))) for c in itertools.combinations(keys, r))
               for r in range(len(keys) + 1)]
    for budget in (0, 1, 2, 3, 4, 9, 50):
        assert seq.final_position_bound(budget) == max(longest[:budget + 1]) - 1


def test_visual_span_and_errors():
    seq, cols = _sequence()
    assert seq.visual_span() == (3, 14)
    with pytest.raises(ValueError, match="keep_keys"):
        seq.prune(torch.tensor([42]))
    with pytest.raises(ValueError, match="no visual tokens"):
        seq.prune(torch.tensor([], dtype=torch.long)).visual_span()


def test_visual_take_prunes_side_inputs_with_the_same_rows():
    v = Visual(torch.arange(12.0).view(6, 2), {"deepstack": torch.arange(18.0).view(6, 3)})
    t = v.take(torch.tensor([4, 1]))
    assert t.embeds.tolist() == [[8, 9], [2, 3]] and t.side["deepstack"].tolist() == [[12, 13, 14], [3, 4, 5]]
    assert len(Visual.cat([t, v])) == 8

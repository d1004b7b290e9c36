"""The selection algorithm on plain tensors (method.md steps 1, 5, 7, 8)."""
import math

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from adapttoken_ext import selection
from adapttoken_ext.selection import GroupCandidates, RowCounter


def test_make_groups_layouts():
    inter = selection.make_groups(10, 4, "interleaved")
    assert inter == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    cont = selection.make_groups(10, 4, "contiguous")
    assert cont == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for groups in (inter, cont):
        assert sorted(u for g in groups for u in g) == list(range(10))
    with pytest.raises(ValueError, match="group_layout"):
        selection.make_groups(10, 4, "random")
    assert selection.make_groups(10, 4) == inter  # interleaved by default
    assert selection.make_groups(1, 4) == [[0]] and selection.make_groups(3, 1) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="units_per_group"):
        selection.make_groups(10, 0)
    with pytest.raises(ValueError, match="num_units"):
        selection.make_groups(0, 4)


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
    up = [exact[g] % 1 for g in range(len(groups)) if b[g] > exact[g] + 1e-6]
    down = [exact[g] % 1 for g in range(len(groups)) if b[g] < exact[g] - 1e-6]
    assert not up or not down or min(up) >= max(down) - 1e-6  # larger remainders round up


def test_allocate_budget_prefers_low_entropy_and_floor():
    b = selection.allocate_budget(torch.tensor([0.1, 1.0, 2.0]), torch.tensor([100, 100, 100]), 60)
    assert b[0] > b[1] > b[2] and int(b.sum()) == 60
    f = selection.allocate_budget(torch.tensor([0.0, 9.0, 9.0]), torch.tensor([100, 100, 3]), 60, floor=5)
    assert f[1] >= 5 and f[2] == 3 and int(f.sum()) == 60
    with pytest.raises(ValueError, match="per_group_floor"):
        selection.allocate_budget(torch.tensor([0.0, 0.0]), torch.tensor([10, 10]), 5, floor=3)
    with pytest.raises(ValueError, match="budget"):
        selection.allocate_budget(torch.tensor([0.0]), torch.tensor([10]), 0)
    for args, name in ((([0.0, 1.0], [10], 5), "entropy"), (([], [], 5), "entropy"),
                       (([0.0], [10], 5, 0.0), "temperature"), (([0.0], [-1], 5), "capacity"),
                       (([0.0], [10], 5, 1.0, -1), "per_group_floor")):
        with pytest.raises(ValueError, match="^" + name):
            selection.allocate_budget(*[torch.tensor(a) if isinstance(a, list) else a for a in args])


def test_allocate_budget_exact_cases():
    # default T = 1: w = (1, e^-1) / (1 + e^-1); entropies are used in float64
    assert selection.allocate_budget(torch.tensor([0.0, 1.0]), torch.tensor([100, 100]), 100).tolist() == [73, 27]
    H = [1.0, 1.0 + 3e-8]  # a list: in float32 both would be 1.0
    assert selection.allocate_budget(H, torch.tensor([1000, 1000]), 1000, 3e-8).tolist() == [731, 269]
    # many equal remainders: the lower indices get the extra tokens
    assert selection.allocate_budget(torch.zeros(40), torch.full((40,), 9), 50).tolist() == [2] * 10 + [1] * 30
    # ties in the remainders go to the lower index; NaN counts as the largest finite entropy
    assert selection.allocate_budget(torch.zeros(3), torch.tensor([9, 9, 9]), 10).tolist() == [4, 3, 3]
    nan = selection.allocate_budget(torch.tensor([0.0, float("nan"), 1.0]), torch.tensor([99] * 3), 30)
    assert nan.tolist() == selection.allocate_budget(torch.tensor([0.0, 1.0, 1.0]),
                                                     torch.tensor([99] * 3), 30).tolist()
    # the overflow of a capped group is re-spread by weight; all-capped gives sum N
    assert selection.allocate_budget(torch.zeros(3), torch.tensor([2, 50, 50]), 20).tolist() == [2, 9, 9]
    assert selection.allocate_budget(torch.zeros(2), torch.tensor([3, 4]), 20).tolist() == [3, 4]
    # weights that underflow in float64 still water-fill exactly (group 2 gets ~e^-2000 of the rest)
    b = selection.allocate_budget(torch.tensor([0.0, 2.0, 4.0]), torch.tensor([5, 50, 50]), 30, 0.001)
    assert b.tolist() == [5, 25, 0]


def test_stop_threshold():
    assert selection.stop_threshold(4) == pytest.approx(0.1 * math.log(4))
    assert selection.stop_threshold(None) == pytest.approx(0.1)


# ---------------------------------------------------------------- budget_bound (step 5)

@settings(max_examples=400, deadline=None)
@given(st.data())
def test_budget_bound_holds_for_every_completion(data):
    """No completion of the unvisited entropies gives a visited group more than the bound,
    the bound is met within one token by the worst completion, and it is not trivially large."""
    h_max = data.draw(st.sampled_from([math.log(2), math.log(4), 3.0]))
    G = data.draw(st.integers(1, 8))
    V = data.draw(st.integers(1, G))
    cap = data.draw(st.lists(st.integers(0, 60), min_size=G, max_size=G))
    if data.draw(st.booleans()):
        cap[-1] = data.draw(st.integers(0, 3))  # a small last group
    B = data.draw(st.integers(1, 150))
    T = data.draw(st.sampled_from([0.001, 0.3, 1.0, 2.0]))
    floor = data.draw(st.integers(0, 4))
    lite = data.draw(st.booleans())
    ent = st.one_of(st.just(0.0), st.just(h_max), st.floats(0, h_max))
    H = data.draw(st.lists(st.one_of(ent, st.just(float("nan"))), min_size=V, max_size=V))
    assume(sum(cap) > 0)

    def base(n):
        return sum(min(floor, c) for c in cap[:n])

    worst_end = G if not lite or V == G else V + 1
    if base(worst_end) > B:  # every final set includes the worst one: allocation fails too
        with pytest.raises(ValueError, match="per_group_floor"):
            selection.budget_bound(torch.tensor(H), torch.tensor(cap), B, h_max, T, floor, lite)
        return
    bound = selection.budget_bound(torch.tensor(H), torch.tensor(cap), B, h_max, T, floor, lite)
    assert bound.dtype == torch.int64 and bound.shape == (V,)
    assert (bound <= torch.tensor(cap[:V]).clamp(max=B)).all()
    for _ in range(6):
        end = data.draw(st.integers(V + 1, G)) if lite and V < G else G
        rest = data.draw(st.lists(ent, min_size=end - V, max_size=end - V))
        if base(end) > B:
            continue
        b = selection.allocate_budget(torch.tensor(H + rest), torch.tensor(cap[:end]), B, T, floor)
        assert (b[:V] <= bound).all(), (H + rest, b, bound)
    worst = selection.allocate_budget(torch.tensor(H + [h_max] * (worst_end - V)),
                                      torch.tensor(cap[:worst_end]), B, T, floor)
    finite = ~torch.isnan(torch.tensor(H))
    if V == G:
        assert bound.tolist() == worst.tolist()
    assert (worst[:V][finite] >= bound[finite] - 1).all()  # tight within rounding
    if V < G and finite.all() and min(cap) >= B:
        assert int(bound.sum()) <= B + V
    if V < G and not finite.all():
        assert bound[~finite].tolist() == [min(c, B) for c, f in zip(cap, finite.tolist()) if not f]


def test_budget_bound_examples():
    cap = torch.tensor([100, 100, 100, 100])
    # four groups at the same entropy share 100 evenly; the worst completion is exactly that
    assert selection.budget_bound(torch.tensor([math.log(4)]), cap, 100, math.log(4)).tolist() == [25]
    # lite: only the next group is certain, so the bound is half the budget
    assert selection.budget_bound(torch.tensor([math.log(4)]), cap, 100, math.log(4), lite=True).tolist() == [50]
    # a fractional share rounds up, plus the floor part
    assert selection.budget_bound(torch.tensor([0.0]), torch.tensor([100, 100, 100]), 10, 0.0,
                                  floor=2).tolist() == [2 + 2]
    # capped at N_g and at B
    assert selection.budget_bound(torch.tensor([0.0, 0.0]), torch.tensor([3, 900, 900]), 700, 5.0).tolist() == [3, 693]
    # NaN: any budget up to min(N_g, B)
    assert selection.budget_bound(torch.tensor([float("nan"), 0.0]), torch.tensor([500, 50, 50]), 100,
                                  1.0).tolist()[0] == 100
    with pytest.raises(ValueError, match="capacity"):
        selection.budget_bound(torch.zeros(3), torch.tensor([5, 5]), 10, 1.0)
    with pytest.raises(ValueError, match="h_max"):
        selection.budget_bound(torch.zeros(1), torch.tensor([5, 5]), 10, float("nan"))


# ---------------------------------------------------------------- select_tokens (steps 6-7)

def _cos(a, b):
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    return 0.0 if na == 0 or nb == 0 else sum(x * y for x, y in zip(a, b)) / (na * nb)


def _reference(groups, budgets, tpu, encoded, thr):
    """Step 7 as select_tokens' docstring states it, by brute force on lists (float64):
    ``groups`` per group lists every candidate (key, score, emb) in rank order."""
    slot = {u: i for i, u in enumerate(encoded)}
    state = [{} for _ in groups]  # rank -> "kept" / "dropped" (walked) / "rejected"

    def where(g, i):
        key = groups[g][i][0]
        return slot[key // tpu], key % tpu

    for g, b in enumerate(budgets):
        for i in range(min(b, len(groups[g]))):
            state[g][i] = "kept"
    if thr is None:
        return [sorted(s) for s in state], [0] * len(groups)
    while True:  # 1. resolution: walk every location until nothing drops
        at, new = {}, False
        for g in range(len(groups)):
            for i in state[g]:
                p, loc = where(g, i)
                at.setdefault(loc, []).append((p, g, i))
        for toks in at.values():
            ref, prev = None, None
            for p, g, i in sorted(toks):
                if prev is None or p != prev + 1:
                    ref = None
                prev = p
                if state[g][i] == "dropped":
                    continue
                if ref is not None and _cos(groups[g][i][2], groups[ref[0]][ref[1]][2]) > thr:
                    new = True
                    if groups[g][i][1] <= groups[ref[0]][ref[1]][1]:
                        state[g][i] = "dropped"
                        continue
                    state[ref[0]][ref[1]] = "dropped"
                ref = (g, i)
        if not new:
            break
    for g in range(len(groups)):  # 2. refill, groups in order
        i = min(budgets[g], len(groups[g]))
        while sum(v == "kept" for v in state[g].values()) < budgets[g] and i < len(groups[g]):
            p, loc = where(g, i)
            chain = {where(h, j)[0]: (h, j) for h in range(len(groups)) for j, v in state[h].items()
                     if v != "rejected" and where(h, j)[1] == loc}
            near = []
            for step in (-1, 1):  # the nearest kept token each way along the unbroken chain
                q = p + step
                while q in chain and state[chain[q][0]][chain[q][1]] != "kept":
                    q += step
                if q in chain:
                    near.append(chain[q])
            redundant = any(_cos(groups[g][i][2], groups[h][j][2]) > thr for h, j in near)
            state[g][i] = "rejected" if redundant else "kept"
            i += 1
    return ([sorted(i for i, v in s.items() if v == "kept") for s in state],
            [sum(v != "kept" for v in s.values()) for s in state])


def _group(rows, dim=3, hold=None, encode=True, counter=None):
    """GroupCandidates of (key, score, emb) rows in rank order; its encoding holds them in
    reverse order (so ``rows`` must map ranks to encoding rows), with side input ``extra``
    = the rank; ``calls`` counts re-encodings."""
    n = len(rows)
    emb = torch.tensor([r[2] for r in rows][::-1], dtype=torch.float32).reshape(n, dim)
    side = {"extra": torch.arange(n - 1, -1, -1, dtype=torch.float32)[:, None]}
    calls = []

    def again():
        calls.append(1)
        return emb.clone(), {"extra": side["extra"].clone()}
    c = GroupCandidates(torch.tensor([r[0] for r in rows], dtype=torch.int64),
                        torch.tensor([r[1] for r in rows], dtype=torch.float32),
                        torch.arange(n - 1, -1, -1, dtype=torch.int64), emb, side,
                        hold=hold, encode=again if encode else None, counter=counter)
    c.calls = calls
    return c


# a chain p0 ~ p1 ~ p2 with p0 not ~ p2 (cosines 0.71, 0.71, 0 against thresholds 0.5/0.65)
PROTOS = [(1.0, 0.0, 0.0), (0.7, 0.7, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, 0.0)]


@st.composite
def _instances(draw):
    tpu = draw(st.integers(1, 3))
    U = draw(st.integers(1, 7))
    encoded = [u for u in range(U) if draw(st.booleans())] or [0]
    G = draw(st.integers(1, 3))
    owner = {u: (i % G if draw(st.booleans()) else draw(st.integers(0, G - 1)))
             for i, u in enumerate(encoded)}
    groups, holds, budgets = [], [], []
    for g in range(G):
        toks = []
        for u in encoded:
            if owner[u] != g:
                continue
            for loc in range(tpu):
                p = PROTOS[draw(st.integers(0, len(PROTOS) - 1))]
                noise = draw(st.lists(st.integers(-2, 2), min_size=3, max_size=3))
                emb = tuple(float(torch.tensor(x + 0.05 * n, dtype=torch.float32)) for x, n in zip(p, noise))
                toks.append((u * tpu + loc, float(draw(st.integers(0, 5))) / 4, emb))
        toks.sort(key=lambda t: -t[1])  # candidate order = rank order, ties by key
        groups.append(toks)
        holds.append(draw(st.integers(0, len(toks))))
        budgets.append(draw(st.integers(0, len(toks) + 1)))
    thr = draw(st.sampled_from([None, -0.2, 0.0, 0.5, 0.65, 0.9, 0.99]))
    return tpu, encoded, groups, holds, budgets, thr, draw(st.booleans())


def _adjacent_kept_never_redundant(cands, sel, tpu, encoded, thr):
    """From the output alone: kept tokens at one location in consecutive encoded units are
    never redundant (the later one's ref is the earlier one)."""
    slot = {u: i for i, u in enumerate(encoded)}
    kept = {}
    for g, (c, s) in enumerate(zip(cands, sel)):
        for i in s.tolist():
            key = int(c.keys[i])
            kept[slot[key // tpu], key % tpu] = c.take(torch.tensor([i]))[0][0].tolist()
    for (p, loc), e in kept.items():
        if (p - 1, loc) in kept:
            assert _cos(e, kept[p - 1, loc]) <= thr


@settings(max_examples=400, deadline=None)
@given(_instances())
def test_select_tokens_matches_brute_force(inst):
    tpu, encoded, groups, holds, budgets, thr, with_encode = inst
    if thr is not None:  # float32 vs float64 cosines: keep clear of the threshold
        toks = [t for g in groups for t in g]
        assume(all(abs(_cos(a[2], b[2]) - thr) > 1e-4 for a in toks for b in toks
                   if a[0] % tpu == b[0] % tpu))
    visible = groups if with_encode else [g[:h] for g, h in zip(groups, holds)]
    want, redundant = _reference(visible, budgets, tpu, encoded, thr)
    counter = RowCounter()
    cands = [_group(g, hold=h, encode=with_encode, counter=counter) for g, h in zip(groups, holds)]
    assert counter.peak == sum(holds)
    got = selection.select_tokens(cands, torch.tensor(budgets), tpu, torch.tensor(encoded), thr)
    assert [s.tolist() for s in got] == want
    assert all(s.dtype == torch.int64 for s in got)
    for g, (c, s) in enumerate(zip(cands, got)):
        assert len(s) <= budgets[g]
        assert c.redundant == redundant[g]
        # one re-encode exactly when the group took a rank it did not hold, never two
        assert len(c.calls) == c.reencodes == int(with_encode and len(s) + c.redundant > holds[g])
        emb, side = c.take(s)  # the rows are the right ones, whatever came from a re-encode
        assert emb.tolist() == [list(groups[g][i][2]) for i in s.tolist()]
        assert side["extra"][:, 0].tolist() == [float(i) for i in s.tolist()]
    # rows held never exceed the scan's plus the kept tokens; dropped rows are freed
    assert counter.peak <= sum(holds) + sum(budgets)
    if thr is None:
        assert [s.tolist() for s in got] == [list(range(min(b, len(v)))) for b, v in zip(budgets, visible)]
    else:
        _adjacent_kept_never_redundant(cands, got, tpu, encoded, thr)


def _line(embs, scores, units=None, hold=None):
    """One location (tpu 1): a group whose candidates are given in rank order."""
    units = units if units is not None else range(len(embs))
    return _group([(u, s, e) for u, s, e in zip(units, scores, embs)], dim=len(embs[0]), hold=hold)


def _select(c, budgets, tpu, enc, thr):
    return [s.tolist() for s in selection.select_tokens(c, torch.tensor(budgets), tpu, enc, thr)]


def test_chain_through_a_dropped_token():
    # A(t-1) > B(t) > C(t+1) by score, A~B and B~C: B is dropped, C then meets A.
    A, B, C = (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)
    assert _select([_line([A, B, C], [0.9, 0.8, 0.7])], [3], 1, torch.arange(3), 0.6) == [[0, 2]]
    A, B, C = (1.0, 0.0), (1.0, 0.2), (1.0, 0.05)  # now C ~ A too: dropped as well
    assert _select([_line([A, B, C], [0.9, 0.8, 0.7])], [3], 1, torch.arange(3), 0.95) == [[0]]


def test_higher_later_token_drops_the_earlier_one_and_becomes_ref():
    # units 0,1,2 alike; unit 1 scores highest: it drops unit 0, then drops unit 2.
    e = (1.0, 0.0)
    assert _select([_line([e, e, e], [0.9, 0.5, 0.4], units=[1, 0, 2])], [3], 1, torch.arange(3), 0.9) == [[0]]
    # the winner becomes ref: B drops A, then C (similar to B, not to A) meets B
    c = [_line([(1.0, 1.0), (1.0, 0.0), (0.0, 1.0)], [0.9, 0.5, 0.4], units=[1, 0, 2])]
    assert _select(c, [3], 1, torch.arange(3), 0.6) == [[0]]
    # three groups, one unit each, same embedding: only the top-scored survives
    c = [_line([e], [s], units=[u]) for u, s in ((0, 0.2), (1, 0.3), (2, 0.1))]
    assert _select(c, [1, 1, 1], 1, torch.arange(3), 0.9) == [[], [0], []]


def test_partners_are_consecutive_encoded_units():
    e = (1.0, 0.0)
    # Lite-like: units 0, 4, 8 encoded, so they are partners
    assert _select([_line([e, e, e], [0.9, 0.8, 0.7], units=[4, 0, 8])], [3], 1,
                   torch.tensor([0, 4, 8]), 0.9) == [[0]]
    # every unit encoded, units 2 and 6 hold unselected tokens: the chain breaks, no drops
    c = [_line([e, e, e, (0.0, 1.0), (0.0, 1.0)], [0.9, 0.8, 0.7, 0.2, 0.1], units=[4, 0, 8, 2, 6])]
    assert _select(c, [3], 1, torch.arange(9), 0.9) == [[0, 1, 2]]
    # different locations never compare (tpu 2: keys 0 and 3 are unit 0 loc 0, unit 1 loc 1)
    c = [_group([(0, 0.9, (1.0, 0.0)), (3, 0.8, (1.0, 0.0))], dim=2)]
    assert _select(c, [2], 2, torch.arange(2), 0.9) == [[0, 1]]


def test_refill_reencodes_once_and_ties():
    e = (1.0, 0.0)
    rows = [e, e, (0.0, 1.0), (1.0, 1.0)]  # units 0..3; equal top scores: the later unit (1) goes
    c = _line(rows, [0.9, 0.9, 0.5, 0.4], hold=2)
    assert _select([c], [2], 1, torch.arange(4), 0.9) == [[0, 2]]
    assert c.reencodes == 1 and c.redundant == 1
    # unit 3 (1, 1) is not redundant with unit 2 (0, 1) at 0.9: kept; the group then runs out
    c = _line(rows, [0.9, 0.9, 0.5, 0.4], hold=2)
    assert _select([c], [9], 1, torch.arange(4), 0.9) == [[0, 2, 3]] and c.reencodes == 1
    # no re-encode when the held rows suffice; threshold None keeps the first B_g
    c = _line(rows, [0.9, 0.9, 0.5, 0.4], hold=3)
    assert _select([c], [2], 1, torch.arange(4), 0.9) == [[0, 2]] and c.reencodes == 0
    c = _line(rows, [0.9, 0.9, 0.5, 0.4], hold=1)
    assert _select([c], [2], 1, torch.arange(4), None) == [[0, 1]] and c.reencodes == 1


def test_a_drop_late_in_a_walk_is_walked_again():
    # p ~ n and x ~ n, p not ~ x; n scores highest. The first walk keeps x against p, then n
    # drops x; p and n now meet through the dropped x, and the second walk drops p.
    p, x, n = (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)
    assert _select([_line([n, p, x], [0.9, 0.5, 0.4], units=[2, 0, 1])], [3], 1, torch.arange(3), 0.6) == [[0]]


def test_refill_batches_share_one_reencode():
    # six alike units, three held: step 1 keeps unit 0 (1, 2 dropped); the first batch (ranks
    # 3, 4) re-encodes: 3 is rejected, 4 kept; the second batch (rank 5) reuses that encoding
    e = (1.0, 0.0)
    c = _line([e] * 6, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], hold=3)
    assert _select([c], [3], 1, torch.arange(6), 0.9) == [[0, 4]]
    assert c.reencodes == 1 and c.redundant == 4 and c.counter.rows == 2  # the kept rows only


def test_refill_never_displaces_a_kept_token():
    e = (1.0, 0.0)
    # budget 2: units 0, 1 admitted, unit 1 dropped; the refill's unit 2 (score 0.7, higher
    # than nothing kept nearby but redundant with unit 0 through the dropped unit 1) is not
    # admitted, so it does not join the chain: unit 3 starts a new one and is kept.
    c = _line([e, e, e, e], [0.9, 0.8, 0.7, 0.6])
    assert _select([c], [2], 1, torch.arange(4), 0.9) == [[0, 3]] and c.redundant == 2
    # a refill candidate scoring above the kept token it meets is still the one dropped:
    # group 1 keeps unit 2, drops unit 3 (~ unit 2); its refill, unit 1 (0.8), meets unit 0 (0.1)
    f = (0.0, 1.0)
    g0, g1 = _line([e], [0.1], units=[0]), _line([f, f, e], [0.9, 0.85, 0.8], units=[2, 3, 1])
    assert _select([g0, g1], [1, 2], 1, torch.arange(4), 0.9) == [[0], [0]]
    assert (g0.redundant, g1.redundant) == (0, 2)
    # the next kept token counts too: unit 1's candidate would become unit 2's ref
    g0, g1 = _line([e], [0.1], units=[2]), _line([f, f, e], [0.9, 0.85, 0.8], units=[4, 5, 1])
    assert _select([g0, g1], [1, 2], 1, torch.arange(6), 0.9) == [[0], [0]]
    # not redundant either way: admitted
    g0, g1 = _line([e], [0.1], units=[2]), _line([f, f, f], [0.9, 0.85, 0.8], units=[4, 5, 1])
    assert _select([g0, g1], [1, 2], 1, torch.arange(6), 0.9) == [[0], [0, 2]]


def test_zero_vectors_have_cosine_zero():
    z, e = (0.0, 0.0), (3.0, 4.0)  # tpu 2: location 0 holds zero vectors, location 1 does not
    c = [_group([(0, 0.9, z), (2, 0.8, z), (1, 0.7, e), (3, 0.6, e)], dim=2)]
    assert _select(c, [4], 2, torch.arange(2), 0.0) == [[0, 1, 2]]
    assert _select(c, [4], 2, torch.arange(2), -0.5) == [[0, 2]]


def test_empty_groups_and_rows_freed():
    e = (1.0, 0.0)
    counter = RowCounter()
    empty = GroupCandidates(torch.zeros(0, dtype=torch.int64), torch.zeros(0),
                            torch.zeros(0, dtype=torch.int64), torch.zeros(0, 2), counter=counter)
    c = _group([(u, 1.0 - u / 8, e) for u in range(4)], dim=2, counter=counter)
    out = selection.select_tokens([empty, c], torch.tensor([3, 0]), 1, torch.arange(4), 0.9)
    assert [s.tolist() for s in out] == [[], []]
    emb, side = empty.take(out[0])
    assert emb.shape == (0, 2) and side == {}
    c = _group([(u, 1.0 - u / 8, e) for u in range(6)], dim=2, counter=counter)
    before = counter.rows
    # units 0-2 admitted: 1 and 2 dropped; refills: 3 rejected (meets 0), 4 kept, 5 rejected
    assert _select([c], [3], 1, torch.arange(6), 0.9)[0] == [0, 4]
    assert counter.rows == before - 4 and c.redundant == 4  # the dropped tokens' rows are freed


def test_trim_and_no_encode_limit_the_candidates():
    e = [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (-1.0, 0.0)]
    c = _group([(u, 0.9 - u / 10, x) for u, x in enumerate(e)], dim=2, hold=3, encode=False)
    assert len(c) == 3
    c.trim(2)
    assert len(c) == 2 and c.counter.rows == 2
    assert _select([c], [4], 1, torch.arange(4), None) == [[0, 1]]


def test_select_tokens_errors():
    c = [_line([(1.0, 0.0)], [0.9], units=[2])]
    assert selection.select_tokens([], torch.zeros(0, dtype=torch.int64), 1, torch.arange(3), 0.9) == []
    with pytest.raises(ValueError, match="budgets"):
        selection.select_tokens(c, torch.tensor([1, 1]), 1, torch.arange(3), 0.9)
    with pytest.raises(ValueError, match="budgets"):
        selection.select_tokens(c, torch.tensor([-1]), 1, torch.arange(3), 0.9)
    with pytest.raises(ValueError, match="tokens_per_unit"):
        selection.select_tokens(c, torch.tensor([1]), 0, torch.arange(3), 0.9)
    with pytest.raises(ValueError, match="encoded_units"):
        selection.select_tokens(c, torch.tensor([1]), 1, torch.tensor([0, 1]), 0.9)
    for enc, u in (([2, 2], 2), ([0, 3, 2], 0), ([0, 3], 2), ([], 2)):  # not increasing; u not encoded
        c = [_line([(1.0, 0.0)], [0.9], units=[u])]
        with pytest.raises(ValueError, match="^encoded_units"):
            selection.select_tokens(c, torch.tensor([1]), 1, torch.tensor(enc, dtype=torch.int64), 0.9)
    n, r = torch.zeros(2, dtype=torch.int64), torch.arange(2)
    for keys in (torch.zeros(2), torch.zeros(2, 1, dtype=torch.int64)):
        with pytest.raises(ValueError, match="^keys"):
            GroupCandidates(keys, torch.zeros(2), r, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="scores"):
        GroupCandidates(n, torch.zeros(3), r, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="rows"):
        GroupCandidates(n, torch.zeros(2), r.float(), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="embeds"):
        GroupCandidates(n, torch.zeros(2), r + 1, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="embeds"):
        GroupCandidates(n, torch.zeros(2), r, torch.zeros(2))

"""The selection algorithm on plain tensors (method.md steps 1, 5, 7, 8)."""
import math

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from adapttoken_ext import selection
from adapttoken_ext.selection import Candidates


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


def _reference(held, batches, budgets, tpu, encoded, thr):
    """Brute-force step 7 on lists: held/batches are per group lists of (key, score, emb)."""
    held = [list(h) for h in held]
    batches = [list(b) for b in batches]
    dropped = [set() for _ in held]
    slot = {u: i for i, u in enumerate(encoded)}

    def pick(g):
        while True:
            s = [i for i in range(len(held[g])) if i not in dropped[g]][: budgets[g]]
            if len(s) == budgets[g] or not batches[g]:
                return s
            held[g] += batches[g].pop(0)

    while True:
        S = [pick(g) for g in range(len(held))]
        if thr is None:
            return S, held
        at = {}
        for g in range(len(held)):
            for i in set(S[g]) | dropped[g]:
                key = held[g][i][0]
                at.setdefault(key % tpu, []).append((slot[key // tpu], g, i))
        new = False
        for toks in at.values():
            ref, prev = None, None
            for p, g, i in sorted(toks):
                if prev is None or p != prev + 1:
                    ref = None
                prev = p
                if i in dropped[g]:
                    continue
                if ref is not None and _cos(held[g][i][2], held[ref[0]][ref[1]][2]) > thr:
                    new = True
                    if held[g][i][1] <= held[ref[0]][ref[1]][1]:
                        dropped[g].add(i)
                        continue
                    dropped[ref[0]].add(ref[1])
                ref = (g, i)
        if not new:
            return S, held


def _cands(rows, dim=3):
    return Candidates(torch.tensor([r[0] for r in rows], dtype=torch.int64),
                      torch.tensor([r[1] for r in rows], dtype=torch.float32),
                      torch.tensor([r[2] for r in rows], dtype=torch.float32).reshape(len(rows), dim))


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
    groups, extra, budgets = [], [], []
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
        n_held = draw(st.integers(0, len(toks)))
        rest, batches = toks[n_held:], []
        while rest:
            k = draw(st.integers(1, len(rest)))
            batches.append(rest[:k])
            rest = rest[k:]
        groups.append(toks[:n_held])
        extra.append(batches)
        budgets.append(draw(st.integers(0, len(toks) + 1)))
    thr = draw(st.sampled_from([None, -0.2, 0.0, 0.5, 0.65, 0.9, 0.99]))
    return tpu, encoded, groups, extra, budgets, thr, draw(st.booleans())


def _check_final_state(cands, sel, budgets, tpu, encoded, thr, total):
    """Invariants of the fixed point, from the output alone."""
    slot = {u: i for i, u in enumerate(encoded)}
    status = {}  # (slot, loc) -> kept (g, i) or "dropped"
    for g, (c, s) in enumerate(zip(cands, sel)):
        s = s.tolist()
        assert s == sorted(set(s)) and len(s) <= budgets[g]
        if len(s) < budgets[g]:  # short only when the group ran out of tokens
            assert c.keys.numel() == total[g]
        last = c.keys.numel() if len(s) < budgets[g] else (s[-1] if s else 0)
        for i, key in enumerate(c.keys.tolist()):
            if i in s:
                status[slot[key // tpu], key % tpu] = (g, i)
            elif i < last and thr is not None:  # skipped before S_g's end: dropped
                status[slot[key // tpu], key % tpu] = "dropped"
            elif i < last:
                raise AssertionError("no removal, yet a candidate was skipped")
    for (p, loc), gi in status.items():
        if gi == "dropped" or thr is None:
            continue
        q = p - 1
        while status.get((q, loc)) == "dropped":
            q -= 1
        if isinstance(status.get((q, loc)), tuple):
            h, j = status[q, loc]
            assert _cos(cands[gi[0]].embeddings[gi[1]].tolist(), cands[h].embeddings[j].tolist()) <= thr


@settings(max_examples=400, deadline=None)
@given(_instances())
def test_select_tokens_matches_brute_force(inst):
    tpu, encoded, groups, extra, budgets, thr, with_more = inst
    if not with_more:
        extra = [[] for _ in groups]
    if thr is not None:  # float32 vs float64 cosines: keep clear of the threshold
        toks = [t for g, e in zip(groups, extra) for t in g + [x for b in e for x in b]]
        assume(all(abs(_cos(a[2], b[2]) - thr) > 1e-4 for a in toks for b in toks
                   if a[0] % tpu == b[0] % tpu))
    want, held = _reference(groups, extra, budgets, tpu, encoded, thr)
    cands = [_cands(g) for g in groups]
    pending = [list(e) for e in extra]
    calls = [0] * len(groups)

    def more(g):
        calls[g] += 1
        return _cands(pending[g].pop(0)) if pending[g] else None

    got = selection.select_tokens(cands, torch.tensor(budgets), tpu, torch.tensor(encoded), thr,
                                  more if with_more else None)
    assert [s.tolist() for s in got] == want
    assert all(s.dtype == torch.int64 for s in got)
    assert [c.keys.tolist() for c in cands] == [[t[0] for t in h] for h in held]
    assert [c.scores.tolist() for c in cands] == [[t[1] for t in h] for h in held]
    assert all(c.embeddings.shape == (len(h), 3) for c, h in zip(cands, held))
    for g in range(len(groups)):  # more() is called only when needed, and not after None
        assert calls[g] <= len(extra[g]) + 1
    total = [len(g) + sum(len(b) for b in e) for g, e in zip(groups, extra)]
    _check_final_state(cands, got, budgets, tpu, encoded, thr, total)
    if thr is None:
        assert [s.tolist() for s in got] == [list(range(min(b, n))) for b, n in zip(budgets, total)]


def _line(embs, scores, units=None):
    """One location (tpu 1): a group whose candidates are given in rank order."""
    units = units if units is not None else range(len(embs))
    return _cands([(u, s, e) for u, s, e in zip(units, scores, embs)], dim=len(embs[0]))


def test_chain_through_a_dropped_token():
    # A(t-1) > B(t) > C(t+1) by score, A~B and B~C: B is dropped, C then meets A.
    A, B, C = (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)
    c = [_line([A, B, C], [0.9, 0.8, 0.7])]
    assert selection.select_tokens(c, torch.tensor([3]), 1, torch.arange(3), 0.6)[0].tolist() == [0, 2]
    A, B, C = (1.0, 0.0), (1.0, 0.2), (1.0, 0.05)  # now C ~ A too: dropped as well
    c = [_line([A, B, C], [0.9, 0.8, 0.7])]
    assert selection.select_tokens(c, torch.tensor([3]), 1, torch.arange(3), 0.95)[0].tolist() == [0]


def test_higher_later_token_drops_the_earlier_one_and_becomes_ref():
    # units 0,1,2 alike; unit 1 scores highest: it drops unit 0, then drops unit 2.
    e = (1.0, 0.0)
    c = [_line([e, e, e], [0.9, 0.5, 0.4], units=[1, 0, 2])]
    assert selection.select_tokens(c, torch.tensor([3]), 1, torch.arange(3), 0.9)[0].tolist() == [0]
    # the winner becomes ref: B drops A, then C (similar to B, not to A) meets B
    c = [_line([(1.0, 1.0), (1.0, 0.0), (0.0, 1.0)], [0.9, 0.5, 0.4], units=[1, 0, 2])]
    assert selection.select_tokens(c, torch.tensor([3]), 1, torch.arange(3), 0.6, max_rounds=1)[0].tolist() == [0]
    # three groups, one unit each, same embedding: only the top-scored survives
    c = [_line([e], [s], units=[u]) for u, s in ((0, 0.2), (1, 0.3), (2, 0.1))]
    out = selection.select_tokens(c, torch.tensor([1, 1, 1]), 1, torch.arange(3), 0.9)
    assert [s.numel() for s in out] == [0, 1, 0]


def test_partners_are_consecutive_encoded_units():
    e = (1.0, 0.0)
    # Lite-like: units 0, 4, 8 encoded, so they are partners
    c = [_line([e, e, e], [0.9, 0.8, 0.7], units=[4, 0, 8])]
    assert selection.select_tokens(c, torch.tensor([3]), 1, torch.tensor([0, 4, 8]), 0.9)[0].tolist() == [0]
    # every unit encoded, units 2 and 6 hold unselected tokens: the chain breaks, no drops
    c = [_line([e, e, e, (0.0, 1.0), (0.0, 1.0)], [0.9, 0.8, 0.7, 0.2, 0.1], units=[4, 0, 8, 2, 6])]
    assert selection.select_tokens(c, torch.tensor([3]), 1, torch.arange(9), 0.9)[0].tolist() == [0, 1, 2]
    # different locations never compare (tpu 2: keys 0 and 3 are unit 0 loc 0, unit 1 loc 1)
    c = [_cands([(0, 0.9, (1.0, 0.0)), (3, 0.8, (1.0, 0.0))], dim=2)]
    assert selection.select_tokens(c, torch.tensor([2]), 2, torch.arange(2), 0.9)[0].tolist() == [0, 1]


def test_refill_from_more_and_ties():
    e = (1.0, 0.0)
    held = [_line([e, e], [0.9, 0.9])]  # equal scores: the later unit (1) goes
    batches = [_line([(0.0, 1.0)], [0.5], units=[2]), _line([(1.0, 1.0)], [0.4], units=[3])]
    batches[0].scores, batches[0].embeddings = batches[0].scores.double(), batches[0].embeddings.double()
    asked = []

    def more(g):
        asked.append(g)
        return batches.pop(0) if batches else None

    obj = held[0]
    out = selection.select_tokens(held, torch.tensor([2]), 1, torch.arange(4), 0.9, more)
    assert out[0].tolist() == [0, 2] and held[0] is obj and obj.keys.tolist() == [0, 1, 2]
    assert asked == [0] and len(batches) == 1  # only as much as needed
    assert held[0].scores.dtype == torch.float32 and held[0].embeddings.dtype == torch.float32
    out = selection.select_tokens(held, torch.tensor([9]), 1, torch.arange(4), 0.9, more)
    assert held[0].keys.tolist() == [0, 1, 2, 3] and asked == [0, 0, 0]
    # threshold None refills too, and never drops
    c = [_line([e], [0.9])]
    out = selection.select_tokens(c, torch.tensor([2]), 1, torch.arange(2), None,
                                  lambda g: _line([e], [0.8], units=[1]) if c[0].keys.numel() < 2 else None)
    assert out[0].tolist() == [0, 1]


def test_zero_vectors_have_cosine_zero():
    z, e = (0.0, 0.0), (3.0, 4.0)  # tpu 2: location 0 holds zero vectors, location 1 does not
    c = [_cands([(0, 0.9, z), (2, 0.8, z), (1, 0.7, e), (3, 0.6, e)], dim=2)]
    assert selection.select_tokens(c, torch.tensor([4]), 2, torch.arange(2), 0.0)[0].tolist() == [0, 1, 2]
    assert selection.select_tokens(c, torch.tensor([4]), 2, torch.arange(2), -0.5)[0].tolist() == [0, 2]


def test_max_rounds_and_empty_groups():
    e = (1.0, 0.0)
    c = [_line([e, e, e, e], [0.9, 0.8, 0.7, 0.6])]
    # round 1 drops unit 1 (budget 2: units 0, 1); the refill (unit 2) is not walked again
    assert selection.select_tokens(c, torch.tensor([2]), 1, torch.arange(4), 0.9, max_rounds=1)[0].tolist() == [0, 2]
    assert selection.select_tokens(c, torch.tensor([2]), 1, torch.arange(4), 0.9)[0].tolist() == [0]
    empty = Candidates(torch.zeros(0, dtype=torch.int64), torch.zeros(0), torch.zeros(0, 2))
    out = selection.select_tokens([empty, c[0]], torch.tensor([3, 0]), 1, torch.arange(4), 0.9)
    assert [s.tolist() for s in out] == [[], []]


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
    for keys in (torch.zeros(2), torch.zeros(2, 1, dtype=torch.int64)):
        with pytest.raises(ValueError, match="^keys"):
            Candidates(keys, torch.zeros(2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="scores"):
        Candidates(torch.zeros(2, dtype=torch.int64), torch.zeros(3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="embeddings"):
        Candidates(torch.zeros(2, dtype=torch.int64), torch.zeros(2), torch.zeros(2))

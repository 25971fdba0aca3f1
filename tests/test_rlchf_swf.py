"""Social welfare functions (fairhpc/rlchf/swf.py) on hand-computed profiles, against brute force, and on
random profiles (hypothesis): anonymity, neutrality, Pareto, Condorcet winner."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairhpc.errors import ConfigError, DataError
from fairhpc.rlchf import swf as S

A, B, C, D = range(4)
# 7 judges over 4 candidates (1 x A B D C, 2 x C B D A, 2 x B D C A, 2 x A C B D).  By hand:
#   first places  A 3, B 2, C 2, D 0                          -> plurality: A
#   Borda (3,2,1,0) A 9, B 14, C 12, D 7                       -> borda: B
#   pairwise      C beats A, B and D 4-3 each; B beats A 4-3 and D 7-0; D beats A 4-3
#                 (a transitive majority C > B > D > A)        -> Condorcet winner C
#   maximin       A min(3,3,3)=3, B min(4,3,7)=3, C 4, D min(4,0,3)=0: A and B tie at 3, Borda puts B first
#   instant-runoff: D out (0 firsts); B and C tie at 2 firsts, C has the lower Borda and goes; then A 3 vs
#                 B 4 (the C B D A judges move to B): A goes -> B A C D
DISAGREE = [[A, B, D, C]] + [[C, B, D, A]] * 2 + [[B, D, C, A]] * 2 + [[A, C, B, D]] * 2


def run(swf, rankings, k=None, weights=None, scores=None, **kw):
    k = k or len(rankings[0])
    return S.aggregate(swf, rankings, k, weights, scores, **kw)


def test_plurality_borda_and_condorcet_methods_pick_different_winners():
    assert run("plurality", DISAGREE).scores == [3, 2, 2, 0]
    assert run("plurality", DISAGREE).ranking[0] == A
    b = run("borda", DISAGREE)
    assert b.scores == [9, 14, 12, 7] and b.ranking == [B, C, A, D]
    n = S.pairwise(DISAGREE, np.ones(7), 4)
    assert n[C].tolist() == [4, 4, 0, 4] and n[B, D] == 7 and n[D, A] == 4
    for m in ("copeland", "schulze", "kemeny"):
        assert run(m, DISAGREE).ranking == [C, B, D, A], m
    assert run("copeland", DISAGREE).scores == [0, 2, 3, 1]
    mm = run("maximin", DISAGREE)
    assert mm.scores == [3, 3, 4, 0] and mm.ranking == [C, B, A, D]
    assert run("kemeny", DISAGREE).extra["objective"] == 4 + 4 + 4 + 4 + 7 + 4  # C>B, C>D, C>A, B>D, B>A, D>A
    assert run("instant-runoff", DISAGREE).ranking == [B, A, C, D]


def test_symmetric_condorcet_cycle_is_broken_by_index_as_documented():
    cycle = [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    for m in ("plurality", "borda", "copeland", "maximin", "schulze"):
        r = run(m, cycle)
        assert r.ranking == [0, 1, 2] and r.index_ties == 2, (m, r)
    # instant-runoff: a three-way tie eliminates 2 (the higher index) first; then 0 has 2 first places to 1
    r = run("instant-runoff", cycle)
    assert r.ranking == [0, 1, 2] and r.index_ties == 1
    k = run("kemeny", cycle)
    # three optimal orders (0 1 2, 1 2 0, 2 0 1), each agreeing with 5 of the 9 pairwise preferences
    assert k.ranking == [0, 1, 2] and k.extra == {"objective": 5.0, "optimal_orders": 3} and k.index_ties == 2


def test_weighted_condorcet_cycle_resolved_by_strength():
    # 5 x A B C, 4 x B C A, 3 x C A B: A>B 8-4, B>C 9-3, C>A 7-5 (a cycle)
    prof = [[A, B, C]] * 5 + [[B, C, A]] * 4 + [[C, A, B]] * 3
    s = run("schulze", prof)
    assert s.extra["strongest_paths"][A][C] == 8 and s.extra["strongest_paths"][C][A] == 7
    assert s.ranking == [A, B, C]
    k = run("kemeny", prof)
    assert k.ranking == [A, B, C] and k.extra["objective"] == 22 and k.extra["optimal_orders"] == 1
    assert run("maximin", prof).scores == [5, 4, 3]
    # Copeland: one win each; Borda A 13 = B 13 > C 10, so the index puts A before B
    cp = run("copeland", prof)
    assert cp.scores == [1, 1, 1] and cp.ranking == [A, B, C] and cp.index_ties == 1


def test_cardinal_functions_by_hand():
    rankings, scores = [[0, 1, 2], [2, 1, 0]], [[9, 5, 1], [1, 5, 8]]
    u = run("utilitarian", rankings, scores=scores)
    assert u.scores == [5, 5, 4.5] and u.ranking == [0, 1, 2] and u.index_ties == 1
    n = run("nash", rankings, scores=scores)
    assert n.scores == pytest.approx([math.log(9), 2 * math.log(5), math.log(8)]) and n.ranking == [1, 0, 2]
    e = run("egalitarian", rankings, scores=scores)
    assert e.scores == [1, 5, 1] and e.ranking == [1, 0, 2]   # leximin: (1, 9) before (1, 8)
    # weights: the first judge counted three times
    assert run("utilitarian", rankings, weights=[3, 1], scores=scores).scores == pytest.approx([7, 5, 2.75])
    with pytest.raises(DataError, match=r"scores\[1\]\[0\].*nash needs every score > 0"):
        run("nash", rankings, scores=[[9, 5, 1], [0, 5, 8]])
    with pytest.raises(DataError, match="cardinal SWFs need one list of 3 scores"):
        run("utilitarian", rankings, scores=[[1, 2], [3, 4]])


def test_weight_equals_duplicated_voter():
    rng = random.Random(3)
    for _ in range(30):
        k = rng.randint(3, 5)
        prof = [rng.sample(range(k), k) for _ in range(rng.randint(1, 5))]
        dup = prof + [prof[0]]
        w = [2.0] + [1.0] * (len(prof) - 1)
        for m in S.ORDINAL:
            a, b = run(m, prof, weights=w), run(m, dup)
            assert a.ranking == b.ranking and a.scores == pytest.approx(b.scores), m


def _brute_kemeny(prof, k):
    n = S.pairwise(prof, np.ones(len(prof)), k)
    best, arg, count = -1, None, 0
    for order in itertools.permutations(range(k)):   # lexicographic order
        v = S.kemeny_objective(order, n)
        if v > best + 1e-9:
            best, arg, count = v, list(order), 1
        elif abs(v - best) <= 1e-9:
            count += 1
    return arg, best, count


def test_kemeny_equals_brute_force_up_to_six_candidates():
    rng = random.Random(0)
    for trial in range(60):
        k = 3 + trial % 4
        prof = [rng.sample(range(k), k) for _ in range(rng.randint(1, 9))]
        arg, best, count = _brute_kemeny(prof, k)
        r = run("kemeny", prof)
        assert r.ranking == arg and r.extra["objective"] == best and r.extra["optimal_orders"] == count, prof


def test_kemeny_exact_limit_refuses_or_states_heuristic():
    rng = random.Random(1)
    prof = [rng.sample(range(9), 9) for _ in range(5)]
    assert run("kemeny", prof).exact                       # 9 > 8 candidates still exact
    with pytest.raises(ConfigError, match="above the exact limit of 8"):
        run("kemeny", prof, kemeny_exact_max=8)
    h = run("kemeny", prof, kemeny_exact_max=8, kemeny_heuristic=True)
    assert h.exact is False and sorted(h.ranking) == list(range(9))
    assert h.extra["objective"] <= run("kemeny", prof).extra["objective"]


@pytest.mark.parametrize("rankings, msg", [
    ([[0, 1, 1, 2]], r"not a permutation of 0..3: \[0, 1, 1, 2\] \(repeated: \[1\]\) \(missing: \[3\]\)"),
    ([[0, 1, 2, 4]], "index 4 out of range for 4 candidates"),
    ([[0, 1, -1, 2]], "index -1 out of range"),
    ([], "empty ranking set"),
    ([[0, 1, 2]], r"not a permutation of 0..3"),
    ([["0", 1, 2, 3]], "expected a list of candidate indices"),
])
def test_bad_profiles(rankings, msg):
    with pytest.raises(DataError, match=msg):
        S.aggregate("borda", rankings, 4)


def test_too_few_candidates_and_unknown_swf():
    with pytest.raises(DataError, match="2 candidates: swf kemeny needs at least 3"):
        S.aggregate("kemeny", [[0, 1]], 2)
    with pytest.raises(ConfigError, match="unknown social welfare function 'dowdall'"):
        S.aggregate("dowdall", [[0, 1, 2]], 3)
    with pytest.raises(DataError, match="weights must be 2 finite numbers >= 0"):
        S.aggregate("borda", [[0, 1, 2], [2, 1, 0]], 3, weights=[1, -1])


def test_pair_policies():
    assert S.pairs_from_ranking([2, 0, 1, 3], "best-worst") == [(2, 3)]
    assert S.pairs_from_ranking([2, 0, 1, 3], "adjacent") == [(2, 0), (0, 1), (1, 3)]
    assert len(S.pairs_from_ranking([2, 0, 1, 3], "all")) == 6


# ------------------------------------------------------------------------------------------ properties
@st.composite
def profiles(draw, max_k=5):
    k = draw(st.integers(3, max_k))
    n = draw(st.integers(1, 7))
    prof = [draw(st.permutations(range(k))) for _ in range(n)]
    scores = [[draw(st.integers(1, 9)) for _ in range(k)] for _ in range(n)]
    return k, [list(p) for p in prof], scores


PROP = settings(max_examples=60, deadline=None)


@PROP
@given(profiles(), st.randoms(use_true_random=False))
def test_anonymity(p, rnd):
    k, prof, scores = p
    order = list(range(len(prof)))
    rnd.shuffle(order)
    for m in S.SWFS:
        a = run(m, prof, k, scores=scores)
        b = run(m, [prof[i] for i in order], k, scores=[scores[i] for i in order])
        assert a.ranking == b.ranking and a.scores == pytest.approx(b.scores), m


@PROP
@given(profiles(), st.randoms(use_true_random=False))
def test_neutrality(p, rnd):
    k, prof, scores = p
    sigma = list(range(k))
    rnd.shuffle(sigma)                                  # candidate c is renamed sigma[c]
    inv = [sigma.index(c) for c in range(k)]
    prof2 = [[sigma[c] for c in r] for r in prof]
    scores2 = [[s[inv[c]] for c in range(k)] for s in scores]
    for m in S.SWFS:
        a, b = run(m, prof, k, scores=scores), run(m, prof2, k, scores=scores2)
        if a.index_ties == 0:                           # the index decided nothing: the result is relabelled
            assert b.ranking == [sigma[c] for c in a.ranking], m
            assert [b.scores[sigma[c]] for c in range(k)] == pytest.approx(a.scores), m


@PROP
@given(profiles())
def test_pareto(p):
    k, prof, _ = p
    dominated = [(a, b) for a in range(k) for b in range(k)
                 if a != b and all(r.index(a) < r.index(b) for r in prof)]
    # cardinal scores consistent with the rankings: judge j gives its i-th choice k - i
    card = [[float(k - r.index(c)) for c in range(k)] for r in prof]
    for m in S.SWFS:
        res = run(m, prof, k, scores=card)
        for a, b in dominated:
            assert res.ranking.index(a) < res.ranking.index(b), (m, a, b)


@PROP
@given(profiles(max_k=6))
def test_condorcet_winner_chosen(p):
    k, prof, _ = p
    n = S.pairwise(prof, np.ones(len(prof)), k)
    winners = [a for a in range(k) if all(n[a, b] > n[b, a] for b in range(k) if b != a)]
    if not winners:
        return
    for m in ("copeland", "maximin", "schulze", "kemeny"):
        assert run(m, prof, k).ranking[0] == winners[0], m

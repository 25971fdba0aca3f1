"""Social welfare functions: many judges' rankings (or scores) of the same K candidates -> one ranking.

A *profile* is a list of strict rankings, each a permutation of ``range(K)`` from best to worst, with one
non-negative weight per ranking (a weighted voter counts ``weight`` times; the default weight is 1).
Cardinal functions take a ``[judges][K]`` table of scores instead (higher = better).

Ordinal functions
    plurality       weighted count of first places
    borda           sum of weight * (K - 1 - position)
    copeland        pairwise majority contests: 1 per win, 1/2 per tie (weighted pairwise counts)
    maximin         Simpson-Kramer: the worst pairwise support min_b N(a > b)
    kemeny          the order agreeing with the most weighted pairwise preferences (exact dynamic programme
                    over subsets up to ``KEMENY_EXACT_MAX`` candidates; above it a local-search heuristic
                    whose result says ``exact: false``, or a refusal)
    schulze         strongest paths over the pairwise defeats; a ranks above b when p(a, b) > p(b, a)
    instant-runoff  repeatedly eliminate the candidate with the fewest first places among those left;
                    the ranking is the reverse elimination order
Cardinal functions (judges' ``scores``)
    utilitarian     weighted mean score
    nash            weighted sum of log scores (every score must be > 0)
    egalitarian     the minimum score over the judges with weight > 0 (weights do not scale a minimum)

Tie-breaking (deterministic; documented in docs/rlchf.md):
  * every function except borda and kemeny orders candidates by its own score, then by the Borda score of
    the same weighted profile, then by the lower candidate index (the order the candidates were given in);
    instant-runoff eliminates, among the candidates with the fewest first places, the one with the lowest
    Borda score, then the higher index; egalitarian compares the sorted score vectors (leximin) before Borda;
  * borda: score, then lower index;
  * kemeny: among the optimal orders, the lexicographically smallest sequence of candidate indices.
``Result.index_ties`` counts the decisions that came down to the candidate index (for kemeny: the number
of other optimal orders), so a user can see when the index decided.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from itertools import pairwise as successive

import numpy as np

from fairhpc.errors import ConfigError, DataError

KEMENY_EXACT_MAX = 12        # exact Kemeny-Young up to this many candidates (2^K * K^2 work)
MIN_CANDIDATES = 3           # every SWF here needs K >= 3 (with two candidates all are majority vote)
ORDINAL = ("plurality", "borda", "copeland", "maximin", "kemeny", "schulze", "instant-runoff")
CARDINAL = ("utilitarian", "nash", "egalitarian")
SWFS = ORDINAL + CARDINAL


@dataclass
class Result:
    ranking: list[int]               # best to worst
    scores: list[float]              # the function's score per candidate (candidate order, not ranking order)
    exact: bool = True               # kemeny above the exact limit: False (heuristic)
    index_ties: int = 0              # decisions made by the candidate index (see the module docstring)
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ validation
def check_profile(rankings, k: int, where: str = "rankings", weights=None,
                  offset: int = 0) -> tuple[list[list[int]], np.ndarray]:
    """Rankings as lists of ints and weights as an array, after checking that each ranking is a permutation
    of range(k) and each weight a finite number >= 0 (not all 0).  Raises DataError naming the ranking."""
    if not rankings:
        raise DataError(f"{where}: empty ranking set (no judge ranked these candidates)")
    out = []
    for j, r in enumerate(rankings, offset):
        f = f"{where}: field 'rankings[{j}].ranking'"
        if not isinstance(r, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in r):
            raise DataError(f"{f}: expected a list of candidate indices, got {r!r}",
                            "wrong_type")
        bad = [x for x in r if not 0 <= x < k]
        if bad:
            raise DataError(f"{f}: index {bad[0]} out of range for {k} candidates "
                            f"(allowed 0..{k - 1}), got {list(r)}", "wrong_type")
        if sorted(r) != list(range(k)):
            dup = sorted({x for x in r if r.count(x) > 1})
            missing = sorted(set(range(k)) - set(r))
            raise DataError(f"{f}: not a permutation of 0..{k - 1}: {list(r)}"
                            f"{f' (repeated: {dup})' if dup else ''}{f' (missing: {missing})' if missing else ''}",
                            "wrong_type")
        out.append(list(r))
    w = np.ones(len(out)) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (len(out),) or not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
        raise DataError(f"{where}: weights must be {len(out)} finite numbers >= 0, not all 0; got {list(w)}",
                        "wrong_type")
    return out, w


def check_k(swf: str, k: int, where: str = "") -> None:
    if k < MIN_CANDIDATES:
        raise DataError(f"{where}{k} candidates: swf {swf} needs at least {MIN_CANDIDATES} (with two, every "
                        f"social welfare function is a majority vote; generate K >= 3 candidates)", "wrong_type")


# ------------------------------------------------------------------------------------------ building blocks
def pairwise(rankings: list[list[int]], weights: np.ndarray, k: int) -> np.ndarray:
    """[K, K] weighted counts N[a, b] of judges ranking a above b."""
    n = np.zeros((k, k))
    for r, w in zip(rankings, weights):
        pos = np.empty(k, dtype=int)
        pos[r] = np.arange(k)
        n += w * (pos[:, None] < pos[None, :])
    return n


def borda_scores(rankings, weights, k: int) -> np.ndarray:
    s = np.zeros(k)
    for r, w in zip(rankings, weights):
        s[r] += w * (k - 1 - np.arange(k))
    return s


def _order(primary, secondary=None) -> tuple[list[int], int]:
    """Candidates by primary desc, then secondary desc, then index asc; and how many adjacent decisions the
    index made (equal primary and secondary)."""
    k = len(primary)
    sec = np.zeros(k) if secondary is None else np.asarray(secondary, dtype=float)
    prim = np.asarray(primary, dtype=float)
    ranking = sorted(range(k), key=lambda c: (-_round(prim[c]), -_round(sec[c]), c))
    ties = sum(1 for a, b in successive(ranking)
               if _round(prim[a]) == _round(prim[b]) and _round(sec[a]) == _round(sec[b]))
    return ranking, ties


def _round(x: float) -> float:
    """Scores compared after rounding away float noise (weighted sums of 0.1 + 0.2 ...)."""
    return round(float(x), 9)


# ------------------------------------------------------------------------------------------ ordinal SWFs
def plurality(rankings, weights, k):
    s = np.zeros(k)
    for r, w in zip(rankings, weights):
        s[r[0]] += w
    ranking, ties = _order(s, borda_scores(rankings, weights, k))
    return Result(ranking, s.tolist(), index_ties=ties)


def borda(rankings, weights, k):
    s = borda_scores(rankings, weights, k)
    ranking, ties = _order(s)
    return Result(ranking, s.tolist(), index_ties=ties)


def copeland(rankings, weights, k):
    n = pairwise(rankings, weights, k)
    d = np.round(n - n.T, 9)
    s = (d > 0).sum(1) + 0.5 * ((d == 0).sum(1) - 1)   # minus the diagonal
    ranking, ties = _order(s, borda_scores(rankings, weights, k))
    return Result(ranking, s.tolist(), index_ties=ties)


def maximin(rankings, weights, k):
    n = pairwise(rankings, weights, k)
    s = np.array([min(n[a, b] for b in range(k) if b != a) for a in range(k)])
    ranking, ties = _order(s, borda_scores(rankings, weights, k))
    return Result(ranking, s.tolist(), index_ties=ties)


def schulze(rankings, weights, k):
    n = pairwise(rankings, weights, k)
    p = np.where(np.round(n - n.T, 9) > 0, n, 0.0)
    for i in range(k):          # Floyd-Warshall on the widest path
        for j in range(k):
            if i != j:
                for m in range(k):
                    if m != i and m != j:
                        p[j, m] = max(p[j, m], min(p[j, i], p[i, m]))
    beats = np.round(p - p.T, 9) > 0
    s = beats.sum(1).astype(float)
    ranking, ties = _order(s, borda_scores(rankings, weights, k))
    return Result(ranking, s.tolist(), index_ties=ties, extra={"strongest_paths": p.tolist()})


def instant_runoff(rankings, weights, k):
    b = borda_scores(rankings, weights, k)
    left = list(range(k))
    eliminated, ties = [], 0
    while left:
        firsts = {c: 0.0 for c in left}
        for r, w in zip(rankings, weights):
            firsts[next(c for c in r if c in firsts)] += w
        low = min(_round(v) for v in firsts.values())
        tied = [c for c in left if _round(firsts[c]) == low]
        lowest_b = min(_round(b[c]) for c in tied)
        tied_b = [c for c in tied if _round(b[c]) == lowest_b]
        ties += len(tied_b) > 1
        out = max(tied_b)           # the higher index goes first
        eliminated.append(out)
        left.remove(out)
    ranking = eliminated[::-1]
    s = [float(k - 1 - ranking.index(c)) for c in range(k)]   # the round a candidate survived to
    return Result(ranking, s, index_ties=ties)


def kemeny_objective(order, n: np.ndarray) -> float:
    """Weighted pairwise preferences that ``order`` agrees with: sum of N[a, b] over a placed before b."""
    return float(sum(n[a, b] for i, a in enumerate(order) for b in order[i + 1:]))


def kemeny(rankings, weights, k, exact_max: int = KEMENY_EXACT_MAX, heuristic: bool = False):
    n = pairwise(rankings, weights, k)
    if k > exact_max:
        if not heuristic:
            raise ConfigError(f"swf kemeny: {k} candidates is above the exact limit of {exact_max} "
                              f"(2^K subsets); use --kemeny-heuristic for a local-search order marked "
                              f"'exact: false', or another SWF")
        order = _kemeny_local_search(n, borda(rankings, weights, k).ranking)
        return Result(order, [float(k - 1 - order.index(c)) for c in range(k)], exact=False,
                      extra={"objective": kemeny_objective(order, n), "method": "borda start + insertion search"})
    order, n_opt, best = _kemeny_exact(n, k)
    return Result(order, [float(k - 1 - order.index(c)) for c in range(k)], index_ties=n_opt - 1,
                  extra={"objective": best, "optimal_orders": n_opt})


def _kemeny_exact(n: np.ndarray, k: int) -> tuple[list[int], int, float]:
    """Dynamic programme over subsets S of candidates still to place: f(S) = max over the first a of S of
    sum_{b in S - a} N[a, b] + f(S - a).  Choosing the lowest a that attains the maximum at every step gives
    the lexicographically smallest optimal order; cnt(S) counts the optimal orders."""
    full = (1 << k) - 1
    f = np.zeros(1 << k)
    cnt = np.zeros(1 << k, dtype=np.int64)
    cnt[0] = 1
    # gain[a][S] = sum_{b in S} N[a, b]: built incrementally by lowest bit
    gain = np.zeros((k, 1 << k))
    for s in range(1, 1 << k):
        low = (s & -s).bit_length() - 1
        gain[:, s] = gain[:, s & (s - 1)] + n[:, low]
    for s in range(1, 1 << k):
        best, c = -math.inf, 0
        for a in range(k):
            if s >> a & 1:
                rest = s & ~(1 << a)
                v = _round(gain[a, rest] + f[rest])
                if v > best:
                    best, c = v, int(cnt[rest])
                elif v == best:
                    c += int(cnt[rest])
        f[s], cnt[s] = best, c
    order, s = [], full
    while s:
        for a in range(k):
            if s >> a & 1:
                rest = s & ~(1 << a)
                if _round(gain[a, rest] + f[rest]) == f[s]:
                    order.append(a)
                    s = rest
                    break
    return order, int(cnt[full]), float(f[full])


def _kemeny_local_search(n: np.ndarray, start: list[int]) -> list[int]:
    order = list(start)
    best = kemeny_objective(order, n)
    improved = True
    while improved:
        improved = False
        for i in range(len(order)):
            for j in range(len(order)):
                if i == j:
                    continue
                cand = order[:i] + order[i + 1:]
                cand.insert(j, order[i])
                v = kemeny_objective(cand, n)
                if v > best + 1e-9:
                    order, best, improved = cand, v, True
    return order


# ------------------------------------------------------------------------------------------ cardinal SWFs
def check_scores(scores, k: int, where: str = "scores") -> np.ndarray:
    a = np.asarray(scores, dtype=float) if scores is not None else None
    if a is None or a.ndim != 2 or a.shape[1] != k or a.shape[0] == 0:
        raise DataError(f"{where}: cardinal SWFs need one list of {k} scores per judge (field 'scores'), got "
                        f"{scores!r:.80}", "missing_field")
    if not np.all(np.isfinite(a)):
        raise DataError(f"{where}: scores must be finite numbers", "wrong_type")
    return a


def utilitarian(scores, weights, k, borda_ref=None):
    s = (weights[:, None] * scores).sum(0) / weights.sum()
    ranking, ties = _order(s, borda_ref)
    return Result(ranking, s.tolist(), index_ties=ties)


def nash(scores, weights, k, borda_ref=None, where: str = "scores"):
    if np.any(scores[weights > 0] <= 0):
        j, c = map(int, np.argwhere(scores * (weights[:, None] > 0) <= 0)[0])
        raise DataError(f"{where}[{j}][{c}]: swf nash needs every score > 0 (it sums their logs), got "
                        f"{scores[j, c]}; shift the judges' scale or use utilitarian", "wrong_type")
    s = (weights[:, None] * np.log(np.where(scores > 0, scores, 1.0))).sum(0)
    ranking, ties = _order(s, borda_ref)
    return Result(ranking, s.tolist(), index_ties=ties)


def egalitarian(scores, weights, k, borda_ref=None):
    used = scores[weights > 0]
    s = used.min(0)
    leximin = [tuple(_round(x) for x in sorted(used[:, c])) for c in range(k)]
    bref = np.zeros(k) if borda_ref is None else np.asarray(borda_ref)
    ranking = sorted(range(k), key=lambda c: (tuple(-x for x in leximin[c]), -_round(bref[c]), c))
    ties = sum(1 for a, b in successive(ranking) if leximin[a] == leximin[b] and _round(bref[a]) == _round(bref[b]))
    return Result(ranking, s.tolist(), index_ties=ties)


# ------------------------------------------------------------------------------------------ dispatch
_ORDINAL_FNS = {"plurality": plurality, "borda": borda, "copeland": copeland, "maximin": maximin,
                "kemeny": kemeny, "schulze": schulze, "instant-runoff": instant_runoff}
_CARDINAL_FNS = {"utilitarian": utilitarian, "nash": nash, "egalitarian": egalitarian}


def aggregate(swf: str, rankings, k: int, weights=None, scores=None, where: str = "rankings",
              kemeny_exact_max: int = KEMENY_EXACT_MAX, kemeny_heuristic: bool = False) -> Result:
    """One SWF over one profile: ``rankings`` (best first, permutations of range(k)), optional weights,
    and for cardinal SWFs the judges' ``scores`` ([judges][k]).  Bad profiles raise DataError naming
    ``where`` and the ranking; an unknown SWF or K < 3 raise ConfigError / DataError."""
    if swf not in SWFS:
        raise ConfigError(f"--swf: unknown social welfare function {swf!r}; allowed: {', '.join(SWFS)}")
    check_k(swf, k, f"{where}: ")
    rankings, w = check_profile(rankings, k, where, weights)
    if swf == "kemeny":
        return kemeny(rankings, w, k, kemeny_exact_max, kemeny_heuristic)
    if swf in _ORDINAL_FNS:
        return _ORDINAL_FNS[swf](rankings, w, k)
    sc = check_scores(scores, k, f"{where} scores")
    if sc.shape[0] != len(rankings):
        raise DataError(f"{where}: {sc.shape[0]} score lists for {len(rankings)} rankings", "wrong_type")
    b = borda_scores(rankings, w, k)
    if swf == "nash":
        return nash(sc, w, k, b, where=f"{where} scores")
    return _CARDINAL_FNS[swf](sc, w, k, b)


def pairs_from_ranking(ranking: list[int], policy: str) -> list[tuple[int, int]]:
    """(winner, loser) candidate pairs of an aggregate ranking: best-worst (one pair), adjacent (K - 1 pairs)
    or all (K (K - 1) / 2 pairs), winners ranked above losers."""
    if policy == "best-worst":
        return [(ranking[0], ranking[-1])]
    if policy == "adjacent":
        return list(successive(ranking))
    if policy == "all":
        return [(ranking[i], ranking[j]) for i, j in combinations(range(len(ranking)), 2)]
    raise ConfigError(f"--pairs: unknown pair policy {policy!r}; allowed: {', '.join(PAIR_POLICIES)}")


PAIR_POLICIES = ("best-worst", "all", "adjacent")

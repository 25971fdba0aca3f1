"""What the evaluation commands add on top of a reward model's scores, per kind (the kinds themselves, how
each is loaded and scores: fairhpc/rewards/).

:func:`attach_extras` writes a kind's per-pair extras (gate weights, objective scores, both orders'
probabilities) into the per-example rows and the summary.

Best-of-N with a pairwise model (:func:`pairwise_best_of_n_curve`): round robin (most wins inside the
n-subset) or a knockout tournament (RLHFlow's linear-cost selection), from the matrix of all pairwise
preferences of a prompt's candidates (``PairPMScorer.preference_matrices``).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from fairhpc import registry
from fairhpc.errors import ConfigError


# ------------------------------------------------------------------------------------------ results
def attach_extras(rows: list[dict], summary: dict, extras: dict, examples) -> None:
    """Write a kind's extras into eval rows and the summary (in place).

    pairwise: per row p_chosen = P(chosen > rejected) and the probabilities of each order alone
    (p_chosen_first: chosen shown as A); summary["pairwise"]: position consistency (both orders agree) and
    the position bias (mean P(answer A) - 1/2 over both orders).
    experts / objectives with gate: per row {name: value} of both responses; summary[kind block]: each
    component's own pairwise accuracy, the mean gate weight overall and per category."""
    if not extras:
        return
    if "pairwise" in extras:
        pw = extras["pairwise"]
        for i, row in enumerate(rows):
            row.update(p_chosen=float(pw["p_chosen"][i]), p_chosen_first=float(pw["p_chosen_first"][i]),
                       p_chosen_second=float(pw["p_chosen_second"][i]))
        first, second = np.asarray(pw["p_chosen_first"]), np.asarray(pw["p_chosen_second"])
        # P(answer A): chosen at A answered A (first), chosen at B answered A (1 - second)
        summary["pairwise"] = {
            "position_consistency": float(np.mean((first > 0.5) == (second > 0.5))) if first.size else math.nan,
            "position_bias_a": float(np.mean((first + 1.0 - second) / 2.0) - 0.5) if first.size else math.nan,
            "p_chosen_mean": float(np.mean(pw["p_chosen"])) if first.size else math.nan}
    for comp in ("experts", "objectives"):
        if comp not in extras:
            continue
        c, g = extras[comp], extras.get("gate")
        names = list(c["names"])
        for i, row in enumerate(rows):
            for side in ("chosen", "rejected"):
                row[f"{comp}_{side}"] = {n: float(v) for n, v in zip(names, c[side][i])}
                if g is not None:
                    row[f"gate_{side}"] = {n: float(v) for n, v in zip(g["names"], g[side][i])}
        block: dict = {"names": names,
                       "accuracy": {n: float(np.mean(c["chosen"][:, k] > c["rejected"][:, k]))
                                    for k, n in enumerate(names)} if len(rows) else {}}
        if g is not None and len(rows):
            both = np.concatenate([g["chosen"], g["rejected"]])
            block["gate_mean"] = {n: float(v) for n, v in zip(g["names"], both.mean(0))}
            cats = np.array([ex.category or "none" for ex in examples] * 2, dtype=object)
            block["gate_mean_by_category"] = {
                cat: {n: float(v) for n, v in zip(g["names"], both[cats == cat].mean(0))}
                for cat in sorted(set(cats.tolist()))}
        summary["moe" if comp == "experts" else "armo"] = block


# ------------------------------------------------------------------------------------------ best of N
def round_robin_winner(P: np.ndarray, members) -> int:
    """The member with the most wins against the others (P[i, j] > 1/2 a win, = 1/2 half a win); ties go
    to the larger summed preference, then to the earlier member."""
    s = np.asarray(list(members))
    sub = P[np.ix_(s, s)]
    off = ~np.eye(len(s), dtype=bool)
    wins = ((sub > 0.5) + 0.5 * (sub == 0.5)) * off
    key = np.stack([wins.sum(1), (sub * off).sum(1)])
    best = np.lexsort((-np.arange(len(s)), key[1], key[0]))[-1]
    return int(s[best])


def knockout_winner(P: np.ndarray, order) -> int:
    """A knockout tournament in bracket ``order``: neighbours meet, the preferred one (the first on a tie)
    goes on, an odd one out gets a bye; n - 1 comparisons."""
    alive = list(order)
    while len(alive) > 1:
        nxt = [alive[k] if P[alive[k], alive[k + 1]] >= 0.5 else alive[k + 1] for k in range(0, len(alive) - 1, 2)]
        if len(alive) % 2:
            nxt.append(alive[-1])
        alive = nxt
    return int(alive[0])


def select_all(P: np.ndarray, method: str) -> np.ndarray:
    """[prompts] the candidate chosen among all K: round robin, or a knockout in sample order."""
    if method not in registry.PAIRWISE_SELECTIONS:
        raise ConfigError(f"--pairwise: {method!r}; allowed: {', '.join(registry.PAIRWISE_SELECTIONS)}")
    k = P.shape[1]
    pick = round_robin_winner if method == "round-robin" else knockout_winner
    return np.array([pick(P[p], range(k)) for p in range(P.shape[0])], dtype=np.int64)


def win_counts(P: np.ndarray) -> np.ndarray:
    """[prompts, K] round-robin wins of each candidate over the other K - 1 (a tie counts one half)."""
    k = P.shape[1]
    off = ~np.eye(k, dtype=bool)
    return (((P > 0.5) + 0.5 * (P == 0.5)) * off).sum(2)


def win_rates(P: np.ndarray) -> np.ndarray:
    """[prompts, K] each candidate's mean preference over the other K - 1 (the round robin over all K)."""
    k = P.shape[1]
    return (P.sum(2) - 0.5) / max(1, k - 1)


def pairwise_best_of_n_curve(P: np.ndarray, ns, method: str, others: dict | None = None, seed: int = 0,
                             max_subsets: int = 2000) -> list[dict]:
    """Expected measures of the response a pairwise model selects from n of the K samples, per n.

    The expectation runs over the n-subsets of the K samples (all of them when there are at most
    ``max_subsets``, else that many drawn at random) and, for a knockout, over a random bracket order per
    subset.  ``proxy_win_rate`` is the selected response's mean preference over all K samples (1/2 at n = 1
    exactly); ``others`` are further [prompts, K] measures (length, true quality, a gold reward)."""
    P = np.asarray(P, dtype=np.float64)
    n_prompts, k = P.shape[:2]
    rng = np.random.default_rng(seed)
    measures = {"proxy_win_rate": win_rates(P), **{name: np.asarray(v, dtype=np.float64)
                                                  for name, v in (others or {}).items()}}
    out = []
    for n in ns:
        if not 1 <= n <= k:
            raise ValueError(f"best-of-n needs 1 <= n <= {k}, got {n}")
        if math.comb(k, n) <= max_subsets:
            subsets = [list(c) for c in itertools.combinations(range(k), n)]
        else:
            subsets = [sorted(rng.choice(k, size=n, replace=False).tolist()) for _ in range(max_subsets)]
        picks = np.empty((n_prompts, len(subsets)), dtype=np.int64)
        for p in range(n_prompts):
            for s, members in enumerate(subsets):
                if method == "round-robin":
                    picks[p, s] = round_robin_winner(P[p], members)
                else:
                    picks[p, s] = knockout_winner(P[p], rng.permutation(members).tolist())
        row = {"n": int(n)}
        for name, v in measures.items():
            row[name] = float(np.take_along_axis(v, picks, axis=1).mean())
        row["kl_bound"] = math.log(n) - (n - 1) / n
        out.append(row)
    return out

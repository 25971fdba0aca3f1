"""How rewards are distributed: accuracy, fairness indices, distribution summaries and length bias.

Everything here is a pure function of arrays (float64 NumPy), so every number in an evaluation
summary can be recomputed by hand from ``per_example.jsonl``.

The resource of a preference pair is x_i = sigmoid(d_i), d_i = r(chosen) - r(rejected), as in the
training objective (docs/method.md).  Fairness "across pairs" is measured on the x_i; fairness "across
categories" on the category means X_c = mean_{i in c} x_i.

Fairness indices (all on non-negative allocations; 1 = perfectly equal for Jain and Lan, 0 for Gini):

    Jain  J = (sum x)^2 / (n sum x^2)                           in [1/n, 1]     (Jain, Chiu, Hawe 1984)
    Gini  G = sum_i sum_j |x_i - x_j| / (2 n^2 mean(x))          in [0, 1 - 1/n]
    Lan   f_tau = sign(1 - tau) (sum p^(1 - tau))^(1/tau) / n,  p = x / sum x     (Lan et al. 2010 eq. 15)
          computed by :func:`fairhpc.losses.lan_fairness`; f_{-1} = J.

Undefined values (a Spearman correlation of a constant, a gap with one category, accuracy when every
pair is a tie and ties are excluded) are NaN here and ``null`` in JSON, never a made-up number.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from fairhpc.evaluation import TIE_POLICIES

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
NO_CATEGORY = "all"  # the category of pairs whose data has none


def _vec(x, name: str = "values", allow_empty: bool = False) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0 and not allow_empty:
        raise ValueError(f"{name}: empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: non-finite value at index {int(np.flatnonzero(~np.isfinite(a))[0])}")
    return a


def _allocation(x, name: str = "allocation") -> np.ndarray:
    a = _vec(x, name)
    if np.any(a < 0):
        raise ValueError(f"{name}: fairness indices need non-negative resources, got {a.min()!r}")
    return a


# ------------------------------------------------------------------------------------------ accuracy
def pairwise_accuracy(margins, ties: str = "wrong") -> float:
    """Share of pairs with r(chosen) > r(rejected); an exact tie (d = 0) counts as ``ties`` says."""
    if ties not in TIE_POLICIES:
        raise ValueError(f"ties: unknown policy {ties!r}; allowed: {', '.join(TIE_POLICIES)}")
    d = _vec(margins, "margins")
    wins, n_ties = float(np.sum(d > 0)), float(np.sum(d == 0))
    if ties == "wrong":
        return wins / d.size
    if ties == "half":
        return (wins + 0.5 * n_ties) / d.size
    kept = d.size - n_ties
    return wins / kept if kept else math.nan


# ------------------------------------------------------------------------------------ fairness indices
def jain_index(x) -> float:
    """Jain's index (sum x)^2 / (n sum x^2); NaN for the all-zero allocation (0/0)."""
    a = _allocation(x)
    sq = float(np.sum(a * a))
    return float(np.sum(a)) ** 2 / (a.size * sq) if sq > 0 else math.nan


def gini_index(x) -> float:
    """Gini coefficient, via the sorted form G = 2 sum_i i x_(i) / (n sum x) - (n + 1) / n (i = 1..n),
    which equals the mean-absolute-difference definition; NaN for the all-zero allocation."""
    a = np.sort(_allocation(x))
    total = float(a.sum())
    if total <= 0:
        return math.nan
    n = a.size
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * np.sum(i * a) / (n * total) - (n + 1.0) / n)


def lan_index_of_margins(margins, tau: float) -> float:
    """Lan's f_tau of the pairs' resources sigmoid(margins), exactly as in the training objective."""
    import torch

    from fairhpc.losses import lan_fairness

    d = torch.as_tensor(_vec(margins, "margins"), dtype=torch.float64)
    return float(lan_fairness(d, float(tau)))


def lan_index(x, tau: float) -> float:
    """Lan's f_tau of an arbitrary positive allocation x (e.g. category means of sigmoid(d)).

    f depends on x only through p = x / sum x, so x is rescaled into (0, 1/2] and passed to
    :func:`fairhpc.losses.lan_fairness` as the margins logit(x'): sigmoid(logit(x')) = x' reproduces the
    allocation, and the rescaling keeps every logit finite.  x must be > 0 (p^(1 - tau) with p = 0 is
    undefined for tau > 1); resources sigmoid(d) always are.
    """
    a = _allocation(x)
    if np.any(a <= 0):
        raise ValueError("allocation: Lan's index needs strictly positive resources")
    scaled = a * (0.5 / a.max())
    return lan_index_of_margins(np.log(scaled) - np.log1p(-scaled), tau)


def max_min_gap(values: Mapping[str, float] | Iterable[float]) -> float:
    """max - min over categories (0 for one category); NaN values are ignored, NaN if none is left."""
    v = np.asarray(list(values.values()) if isinstance(values, Mapping) else list(values), dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.max() - v.min()) if v.size else math.nan


def _tau_key(tau: float) -> str:
    return f"{float(tau):g}"


# ------------------------------------------------------------------------------ distributions, length
def describe(values) -> dict:
    """n, mean, std (population, ddof=0), min, quantiles QUANTILES, max."""
    a = _vec(values, allow_empty=True)
    if a.size == 0:
        return {"n": 0}
    out = {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min())}
    for q, v in zip(QUANTILES, np.quantile(a, QUANTILES)):
        out[f"q{round(q * 100):02d}"] = float(v)
    out["max"] = float(a.max())
    return out


def wasserstein(a, b) -> float:
    """1-Wasserstein (earth mover's) distance between two empirical 1-D distributions."""
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(_vec(a, "a"), _vec(b, "b")))


def spearman(a, b) -> float:
    """Spearman rank correlation (ties get average ranks); NaN if n < 2 or either side is constant."""
    x, y = _vec(a, "a", allow_empty=True), _vec(b, "b", allow_empty=True)
    if x.size != y.size:
        raise ValueError(f"spearman: lengths differ ({x.size} vs {y.size})")
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def pairwise_wasserstein(groups: Mapping[str, np.ndarray]) -> dict[str, float]:
    """W1 for every unordered pair of groups, keyed "a|b" (names in sorted order)."""
    names = sorted(groups)
    return {f"{a}|{b}": wasserstein(groups[a], groups[b]) for a, b in itertools.combinations(names, 2)}


# ---------------------------------------------------------------------------- one evaluation summary
def summarize_pairs(chosen, rejected, categories: Sequence[str | None] | None = None,
                    chosen_lengths=None, rejected_lengths=None, taus: Sequence[float] = (-1.0,),
                    ties: str = "wrong") -> dict:
    """Everything an evaluation of a reward model on n preference pairs reports.

    chosen, rejected: [n] rewards; categories: [n] names (None -> one category "all");
    *_lengths: [n] response lengths in tokens (optional); taus: Lan indices to report (the first is the
    headline ``*_lan_f``).  Returns {"metrics": flat scalars, "by_category": {...}, "wasserstein": {...},
    "lan_f_by_tau": {...}}; NaN marks an undefined value.
    """
    from scipy.special import expit

    rc, rr = _vec(chosen, "chosen rewards"), _vec(rejected, "rejected rewards")
    if rc.size != rr.size:
        raise ValueError(f"chosen and rejected rewards differ in length: {rc.size} vs {rr.size}")
    if not taus:
        raise ValueError("taus: give at least one tau")
    n = rc.size
    cats = np.asarray([NO_CATEGORY if c is None else str(c) for c in (categories or [None] * n)], dtype=object)
    if cats.size != n:
        raise ValueError(f"categories: {cats.size} names for {n} pairs")
    d = rc - rr
    x = expit(d)  # resource of each pair, sigmoid(d) in (0, 1)
    names = sorted(set(cats.tolist()))
    masks = {c: cats == c for c in names}

    by_cat = {}
    for c in names:
        m = masks[c]
        by_cat[c] = {"n": int(m.sum()), "accuracy": pairwise_accuracy(d[m], ties),
                     "n_ties": int(np.sum(d[m] == 0)), "resource_mean": float(x[m].mean()),
                     "chosen": describe(rc[m]), "rejected": describe(rr[m]), "margin": describe(d[m])}
    cat_res = np.array([by_cat[c]["resource_mean"] for c in names])

    t0 = _tau_key(taus[0])
    pair_lan = {_tau_key(t): lan_index_of_margins(d, t) for t in taus}
    # a category mean underflows to 0 only for margins below about -745 (float64 sigmoid)
    cat_lan = {_tau_key(t): lan_index(cat_res, t) if np.all(cat_res > 0) else math.nan for t in taus}
    w1 = {part: pairwise_wasserstein({c: arr[masks[c]] for c in names})
          for part, arr in (("margin", d), ("chosen", rc), ("rejected", rr))}

    metrics = {
        "n": n, "n_ties": int(np.sum(d == 0)), "accuracy": pairwise_accuracy(d, ties),
        "margin_mean": float(d.mean()), "margin_std": float(d.std()),
        "reward_chosen_mean": float(rc.mean()), "reward_rejected_mean": float(rr.mean()),
        "n_categories": len(names),
        # across pairs: the allocation x_i = sigmoid(d_i)
        "pairs_jain": jain_index(x), "pairs_gini": gini_index(x), "pairs_lan_f": pair_lan[t0],
        # across categories: the allocation X_c = mean of sigmoid(d) in c
        "cat_jain": jain_index(cat_res), "cat_gini": gini_index(cat_res), "cat_lan_f": cat_lan[t0],
        "gap_accuracy": max_min_gap({c: v["accuracy"] for c, v in by_cat.items()}),
        "gap_margin": max_min_gap({c: v["margin"]["mean"] for c, v in by_cat.items()}),
        "gap_resource": max_min_gap(cat_res),
        "gap_reward_chosen": max_min_gap({c: v["chosen"]["mean"] for c, v in by_cat.items()}),
        "w1_margin_max": max(w1["margin"].values(), default=math.nan),
        "w1_chosen_max": max(w1["chosen"].values(), default=math.nan),
        "w1_rejected_max": max(w1["rejected"].values(), default=math.nan),
        "lan_tau": float(taus[0]),
    }
    if chosen_lengths is not None and rejected_lengths is not None:
        lc, lr = _vec(chosen_lengths, "chosen lengths"), _vec(rejected_lengths, "rejected lengths")
        if lc.size != n or lr.size != n:
            raise ValueError(f"lengths: expected {n} chosen and rejected lengths, got {lc.size} and {lr.size}")
        metrics.update({
            "length_chosen_mean": float(lc.mean()), "length_rejected_mean": float(lr.mean()),
            # reward vs response length within chosen and within rejected responses
            "length_spearman_chosen": spearman(rc, lc), "length_spearman_rejected": spearman(rr, lr),
            "length_spearman_all": spearman(np.concatenate([rc, rr]), np.concatenate([lc, lr])),
            # does the margin follow the length difference (a length-biased RM prefers the longer one)?
            "length_spearman_margin": spearman(d, lc - lr),
            "length_longer_preferred": _longer_preferred(d, lc - lr),
        })
    return {"metrics": metrics, "by_category": by_cat, "wasserstein": w1,
            "lan_f_by_tau": {"pairs": pair_lan, "categories": cat_lan}}


def _longer_preferred(d: np.ndarray, dlen: np.ndarray) -> float:
    """Among pairs of different length with d != 0: share where the RM prefers the longer response."""
    m = (dlen != 0) & (d != 0)
    return float(np.mean(np.sign(d[m]) == np.sign(dlen[m]))) if m.any() else math.nan


# -------------------------------------------------------------------------------------------- Pareto
def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of the points not dominated when both coordinates are maximised, sorted by x.

    A point dominates another when it is >= on both coordinates and > on one; NaN points are skipped.
    """
    pts = [(float(x), float(y), i) for i, (x, y) in enumerate(zip(xs, ys))
           if math.isfinite(float(x)) and math.isfinite(float(y))]
    front = []
    for x, y, i in pts:
        dominated = any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for x2, y2, _ in pts)
        if not dominated:
            front.append((x, y, i))
    return [i for _, _, i in sorted(front)]


# ----------------------------------------------------------------------------------------------- JSON
def to_jsonable(obj):
    """Replace NaN/inf by None and NumPy scalars by Python ones (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj

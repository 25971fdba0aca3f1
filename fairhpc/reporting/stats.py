"""Intervals over seeds: every report's ``mean ± half`` cells and its differences between objectives."""

from __future__ import annotations

import math

LEVEL = 0.95  # coverage of every interval over seeds


def as_float(v) -> float:
    """``v`` as a float; NaN for anything that is not a number (None, text)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def t_interval(values, level: float = LEVEL) -> dict:
    """Mean and Student-t interval over the finite ``values`` (one per seed): ``{"n", "mean", "sd", "half",
    "lo", "hi"}`` with half = t(1/2 + level/2, n - 1) * sd / sqrt(n), sd with n - 1; no interval for n < 2."""
    import numpy as np
    from scipy import stats

    x = np.array([v for v in (as_float(v) for v in values) if math.isfinite(v)], dtype=float)
    n = int(x.size)
    mean = float(x.mean()) if n else math.nan
    sd = float(x.std(ddof=1)) if n >= 2 else math.nan
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)) if n >= 2 else math.nan
    return {"n": n, "mean": mean, "sd": sd, "half": half, "lo": mean - half, "hi": mean + half}


def welch(a: list[float], b: list[float], level: float = LEVEL) -> dict:
    """Interval of mean(a) - mean(b) for unpaired seeds (Welch), when pairing by seed is not possible."""
    from scipy import stats

    a = [x for x in a if math.isfinite(x)]
    b = [x for x in b if math.isfinite(x)]
    mean = (sum(a) / len(a) - sum(b) / len(b)) if a and b else math.nan
    lo = hi = math.nan
    if len(a) >= 2 and len(b) >= 2:
        res = stats.ttest_ind(a, b, equal_var=False)
        ci = res.confidence_interval(level)
        lo, hi = float(ci.low), float(ci.high)
    return {"n": min(len(a), len(b)), "mean": mean, "sd": math.nan, "half": (hi - lo) / 2, "lo": lo, "hi": hi}

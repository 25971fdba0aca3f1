"""Preference pairs from scored samples: which two responses of a prompt become (chosen, rejected).

Scalar kinds (scalar, moe, armo) give every sample a reward r_1..r_K.  ``pairs.selection``:

    best_worst      the highest against the lowest reward (RLHFlow's online DPO recipe)
    best_random     the highest against one other response drawn at random among those rewarded below it
    all_pairs_top   the highest against every response rewarded below it (up to K-1 pairs)

Ties: the first index among equal maxima is the best and the first among equal minima the worst; a response
rewarded exactly as the best is never its rejected partner (``ties_dropped``).  A prompt whose K rewards are
all equal carries no preference: it is skipped and counted (``skipped_all_equal``).  The margin filter drops
a pair whose reward gap is below ``pairs.margin`` and skips (``skipped_margin``) a prompt left without pairs.

A pairwise preference model (pair_pm) gives no reward per response: :func:`tournament` finds the best and
the worst of K in ceil(3K/2) - 2 comparisons (pairs in a first round, then a knockout of the winners for the
best and of the losers for the worst), each comparison the model's log-odds over both orders of the two
responses; with a transitive preference it finds the true best and worst.  Its margin is the log-odds of
the chosen over the rejected response.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from fairhpc import registry


def _rng(seed: int, prompt_id: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(prompt_id)])


def pick(rewards: Sequence[float], selection: str, seed: int = 0, prompt_id: int = 0) -> tuple[list[tuple[int, int, float]], str | None, int]:
    """([(chosen index, rejected index, reward gap)], why the prompt is skipped or None, ties dropped)."""
    if selection not in registry.PAIR_SELECTIONS:
        raise ValueError(f"pairs.selection {selection!r}: expected one of {', '.join(registry.PAIR_SELECTIONS)}")
    r = np.asarray(rewards, dtype=np.float64)
    if r.size < 2:
        raise ValueError(f"need at least 2 scored responses per prompt, got {r.size}")
    if not np.isfinite(r).all():
        raise ValueError(f"rewards must be finite, got {r.tolist()}")
    best = int(np.argmax(r))
    if r[best] == r.min():
        return [], "all_equal", 0
    below = [j for j in range(r.size) if r[j] < r[best]]
    ties = r.size - 1 - len(below)
    if selection == "best_worst":
        worst = int(np.argmin(r))
        return [(best, worst, float(r[best] - r[worst]))], None, 0
    if selection == "best_random":
        j = int(_rng(seed, prompt_id).choice(below))
        return [(best, j, float(r[best] - r[j]))], None, ties
    return [(best, j, float(r[best] - r[j])) for j in below], None, ties


def pair_counts(prompts: int) -> dict:
    """The counters of a pair selection, all zero: what was kept, skipped (and why) and dropped."""
    return {"prompts": prompts, "pairs": 0, "prompts_with_pairs": 0, "skipped_all_equal": 0,
            "skipped_margin": 0, "ties_dropped": 0, "pairs_below_margin": 0}


def keep_above_margin(pairs: list[tuple], margin: float, out: list, counts: dict) -> None:
    """The margin filter on one prompt's pairs (each tuple's last item its gap): the kept ones go to
    ``out``; a prompt left without pairs is counted as ``skipped_margin``."""
    kept = [x for x in pairs if x[-1] >= margin]
    counts["pairs_below_margin"] += len(pairs) - len(kept)
    if not kept:
        counts["skipped_margin"] += 1
        return
    counts["prompts_with_pairs"] += 1
    out += kept


def select_pairs(rewards: Sequence[Sequence[float]], selection: str, margin: float = 0.0, seed: int = 0,
                 prompt_ids: Sequence[int] | None = None) -> tuple[list[tuple[int, int, int, float]], dict]:
    """Pairs of every prompt, the margin filter applied: ([(prompt, chosen, rejected, gap)], counts)."""
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"pairs.margin must be a finite number >= 0, got {margin!r}")
    out: list[tuple[int, int, int, float]] = []
    counts = pair_counts(len(rewards))
    for p, r in enumerate(rewards):
        pid = p if prompt_ids is None else prompt_ids[p]
        pairs, skipped, ties = pick(r, selection, seed, pid)
        counts["ties_dropped"] += ties
        if skipped:
            counts[f"skipped_{skipped}"] += 1
            continue
        keep_above_margin([(p, c, j, g) for c, j, g in pairs], margin, out, counts)
    counts["pairs"] = len(out)
    return out, counts


def tournament_comparisons(k: int) -> int:
    """Comparisons :func:`tournament` makes for K candidates: ceil(3K/2) - 2 (0 for K = 1)."""
    return 0 if k < 2 else math.ceil(3 * k / 2) - 2


def tournament(sizes: Sequence[int], compare: Callable[[list[tuple[int, int, int]]], Sequence[float]]
               ) -> tuple[list[tuple[int, int]], list[int]]:
    """Best and worst candidate of every prompt with a pairwise judge, all prompts' comparisons of a round
    batched into one ``compare([(prompt, i, j), ...]) -> [log-odds of i over j]`` call.

    Returns ([(best, worst)] per prompt, [comparisons made] per prompt).  A log-odds of exactly 0 counts as
    a win of the earlier candidate i.
    """
    n = len(sizes)
    if any(k < 2 for k in sizes):
        raise ValueError(f"a tournament needs at least 2 candidates per prompt, got {min(sizes)}")
    made = [0] * n

    def run(batch):
        if not batch:
            return []
        res = list(compare(batch))
        if len(res) != len(batch):
            raise ValueError(f"compare returned {len(res)} results for {len(batch)} comparisons")
        for p, _, _ in batch:
            made[p] += 1
        return res

    first = [(p, i, i + 1) for p, k in enumerate(sizes) for i in range(0, k - 1, 2)]
    winners: list[list[int]] = [[] for _ in sizes]
    losers: list[list[int]] = [[] for _ in sizes]
    for (p, i, j), z in zip(first, run(first)):
        w, lo = (i, j) if z >= 0 else (j, i)
        winners[p].append(w)
        losers[p].append(lo)
    for p, k in enumerate(sizes):
        if k % 2:  # the odd one out joins both knockouts
            winners[p].append(k - 1)
            losers[p].append(k - 1)
    while any(len(w) > 1 for w in winners) or any(len(lo) > 1 for lo in losers):
        batch, where = [], []
        for p in range(n):
            for side, pool in (("max", winners[p]), ("min", losers[p])):
                for a in range(0, len(pool) - 1, 2):
                    batch.append((p, pool[a], pool[a + 1]))
                    where.append((p, side))
        res = run(batch)
        nxt = {(p, s): [] for p in range(n) for s in ("max", "min")}
        for (p, i, j), (_, side), z in zip(batch, where, res):
            i_wins = z >= 0
            nxt[(p, side)].append(i if i_wins == (side == "max") else j)
        for p in range(n):
            for side, pool in (("max", winners[p]), ("min", losers[p])):
                if len(pool) > 1:
                    carried = [pool[-1]] if len(pool) % 2 else []
                    pool[:] = nxt[(p, side)] + carried
    return [(winners[p][0], losers[p][0]) for p in range(n)], made

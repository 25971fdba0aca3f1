"""Rankings files and their aggregation into one ranking per prompt, preference pairs and SFT targets.

A rankings file is JSONL, one prompt per line::

    {"id": ..., "prompt": "text" or [messages], "responses": [K strings],
     "rankings": [{"persona": {"id": ..., "persona": ..., <attributes>}, "ranking": [best, ..., worst],
                   "scores": [K numbers] (optional), "weight": w (optional)}, ...],
     "unparsed": [{"persona": id, "reason": ...}, ...] (optional: judges whose answer could not be read)}

``fairhpc aggregate`` writes into OUT:

    aggregated.jsonl   one row per prompt: the SWF's ranking (best first), its scores, whether it is exact,
                       how many decisions the candidate index made, and each group's agreement with it
    pairs.jsonl        preference pairs (TRL form: prompt / chosen / rejected message lists) chosen from the
                       aggregate ranking by the pair policy; ``category`` = the persona group whose judges
                       put the winner above the loser most often (ties: the larger mean margin of positions,
                       then the group name)
    sft.jsonl          prompt / completion = the aggregate's top response; ``category`` = the group that
                       ranks it highest on average
    summary.json       rows read / kept / skipped by reason, pairs per category, exactness, tie counts

Baselines in place of an SWF: ``single-judge`` (the ranking of one judge, ``--judge`` persona id, default
the first judge of each row: classic RLHF with one annotator) and ``majority-pair`` (one pair of candidates
per prompt, drawn with the seed, labelled by the weighted majority of all judges: RLHF with a majority
label; ties go to the lower index).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np

from fairhpc.errors import ConfigError, DataError
from fairhpc.rlchf import swf as S

BASELINES = ("single-judge", "majority-pair")
METHODS = S.SWFS + BASELINES
VOTER_WEIGHTS = ("uniform", "balanced", "field")


# ------------------------------------------------------------------------------------------ reading
def _check_row(row, where: str, group_by: str) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with prompt, responses, rankings", "not_an_object")
    for key in ("prompt", "responses", "rankings"):
        if row.get(key) is None:
            raise DataError(f"{where}: field {key!r}: missing (columns present: {', '.join(row) or 'none'})",
                            "missing_field")
    if not isinstance(row["prompt"], (str, list)):
        raise DataError(f"{where}: field 'prompt': expected a string or messages, got "
                        f"{type(row['prompt']).__name__}", "wrong_type")
    resp = row["responses"]
    if not isinstance(resp, list) or not all(isinstance(r, str) and r.strip() for r in resp):
        raise DataError(f"{where}: field 'responses': expected a list of non-empty strings", "wrong_type")
    if not isinstance(row["rankings"], list):
        raise DataError(f"{where}: field 'rankings': expected a list of judge rankings", "wrong_type")
    if not row["rankings"]:
        raise DataError(f"{where}: field 'rankings': empty ranking set (no judge's ranking could be used)",
                        "missing_field")
    k = len(resp)
    for j, r in enumerate(row["rankings"]):
        f = f"rankings[{j}]"
        if not isinstance(r, dict) or "ranking" not in r:
            raise DataError(f"{where}: field '{f}.ranking': missing", "missing_field")
        if not isinstance(r.get("persona"), dict):
            raise DataError(f"{where}: field '{f}.persona': expected the judge's persona object", "wrong_type")
        S.check_profile([r["ranking"]], k, where, offset=j)
        if "weight" in r and (isinstance(r["weight"], bool) or not isinstance(r["weight"], (int, float))
                              or not r["weight"] >= 0):
            raise DataError(f"{where}: field '{f}.weight': expected a number >= 0, got {r['weight']!r}", "wrong_type")
    return row


def _check_groups(row: dict, group_by: str) -> None:
    for j, r in enumerate(row["rankings"]):
        if group_by not in r["persona"]:
            raise DataError(f"{row['_where']}: field 'rankings[{j}].persona.{group_by}': missing (the group of "
                            f"the judge: other judges of this file have one; set --group-by to one of: "
                            f"{', '.join(k for k in r['persona'] if k != 'persona') or 'none'})", "missing_field")


def has_groups(rows: list[dict], group_by: str) -> bool:
    """Whether the judges of these rows carry the group field (any of them does)."""
    return any(group_by in r["persona"] for row in rows for r in row["rankings"])


def read_rankings(path: str, group_by: str = "group", bad_rows: str = "error") -> tuple[list[dict], Counter]:
    """(rows, skipped rows by reason) of a rankings JSONL file; each row gets ``_where`` (file: line).

    The judges' group (``persona.<group_by>``) is optional for the file as a whole: where no judge has one,
    the rows are kept (aggregation needs no group; :func:`has_groups` tells); where some judges have one,
    every judge must (a row with a judge without it is refused or skipped by ``bad_rows``)."""
    from fairhpc.sources import iter_source

    if bad_rows not in ("error", "skip"):
        raise ConfigError(f"--bad-rows: unknown policy {bad_rows!r}; allowed: error, skip")
    if not Path(path).is_file():
        raise DataError(f"{path}: no such rankings file")
    rows, skipped = [], Counter()
    for r in iter_source(path):
        try:
            if r.error is not None:
                raise r.error
            rows.append({**_check_row(r.value, r.where, group_by), "_where": r.where})
        except DataError as e:
            if bad_rows == "error" or e.reason is None:
                raise
            skipped[e.reason] += 1
    if has_groups(rows, group_by):
        kept = []
        for row in rows:
            try:
                _check_groups(row, group_by)
                kept.append(row)
            except DataError as e:
                if bad_rows == "error":
                    raise
                skipped[e.reason] += 1
        rows = kept
    if not rows:
        raise DataError(f"{path}: no usable rows" + (f" (skipped: {dict(sorted(skipped.items()))})" if skipped else ""))
    return rows, skipped


def voter_weights(row: dict, mode: str, group_by: str) -> np.ndarray:
    """uniform: 1 per judge; balanced: 1 / (judges of the same group in this row), so each group weighs
    the same; field: each ranking's ``weight`` (default 1)."""
    rk = row["rankings"]
    if mode == "uniform":
        return np.ones(len(rk))
    if mode == "field":
        return np.array([float(r.get("weight", 1.0)) for r in rk])
    if mode == "balanced":
        groups = Counter(str(r["persona"][group_by]) for r in rk)
        return np.array([1.0 / groups[str(r["persona"][group_by])] for r in rk])
    raise ConfigError(f"--voter-weights: unknown {mode!r}; allowed: {', '.join(VOTER_WEIGHTS)}")


# ------------------------------------------------------------------------------------------ helpers
def group_support(row: dict, winner: int, loser: int, group_by: str | None) -> dict[str, tuple[float, float]]:
    """{group: (share of its judges ranking winner above loser, mean position margin)}; {} without groups
    (``group_by`` None)."""
    acc: dict[str, list] = {}
    if group_by is None:
        return acc
    for r in row["rankings"]:
        pos = {c: i for i, c in enumerate(r["ranking"])}
        g = str(r["persona"][group_by])
        acc.setdefault(g, []).append((pos[winner] < pos[loser], pos[loser] - pos[winner]))
    return {g: (sum(a for a, _ in v) / len(v), sum(m for _, m in v) / len(v)) for g, v in sorted(acc.items())}


def pleased_most(support: dict[str, tuple[float, float]]) -> str:
    return min(support, key=lambda g: (-round(support[g][0], 9), -round(support[g][1], 9), g))


def agreement(ranking: list[int], other: list[int]) -> float:
    """Share of the candidate pairs that two rankings order the same way (1 - normalised Kendall distance)."""
    pos = {c: i for i, c in enumerate(ranking)}
    pairs = [(other[i], other[j]) for i in range(len(other)) for j in range(i + 1, len(other))]
    return sum(pos[a] < pos[b] for a, b in pairs) / len(pairs)


def _message(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# ------------------------------------------------------------------------------------------ aggregation
def aggregate_row(row: dict, method: str, group_by: str = "group", weights: str = "uniform",
                  judge: str | None = None, seed: int = 0, index: int = 0, kemeny_exact_max: int = S.KEMENY_EXACT_MAX,
                  kemeny_heuristic: bool = False) -> tuple[S.Result, list[tuple[int, int]] | None]:
    """(result, pairs or None) of one row.  ``pairs`` is set only by majority-pair (its own single pair)."""
    k = len(row["responses"])
    where = row.get("_where", f"row {index}")
    rankings = [r["ranking"] for r in row["rankings"]]
    w = voter_weights(row, weights, group_by)
    if method == "single-judge":
        S.check_k(method, k, f"{where}: ")
        chosen = 0
        if judge is not None:
            ids = [str(r["persona"].get("id")) for r in row["rankings"]]
            if judge not in ids:
                raise DataError(f"{where}: field 'rankings': judge {judge!r} did not rank this prompt (judges: "
                                f"{', '.join(ids)})", "missing_field")
            chosen = ids.index(judge)
        rk = list(rankings[chosen])
        return S.Result(rk, [float(k - 1 - rk.index(c)) for c in range(k)],
                        extra={"judge": row["rankings"][chosen]["persona"].get("id")}), None
    if method == "majority-pair":
        S.check_k(method, k, f"{where}: ")
        a, b = sorted(random.Random(f"{seed}|{row.get('id', index)}").sample(range(k), 2))
        n = S.pairwise(*S.check_profile(rankings, k, where, w), k)
        winner, loser = (a, b) if n[a, b] >= n[b, a] else (b, a)
        scores = [0.0] * k
        scores[a], scores[b] = float(n[a, b]), float(n[b, a])
        rest = [c for c in range(k) if c not in (a, b)]
        return S.Result([winner, loser, *rest], scores, index_ties=int(np.isclose(n[a, b], n[b, a])),
                        extra={"pair": [a, b]}), [(winner, loser)]
    scores = [r.get("scores") for r in row["rankings"]] if method in S.CARDINAL else None
    if scores is not None and any(s is None for s in scores):
        j = next(i for i, s in enumerate(scores) if s is None)
        raise DataError(f"{where}: field 'rankings[{j}].scores': missing; swf {method} is cardinal and needs "
                        f"every judge's scores (use an ordinal SWF such as borda)", "missing_field")
    return S.aggregate(method, rankings, k, w, scores, where=where, kemeny_exact_max=kemeny_exact_max,
                       kemeny_heuristic=kemeny_heuristic), None


def run_aggregate(rankings_path: str, method: str, out_dir: str, pair_policy: str = "best-worst",
                  group_by: str = "group", weights: str = "uniform", judge: str | None = None, seed: int = 0,
                  bad_rows: str = "error", kemeny_exact_max: int = S.KEMENY_EXACT_MAX,
                  kemeny_heuristic: bool = False) -> dict:
    """Aggregate every row of a rankings file with ``method`` and write OUT/{aggregated,pairs,sft}.jsonl and
    OUT/summary.json (atomically, all after every row succeeded).  Returns the summary."""
    from tqdm.auto import tqdm

    from fairhpc.io import atomic_write_json, atomic_write_text, check_output_dir

    if method not in METHODS:
        raise ConfigError(f"--swf: unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if pair_policy not in S.PAIR_POLICIES:
        raise ConfigError(f"--pairs: unknown pair policy {pair_policy!r}; allowed: {', '.join(S.PAIR_POLICIES)}")
    if weights not in VOTER_WEIGHTS:
        raise ConfigError(f"--voter-weights: unknown {weights!r}; allowed: {', '.join(VOTER_WEIGHTS)}")
    rows, skipped = read_rankings(rankings_path, group_by, bad_rows)
    grouped = has_groups(rows, group_by)
    if not grouped and weights == "balanced":
        raise ConfigError(f"--voter-weights balanced: weighs each judge by its group's size, but no judge of "
                          f"{rankings_path} has the group field persona.{group_by!r}; use uniform or field, or "
                          f"set --group-by to a field the personas have")
    out = check_output_dir(out_dir)
    groups = group_by if grouped else None
    n_read = len(rows) + sum(skipped.values())
    agg_rows, pair_rows, sft_rows = [], [], []
    cats, sft_cats, group_agree = Counter(), Counter(), {}
    exact, index_ties, judges = True, 0, 0
    for i, row in enumerate(tqdm(rows, desc=f"aggregate ({method})", unit="prompt", disable=len(rows) < 500)):
        try:
            res, own_pairs = aggregate_row(row, method, group_by, weights, judge, seed, i, kemeny_exact_max,
                                           kemeny_heuristic)
        except DataError as e:
            if bad_rows == "error" or e.reason is None:
                raise
            skipped[e.reason] += 1
            continue
        exact &= res.exact
        index_ties += res.index_ties
        judges += len(row["rankings"])
        rid = str(row.get("id", i))
        prompt = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
        per_group: dict[str, list] = {}
        for r in row["rankings"] if grouped else ():
            per_group.setdefault(str(r["persona"][group_by]), []).append(agreement(res.ranking, r["ranking"]))
        ga = {g: sum(v) / len(v) for g, v in sorted(per_group.items())}
        for g, v in per_group.items():
            group_agree.setdefault(g, []).extend(v)
        agg_rows.append({"id": rid, "prompt": prompt, "responses": row["responses"], "swf": method,
                         "ranking": res.ranking, "scores": res.scores, "exact": res.exact,
                         "index_ties": res.index_ties, "judges": len(row["rankings"]),
                         "group_agreement": ga, **({"extra": res.extra} if res.extra else {})})
        for w_, l_ in own_pairs if own_pairs is not None else S.pairs_from_ranking(res.ranking, pair_policy):
            sup = group_support(row, w_, l_, groups)
            cat = pleased_most(sup) if sup else None
            cats[cat or "none"] += 1
            pair_rows.append({"id": f"{rid}:{w_}>{l_}", "prompt": prompt, "chosen": _message(row["responses"][w_]),
                              "rejected": _message(row["responses"][l_]), "category": cat, "swf": method,
                              "winner": w_, "loser": l_, "support": {g: round(s, 4) for g, (s, _) in sup.items()}})
        top = res.ranking[0]
        mean_pos: dict[str, list] = {}
        for r in row["rankings"] if grouped else ():
            mean_pos.setdefault(str(r["persona"][group_by]), []).append(r["ranking"].index(top))
        cat = min(mean_pos, key=lambda g: (round(sum(mean_pos[g]) / len(mean_pos[g]), 9), g)) if grouped else None
        sft_cats[cat or "none"] += 1
        sft_rows.append({"id": rid, "prompt": prompt, "completion": _message(row["responses"][top]),
                         "category": cat, "swf": method})
    if not agg_rows:
        raise DataError(f"{rankings_path}: every row was skipped ({dict(sorted(skipped.items()))})")
    summary = {
        "swf": method, "rankings": str(rankings_path), "pair_policy": pair_policy if method != "majority-pair"
        else "one pair per prompt (majority-pair)", "group_by": group_by if grouped else None,
        "groups": "per persona." + group_by if grouped else
        f"none given (no judge has persona.{group_by}): no per-group agreement, pairs without a category",
        "voter_weights": weights,
        "judge": judge, "seed": seed, "rows_read": n_read,
        "kept": len(agg_rows), "skipped": dict(sorted(skipped.items())), "judge_rankings": judges,
        "pairs": len(pair_rows), "pairs_by_category": dict(sorted(cats.items())),
        "sft_by_category": dict(sorted(sft_cats.items())),
        "exact": exact, "exactness": ("exact" if exact else f"heuristic (kemeny local search above "
                                                            f"{kemeny_exact_max} candidates): not guaranteed optimal"),
        "index_ties": index_ties,
        "group_agreement": {g: sum(v) / len(v) for g, v in sorted(group_agree.items())},
    }
    summary["worst_group_agreement"] = min(summary["group_agreement"].values()) if grouped else None

    def jsonl(items) -> str:
        return "".join(json.dumps(x) + "\n" for x in items)

    atomic_write_text(out / "aggregated.jsonl", jsonl(agg_rows))
    atomic_write_text(out / "pairs.jsonl", jsonl(pair_rows))
    atomic_write_text(out / "sft.jsonl", jsonl(sft_rows))
    atomic_write_json(out / "summary.json", summary)
    return summary


# ------------------------------------------------------------------------------------------ ranking
def run_rank(candidates: list[dict], personas: list[dict], judge, out_path: str, where: str = "candidates") -> dict:
    """Every persona judge ranks every row's candidates; writes the rankings JSONL (atomically) and
    OUT.stats.json; returns the stats (judgements, parsed, refused by reason)."""
    from fairhpc.io import atomic_write_json, atomic_write_text

    judge.check_personas(personas, where)
    lines, refused, parsed, examples = [], Counter(), 0, []
    for row, results in judge.rank_rows(candidates, personas):
        rankings, unparsed = [], []
        for p, ranking, scores, text, reason in results:
            if ranking is None:
                refused[reason] += 1
                unparsed.append({"persona": p["id"], "reason": reason, "text": text})
                if len(examples) < 5:
                    examples.append({"row": row["id"], "persona": p["id"], "reason": reason, "text": (text or "")[:300]})
                continue
            parsed += 1
            entry = {"persona": p, "ranking": ranking}
            if scores is not None:
                entry["scores"] = scores
            if text is not None:
                entry["text"] = text
            rankings.append(entry)
        lines.append(json.dumps({"id": row["id"], "prompt": row["prompt"], "responses": row["responses"],
                                 "category": row.get("category"), "rankings": rankings, "unparsed": unparsed}))
    total = parsed + sum(refused.values())
    stats = {"judge": judge.name, "prompts": len(lines), "personas": len(personas), "judgements": total,
             "parsed": parsed, "refused": dict(sorted(refused.items())),
             "parse_rate": parsed / total if total else None,
             "prompts_without_rankings": sum('"rankings": []' in ln for ln in lines), "refused_examples": examples}
    atomic_write_text(out_path, "".join(ln + "\n" for ln in lines))
    atomic_write_json(str(out_path) + ".stats.json", stats)
    return stats

"""``fairhpc report``: compare runs — a table of modes, hyperparameters, accuracy and fairness, and plots.

Reads, for every run directory RUN:

    RUN/config.yaml                 resolved run config (task, objective, seed, lr)
    RUN/summary.json                training summary (steps, time, held-out accuracy and f)
    RUN/metrics.jsonl               training curve (train and eval lines), optional
    RUN/<eval>/summary.json         ``fairhpc eval-rm`` / ``eval-policy`` summary, optional
    RUN/<eval>/per_example.jsonl    its per-example rewards, optional (<eval> = --eval-subdir, "eval")

and writes to OUT:

    results.csv                     one row per run (so one per seed), every scalar (machine-readable)
    results_by_point.csv            one row per grid point: n seeds and, per metric, mean, sd and the 95%
                                    t-interval over the seeds
    differences.csv                 per point and metric: the difference to the baseline (bt / dpo) with its
                                    95% t-interval over seeds (paired by seed)
    results.md                      the tables (Markdown): means over seeds with intervals, the differences
                                    to the baseline in words, and one row per run
    accuracy_vs_fairness.png        accuracy against Jain's index across pairs and across categories, one
                                    point per grid point (mean over seeds, 95% intervals as error bars) with
                                    each mode's Pareto front (both maximised)
    differences.png                 the differences to the baseline with their intervals, per metric
    fairness_over_training.png      f (the training objective's fairness) along training, per point (mean
                                    and 95% band over seeds)
    reward_by_category.png          distribution of the reward margin per category, per point (seeds pooled)
    reward_vs_length.png            reward against response length (chosen and rejected), per point

A grid point is the set of runs whose resolved configs differ only in the seed (and in where and how often
they write, fairhpc/runstate.py NON_IDENTITY_KEYS); its name is the run name without ``_seed<N>``.  The
interval of a mean over n seeds is mean +- t(0.975, n - 1) * sd / sqrt(n) (Student t, sd with n - 1); a
point with one seed has none.  A point's difference to the baseline is taken seed by seed against the
baseline run of the same seed (the same initialisation and data order), then the same t-interval.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from fairhpc import layout
from fairhpc.errors import ReportError
from fairhpc.reporting.plots import mode_colors as _mode_colors
from fairhpc.reporting.plots import panel_grid as _grid
from fairhpc.reporting.plots import pyplot, save_png
from fairhpc.reporting.stats import LEVEL, t_interval
from fairhpc.reporting.stats import as_float as _num
from fairhpc.reporting.stats import welch as _welch

PLOTS = ("accuracy_vs_fairness.png", "fairness_over_training.png", "reward_by_category.png",
         "reward_vs_length.png")
# written beside the tables and PLOTS when the runs form grid points
SEED_TABLES = ("results_by_point.csv", "differences.csv")
SEED_PLOTS = ("differences.png",)
# (x column, axis label) of the panels of accuracy_vs_fairness.png
FAIRNESS_AXES = (("pairs_jain", "Jain's index across pairs (x = sigmoid(margin))"),
                 ("cat_jain", "Jain's index across categories (category means of x)"))
IDENTITY = ("run", "point", "task", "mode", "alpha", "tau", "gamma", "beta", "seed", "lr", "steps")
# Columns of results.md in order, when present: (column, header, format)
MD_COLUMNS = (
    ("accuracy", "acc %", "pct"), ("pairs_jain", "Jain pairs", "f4"), ("pairs_gini", "Gini pairs", "f4"),
    ("pairs_lan_f", "Lan f pairs", "f4"), ("cat_jain", "Jain cats", "f4"), ("cat_gini", "Gini cats", "f4"),
    ("gap_accuracy", "acc gap %", "pct"), ("gap_margin", "margin gap", "f3"),
    ("gap_margin_over_sd", "margin gap / sd", "f3"),
    ("w1_margin_max", "W1 margin", "f3"), ("length_spearman_chosen", "rho(len, r_w)", "f3"),
    ("length_spearman_rejected", "rho(len, r_l)", "f3"), ("length_spearman_margin", "rho(dlen, margin)", "f3"),
    ("quality_accuracy", "true-quality acc %", "pct"), ("oracle_accuracy", "oracle acc %", "pct"),
    # policies (eval-policy): judged by a reward model against the reference policy
    ("reward_mean", "RM reward", "f3"), ("win_rate", "win % vs ref", "pct"), ("length_mean", "length", "f1"),
    ("true_quality_mean", "true quality", "f3"),
    # benchmarks (eval-benchmark)
    ("rewardbench_sections_mean", "RewardBench %", "pct"), ("section[Chat]", "Chat %", "pct"),
    ("section[Chat Hard]", "Chat Hard %", "pct"), ("section[Safety]", "Safety %", "pct"),
    ("section[Reasoning]", "Reasoning %", "pct"), ("prior_sets", "Prior Sets %", "pct"),
    ("rewardbench_score", "RB score w/ prior %", "pct"),
    ("accuracy_helpful", "helpful %", "pct"), ("accuracy_harmless", "harmless %", "pct"),
    ("accuracy_avg", "HH avg %", "pct"),
    ("metric_score", "prefers stereotype %", "pct"), ("stereotype_score", "stereo %", "pct"),
    ("antistereotype_score", "antistereo %", "pct"), ("gap_mean", "r(more) - r(less)", "f3"),
    ("accuracy_ambig", "acc ambig %", "pct"), ("accuracy_disambig", "acc disambig %", "pct"),
    ("bias_score_ambig", "bias ambig", "f3"), ("bias_score_disambig", "bias disambig", "f3"),
    ("n_invalid", "invalid", "int"),
    ("train_eval_f", "f (train eval)", "f4"),
)




# ------------------------------------------------------------------------------------------ loading
def _read_json(path: Path, required: bool = True):
    if not path.exists():
        if required:
            raise ReportError(f"{path}: missing (is the run finished?)")
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None


def _read_jsonl(path: Path) -> list[dict]:
    from fairhpc.io import read_jsonl

    try:
        return read_jsonl(path)
    except ValueError as e:
        raise ReportError(str(e)) from None


def load_run(run_dir: str | os.PathLike, eval_subdir: str = layout.EVAL) -> dict:
    """{"name", "dir", "row": flat scalars, "metrics": training curve, "eval": eval summary or None,
    "per_example": eval rows}."""
    import yaml

    from fairhpc.yamlio import load_yaml

    run = layout.RunDir(run_dir)
    d = run.root
    if not d.is_dir():
        raise ReportError(f"{d}: not a run directory")
    cfg_path = run.config
    if not cfg_path.exists():
        raise ReportError(f"{cfg_path}: missing (is {d} a fairhpc run directory?)")
    try:
        cfg = load_yaml(cfg_path) or {}
    except yaml.YAMLError as e:
        raise ReportError(f"{cfg_path}: invalid YAML: {e}") from None
    summary = _read_json(run.summary)
    ev_dir = run.eval_dir(eval_subdir)
    ev = _read_json(ev_dir.summary, required=False)
    obj, train = cfg.get("objective", {}) or {}, cfg.get("train", {}) or {}
    row = {"run": d.name, "task": cfg.get("task", summary.get("task")), "mode": obj.get("mode", summary.get("mode")),
           "alpha": obj.get("alpha"), "tau": obj.get("tau"), "gamma": obj.get("gamma"), "beta": obj.get("beta"),
           "seed": cfg.get("seed"), "lr": train.get("lr"), "steps": summary.get("steps"),
           "train_time_s": summary.get("train_time_s")}
    tev = summary.get("eval") or {}
    for k in ("accuracy", "f", "u"):
        if isinstance(tev.get(k), (int, float)):
            row[f"train_eval_{k}"] = tev[k]
    if ev:
        row["eval_kind"] = ev.get("kind")
        row.update({k: v for k, v in (ev.get("metrics") or {}).items() if _is_scalar(v)})
        gap, sd = _num(row.get("gap_margin")), _num(row.get("margin_std"))
        if math.isfinite(gap) and math.isfinite(sd) and sd > 0:  # the gap in units of the margins' spread
            row["gap_margin_over_sd"] = gap / sd
        for cat, vals in (ev.get("by_category") or {}).items():
            for key in ("accuracy", "reward_mean", "win_rate"):
                if key in vals and _is_scalar(vals[key]):
                    row[f"{key}[{cat}]"] = vals[key]
    return {"name": d.name, "dir": str(d), "row": row, "metrics": _read_jsonl(run.metrics), "config": cfg,
            "eval": ev, "per_example": _read_jsonl(ev_dir.per_example) if ev else []}


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (int, float, str, bool))


# -------------------------------------------------------------------------------------------- tables
def results_frame(runs: list[dict]):
    import pandas as pd

    rows = [r["row"] for r in runs]
    cols = list(IDENTITY) + sorted({k for r in rows for k in r} - set(IDENTITY))
    return pd.DataFrame(rows, columns=cols)


def _fmt(v, kind: str) -> str:
    x = _num(v)
    if not math.isfinite(x):
        return "—"
    return {"pct": f"{100 * x:.2f}", "f4": f"{x:.4f}", "f3": f"{x:.3f}", "f1": f"{x:.1f}", "int": f"{x:.0f}"}[kind]


# hyperparameters that a mode does not use are shown as "—" in results.md (results.csv keeps the values)
_USED_BY = {"alpha": ("fr",), "gamma": ("fc",), "tau": ("fr", "fc")}


def _ident_cell(r, col: str) -> str:
    v = r[col]
    if col in _USED_BY and r.get("mode") not in _USED_BY[col]:
        return "—"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _metric_columns(df, suffix: str = "") -> list[tuple[str, str, str]]:
    """(column, header, format) of the columns of results.md present in ``df`` (``column + suffix``)."""
    def present(c):
        return c + suffix in df.columns and df[c + suffix].notna().any()

    cat_cols = sorted(c[: len(c) - len(suffix)] for c in df.columns
                      if c.startswith("accuracy[") and c.endswith(suffix) and df[c].notna().any())
    metric_cols = [(c, h, k) for c, h, k in MD_COLUMNS if present(c)]
    if present("lan_tau") and df["lan_tau" + suffix].dropna().eq(-1.0).all():  # f_{-1} is Jain's index
        metric_cols = [m for m in metric_cols if m[0] != "pairs_lan_f"]
    head = [m for m in metric_cols if m[0] == "accuracy"]
    if present("train_eval_accuracy") and not (head and df["accuracy" + suffix].notna().all()):
        # a run without an evaluation directory: its trainer's held-out accuracy
        head.append(("train_eval_accuracy", "acc % (train eval)", "pct"))
    head += [(c, f"acc {c[9:-1]} %", "pct") for c in cat_cols]
    return head + [m for m in metric_cols if m[0] != "accuracy"]


def markdown_table(df) -> str:
    """The comparison table: identity columns, per-category accuracy and the present metrics."""
    metric_cols = _metric_columns(df)
    ident = [c for c in ("run", "mode", "alpha", "tau", "gamma", "seed") if c in df.columns]
    header = ident + [h for _, h, _ in metric_cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for _, r in df.iterrows():
        cells = [_ident_cell(r, c) for c in ident]
        cells += [_fmt(r[c], k) for c, _, k in metric_cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- seeds and grid points
_SEED_SUFFIX = re.compile(r"_seed\d+")
# run-config keys that are not part of a grid point; the objective keys below separate a point from its
# baseline (the utility mode of the task with the same other settings)
_NOT_POINT = ("seed", "output_dir")
_OBJECTIVE_KEYS = ("objective.mode", "objective.alpha", "objective.tau", "objective.gamma")
# the questions of a fairness study: (column, what it is, format, which direction is better: -1 lower, 1 higher)
EFFECTS = (
    ("accuracy", "accuracy", "pct", 1),
    ("gap_margin", "category margin gap", "f3", -1),
    ("gap_margin_over_sd", "category margin gap / margin sd (scale-free)", "f3", -1),
    ("gap_accuracy", "per-category accuracy gap", "pct", -1),
    ("length_spearman_margin", "length bias rho(length difference, margin)", "f3", -1),
    ("length_longer_preferred", "share of pairs where the longer response is preferred", "pct", -1),
    ("cat_jain", "Jain's index across categories", "f4", 1),
    ("pairs_jain", "Jain's index across pairs", "f4", 1),
    ("win_rate", "win rate against the reference", "pct", 1),
    ("reward_mean", "RM reward of the policy", "f3", 1),
)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _describe(row: dict) -> str:
    mode = str(row.get("mode"))
    parts = [f"{k}{_num(row.get(k)):g}" for k in ("alpha", "gamma", "tau")
             if mode in _USED_BY[k] and math.isfinite(_num(row.get(k)))]
    return "_".join([mode, *parts])


def _point_order(p: dict):
    from fairhpc.registry import ALL_MODES

    mode = str(p["mode"])
    rank = ALL_MODES.index(mode) if mode in ALL_MODES else len(ALL_MODES)
    nums = tuple(_num(p["row"].get(k)) if mode in _USED_BY[k] else -math.inf for k in ("alpha", "gamma", "tau"))
    return (rank, tuple(-math.inf if math.isnan(x) else x for x in nums), p["name"])


def group_points(runs: list[dict]) -> list[dict]:
    """The grid points of ``runs``: runs whose resolved configs differ only in the seed (and in keys that do not
    change results) and whose names differ only in ``_seed<N>``.  Each point: name, mode, task, row (of its first run), runs (indices), seeds, and
    ``base`` (its config without the objective keys, shared with its baseline)."""
    from fairhpc.runstate import NON_IDENTITY_KEYS

    skip = set(_NOT_POINT) | set(NON_IDENTITY_KEYS)
    groups: dict[str, dict] = {}
    for i, r in enumerate(runs):
        flat = {k: v for k, v in _flat(r.get("config")).items() if k not in skip}
        # runs named differently (apart from the seed) stay apart even when their configs agree
        key = json.dumps([_SEED_SUFFIX.sub("", r["name"]), flat], sort_keys=True, default=str)
        base = json.dumps({k: v for k, v in flat.items() if k not in _OBJECTIVE_KEYS}, sort_keys=True, default=str)
        groups.setdefault(key, {"key": key, "base": base, "runs": []})["runs"].append(i)
    points = []
    for g in groups.values():
        rs = [runs[i] for i in g["runs"]]
        names = {_SEED_SUFFIX.sub("", r["name"]) for r in rs}
        name = names.pop() if len(names) == 1 else _describe(rs[0]["row"])
        points.append({**g, "name": name, "mode": rs[0]["row"].get("mode"), "task": rs[0]["row"].get("task"),
                       "row": rs[0]["row"], "seeds": [r["row"].get("seed") for r in rs]})
    counts: dict[str, int] = {}
    for p in points:
        counts[p["name"]] = counts.get(p["name"], 0) + 1
    for p in points:  # two points with one name (e.g. runs named alike in different folders): keep them apart
        if counts[p["name"]] > 1:
            p["name"] = f"{p['name']}#{runs[p['runs'][0]]['name']}"
    points.sort(key=_point_order)
    for p in points:
        for i in p["runs"]:
            runs[i]["row"]["point"] = p["name"]
    return points


def _numeric_columns(df) -> list[str]:
    import pandas as pd

    return [c for c in df.columns if c not in IDENTITY and pd.api.types.is_numeric_dtype(df[c])
            and not pd.api.types.is_bool_dtype(df[c])]


def points_frame(df, points: list[dict]):
    """results_by_point.csv: one row per point with n_seeds and, per metric, mean, sd, ci_low, ci_high."""
    import pandas as pd

    metrics = _numeric_columns(df)
    rows = []
    for p in points:
        sub = df.iloc[p["runs"]]
        row = p["row"]
        rec = {"point": p["name"], "task": p["task"], "mode": p["mode"],
               **{k: row.get(k) for k in ("alpha", "tau", "gamma", "beta", "lr")},
               "n_seeds": len(p["runs"]), "seeds": " ".join(str(s) for s in p["seeds"])}
        for c in metrics:
            ci = t_interval(sub[c])
            rec.update({f"{c}_mean": ci["mean"], f"{c}_sd": ci["sd"], f"{c}_ci_low": ci["lo"],
                        f"{c}_ci_high": ci["hi"]})
            if 0 < ci["n"] < len(p["runs"]):  # some seeds lack this metric
                rec[f"{c}_n"] = ci["n"]
        rows.append(rec)
    return pd.DataFrame(rows)


def verdict(ci: dict) -> str:
    """"lower" / "higher" when the interval excludes 0, else "no detectable change" (or "no interval")."""
    if not (math.isfinite(ci["lo"]) and math.isfinite(ci["hi"])):
        return "no interval"
    return "lower" if ci["hi"] < 0 else "higher" if ci["lo"] > 0 else "no detectable change"


def differences(df, points: list[dict]) -> list[dict]:
    """Per non-baseline point and EFFECTS metric: point - baseline, paired by seed, with its t-interval.  The
    baseline is the utility-mode point (bt / dpo) whose config equals the point's apart from the objective."""
    from fairhpc.registry import UTILITY_MODES

    baselines = {p["base"]: p for p in points if p["mode"] in UTILITY_MODES}
    present = [e for e in EFFECTS if e[0] in df.columns and df[e[0]].notna().any()]
    out = []
    for p in points:
        b = baselines.get(p["base"])
        if b is None or b is p:
            continue
        for col, what, kind, better in present:
            vp = {df.iloc[i]["seed"]: _num(df.iloc[i][col]) for i in p["runs"]}
            vb = {df.iloc[i]["seed"]: _num(df.iloc[i][col]) for i in b["runs"]}
            common = [s for s in vp if s in vb and math.isfinite(vp[s]) and math.isfinite(vb[s])]
            if len(common) >= 2 or (common and min(len(vp), len(vb)) < 2):
                ci, pairing = t_interval([vp[s] - vb[s] for s in common]), "paired"
            else:
                ci, pairing = _welch(list(vp.values()), list(vb.values())), "unpaired"
            base_mean = t_interval(vb.values())["mean"]
            out.append({"point": p["name"], "mode": p["mode"], **{k: p["row"].get(k) for k in ("alpha", "tau", "gamma")},
                        "baseline": b["name"], "metric": col, "n": ci["n"], "pairing": pairing,
                        "diff_mean": ci["mean"], "diff_sd": ci["sd"], "ci_low": ci["lo"], "ci_high": ci["hi"],
                        "point_mean": t_interval(vp.values())["mean"], "baseline_mean": base_mean,
                        "relative": ci["mean"] / abs(base_mean) if base_mean else math.nan,
                        "verdict": verdict(ci), "better": "lower" if better < 0 else "higher",
                        "what": what, "format": kind})
    return out


def _mean_cell(ci: dict, kind: str) -> str:
    if not math.isfinite(ci["mean"]):
        return "—"
    if not math.isfinite(ci["half"]):
        return _fmt(ci["mean"], kind)
    return f"{_fmt(ci['mean'], kind)} ± {_fmt(ci['half'], kind)}"


def _diff_cell(d: dict) -> str:
    kind = d["format"]
    if not math.isfinite(d["diff_mean"]):
        return "—"
    sign = "+" if d["diff_mean"] >= 0 else ""
    cell = f"{sign}{_fmt(d['diff_mean'], kind)}"
    if math.isfinite(d["ci_low"]):
        cell += f" [{_fmt(d['ci_low'], kind)}, {_fmt(d['ci_high'], kind)}]"
        cell += {"lower": " ↓", "higher": " ↑"}.get(d["verdict"], "")
    return cell


def means_table(df, points: list[dict]) -> str:
    """Markdown: one row per point, each metric as mean ± half-width of its 95% t-interval over the seeds."""
    metric_cols = _metric_columns(df)
    header = ["point", "mode", "alpha", "tau", "gamma", "n"] + [h for _, h, _ in metric_cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for p in points:
        sub = df.iloc[p["runs"]]
        cells = [p["name"], str(p["mode"])] + [_ident_cell(p["row"], c) for c in ("alpha", "tau", "gamma")]
        cells.append(str(len(p["runs"])))
        cells += [_mean_cell(t_interval(sub[c]), k) for c, _, k in metric_cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def differences_table(diffs: list[dict]) -> str:
    metrics = list(dict.fromkeys(d["metric"] for d in diffs))
    heads = {e[0]: e[1] for e in EFFECTS}
    header = ["point", "vs", "n"] + [f"Δ {heads[m]}" + (" (points)" if _kind(m) == "pct" else "") for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    by_point: dict[str, dict] = {}
    for d in diffs:
        by_point.setdefault(d["point"], {})[d["metric"]] = d
    for point, ds in by_point.items():
        first = next(iter(ds.values()))
        n = f"{first['n']}" + ("" if first["pairing"] == "paired" else " (unpaired)")
        lines.append("| " + " | ".join([point, first["baseline"], n] + [_diff_cell(ds[m]) if m in ds else "—"
                                                                       for m in metrics]) + " |")
    return "\n".join(lines) + "\n"


def _kind(metric: str) -> str:
    return next((e[2] for e in EFFECTS if e[0] == metric), "f3")


def _value(x: float, kind: str, signed: bool = False) -> str:
    s = _fmt(x, kind)
    if signed and math.isfinite(x) and x >= 0:
        s = "+" + s
    return s + (" points" if kind == "pct" else "")


def findings(diffs: list[dict]) -> list[str]:
    """Sentences per mode: at how many points each EFFECTS metric is lower / higher than the baseline (95%
    interval excluding 0), the largest change with its interval, and the accuracy at those points."""
    lines = []
    modes = list(dict.fromkeys(d["mode"] for d in diffs))
    for mode in modes:
        md = [d for d in diffs if d["mode"] == mode]
        pts = list(dict.fromkeys(d["point"] for d in md))
        base = md[0]["baseline"]
        lines.append(f"**{mode}** ({len(pts)} point(s), against {base}):")
        acc = {d["point"]: d for d in md if d["metric"] == "accuracy"}
        for metric in dict.fromkeys(d["metric"] for d in md):
            ds = [d for d in md if d["metric"] == metric]
            kind, what = ds[0]["format"], ds[0]["what"]
            counts = {v: [d for d in ds if d["verdict"] == v] for v in ("lower", "higher", "no detectable change",
                                                                       "no interval")}
            parts = [f"{k} at {len(v)}" for k, v in counts.items() if v or k != "no interval"]
            text = f"- {what}: " + ", ".join(parts) + f" of {len(ds)} point(s)"
            if metric != "accuracy":
                good = counts["lower" if ds[0]["better"] == "lower" else "higher"]
                if good:
                    best = max(good, key=lambda d: abs(d["diff_mean"]))
                    text += (f"; largest {'reduction' if best['better'] == 'lower' else 'gain'} at "
                             f"{best['point']}: {_value(best['diff_mean'], kind, True)} "
                             f"[{_fmt(best['ci_low'], kind)}, {_fmt(best['ci_high'], kind)}]")
                    if math.isfinite(best["relative"]) and kind != "pct":
                        text += f" ({100 * best['relative']:+.0f}% of {best['baseline']}'s "
                        text += f"{_fmt(best['baseline_mean'], kind)})"
                    a = acc.get(best["point"])
                    if a is not None:
                        text += (f", accuracy {_value(a['diff_mean'], 'pct', True)} "
                                 f"[{_fmt(a['ci_low'], 'pct')}, {_fmt(a['ci_high'], 'pct')}]")
            else:
                finite = [d for d in ds if math.isfinite(d["diff_mean"])]
                if finite:
                    lo = min(finite, key=lambda d: d["diff_mean"])
                    hi = max(finite, key=lambda d: d["diff_mean"])
                    text += (f"; change from {_value(lo['diff_mean'], 'pct', True)} ({lo['point']}) to "
                             f"{_value(hi['diff_mean'], 'pct', True)} ({hi['point']})")
            lines.append(text)
        lines.append("")
    return lines


def _markdown(df, runs: list[dict], points: list[dict] | None = None, diffs: list[dict] | None = None) -> str:
    points = points or []
    diffs = diffs or []
    seeded = any(len(p["runs"]) > 1 for p in points)
    out = ["# fairhpc results", "",
           (f"{len(runs)} run(s) at {len(points) or len(runs)} grid point(s). Accuracy: share of held-out pairs "
            "with r(chosen) > r(rejected) (ties count as wrong unless the evaluation chose otherwise). Jain / "
            "Gini / Lan f are computed on the allocation x = sigmoid(r(chosen) - r(rejected)) across pairs, "
            "and on the category means of x across categories (Jain and Lan: 1 = equal; Gini: 0 = equal). "
            "Gaps are max - min over categories; W1 is the largest 1-Wasserstein distance between two "
            "categories' margin distributions; rho is Spearman's correlation of reward with response length "
            "(rho(dlen, margin): of the margin with the length difference chosen - rejected, the length bias); "
            "margin gap / sd is the category margin gap in units of the margins' standard deviation, which "
            "does not shrink when an objective only scales the rewards down. "
            "For a DPO policy the reward is its implicit reward beta * log(pi / pi_ref); hyperparameters a "
            "mode does not use are shown as —."), ""]
    if seeded:
        out += ["## Means over seeds", "",
                (f"Each cell: mean ± half-width of the {100 * LEVEL:.0f}% t-interval over the n seeds of the point "
                 "(Student t with n - 1 degrees of freedom, sd with n - 1); a point with one seed shows its "
                 "value alone. Every number per point: `results_by_point.csv`."), "",
                means_table(df, points), ""]
    if diffs:
        base = ", ".join(dict.fromkeys(d["baseline"] for d in diffs))
        paired = all(d["pairing"] == "paired" for d in diffs)
        out += [f"## Differences to the baseline ({base})", "",
                ("Each cell: mean over seeds of (point - baseline) "
                 + ("for the same seed (same initialisation and data order)" if paired else
                    "(paired by seed where both have the seed, else Welch's unpaired interval)")
                 + f", with its {100 * LEVEL:.0f}% t-interval [low, high]; ↓ / ↑ mark an interval below / above 0, "
                 "i.e. a change the seeds resolve. Accuracy and gaps in percentage points. Intervals are per "
                 "point and metric, not adjusted for the number of points compared. Every number: "
                 "`differences.csv`; plot: `differences.png`."), "",
                differences_table(diffs), "", "### Findings", "", *findings(diffs)]
    out += ["## Runs" + (" (one row per seed)" if seeded else ""), "", markdown_table(df), "",
            ("Plots: `accuracy_vs_fairness.png`, `fairness_over_training.png`, `reward_by_category.png`, "
             "`reward_vs_length.png`. Every column: `results.csv`."), ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- plots
def _single_points(df) -> list[dict]:
    """Every run its own point (a frame without grid points)."""
    return [{"name": str(r.get("run")), "mode": r.get("mode"), "runs": [i], "row": dict(r)}
            for i, (_, r) in enumerate(df.iterrows())]


def _accuracy_column(df) -> str | None:
    if "accuracy" in df and df["accuracy"].notna().any():
        return "accuracy"
    return "train_eval_accuracy" if "train_eval_accuracy" in df else None


def plot_accuracy_vs_fairness(df, path: Path, points: list[dict] | None = None) -> dict:
    """One marker per point at the mean over its seeds, with the 95% t-intervals of both coordinates as error
    bars (points with several seeds), each seed as a faint dot, and each mode's Pareto front over the means.
    Returns {panel column: {point: (x mean, x half-width, accuracy mean, accuracy half-width)}}."""
    from matplotlib.ticker import MaxNLocator

    from fairhpc.evaluation.metrics import pareto_front

    points = points or _single_points(df)
    seeded = any(len(p["runs"]) > 1 for p in points)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(FAIRNESS_AXES), figsize=(6 * len(FAIRNESS_AXES), 4.5), squeeze=False)
    modes = [str(p["mode"]) for p in points]
    colors = _mode_colors(set(modes))
    acc_col = _accuracy_column(df)
    drawn: dict = {}
    for ax, (col, label) in zip(axes[0], FAIRNESS_AXES):
        drawn[col] = {}
        xs, xh, ys, yh = [], [], [], []
        for p in points:
            sub = df.iloc[p["runs"]]
            cx = t_interval(sub[col]) if col in df else t_interval([])
            cy = t_interval(sub[acc_col]) if acc_col else t_interval([])
            xs.append(cx["mean"])
            xh.append(cx["half"])
            ys.append(cy["mean"])
            yh.append(cy["half"])
            drawn[col][p["name"]] = (cx["mean"], cx["half"], cy["mean"], cy["half"])
        front_all = pareto_front(xs, ys)
        if len(front_all) > 1:  # the front over every point: which modes reach it
            ax.plot([xs[i] for i in front_all], [ys[i] for i in front_all], color="grey", lw=3, alpha=0.25,
                    label="front, all " + ("points" if seeded else "runs"))
        for mode in colors:
            idx = [i for i, m in enumerate(modes) if m == mode]
            if seeded and col in df and acc_col:  # the seeds behind each mean
                runs = [j for i in idx for j in points[i]["runs"]]
                ax.scatter([_num(df.iloc[j][col]) for j in runs], [_num(df.iloc[j][acc_col]) for j in runs],
                           color=colors[mode], s=8, alpha=0.25, lw=0)
            mx, my = [xs[i] for i in idx], [ys[i] for i in idx]
            if seeded:
                ax.errorbar(mx, my, xerr=[0 if math.isnan(xh[i]) else xh[i] for i in idx],
                            yerr=[0 if math.isnan(yh[i]) else yh[i] for i in idx], fmt="o", ms=5,
                            color=colors[mode], ecolor=colors[mode], elinewidth=1, capsize=2, alpha=0.9,
                            label=mode)
            else:
                ax.scatter(mx, my, color=colors[mode], label=mode, s=40, alpha=0.85)
            front = [idx[j] for j in pareto_front(mx, my)]
            if len(front) > 1:
                ax.plot([xs[i] for i in front], [ys[i] for i in front], color=colors[mode], lw=1.2,
                        ls="--", alpha=0.8)
            elif front:
                ax.scatter([xs[front[0]]], [ys[front[0]]], facecolors="none", edgecolors=colors[mode], s=120)
        if not any(math.isfinite(x) for x in xs):
            ax.text(0.5, 0.5, f"no '{col}' in the runs' evaluations", ha="center", transform=ax.transAxes)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel(label)
        ax.set_ylabel("pairwise accuracy" + (" (mean over seeds)" if seeded else ""))
        ax.grid(alpha=0.3)
        ax.legend(title="mode (dashed: Pareto front)", fontsize=8)
    n = sorted({len(p["runs"]) for p in points})
    title = "Accuracy vs fairness of the reward allocation"
    if seeded:
        title += (f"\nmean of n = {'/'.join(map(str, n))} seeds per point, error bars: {100 * LEVEL:.0f}% "
                  "t-interval; dots: single seeds")
    fig.suptitle(title)
    save_png(fig, path)
    plt.close(fig)
    return drawn


def plot_differences(diffs: list[dict], path: Path) -> None:
    """Forest plot: per EFFECTS metric, each point's difference to the baseline with its 95% interval."""
    plt = pyplot()
    metrics = list(dict.fromkeys(d["metric"] for d in diffs))[:5]  # the first EFFECTS: the study's questions
    points = list(dict.fromkeys(d["point"] for d in diffs))
    width, height = 3.6 * max(1, len(metrics)), max(2.6, 1.2 + 0.3 * len(points))
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(width, height), squeeze=False, sharey=True)
    colors = _mode_colors({str(d["mode"]) for d in diffs})
    for ax, metric in zip(axes[0], metrics):
        ds = {d["point"]: d for d in diffs if d["metric"] == metric}
        scale = 100.0 if _kind(metric) == "pct" else 1.0
        for y, p in enumerate(points):
            d = ds.get(p)
            if d is None or not math.isfinite(d["diff_mean"]):
                continue
            lo = d["diff_mean"] - d["ci_low"] if math.isfinite(d["ci_low"]) else 0.0
            hi = d["ci_high"] - d["diff_mean"] if math.isfinite(d["ci_high"]) else 0.0
            ax.errorbar([scale * d["diff_mean"]], [y], xerr=[[scale * lo], [scale * hi]], fmt="o", ms=4,
                        color=colors[str(d["mode"])], capsize=2)
        ax.axvline(0.0, color="grey", lw=0.8)
        first = next(iter(ds.values()))
        ax.set_title(f"{first['what']}" + (" (points)" if scale != 1 else "") + f"\n{first['better']} is better",
                     fontsize=8)
        ax.grid(alpha=0.3, axis="x")
        ax.tick_params(labelsize=7)
    axes[0][0].set_yticks(range(len(points)), points, fontsize=7)
    axes[0][0].invert_yaxis()
    if not diffs:
        axes[0][0].text(0.5, 0.5, "no baseline point (bt / dpo) with the same settings", ha="center",
                        transform=axes[0][0].transAxes)
    base = ", ".join(dict.fromkeys(d["baseline"] for d in diffs))
    fig.suptitle(f"Difference to the baseline ({base}) per point: mean over seeds and {100 * LEVEL:.0f}% "
                 "t-interval", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


def _series(run: dict, split: str, key: str = "f") -> dict[int, float]:
    return {m["step"]: float(m[key]) for m in run["metrics"]
            if m.get("split") == split and isinstance(m.get(key), (int, float)) and "step" in m}


def plot_fairness_over_training(runs: list[dict], path: Path, points: list[dict] | None = None) -> None:
    """f along training per run, or, when points have several seeds, per point: the mean over its seeds at each
    step all of them logged, with the 95% t-interval as a band (held-out evaluations) or without (train)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    seeded = points is not None and any(len(p["runs"]) > 1 for p in points)
    groups = points if seeded else [{"name": r["name"], "mode": r["row"].get("mode"), "runs": [i]}
                                    for i, r in enumerate(runs)]
    colors = _mode_colors({str(g["mode"]) for g in groups})
    by_mode: dict[str, int] = {}
    drawn = False
    for g in groups:
        c = colors[str(g["mode"])]
        shade = by_mode[str(g["mode"])] = by_mode.get(str(g["mode"]), -1) + 1
        for split, style in (("train", {"lw": 1.0, "alpha": 0.6}), ("eval", {"marker": "o", "lw": 1.5, "ms": 3})):
            series = [_series(runs[i], split) for i in g["runs"]]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if not steps:
                continue
            cis = [t_interval([s[t] for s in series]) for t in steps]
            label = f"{g['name']} ({split})" if not seeded or split == "eval" else None
            ax.plot(steps, [ci["mean"] for ci in cis], color=c, label=label, ls=["-", "--", ":", "-."][shade % 4],
                    **style)
            if seeded and split == "eval" and len(g["runs"]) > 1:
                ax.fill_between(steps, [ci["lo"] for ci in cis], [ci["hi"] for ci in cis], color=c, alpha=0.08)
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no metrics.jsonl in the runs", ha="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("f (Lan, objective tau)")
    title = "Fairness of the allocation along training (train: per batch, eval: held-out)"
    if seeded:
        title += f"\nmean over seeds per point; band: {100 * LEVEL:.0f}% t-interval of the held-out f"
    ax.set_title(title, fontsize=9 if seeded else None)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=6 if seeded else 7, ncol=2 if len(groups) < 12 else 3)
    save_png(fig, path)
    plt.close(fig)


_PER_CATEGORY = (("margin", "category", "r(chosen) - r(rejected)"),
                 ("policy_reward", "category", "RM reward of the policy's output"),
                 ("gap", "bias_type", "r(more stereotypical) - r(less)"))


def _category_values(per_example: list[dict]) -> tuple[list[tuple[str, float]], str]:
    for key, cat_key, label in _PER_CATEGORY:
        rows = [(str(e.get(cat_key)), float(e[key])) for e in per_example if isinstance(e.get(key), (int, float))]
        if rows:
            return rows, label
    return [], ""


def _panels(runs: list[dict], points: list[dict] | None) -> list[dict]:
    """What each panel of a per-run plot shows: a run, or a point (its seeds pooled) when seeds repeat."""
    if points is not None and any(len(p["runs"]) > 1 for p in points):
        return [{"title": f"{p['name']} [{p['mode']}], {len(p['runs'])} seed(s)", "runs": [runs[i] for i in p["runs"]]}
                for p in points]
    return [{"title": f"{r['name']} [{r['row'].get('mode')}]", "runs": [r]} for r in runs]


def plot_reward_by_category(runs: list[dict], path: Path, points: list[dict] | None = None) -> None:
    plt = pyplot()
    panels = _panels(runs, points)
    fig, axes = _grid(plt, max(1, len(panels)))
    for ax, panel in zip(axes, panels):
        rows, label = [], ""
        for r in panel["runs"]:
            got, label = _category_values(r["per_example"])
            rows += got
        cats = sorted({c for c, _ in rows})
        if not rows:
            ax.text(0.5, 0.5, "no per-example evaluation", ha="center", transform=ax.transAxes)
        else:
            ax.boxplot([[v for c, v in rows if c == cat] for cat in cats], tick_labels=cats, showfliers=False)
            ax.axhline(0.0, color="grey", lw=0.8, ls=":")
            ax.set_ylabel(label)
        ax.set_title(panel["title"], fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    pooled = " (the seeds of a point pooled)" if any(len(p["runs"]) > 1 for p in panels) else ""
    fig.suptitle("Reward distribution per category" + pooled)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


def plot_reward_vs_length(runs: list[dict], path: Path, points: list[dict] | None = None,
                          max_dots: int = 1500) -> None:
    """Reward against length; with several seeds per point, at most ``max_dots`` dots per series (a fixed
    subsample) and Spearman's rho as mean ± 95% t-interval over the seeds."""
    import numpy as np

    from fairhpc.evaluation.metrics import spearman

    plt = pyplot()
    panels = _panels(runs, points)
    fig, axes = _grid(plt, max(1, len(panels)))
    rng = np.random.default_rng(0)
    for ax, panel in zip(axes, panels):
        drawn = False
        for label, rk, lk, marker in (("chosen", "reward_chosen", "length_chosen", "o"),
                                      ("rejected", "reward_rejected", "length_rejected", "x"),
                                      ("policy", "policy_reward", "policy_length", "o"),
                                      ("reference", "reference_reward", "reference_length", "x")):
            per_seed = [[(e[lk], e[rk]) for e in r["per_example"]
                         if isinstance(e.get(rk), (int, float)) and isinstance(e.get(lk), (int, float))]
                        for r in panel["runs"]]
            per_seed = [pts for pts in per_seed if pts]
            if not per_seed:
                continue
            rhos = [spearman(*zip(*pts)) for pts in per_seed]
            pts = [p for s in per_seed for p in s]
            if len(per_seed) > 1 and len(pts) > max_dots:
                pts = [pts[i] for i in sorted(rng.choice(len(pts), max_dots, replace=False))]
            xs, ys = zip(*pts)
            if len(per_seed) > 1:
                ci = t_interval(rhos)
                text = f"{label} (rho={ci['mean']:.2f} ± {ci['half']:.2f}, n={ci['n']})"
            else:
                rho = rhos[0]
                text = f"{label} (rho={rho:.2f})" if math.isfinite(rho) else f"{label} (rho undefined)"
            ax.scatter(xs, ys, s=8 if len(per_seed) == 1 else 4, alpha=0.5, marker=marker, label=text)
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "no per-example evaluation", ha="center", transform=ax.transAxes)
        ax.set_xlabel("response length (tokens)")
        ax.set_ylabel("reward")
        ax.set_title(panel["title"], fontsize=9)
        if drawn:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    several = any(len(p["runs"]) > 1 for p in panels)
    fig.suptitle("Reward vs response length (Spearman rho" + (f"; mean ± {100 * LEVEL:.0f}% t-interval over "
                                                              "seeds, dots subsampled)" if several else ")"))
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def make_report(run_dirs: list[str], out_dir: str, eval_subdir: str = layout.EVAL) -> dict:
    """Load every run (all are checked before anything is written) and write the tables and plots."""
    import pandas as pd

    from fairhpc.io import atomic_write_text

    if not run_dirs:
        raise ReportError("--runs: give at least one run directory")
    runs = [load_run(d, eval_subdir) for d in run_dirs]
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):  # two runs with the same directory name: use the full paths
        for r in runs:
            r["name"] = r["row"]["run"] = r["dir"]
    points = group_points(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = results_frame(runs)
    diffs = differences(df, points)
    atomic_write_text(out / "results.csv", df.to_csv(index=False))
    atomic_write_text(out / SEED_TABLES[0], points_frame(df, points).to_csv(index=False))
    cols = ["point", "mode", "alpha", "tau", "gamma", "baseline", "metric", "n", "pairing", "diff_mean", "diff_sd",
            "ci_low", "ci_high", "point_mean", "baseline_mean", "relative", "verdict", "better"]
    atomic_write_text(out / SEED_TABLES[1], pd.DataFrame(diffs, columns=cols).to_csv(index=False))
    atomic_write_text(out / "results.md", _markdown(df, runs, points, diffs))
    plot_accuracy_vs_fairness(df, out / PLOTS[0], points)
    plot_fairness_over_training(runs, out / PLOTS[1], points)
    plot_reward_by_category(runs, out / PLOTS[2], points)
    plot_reward_vs_length(runs, out / PLOTS[3], points)
    plot_differences(diffs, out / SEED_PLOTS[0])
    return {"runs": len(runs), "points": len(points), "out": str(out),
            "files": ["results.csv", *SEED_TABLES, "results.md", *PLOTS, *SEED_PLOTS]}


def _cmd_report(args) -> int:
    res = make_report(args.runs, args.out, args.eval_subdir)  # ReportError: exit 2 (fairhpc.cli)
    print(f"report of {res['runs']} run(s) written to {res['out']}: {', '.join(res['files'])}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("report", help="compare runs: results.csv/.md and accuracy-vs-fairness, training, "
                                      "per-category and length plots")
    p.add_argument("--runs", nargs="+", required=True, metavar="DIR", help="run directories (output_dir of "
                   "fairhpc train-rm / train-dpo)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the table and plots go")
    p.add_argument("--eval-subdir", default=layout.EVAL, metavar="NAME",
                   help=f"subdirectory of each run holding {layout.SUMMARY} and {layout.PER_EXAMPLE} of its "
                        "evaluation (default: %(default)s)")
    p.set_defaults(func=_cmd_report)

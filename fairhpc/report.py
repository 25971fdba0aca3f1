"""``fairhpc report``: compare runs — a table of modes, hyperparameters, accuracy and fairness, and plots.

Reads, for every run directory RUN:

    RUN/config.yaml                 resolved run config (task, objective, seed, lr)
    RUN/summary.json                training summary (steps, time, held-out accuracy and f)
    RUN/metrics.jsonl               training curve (train and eval lines), optional
    RUN/<eval>/summary.json         ``fairhpc eval-rm`` / ``eval-policy`` summary, optional
    RUN/<eval>/per_example.jsonl    its per-example rewards, optional (<eval> = --eval-subdir, "eval")

and writes to OUT:

    results.csv                     one row per run, every scalar (machine-readable)
    results.md                      the comparison table (Markdown)
    accuracy_vs_fairness.png        accuracy against Jain's index across pairs and across categories,
                                    with each mode's Pareto front (both maximised)
    fairness_over_training.png      f (the training objective's fairness) along training, per run
    reward_by_category.png          distribution of the reward margin per category, per run
    reward_vs_length.png            reward against response length (chosen and rejected), per run
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from fairhpc import layout
from fairhpc.errors import ReportError

PLOTS = ("accuracy_vs_fairness.png", "fairness_over_training.png", "reward_by_category.png",
         "reward_vs_length.png")
# (x column, axis label) of the panels of accuracy_vs_fairness.png
FAIRNESS_AXES = (("pairs_jain", "Jain's index across pairs (x = sigmoid(margin))"),
                 ("cat_jain", "Jain's index across categories (category means of x)"))
IDENTITY = ("run", "task", "mode", "alpha", "tau", "gamma", "beta", "seed", "lr", "steps")
# Columns of results.md in order, when present: (column, header, format)
MD_COLUMNS = (
    ("accuracy", "acc %", "pct"), ("pairs_jain", "Jain pairs", "f4"), ("pairs_gini", "Gini pairs", "f4"),
    ("pairs_lan_f", "Lan f pairs", "f4"), ("cat_jain", "Jain cats", "f4"), ("cat_gini", "Gini cats", "f4"),
    ("gap_accuracy", "acc gap %", "pct"), ("gap_margin", "margin gap", "f3"),
    ("w1_margin_max", "W1 margin", "f3"), ("length_spearman_chosen", "rho(len, r_w)", "f3"),
    ("length_spearman_rejected", "rho(len, r_l)", "f3"),
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

    run = layout.RunDir(run_dir)
    d = run.root
    if not d.is_dir():
        raise ReportError(f"{d}: not a run directory")
    cfg_path = run.config
    if not cfg_path.exists():
        raise ReportError(f"{cfg_path}: missing (is {d} a fairhpc run directory?)")
    try:
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
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
        for cat, vals in (ev.get("by_category") or {}).items():
            for key in ("accuracy", "reward_mean", "win_rate"):
                if key in vals and _is_scalar(vals[key]):
                    row[f"{key}[{cat}]"] = vals[key]
    return {"name": d.name, "dir": str(d), "row": row, "metrics": _read_jsonl(run.metrics),
            "eval": ev, "per_example": _read_jsonl(ev_dir.per_example) if ev else []}


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (int, float, str, bool))


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


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
_USED_BY = {"alpha": ("fr",), "gamma": ("fc",)}


def _ident_cell(r, col: str) -> str:
    v = r[col]
    if col in _USED_BY and r.get("mode") not in _USED_BY[col]:
        return "—"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:g}" if isinstance(v, float) else str(v)


def markdown_table(df) -> str:
    """The comparison table: identity columns, per-category accuracy and the present metrics."""
    cat_cols = sorted(c for c in df.columns if c.startswith("accuracy[") and df[c].notna().any())
    metric_cols = [(c, h, k) for c, h, k in MD_COLUMNS if c in df.columns and df[c].notna().any()]
    if "lan_tau" in df.columns and df["lan_tau"].dropna().eq(-1.0).all():  # f_{-1} is Jain's index
        metric_cols = [m for m in metric_cols if m[0] != "pairs_lan_f"]
    head = [m for m in metric_cols if m[0] == "accuracy"]
    if "train_eval_accuracy" in df.columns and not (head and df["accuracy"].notna().all()):
        # a run without an evaluation directory: its trainer's held-out accuracy
        head.append(("train_eval_accuracy", "acc % (train eval)", "pct"))
    head += [(c, f"acc {c[9:-1]} %", "pct") for c in cat_cols]
    metric_cols = head + [m for m in metric_cols if m[0] != "accuracy"]
    ident = [c for c in ("run", "mode", "alpha", "tau", "gamma", "seed") if c in df.columns]
    header = ident + [h for _, h, _ in metric_cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for _, r in df.iterrows():
        cells = [_ident_cell(r, c) for c in ident]
        cells += [_fmt(r[c], k) for c, _, k in metric_cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _markdown(df, runs: list[dict]) -> str:
    out = ["# fairhpc results", "",
           (f"{len(runs)} run(s). Accuracy: share of held-out pairs with r(chosen) > r(rejected) (ties count "
            "as wrong unless the evaluation chose otherwise). Jain / Gini / Lan f are computed on the "
            "allocation x = sigmoid(r(chosen) - r(rejected)) across pairs, and on the category means of x "
            "across categories (Jain and Lan: 1 = equal; Gini: 0 = equal). Gaps are max - min over "
            "categories; W1 is the largest 1-Wasserstein distance between two categories' margin "
            "distributions; rho is Spearman's correlation of reward with response length. For a DPO policy "
            "the reward is its implicit reward beta * log(pi / pi_ref); hyperparameters a mode does not use "
            "are shown as —."), "",
           markdown_table(df), "",
           ("Plots: `accuracy_vs_fairness.png`, `fairness_over_training.png`, `reward_by_category.png`, "
            "`reward_vs_length.png`. Every column: `results.csv`."), ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- plots
def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Write a figure as PNG atomically (temporary file + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def _mode_colors(modes) -> dict:
    from fairhpc.registry import ALL_MODES

    palette = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
    known = [m for m in ALL_MODES if m in modes] + sorted(set(modes) - set(ALL_MODES))
    return {m: palette[i % len(palette)] for i, m in enumerate(known)}


def plot_accuracy_vs_fairness(df, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    from fairhpc.evaluation.metrics import pareto_front

    plt = pyplot()
    fig, axes = plt.subplots(1, len(FAIRNESS_AXES), figsize=(6 * len(FAIRNESS_AXES), 4.5), squeeze=False)
    modes = [str(m) for m in df["mode"]] if "mode" in df else ["?"] * len(df)
    colors = _mode_colors(set(modes))
    acc = [_num(v) for v in (df["accuracy"] if "accuracy" in df else df.get("train_eval_accuracy", []))]
    for ax, (col, label) in zip(axes[0], FAIRNESS_AXES):
        xs = [_num(v) for v in df[col]] if col in df else [math.nan] * len(df)
        front_all = pareto_front(xs, acc)
        if len(front_all) > 1:  # the front over every run: which modes reach it
            ax.plot([xs[i] for i in front_all], [acc[i] for i in front_all], color="grey", lw=3, alpha=0.25,
                    label="front, all runs")
        for mode in colors:
            idx = [i for i, m in enumerate(modes) if m == mode]
            mx, my = [xs[i] for i in idx], [acc[i] for i in idx]
            ax.scatter(mx, my, color=colors[mode], label=mode, s=40, alpha=0.85)
            front = [idx[j] for j in pareto_front(mx, my)]
            if len(front) > 1:
                ax.plot([xs[i] for i in front], [acc[i] for i in front], color=colors[mode], lw=1.2,
                        ls="--", alpha=0.8)
            elif front:
                ax.scatter([xs[front[0]]], [acc[front[0]]], facecolors="none", edgecolors=colors[mode], s=120)
        if not any(math.isfinite(x) for x in xs):
            ax.text(0.5, 0.5, f"no '{col}' in the runs' evaluations", ha="center", transform=ax.transAxes)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel(label)
        ax.set_ylabel("pairwise accuracy")
        ax.grid(alpha=0.3)
        ax.legend(title="mode (dashed: Pareto front)", fontsize=8)
    fig.suptitle("Accuracy vs fairness of the reward allocation")
    save_png(fig, path)
    plt.close(fig)


def plot_fairness_over_training(runs: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = _mode_colors({str(r["row"].get("mode")) for r in runs})
    drawn = False
    for r in runs:
        c = colors[str(r["row"].get("mode"))]
        for split, style in (("train", {"lw": 1.0, "alpha": 0.6}), ("eval", {"marker": "o", "lw": 1.5})):
            pts = [(m["step"], m["f"]) for m in r["metrics"]
                   if m.get("split") == split and isinstance(m.get("f"), (int, float)) and "step" in m]
            if pts:
                ax.plot(*zip(*pts), color=c, label=f"{r['name']} ({split})", **style)
                drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no metrics.jsonl in the runs", ha="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("f (Lan, objective tau)")
    ax.set_title("Fairness of the allocation along training (train: per batch, eval: held-out)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, ncol=2)
    save_png(fig, path)
    plt.close(fig)


def _grid(plt, n: int, w: float = 4.0, h: float = 3.2):
    cols = min(3, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    flat = [a for row in axes for a in row]
    for a in flat[n:]:
        a.axis("off")
    return fig, flat


# per-example value plotted per category, by evaluation kind: (value key, category key, axis label)
_PER_CATEGORY = (("margin", "category", "r(chosen) - r(rejected)"),
                 ("policy_reward", "category", "RM reward of the policy's output"),
                 ("gap", "bias_type", "r(more stereotypical) - r(less)"))


def _category_values(per_example: list[dict]) -> tuple[list[tuple[str, float]], str]:
    for key, cat_key, label in _PER_CATEGORY:
        rows = [(str(e.get(cat_key)), float(e[key])) for e in per_example if isinstance(e.get(key), (int, float))]
        if rows:
            return rows, label
    return [], ""


def plot_reward_by_category(runs: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = _grid(plt, max(1, len(runs)))
    for ax, r in zip(axes, runs):
        rows, label = _category_values(r["per_example"])
        cats = sorted({c for c, _ in rows})
        if not rows:
            ax.text(0.5, 0.5, "no per-example evaluation", ha="center", transform=ax.transAxes)
        else:
            ax.boxplot([[v for c, v in rows if c == cat] for cat in cats], tick_labels=cats, showfliers=False)
            ax.axhline(0.0, color="grey", lw=0.8, ls=":")
            ax.set_ylabel(label)
        ax.set_title(f"{r['name']} [{r['row'].get('mode')}]", fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.suptitle("Reward distribution per category")
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


def plot_reward_vs_length(runs: list[dict], path: Path) -> None:
    from fairhpc.evaluation.metrics import spearman

    plt = pyplot()
    fig, axes = _grid(plt, max(1, len(runs)))
    for ax, r in zip(axes, runs):
        series = []
        for label, rk, lk, marker in (("chosen", "reward_chosen", "length_chosen", "o"),
                                      ("rejected", "reward_rejected", "length_rejected", "x"),
                                      ("policy", "policy_reward", "policy_length", "o"),
                                      ("reference", "reference_reward", "reference_length", "x")):
            pts = [(e[lk], e[rk]) for e in r["per_example"]
                   if isinstance(e.get(rk), (int, float)) and isinstance(e.get(lk), (int, float))]
            if pts:
                series.append((label, pts, marker))
        if not series:
            ax.text(0.5, 0.5, "no per-example evaluation", ha="center", transform=ax.transAxes)
        for label, pts, marker in series:
            xs, ys = zip(*pts)
            rho = spearman(xs, ys)
            ax.scatter(xs, ys, s=8, alpha=0.5, marker=marker,
                       label=f"{label} (rho={rho:.2f})" if math.isfinite(rho) else f"{label} (rho undefined)")
        ax.set_xlabel("response length (tokens)")
        ax.set_ylabel("reward")
        ax.set_title(f"{r['name']} [{r['row'].get('mode')}]", fontsize=9)
        if series:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Reward vs response length (Spearman rho)")
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def make_report(run_dirs: list[str], out_dir: str, eval_subdir: str = layout.EVAL) -> dict:
    """Load every run (all are checked before anything is written) and write the table and plots."""
    from fairhpc.io import atomic_write_text

    if not run_dirs:
        raise ReportError("--runs: give at least one run directory")
    runs = [load_run(d, eval_subdir) for d in run_dirs]
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):  # two runs with the same directory name: use the full paths
        for r in runs:
            r["name"] = r["row"]["run"] = r["dir"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = results_frame(runs)
    atomic_write_text(out / "results.csv", df.to_csv(index=False))
    atomic_write_text(out / "results.md", _markdown(df, runs))
    plot_accuracy_vs_fairness(df, out / PLOTS[0])
    plot_fairness_over_training(runs, out / PLOTS[1])
    plot_reward_by_category(runs, out / PLOTS[2])
    plot_reward_vs_length(runs, out / PLOTS[3])
    return {"runs": len(runs), "out": str(out), "files": ["results.csv", "results.md", *PLOTS]}


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

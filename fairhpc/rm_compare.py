"""``fairhpc report-rm-kinds``: the reward-model kinds side by side on the same held-out data.

The four kinds (docs/reward_models.md): ``scalar`` (Bradley-Terry reward model, ``train-rm``), ``moe``
(the gated multi-head head, ``train-rm model.head=moe``), ``pair_pm`` (the pairwise preference model,
``train-pair-pm``) and ``armo`` (ArmoRM, ``train-armo``), each trained with a mode (bt / fr / fc).  Every
one is scored by ``fairhpc eval-rm`` into RUN/eval/summary.json; this module reads, for every run
directory RUN:

    RUN/eval/summary.json           required: held-out accuracy, per-category accuracy, the fairness indices
                                    and length bias of eval-rm, and what a kind adds (armo: the mean gate
                                    weight per category; pair_pm: position consistency)
    RUN/final/fairhpc_model.json    the model's kind (absent for a scalar reward model); else the kind
                                    eval-rm recorded (summary "model_kind"), else the run config's task / head
    RUN/config.yaml                 task, objective mode and hyperparameters, seed (else RUN/summary.json)

and writes to OUT, each file atomically:

    comparison.csv                  one row per run: identity, every scalar metric of the summary, accuracy
                                    per category, Lan f per tau, the kind's extras (armo:
                                    gate[cat][objective])
    comparison.md                   the tables: accuracy (with its standard error) and per category, fairness
                                    indices, length bias, ArmoRM's gate weights per category, pair-pm position
    comparison.png                  per-category accuracy bars per run (colour = kind, hatching = mode), the
                                    fairness and length indices, and ArmoRM's gate weights per category

The workflow (rules/rm_compare.smk) runs it per (model, dataset) of the grids under ``rm_comparison.grids``;
:func:`plan_studies` finds those runs.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from fairhpc import layout
from fairhpc.errors import ReportError
from fairhpc.reporting.tables import markdown_table, number_cell

FILES = ("comparison.csv", "comparison.md", "comparison.png")
KINDS = ("scalar", "moe", "pair_pm", "armo")  # the order of the rows and of the legend
KIND_LABELS = {"scalar": "scalar RM", "moe": "MoE head", "pair_pm": "pair-pm", "armo": "ArmoRM"}
KIND_COLORS = {"scalar": "#4C72B0", "moe": "#55A868", "pair_pm": "#DD8452", "armo": "#8172B3"}
MODE_HATCH = {"bt": "", "fr": "//", "fc": ".."}
MODE_ORDER = ("bt", "fr", "fc")
IDENTITY = ("label", "kind", "task", "mode", "alpha", "tau", "gamma", "seed", "head", "run", "dir",
            "kind_source", "data", "n")
# (column, header, format) of the tables of comparison.md, when present
ACCURACY_COLUMNS = (("accuracy", "accuracy", "f3"), ("accuracy_se", "± se", "f3"),
                    ("quality_accuracy", "true-quality acc", "f3"), ("margin_mean", "margin mean", "f3"),
                    ("margin_std", "margin sd", "f3"))
FAIRNESS_COLUMNS = (
    ("cat_jain", "Jain cats", "f4"), ("pairs_jain", "Jain pairs", "f4"), ("cat_gini", "Gini cats", "f4"),
    ("pairs_gini", "Gini pairs", "f4"), ("gap_accuracy", "max-min acc", "f3"),
    ("gap_margin", "max-min margin", "f3"),
    ("gap_margin_over_sd", "max-min margin / sd", "f3"), ("gap_resource", "max-min x", "f3"),
    ("w1_margin_max", "W1 margin max", "f3"),
)
LENGTH_COLUMNS = (
    ("length_spearman_margin", "ρ(Δlength, margin)", "f3"),
    ("length_spearman_chosen", "ρ(length, r_chosen)", "f3"),
    ("length_spearman_rejected", "ρ(length, r_rejected)", "f3"),
    ("length_spearman_all", "ρ(length, r)", "f3"),
    ("length_longer_preferred", "longer preferred", "f3"), ("length_chosen_mean", "chosen length", "f1"),
    ("length_rejected_mean", "rejected length", "f1"),
)
PAIRWISE_KEYS = ("position_consistency", "position_bias_a", "p_chosen_mean")


# ------------------------------------------------------------------------------------------ loading
def _read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    except OSError as e:
        raise ReportError(f"{path}: cannot read {what} ({e.strerror})") from None
    if not isinstance(obj, dict):
        raise ReportError(f"{path}: {what} is not a JSON object")
    return obj


def _kind_of_config(cfg: dict) -> str | None:
    task = cfg.get("task")
    if task in ("pair_pm", "armo"):
        return task
    if task == "rm":
        return "moe" if (cfg.get("model") or {}).get("head") == "moe" else "scalar"
    return None


def _scalar(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def data_oracle(path) -> dict | None:
    """The Bayes ceiling of label accuracy of a local JSONL of synthetic pairs that carry their label
    probability ``p_chosen`` (fairhpc/synthetic.py): mean of max(p, 1 - p), overall ("all") and per
    category; None for any other data (a hub name, a row without p_chosen)."""
    f = Path(str(path))
    if not f.is_file() or f.suffix != ".jsonl":
        return None
    from fairhpc.io import read_jsonl

    try:
        rows = read_jsonl(f)
    except (OSError, ValueError):
        return None
    if not rows or not all(isinstance(r, dict) and _scalar(r.get("p_chosen")) for r in rows):
        return None
    groups: dict = {"all": []}
    for r in rows:
        v = max(float(r["p_chosen"]), 1.0 - float(r["p_chosen"]))
        groups["all"].append(v)
        if isinstance(r.get("category"), str):
            groups.setdefault(r["category"], []).append(v)
    return {k: sum(v) / len(v) for k, v in groups.items()}


def load_rm_run(run_dir) -> dict:
    """One run: {"row": flat values (identity and metrics), "eval": the eval summary, "gate": armo's mean gate
    weight per category or None}.  Raises ReportError naming the missing or bad file."""
    import yaml

    from fairhpc.rewards.base import MARKER, read_marker
    from fairhpc.yamlio import load_yaml

    run = layout.RunDir(run_dir)
    d = run.root
    if not d.is_dir():
        raise ReportError(f"--runs {run_dir}: not a directory")
    ev_path = run.eval_dir(layout.EVAL).summary
    if not ev_path.is_file():
        raise ReportError(f"{ev_path}: missing; every run of the comparison needs its held-out evaluation "
                          f"(fairhpc eval-rm --model {d / layout.FINAL} --data EVAL --out {d / layout.EVAL})")
    ev = _read_json(ev_path, "the evaluation summary")
    metrics = ev.get("metrics")
    if ev.get("kind") != "reward_model" or not isinstance(metrics, dict) \
            or not _scalar(metrics.get("accuracy")):
        raise ReportError(f"{ev_path}: not a reward-model evaluation of fairhpc eval-rm (kind "
                          f"{ev.get('kind')!r}, no metrics.accuracy)")
    cfg = {}
    if run.config.is_file():
        try:
            cfg = load_yaml(run.config) or {}
        except yaml.YAMLError as e:
            raise ReportError(f"{run.config}: invalid YAML: {e}") from None
    train = _read_json(run.summary, "the training summary") if run.summary.is_file() else {}
    if not cfg and not train:
        raise ReportError(f"{d}: neither {layout.CONFIG} nor {layout.SUMMARY}: not a fairhpc run directory")
    obj = cfg.get("objective") or {}
    marker = read_marker(d / layout.FINAL)  # an unreadable marker: ModelPathError naming the file
    by_config = _kind_of_config(cfg or {"task": train.get("task"), "model": {"head": train.get("head")}})
    if marker is not None:
        kind, source = marker["kind"], f"{layout.FINAL}/{MARKER}"
    elif ev.get("model_kind") in KINDS:
        kind, source = ev["model_kind"], "eval summary"
    elif by_config:
        kind, source = by_config, layout.CONFIG if cfg else layout.SUMMARY
    else:
        task = cfg.get("task", train.get("task"))
        raise ReportError(f"{d}: cannot tell the reward-model kind: no {layout.FINAL}/{MARKER}, no "
                          f"model_kind in {ev_path}, and task {task!r} is not a reward-model task")
    mode = obj.get("mode", train.get("mode"))
    row = {
        "kind": kind, "task": cfg.get("task", train.get("task")), "mode": mode,
        "alpha": obj.get("alpha", train.get("alpha")) if mode == "fr" else None,
        "tau": obj.get("tau", train.get("tau")) if mode in ("fr", "fc") else None,
        "gamma": obj.get("gamma", train.get("gamma")) if mode == "fc" else None,
        "seed": cfg.get("seed", train.get("seed")),
        "head": (cfg.get("model") or {}).get("head", train.get("head")),
        "run": d.name, "dir": str(d), "kind_source": source, "data": ev.get("data"),
    }
    row.update({k: v for k, v in metrics.items() if _scalar(v)})
    n, acc = row.get("n"), row["accuracy"]
    if _scalar(n) and n > 0:
        row["accuracy_se"] = math.sqrt(max(acc * (1 - acc), 0.0) / n)
    gap, sd = row.get("gap_margin"), row.get("margin_std")
    if _scalar(gap) and _scalar(sd) and sd > 0:
        row["gap_margin_over_sd"] = gap / sd
    cats = ev.get("by_category") or {}
    for cat, vals in cats.items():
        for key in ("accuracy", "n"):
            if _scalar((vals or {}).get(key)):
                row[f"{key}[{cat}]"] = vals[key]
        margin = (vals or {}).get("margin") or {}
        if _scalar(margin.get("mean")):
            row[f"margin_mean[{cat}]"] = margin["mean"]
    for scope, values in (ev.get("lan_f_by_tau") or {}).items():
        for tau, f in (values or {}).items():
            if _scalar(f):
                row[f"lan_f_{scope}[{tau}]"] = f
    pairwise = ev.get("pairwise") or {}
    for key in PAIRWISE_KEYS:
        if _scalar(pairwise.get(key)):
            row[key] = pairwise[key]
    gate = None
    armo = ev.get("armo") if kind == "armo" else None
    if armo:
        for name, a in (armo.get("accuracy") or {}).items():
            if _scalar(a):
                row[f"objective_accuracy[{name}]"] = a
        for name, w in (armo.get("gate_mean") or {}).items():
            if _scalar(w):
                row[f"gate[{name}]"] = w
        gate = {cat: {o: w for o, w in (ws or {}).items() if _scalar(w)}
                for cat, ws in (armo.get("gate_mean_by_category") or {}).items()}
        for cat, ws in gate.items():
            for name, w in ws.items():
                row[f"gate[{cat}][{name}]"] = w
    return {"row": row, "eval": ev, "gate": gate, "categories": list(cats)}


def _sort_key(r: dict):
    row = r["row"]
    kind, mode = row["kind"], row["mode"]

    def num(v):
        return float(v) if _scalar(v) else -math.inf

    return (KINDS.index(kind) if kind in KINDS else len(KINDS), MODE_ORDER.index(mode) if mode in MODE_ORDER
            else len(MODE_ORDER), str(mode), num(row["alpha"]), num(row["gamma"]), num(row["tau"]),
            num(row["seed"]), row["dir"])


def _fmt_param(v) -> str:
    return f"{float(v):g}"


def _labels(runs: list[dict]) -> None:
    """label = kind and mode with its hyperparameters ("ArmoRM fr α0.1 τ-1"); the seed and then the run
    directory are added where two runs would share a label."""
    for r in runs:
        row = r["row"]
        parts = [KIND_LABELS.get(row["kind"], row["kind"]), str(row["mode"])]
        for key, sym in (("alpha", "α"), ("gamma", "γ"), ("tau", "τ")):
            if _scalar(row.get(key)):
                parts.append(f"{sym}{_fmt_param(row[key])}")
        row["label"] = " ".join(parts)
    for extra in ("seed", "dir"):
        count: dict = {}
        for r in runs:
            count[r["row"]["label"]] = count.get(r["row"]["label"], 0) + 1
        for r in runs:
            row = r["row"]
            if count[row["label"]] > 1:
                row["label"] += f" seed{row['seed']}" if extra == "seed" else f" ({row['dir']})"


def load_runs(run_dirs: list[str]) -> list[dict]:
    """Every run, checked before anything is written, in the order kind, mode, hyperparameters, seed."""
    if not run_dirs:
        raise ReportError("--runs: give at least one run directory")
    seen = set()
    for d in run_dirs:
        key = str(Path(d).resolve())
        if key in seen:
            raise ReportError(f"--runs: {d} is given twice")
        seen.add(key)
    runs = sorted((load_rm_run(d) for d in run_dirs), key=_sort_key)
    _labels(runs)
    oracles: dict = {}
    for r in runs:  # the data's Bayes ceiling beside the models' accuracy, where the data carry it
        data = r["row"]["data"]
        if data not in oracles:
            oracles[data] = data_oracle(data) if data else None
        for key, v in (oracles[data] or {}).items():
            r["row"]["data_oracle_accuracy" + ("" if key == "all" else f"[{key}]")] = v
    return runs


# -------------------------------------------------------------------------------------------- tables
def categories_of(runs: list[dict]) -> list[str]:
    return sorted({c for r in runs for c in r["categories"]})


def comparison_frame(runs: list[dict]):
    """One row per run: the identity columns, then the metrics (accuracy and per category first)."""
    import pandas as pd

    rows = [r["row"] for r in runs]
    keys = {k for row in rows for k in row}
    cats = categories_of(runs)
    first = [c for c in ("accuracy", "accuracy_se") if c in keys]
    first += [f"accuracy[{c}]" for c in cats if f"accuracy[{c}]" in keys]
    ident = [c for c in IDENTITY if c in keys]
    rest = sorted(keys - set(ident) - set(first),
                  key=lambda k: (k.startswith(("gate[", "objective_accuracy[")), k))
    return pd.DataFrame(rows, columns=ident + first + rest)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return markdown_table(header, rows).splitlines()


def _present(runs: list[dict], columns) -> list[tuple[str, str, str]]:
    return [(c, h, f) for c, h, f in columns if any(_scalar(r["row"].get(c)) for r in runs)]


def markdown(runs: list[dict]) -> str:
    rows = [r["row"] for r in runs]
    cats = categories_of(runs)
    data = sorted({str(row["data"]) for row in rows})
    ns = sorted({row.get("n") for row in rows if _scalar(row.get("n"))})
    kinds = sorted({row["kind"] for row in rows}, key=lambda k: KINDS.index(k) if k in KINDS else 99)
    lines = ["# Reward-model kinds side by side", "",
             (f"{len(rows)} run(s) of {len(kinds)} kind(s) "
              f"({', '.join(KIND_LABELS.get(k, k) for k in kinds)}), each scored by `fairhpc eval-rm` on its "
              "held-out pairs (RUN/eval/summary.json).")]
    if len(data) == 1:
        lines.append(f"Held-out data: `{data[0]}` ({'/'.join(map(str, ns))} pairs); categories: "
                     f"{', '.join(cats) or 'none'}.")
    else:
        lines.append("**The runs were scored on different data**, so their numbers are not directly "
                     "comparable: "
                     + "; ".join(f"`{d}`: " + ", ".join(row["label"] for row in rows if str(row["data"]) == d)
                                 for d in data) + ".")
    note = "Standard error of an accuracy p on n pairs: sqrt(p (1 - p) / n)."
    if "pair_pm" in kinds:
        note += (" A pair-pm's margin is the log-odds log P(chosen > rejected) - log P(rejected > chosen), "
                 "on another scale than the reward differences of the other kinds: compare its margin-based "
                 "indices with care.")
    lines += [note, ""]

    lines += ["## Held-out accuracy", ""]
    acc_cols = _present(runs, ACCURACY_COLUMNS)
    cat_cols = [(f"accuracy[{c}]", f"acc {c}", "f3") for c in cats]
    head = ["kind / mode", "n"] + [h for _, h, _ in acc_cols] + [h for _, h, _ in cat_cols]
    body = [[row["label"], number_cell(row.get("n"), "int")]
            + [number_cell(row.get(c), f) for c, _, f in acc_cols + cat_cols] for row in rows]
    if len(data) == 1 and _scalar(rows[0].get("data_oracle_accuracy")):
        # the Bayes ceiling: what the true label probabilities of the synthetic pairs allow
        oracle = {"accuracy": rows[0]["data_oracle_accuracy"],
                  **{f"accuracy[{c}]": rows[0].get(f"data_oracle_accuracy[{c}]") for c in cats}}
        body.append(["*Bayes ceiling of the data*", ""] + [number_cell(oracle.get(c), f) if c in oracle else ""
                                                            for c, _, f in acc_cols + cat_cols])
    lines += _table(head, body)

    lines += ["", "## Fairness across pairs and categories", "",
              ("Jain's index and the Gini coefficient of x = sigmoid(margin) across pairs and of the "
               "category means of x (1 / 0 = equal); max-min: the largest gap between categories; W1: the "
               "largest Wasserstein distance between two categories' margin distributions. Lan's f_τ for "
               "τ = -1 equals Jain's index and is shown only in comparison.csv."), ""]
    fair = list(_present(runs, FAIRNESS_COLUMNS))
    taus = sorted({k for row in rows for k in row if k.startswith("lan_f_") and not k.endswith("[-1]")
                   and not k.endswith("[-1.0]")})
    fair += [(k, k.replace("lan_f_categories", "Lan f cats τ=").replace("lan_f_pairs", "Lan f pairs τ=")
              .replace("[", "").replace("]", ""), "f4") for k in taus]
    lines += _table(["kind / mode"] + [h for _, h, _ in fair],
                    [[row["label"]] + [number_cell(row.get(c), f) for c, _, f in fair] for row in rows])

    length = _present(runs, LENGTH_COLUMNS)
    if length:
        lines += ["", "## Length bias", "",
                  ("Spearman correlations of response length with the model's scores (0 = no length bias); "
                  "longer preferred: the share of pairs where the model prefers the longer response. Lengths "
                  "are tokens as each kind's scorer counts them (they may differ by a constant between kinds, "
                  "which leaves the correlations unchanged)."), ""]
        lines += _table(["kind / mode"] + [h for _, h, _ in length],
                        [[row["label"]] + [number_cell(row.get(c), f) for c, _, f in length] for row in rows])

    gated = [r for r in runs if r["gate"]]
    if gated:
        lines += ["", "## ArmoRM: mean gate weight per category", "",
                  ("The gate's mean weight on each (decorrelated) objective over the held-out prompts of a "
                  "category; `objective acc`: that objective's own pairwise accuracy."), ""]
        for r in gated:
            row, gate = r["row"], r["gate"]
            names = list(dict.fromkeys(n for ws in gate.values() for n in ws))
            lines += [f"### {row['label']}", ""]
            body = [[cat] + [number_cell(ws.get(n), "f3") for n in names] + [max(ws, key=ws.get) if ws else "—"]
                    for cat, ws in gate.items()]
            body.append(["overall"] + [number_cell(row.get(f"gate[{n}]"), "f3") for n in names] + [""])
            body.append(["objective acc"] + [number_cell(row.get(f"objective_accuracy[{n}]"), "f3") for n in names]
                        + [""])
            lines += _table(["category"] + names + ["top objective"], body) + [""]
    pair = [row for row in rows if any(_scalar(row.get(k)) for k in PAIRWISE_KEYS)]
    if pair:
        lines += ["", "## Pair-pm: the two presentation orders", "",
                  ("position consistency: both orders prefer the same response; position bias: mean "
                  "P(answer A) - 1/2."), ""]
        lines += _table(["kind / mode", "position consistency", "position bias A", "mean P(chosen)"],
                        [[row["label"]] + [number_cell(row.get(k), "f3") for k in PAIRWISE_KEYS] for row in pair])
    lines += ["", "## Runs", ""]
    lines += _table(["kind / mode", "run directory", "kind from"],
                    [[row["label"], f"`{row['dir']}`", row["kind_source"]] for row in rows])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- plot
def plot(runs: list[dict], path: Path) -> None:
    """Per-category accuracy bars per run; fairness / length indices per run; ArmoRM's gate per category."""
    from matplotlib.patches import Patch

    from fairhpc.report import pyplot, save_png

    plt = pyplot()
    gated = [r for r in runs if r["gate"]]
    ncols = 3 if gated else 2
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.8), squeeze=False)
    axes = axes[0]
    cats = categories_of(runs)
    groups = [("all", "accuracy")] + [(c, f"accuracy[{c}]") for c in cats]
    width = 0.8 / max(len(runs), 1)

    def bars(ax, cols):
        for i, r in enumerate(runs):
            row = r["row"]
            ys = [float(row[c]) if _scalar(row.get(c)) else math.nan for _, c in cols]
            xs = [g + (i - (len(runs) - 1) / 2) * width for g in range(len(cols))]
            ax.bar(xs, ys, width=width * 0.95, color=KIND_COLORS.get(row["kind"], "grey"),
                   hatch=MODE_HATCH.get(row["mode"], "xx"), edgecolor="white", lw=0.5, label=row["label"])
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([g for g, _ in cols])
        ax.grid(axis="y", alpha=0.3)

    ax = axes[0]
    bars(ax, groups)
    ax.axhline(0.5, color="black", lw=0.8, ls=":", label="chance")
    oracle = [runs[0]["row"].get("data_oracle_" + c) for _, c in groups]
    if len({r["row"]["data"] for r in runs}) == 1 and any(_scalar(v) for v in oracle):
        for g, v in enumerate(oracle):
            if _scalar(v):
                ax.hlines(v, g - 0.45, g + 0.45, color="black", lw=1.5,
                          label="Bayes ceiling" if g == 0 else None)
    lo = min((float(r["row"][c]) for r in runs for _, c in groups if _scalar(r["row"].get(c))), default=0.5)
    ax.set_ylim(max(0.0, min(0.5, lo) - 0.05), 1.0)
    ax.set_ylabel("held-out pairwise accuracy")
    ax.set_title("accuracy, overall and per category")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))

    ax = axes[1]
    indices = [("Jain cats", "cat_jain"), ("max-min acc", "gap_accuracy"),
               ("ρ(Δlen, margin)", "length_spearman_margin"), ("longer pref.", "length_longer_preferred")]
    indices = [(h, c) for h, c in indices if any(_scalar(r["row"].get(c)) for r in runs)]
    bars(ax, indices)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_title("fairness and length bias")
    handles = [Patch(facecolor=KIND_COLORS[k], label=KIND_LABELS[k]) for k in KINDS
               if any(r["row"]["kind"] == k for r in runs)]
    handles += [Patch(facecolor="white", edgecolor="black", hatch=h, label=m) for m, h in MODE_HATCH.items()
                if any(r["row"]["mode"] == m for r in runs)]
    ax.legend(handles=handles, fontsize=7)

    if gated:
        ax = axes[2]
        names = list(dict.fromkeys(n for r in gated for ws in r["gate"].values() for n in ws))
        gcats = sorted({c for r in gated for c in r["gate"]})
        cmap = plt.get_cmap("tab10")
        ticks, labels = [], []
        x = 0
        for r in gated:
            for c in gcats:
                ws = r["gate"].get(c, {})
                bottom = 0.0
                for j, n in enumerate(names):
                    w = float(ws.get(n, 0.0))
                    ax.bar(x, w, bottom=bottom, color=cmap(j % 10), width=0.8,
                           label=n if (r is gated[0] and c == gcats[0]) else None)
                    bottom += w
                ticks.append(x)
                labels.append(f"{c}\n{r['row']['mode']}")
                x += 1
            x += 0.5
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("mean gate weight")
        ax.set_title("ArmoRM: gate weights per category")
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.suptitle("Reward-model kinds on the same held-out pairs")
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def compare(run_dirs: list[str], out_dir: str) -> dict:
    """Load every run (all checked before anything is written) and write comparison.csv / .md / .png."""
    from fairhpc.io import atomic_write_text, check_output_dir

    out = check_output_dir(out_dir, "--out")
    runs = load_runs(list(run_dirs))
    out.mkdir(parents=True, exist_ok=True)
    df = comparison_frame(runs)
    atomic_write_text(out / FILES[0], df.to_csv(index=False))
    atomic_write_text(out / FILES[1], markdown(runs))
    plot(runs, out / FILES[2])
    return {"runs": len(runs), "out": str(out), "files": list(FILES)}


def plan_studies(plan, grids: list[str]) -> dict:
    """(model, dataset) -> the runs (fairhpc.workflow.Run) of the named grids, each run once, for the rule
    rm_comparison.  Refuses a grid that does not exist, is not a reward-model grid or has its evaluation
    off."""
    from fairhpc import registry
    from fairhpc.workflow import WorkflowConfigError

    out: dict = {}
    for i, name in enumerate(grids):
        where = f"rm_comparison.grids[{i}]"
        if name not in plan.grids:
            raise WorkflowConfigError(f"{where}: {name!r} is not a grid of the config: defined are "
                                      f"{', '.join(plan.grids) or 'none'}")
        for key in plan.grids[name]:
            run = plan.runs[key]
            if registry.EVAL_IN_TRAINING.get(run.task) != "eval-rm":
                raise WorkflowConfigError(f"{where}: grid {name!r} trains task {run.task}, which is not a "
                                          "reward model scored by eval-rm (rm, pair_pm, armo)")
            if not run.eval["enabled"]:
                raise WorkflowConfigError(f"{where}: grid {name!r} has eval.enabled: false; the comparison "
                                          "reads every run's RUN/eval/summary.json")
            runs = out.setdefault((run.model, run.dataset), [])
            if all(r.dir != run.dir for r in runs):
                runs.append(run)
    return out


def study_runs(studies: dict, model: str, dataset: str) -> list:
    """The runs of one comparison of :func:`plan_studies` (the rule's wildcards model and dataset)."""
    from fairhpc.workflow import WorkflowConfigError

    if (model, dataset) not in studies:
        raise WorkflowConfigError(f"rm_comparison: no grid of rm_comparison.grids trains model {model!r} "
                                  f"on data set {dataset!r}")
    return studies[(model, dataset)]


def study_inputs(studies: dict, model: str, dataset: str) -> list[str]:
    """What the comparison reads: every run's training summary and held-out evaluation summary."""
    return [f for run in study_runs(studies, model, dataset)
            for f in (run.summary, run.path(layout.EVAL, layout.SUMMARY))]


def _cmd(args) -> int:
    res = compare(args.runs, args.out)  # ReportError: exit 2 (fairhpc.cli)
    print(f"comparison of {res['runs']} reward model(s) written to {res['out']}: {', '.join(res['files'])}",
          file=sys.stdout)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("report-rm-kinds",
                       help="compare reward-model kinds (scalar, moe, pair_pm, armo) on the same held-out "
                            "data: comparison.csv / .md / .png",
                       description="Put reward models of every kind side by side from their eval-rm "
                                   "summaries (RUN/eval/summary.json): held-out and per-category accuracy, "
                                   "fairness indices, length bias, ArmoRM's mean gate weight per category. "
                                   "docs/reward_models.md")
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN",
                   help="run directories (output_dir of train-rm / train-pair-pm / train-armo), each with "
                        "eval/")
    p.add_argument("--out", required=True, metavar="DIR", help="where comparison.csv / .md / .png go")
    p.set_defaults(func=_cmd)

"""``fairhpc pg-report``: reward vs likelihood across policy-gradient runs, and the Pareto front.

Reads, for every run directory RUN of ``fairhpc train-pg``: RUN/config.yaml (the pg settings),
RUN/summary.json (its final held-out evaluation: mean reward of the policy's generations and their mean
log-likelihood under the behaviour model beta) and RUN/metrics.jsonl (the evaluations along training and
the share of kept samples per step).  Writes to OUT:

    pg_results.csv     one row per grid point (runs that differ only in the seed, averaged; n_seeds)
    pg_results.md      the table, which points are on the Pareto front, and the dominated hypervolume of the
                       front of each (algo, dropout) group (larger = the front lies further out)
    pareto.json        the same numbers, machine-readable
    pareto.png         mean reward vs mean log beta(y) per point (colour: dropout, marker: algo), the initial
                       policy, and the front of all points (both axes maximised); where the runs report held-out
                       reward per category (objective.mode fr / fc runs and any run on data with categories), a
                       second panel: mean reward vs the worst category's mean reward, with its own front
    training.png       held-out reward and likelihood along training, and the kept share per step, per point

Hypervolume: the area dominated by a group's points and bounded below by the reference point (the smallest
reward and likelihood of all points and the initial policy), so groups are compared on one scale.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from fairhpc.errors import ReportError
from fairhpc.io import atomic_write_json, atomic_write_text, read_jsonl
from fairhpc.reporting.pareto import hypervolume, pareto_front
from fairhpc.reporting.plots import pyplot, save_png
from fairhpc.yamlio import load_yaml

AXES = ("reward_mean", "logp_beta_mean")


def load_run(run: str | Path) -> dict:
    d = Path(run)
    cfg_p, sum_p = d / "config.yaml", d / "summary.json"
    for p in (cfg_p, sum_p):
        if not p.is_file():
            raise ReportError(f"{p}: missing (is {d} a finished train-pg run?)")
    try:
        cfg = load_yaml(cfg_p)
    except yaml.YAMLError as e:
        raise ReportError(f"{cfg_p}: invalid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise ReportError(f"{cfg_p}: not a run config (expected a mapping)")
    if cfg.get("task") != "pg":
        raise ReportError(f"{cfg_p}: task {cfg.get('task')!r}, not a train-pg run")
    summary = json.loads(sum_p.read_text())
    ev = summary.get("eval") or {}
    if any(k not in ev for k in AXES):
        raise ReportError(f"{sum_p}: no held-out evaluation ({', '.join(AXES)}); the run needs data.eval")
    metrics = read_jsonl(d / "metrics.jsonl")
    pg = cfg["pg"]
    return {"run": d.name, "point": re.sub(r"_seed\d+$", "", d.name), "dir": str(d), "seed": cfg.get("seed"),
            "algo": pg["algo"], "dropout": pg["dropout"], "dropout_rate": pg["dropout_rate"],
            "decoding": pg["decoding"], "mode": (cfg.get("objective") or {}).get("mode", "pg"),
            **{k: ev[k] for k in AXES}, "planted_share": ev.get("planted_share"),
            "worst_category_reward": ev.get("worst_category_reward"),
            "evals": [r for r in metrics if r.get("split") == "eval"],
            "trains": [r for r in metrics if r.get("split") == "train"]}


def _points(runs: list[dict]) -> list[dict]:
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["point"], []).append(r)
    out = []
    for name, rs in sorted(by.items()):
        p = {k: rs[0][k] for k in ("algo", "dropout", "dropout_rate", "decoding", "mode")}
        p.update(point=name, n_seeds=len(rs), runs=[r["dir"] for r in rs])
        for k in (*AXES, "planted_share", "worst_category_reward"):
            vals = [r[k] for r in rs if r[k] is not None]
            p[k] = sum(vals) / len(vals) if vals else None
        kept = [t["kept_share"] for r in rs for t in r["trains"] if "kept_share" in t]
        p["kept_share_mean"] = sum(kept) / len(kept) if kept else None
        out.append(p)
    return out


def _initial(runs: list[dict]) -> dict | None:
    """The initial policy's evaluation (step 0), averaged over the runs that logged one."""
    firsts = [r["evals"][0] for r in runs if r["evals"] and r["evals"][0].get("step") == 0]
    if not firsts:
        return None
    return {k: sum(f[k] for f in firsts) / len(firsts) for k in AXES}


def report(runs: list[str], out: str | Path) -> dict:
    from fairhpc.io import check_output_dir

    out = check_output_dir(out)
    loaded = [load_run(r) for r in runs]
    if not loaded:
        raise ReportError("pg-report: no runs given")
    points = _points(loaded)
    xy = [(p["reward_mean"], p["logp_beta_mean"]) for p in points]
    front = set(pareto_front(xy))
    for i, p in enumerate(points):
        p["on_front"] = i in front
    if all(p["worst_category_reward"] is not None for p in points):
        front_w = set(pareto_front([(p["reward_mean"], p["worst_category_reward"]) for p in points]))
        for i, p in enumerate(points):
            p["on_worst_group_front"] = i in front_w
    init = _initial(loaded)
    all_xy = xy + ([(init["reward_mean"], init["logp_beta_mean"])] if init else [])
    ref = (min(x for x, _ in all_xy), min(y for _, y in all_xy))
    groups = {}
    for p in points:
        groups.setdefault((p["algo"], p["dropout"]), []).append((p["reward_mean"], p["logp_beta_mean"]))
    hv = [{"algo": a, "dropout": d, "points": len(v), "hypervolume": hypervolume(v, ref)}
          for (a, d), v in sorted(groups.items())]
    result = {"points": points, "initial": init, "reference": ref, "hypervolume": hv}
    out.mkdir(parents=True, exist_ok=True)
    _write_tables(result, out)
    _plot_pareto(result, out / "pareto.png")
    _plot_training(loaded, out / "training.png")
    atomic_write_json(out / "pareto.json", result)
    return result


def _write_tables(result: dict, out: Path) -> None:
    cols = ("point", "mode", "algo", "dropout", "dropout_rate", "decoding", "n_seeds", "reward_mean",
            "logp_beta_mean", "planted_share", "kept_share_mean", "on_front")
    if any("on_worst_group_front" in p for p in result["points"]):
        cols += ("worst_category_reward", "on_worst_group_front")

    def cell(v):
        return "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    csv = ",".join(cols) + "\n" + "".join(",".join(cell(p[c]) for c in cols) + "\n" for p in result["points"])
    atomic_write_text(out / "pg_results.csv", csv)
    lines = ["# Policy-gradient runs: reward vs likelihood under beta", ""]
    if result["initial"]:
        i = result["initial"]
        lines += [(f"Initial policy (step 0): reward {i['reward_mean']:.4f}, log beta(y) "
                   f"{i['logp_beta_mean']:.3f}."), ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(p[c]) for c in cols) + " |" for p in result["points"]]
    lines += ["", ("Dominated hypervolume per (algo, dropout), reference point "
                   f"({result['reference'][0]:.4f}, {result['reference'][1]:.3f}):"), "",
              "| algo | dropout | points | hypervolume |", "|---|---|---|---|"]
    lines += [f"| {h['algo']} | {h['dropout']} | {h['points']} | {h['hypervolume']:.4f} |"
              for h in result["hypervolume"]]
    atomic_write_text(out / "pg_results.md", "\n".join(lines) + "\n")


def _plot_pareto(result: dict, path: Path) -> None:
    plt = pyplot()
    colors = {"none": "tab:gray", "random": "tab:blue", "quantile": "tab:red", "adaptive": "tab:green"}
    markers = {"offpolicy": "o", "reinforce": "s", "ppo": "^"}
    worst = [p for p in result["points"] if "on_worst_group_front" in p]
    fig, axes = plt.subplots(1, 2 if worst else 1, figsize=(13 if worst else 6.5, 4.8), squeeze=False)
    ax = axes[0][0]
    seen = set()
    for p in result["points"]:
        lab = f"{p['algo']} / {p['dropout']}"
        ax.scatter(p["reward_mean"], p["logp_beta_mean"], c=colors.get(p["dropout"], "k"),
                   marker=markers.get(p["algo"], "x"), s=60 if p["on_front"] else 30,
                   edgecolors="k" if p["on_front"] else "none", label=None if lab in seen else lab)
        seen.add(lab)
    front = sorted((p for p in result["points"] if p["on_front"]), key=lambda p: p["reward_mean"])
    if front:
        ax.plot([p["reward_mean"] for p in front], [p["logp_beta_mean"] for p in front], "k--", lw=1,
                label="Pareto front")
    if result["initial"]:
        ax.scatter(result["initial"]["reward_mean"], result["initial"]["logp_beta_mean"], marker="*", s=150,
                   c="gold", edgecolors="k", label="initial policy")
    ax.set_xlabel("mean reward of held-out generations")
    ax.set_ylabel("mean log beta(y) (likelihood under the behaviour model)")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("reward vs likelihood (both maximised)")
    if worst:
        ax = axes[0][1]
        mode_colors = {"pg": "tab:gray", "fr": "tab:red", "fc": "tab:blue"}
        seen = set()
        for p in worst:
            lab = f"{p['mode']} / {p['algo']}"
            ax.scatter(p["reward_mean"], p["worst_category_reward"], c=mode_colors.get(p["mode"], "k"),
                       marker=markers.get(p["algo"], "x"), s=60 if p["on_worst_group_front"] else 30,
                       edgecolors="k" if p["on_worst_group_front"] else "none", label=None if lab in seen else lab)
            seen.add(lab)
        front = sorted((p for p in worst if p["on_worst_group_front"]), key=lambda p: p["reward_mean"])
        ax.plot([p["reward_mean"] for p in front], [p["worst_category_reward"] for p in front], "k--", lw=1,
                label="Pareto front")
        ax.set_xlabel("mean reward of held-out generations")
        ax.set_ylabel("worst category's mean reward")
        ax.legend(fontsize=7, loc="best")
        ax.set_title("reward vs worst-group reward (both maximised)")
    save_png(fig, path, dpi=120)
    plt.close(fig)


def _plot_training(runs: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for r in sorted(runs, key=lambda r: r["run"]):
        ev = r["evals"]
        axes[0].plot([e["step"] for e in ev], [e["reward_mean"] for e in ev], label=r["run"], lw=1)
        axes[1].plot([e["step"] for e in ev], [e["logp_beta_mean"] for e in ev], lw=1)
        tr = [t for t in r["trains"] if "kept_share" in t]
        axes[2].plot([t["step"] for t in tr], [t["kept_share"] for t in tr], lw=1)
    for ax, title in zip(axes, ("held-out mean reward", "held-out mean log beta(y)", "kept share per step")):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
    axes[0].legend(fontsize=6)
    save_png(fig, path, dpi=120)
    plt.close(fig)

"""``fairhpc online-report``: held-out reward and fairness of online iterative DPO / RAFT against the
iteration, per objective (mode and hyperparameters) with Student-t intervals over seeds.

Reads every point's ``iter<i>/eval/summary.json`` and the initial policy's evaluation (iteration 0);
writes online_results.md (per-iteration table, and per point whether every iteration improved the held-out
reward of the judge over the initial policy), online_results.csv (one row per point and iteration) and
online.png (reward and fairness over categories against the iteration).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

from fairhpc import layout
from fairhpc.errors import ReportError
from fairhpc.io import atomic_write_json, atomic_write_text

_SEED = re.compile(r"_seed(\d+)$")
COLUMNS = ("reward_mean", "reward_gain", "win_rate", "f_category", "worst_category_reward", "category_gap",
           "mean_length")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: not found (has the iteration's online-eval run?)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: unreadable ({e})") from None


def load_points(points: list[str]) -> list[dict]:
    """One row per (point, iteration): the point's objective (its name without the seed), seed, iteration
    and the evaluation's numbers."""
    rows = []
    for d in points:
        d = Path(d)
        m = _SEED.search(d.name)
        if m is None:
            raise ReportError(f"{d}: not a point directory (its name must end in _seed<N>)")
        iters = sorted((int(p.name[4:]), p) for p in d.glob("iter*") if p.name[4:].isdigit())
        if not iters:
            raise ReportError(f"{d}: no iter<i>/ directories")
        for i, p in iters:
            s = _read(p / "eval" / layout.SUMMARY)
            rows.append({"point": d.name, "objective": d.name[:m.start()], "seed": int(m.group(1)),
                         "iteration": i, **{c: s.get(c, math.nan) for c in COLUMNS},
                         "improved": s.get("improved")})
    return rows


def summarize(rows: list[dict], initial: dict) -> list[dict]:
    """Per (objective, iteration): intervals over seeds of each column; iteration 0 is the initial policy."""
    from fairhpc.reporting.stats import t_interval

    out = []
    for obj in sorted({r["objective"] for r in rows}):
        out.append({"objective": obj, "iteration": 0, "seeds": 1,
                    **{c: {"n": 1, "mean": initial.get(c, math.nan), "half": math.nan} for c in COLUMNS}})
        for i in sorted({r["iteration"] for r in rows if r["objective"] == obj}):
            sel = [r for r in rows if r["objective"] == obj and r["iteration"] == i]
            out.append({"objective": obj, "iteration": i, "seeds": len(sel),
                        **{c: t_interval([r[c] for r in sel]) for c in COLUMNS}})
    return out


def markdown(summary: list[dict], rows: list[dict], initial_dir: str) -> str:
    from fairhpc.reporting.tables import interval_cell, markdown_table, number_cell

    lines = ["# Online iterative training: held-out reward and fairness per iteration", "",
             (f"Iteration 0 is the initial policy ({initial_dir}); every later row is the policy that iteration "
             "trained, judged on the held-out prompts by the reward model it was trained against. Cells are the "
             "mean over seeds ± the half-width of a 95 % Student-t interval. reward_gain and win_rate are "
             "against the initial policy's responses; f_category is the fairness index of the allocation "
             "sigmoid(mean reward of each category)."), ""]
    header = ["objective", "iteration", "seeds", *COLUMNS]
    body = [[s["objective"], str(s["iteration"]), str(s["seeds"]), *(interval_cell(s[c]) for c in COLUMNS)]
            for s in summary]
    lines += [markdown_table(header, body), "", "## Did every iteration improve on the initial policy?", ""]
    for point in sorted({r["point"] for r in rows}):
        its = [r for r in rows if r["point"] == point]
        bad = [r["iteration"] for r in its if not r["improved"]]
        lines.append(f"- {point}: " + ("yes, every iteration (" if not bad else "no: not in iteration(s) "
                                       + ", ".join(map(str, bad)) + " (")
                     + ", ".join(f"{r['iteration']}: {number_cell(r['reward_gain'], 'f3')}" for r in its) + " gain)")
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["point", "objective", "seed", "iteration", *COLUMNS, "improved"],
                       lineterminator="\n")
    w.writeheader()
    for r in sorted(rows, key=lambda r: (r["objective"], r["seed"], r["iteration"])):
        w.writerow(r)
    return buf.getvalue()


def plot(summary: list[dict], path: Path) -> None:
    from fairhpc.reporting.plots import pyplot, save_png

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    panels = (("reward_mean", "held-out reward (RM)"), ("f_category", "fairness over categories f_tau"))
    for ax, (col, title) in zip(axes, panels):
        for obj in sorted({s["objective"] for s in summary}):
            ss = [s for s in summary if s["objective"] == obj]
            x = [s["iteration"] for s in ss]
            y = [s[col]["mean"] for s in ss]
            h = [s[col]["half"] if math.isfinite(s[col]["half"]) else 0.0 for s in ss]
            ax.plot(x, y, marker="o", label=obj)
            ax.fill_between(x, [a - b for a, b in zip(y, h)], [a + b for a, b in zip(y, h)], alpha=0.2)
        ax.set_xlabel("iteration")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


def report(points: list[str], initial: str, out: str | Path) -> dict:
    rows = load_points(points)
    init = _read(Path(initial) / layout.SUMMARY)
    summary = summarize(rows, {**init, "reward_gain": 0.0, "win_rate": 0.5})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "online_results.md", markdown(summary, rows, initial))
    atomic_write_text(out / "online_results.csv", _csv(rows))
    atomic_write_json(out / "online_results.json", {"rows": rows, "summary": summary})
    plot(summary, out / "online.png")
    return {"rows": rows, "summary": summary}

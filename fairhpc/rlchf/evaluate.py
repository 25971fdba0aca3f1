"""Per-group agreement of a trained model with the persona judges, and the RLHF vs RLCHF comparison.

``fairhpc eval-groups`` scores every candidate of a held-out rankings file with

* a policy: its implicit reward log pi(y | x) - log pi_ref(y | x) (the DPO reward up to the factor beta,
  which does not change an order).  The reference is ``--reference``, else the run's own: a run's
  ``final/`` has RUN/config.yaml, whose ``model.ref_name_or_path`` (or ``name_or_path``) is loaded, and a
  ``tiny`` reference is rebuilt from the run's seed exactly as the trainer built it;
* or a reward model (``--reward-model``): its scalar reward;

then, for every judge's ranking, counts the candidate pairs the model orders as the judge does (a tie of
scores counts 1/2).  Per persona group: ``agreement`` = the mean over the group's rankings of that share,
``top1`` = how often the model's best candidate is the judge's best.  The summary gives the groups, the
mean over all rankings, and the worst group (the minimum over groups), into OUT/summary.json with
OUT/per_example.jsonl (the candidates' scores).

``fairhpc rlchf-report`` reads the evaluations of many runs and writes the comparison table
(comparison.csv / comparison.md: one row per run: data = SWF or baseline, mode, seed, mean and worst-group
agreement, each group) and comparison.png (mean against worst-group agreement, one point per run).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fairhpc.errors import ConfigError, DataError, ReportError


def _tiny_reference(run_cfg, tokenizer, device):
    """The tiny initial policy of a run, rebuilt as the trainer built it: torch seeded with the run's seed,
    then build_tiny_policy (the engine draws nothing from torch's generator in between)."""
    import torch

    from fairhpc.models import build_tiny_policy

    torch.manual_seed(run_cfg.seed)
    return build_tiny_policy(run_cfg.model.tiny, tokenizer).to(device).eval()


def load_reference(policy: str, reference: str | None, device):
    """(reference model, where it came from) for a policy: --reference, else the run's reference."""
    from fairhpc.evaluation.scoring import check_model_path, find_run_config
    from fairhpc.models import load_policy
    from fairhpc.rewards.base import load_tokenizer_for

    if reference:
        check_model_path(reference, "--reference")
        return load_policy(reference, tokenizer=load_tokenizer_for(reference)).to(device).eval(), reference
    run_cfg = find_run_config(policy)
    if run_cfg is None:
        raise ConfigError(f"--policy {policy}: no run config next to it (RUN/config.yaml); give --reference")
    ref = run_cfg.model.ref_name_or_path or run_cfg.model.name_or_path
    if ref == "tiny":
        return _tiny_reference(run_cfg, load_tokenizer_for(policy), device), f"tiny (seed {run_cfg.seed})"
    check_model_path(ref, "model.ref_name_or_path")
    return load_policy(ref, tokenizer=load_tokenizer_for(policy)).to(device).eval(), ref


def candidate_scores(rows: list[dict], model_path: str, kind: str, reference: str | None = None,
                     batch_size: int = 16, device: str = "auto", max_length: int | None = None,
                     max_prompt_length: int | None = None) -> tuple[list[list[float]], str | None]:
    """[rows][K] scores of every candidate: implicit reward (kind "policy") or reward (kind "reward")."""
    from fairhpc.data import PreferenceExample
    from fairhpc.evaluation.scoring import check_model_path, data_config, find_run_config
    from fairhpc.models import load_policy
    from fairhpc.rewards.base import load_tokenizer_for, resolve_device
    from fairhpc.rewards.scalar import load_scorer, score_sequences, tokenize_pairs

    check_model_path(model_path, "--policy" if kind == "policy" else "--reward-model")
    dev = resolve_device(device)
    dcfg = data_config(find_run_config(model_path), max_length, max_prompt_length)
    flat = [(i, c) for i, row in enumerate(rows) for c in range(len(row["responses"]))]
    exs = []
    for i, c in flat:
        msg = [{"role": "assistant", "content": rows[i]["responses"][c]}]
        exs.append(PreferenceExample(prompt=rows[i]["prompt"], chosen=msg, rejected=msg, source=f"row {i}"))
    ref_name = None
    if kind == "reward":
        model, tok, _ = load_scorer(model_path, device)
        toks = tokenize_pairs(exs, tok, dcfg)
        vals = score_sequences(model, [t["chosen_input_ids"] for t in toks], tok.pad_token_id, batch_size, dev,
                               "reward of candidates")
    else:
        tok = load_tokenizer_for(model_path)
        toks = tokenize_pairs(exs, tok, dcfg)
        seqs, labels = [t["chosen_input_ids"] for t in toks], [t["chosen_labels"] for t in toks]
        model = load_policy(model_path, tokenizer=tok).to(dev).eval()
        lp = score_sequences(model, seqs, tok.pad_token_id, batch_size, dev, "policy log-probs", labels)
        del model
        ref, ref_name = load_reference(model_path, reference, dev)
        lr = score_sequences(ref, seqs, tok.pad_token_id, batch_size, dev, "reference log-probs", labels)
        vals = lp - lr
    out = [[0.0] * len(r["responses"]) for r in rows]
    for (i, c), v in zip(flat, vals):
        out[i][c] = float(v)
    return out, ref_name


def pair_agreement(scores: list[float], ranking: list[int]) -> float:
    """Share of the judge's ordered pairs (a above b) with score[a] > score[b]; equal scores count 1/2."""
    total, agree = 0, 0.0
    for i in range(len(ranking)):
        for j in range(i + 1, len(ranking)):
            a, b = ranking[i], ranking[j]
            total += 1
            agree += 1.0 if scores[a] > scores[b] else 0.5 if scores[a] == scores[b] else 0.0
    return agree / total


def group_agreement(rows: list[dict], scores: list[list[float]], group_by: str = "group") -> dict:
    """Per group and overall agreement of candidate scores with the judges' rankings."""
    per: dict[str, list[tuple[float, float]]] = {}
    for row, sc in zip(rows, scores):
        best = max(range(len(sc)), key=lambda c: (sc[c], -c))
        for r in row["rankings"]:
            g = str(r["persona"][group_by])
            per.setdefault(g, []).append((pair_agreement(sc, r["ranking"]), float(r["ranking"][0] == best)))
    if not per:
        raise ConfigError("no judge rankings to evaluate against")
    groups = {g: {"agreement": float(np.mean([a for a, _ in v])), "top1": float(np.mean([t for _, t in v])),
                  "rankings": len(v)} for g, v in sorted(per.items())}
    allv = [a for v in per.values() for a, _ in v]
    worst = min(groups, key=lambda g: (groups[g]["agreement"], g))
    return {"groups": groups, "mean_agreement": float(np.mean(allv)),
            "group_mean_agreement": float(np.mean([g["agreement"] for g in groups.values()])),
            "worst_group": worst, "worst_group_agreement": groups[worst]["agreement"]}


def run_eval_groups(rankings: str, out_dir: str, policy: str | None = None, reward_model: str | None = None,
                    reference: str | None = None, group_by: str = "group", batch_size: int = 16,
                    device: str = "auto", bad_rows: str = "error", limit: int | None = None) -> dict:
    from fairhpc.evaluation.scoring import check_model_path, write_results
    from fairhpc.io import check_output_dir
    from fairhpc.rlchf.aggregate import has_groups, read_rankings

    if (policy is None) == (reward_model is None):
        raise ConfigError("give exactly one of --policy (implicit reward against a reference) and --reward-model")
    if batch_size < 1:
        raise ConfigError(f"--batch-size: expected an integer >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: expected an integer >= 1, got {limit}")
    check_model_path(policy or reward_model, "--policy" if policy else "--reward-model")  # before the rankings
    if reference is not None:
        check_model_path(reference, "--reference")
    check_output_dir(out_dir)
    rows, skipped = read_rankings(rankings, group_by, bad_rows)
    if not has_groups(rows, group_by):
        raise DataError(f"{rankings}: no judge has the group field persona.{group_by!r}; per-group agreement "
                        "needs the judges' groups (set --group-by to a field the personas have)")
    rows = rows[:limit] if limit else rows
    kind = "policy" if policy else "reward"
    scores, ref = candidate_scores(rows, policy or reward_model, kind, reference, batch_size, device)
    summary = {"kind": f"rlchf-groups ({kind})", "model": policy or reward_model, "reference": ref,
               "rankings": str(rankings), "prompts": len(rows), "skipped": dict(skipped), "group_by": group_by,
               **group_agreement(rows, scores, group_by)}
    per = [{"id": r.get("id"), "scores": s, "category": r.get("category")} for r, s in zip(rows, scores)]
    write_results(out_dir, per, summary)
    return summary


# ------------------------------------------------------------------------------------------ the comparison
def _label(run_dir: Path) -> dict:
    """data (the SWF or baseline: the folder of the run's data.train file), task, mode, seed of a run."""
    from fairhpc.yamlio import load_yaml

    cfg = load_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
    train = str((cfg.get("data") or {}).get("train", ""))
    return {"run": str(run_dir), "task": cfg.get("task"), "data": Path(train).parent.name or train,
            "mode": (cfg.get("objective") or {}).get("mode"), "seed": cfg.get("seed")}


def comparison(eval_dirs: list[str], out_dir: str) -> list[dict]:
    """comparison.csv / .md / .png over the evaluations ``RUN/<subdir>`` of many runs."""
    import pandas as pd

    from fairhpc.io import atomic_write_text, check_output_dir
    from fairhpc.reporting.plots import pyplot, save_png
    from fairhpc.reporting.tables import markdown_table

    if not eval_dirs:
        raise ReportError("no evaluations given")
    out = check_output_dir(out_dir)
    rows = []
    for d in eval_dirs:
        p = Path(d) / "summary.json"
        if not p.is_file():
            raise ReportError(f"{p}: missing (is the group evaluation finished?)")
        s = json.loads(p.read_text())
        if "groups" not in s:
            raise ReportError(f"{p}: not a `fairhpc eval-groups` summary (no 'groups')")
        row = {**_label(Path(d).parent), "mean_agreement": s["mean_agreement"],
               "worst_group_agreement": s["worst_group_agreement"], "worst_group": s["worst_group"]}
        row.update({f"agreement[{g}]": v["agreement"] for g, v in s["groups"].items()})
        rows.append(row)
    df = pd.DataFrame(rows).sort_values(["task", "data", "mode", "seed"], kind="stable")
    atomic_write_text(out / "comparison.csv", df.to_csv(index=False))
    cols = [c for c in df.columns if c != "run"]
    md = markdown_table(cols, [[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
                               for _, r in df.iterrows()]).splitlines()
    mean = df.groupby(["task", "data", "mode"])[["mean_agreement", "worst_group_agreement"]].mean().reset_index()
    md += ["", "Mean over seeds:", ""]
    md += markdown_table(["task", "data", "mode", "mean agreement", "worst-group agreement"],
                         [[r.task, r.data, r.mode, f"{r.mean_agreement:.3f}", f"{r.worst_group_agreement:.3f}"]
                          for r in mean.itertuples()]).splitlines()
    atomic_write_text(out / "comparison.md", "Agreement of each trained model with the persona judges' held-out "
                      "rankings (share of candidate pairs ordered as the judge does; worst = minimum over "
                      "persona groups).\n\n" + "\n".join(md) + "\n")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    markers = {m: mk for m, mk in zip(sorted(df["mode"].astype(str).unique()), "osD^v<>p")}
    colors = {d: plt.cm.tab10(i % 10) for i, d in enumerate(sorted(df["data"].unique()))}
    for r in df.itertuples():
        ax.scatter(r.mean_agreement, r.worst_group_agreement, marker=markers[str(r.mode)], color=colors[r.data],
                   s=50, edgecolor="k", linewidth=0.5)
    for d, c in colors.items():
        ax.scatter([], [], color=c, label=d)
    for m, mk in markers.items():
        ax.scatter([], [], marker=mk, color="grey", label=f"mode {m}")
    lo = min(df["worst_group_agreement"].min(), df["mean_agreement"].min()) - 0.02
    hi = max(df["worst_group_agreement"].max(), df["mean_agreement"].max()) + 0.02
    ax.plot([lo, hi], [lo, hi], ls=":", color="grey", lw=1)
    ax.set_xlabel("mean agreement with the judges")
    ax.set_ylabel("worst-group agreement")
    ax.set_title("RLHF baselines vs RLCHF social welfare functions")
    ax.legend(fontsize=7, loc="best")
    save_png(fig, out / "comparison.png")
    return rows

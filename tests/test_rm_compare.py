"""`fairhpc report-rm-kinds` (fairhpc/rm_compare.py) and the workflow's rule rm_comparison
(rules/rm_compare.smk): the table on hand-made run directories of the four kinds (its numbers are the
summaries' numbers, gate weights only for ArmoRM, a missing summary named), the runs the rule collects, the
demo workflow configs/workflows/reward_models.yaml run for real (slow) and the job counts of dry runs."""

import copy
import json
import math
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from snakemake.utils import update_config  # how Snakemake lays --configfile over config.yaml
from test_workflow import job_counts, smk

from fairhpc import rm_compare
from fairhpc import workflow as wf
from fairhpc.cli import main
from fairhpc.errors import ReportError

REPO = Path(__file__).resolve().parents[1]
CATS = ("harmless", "helpful", "honest")
OBJECTIVES = ("helpfulness", "correctness", "safety", "verbosity")


# ------------------------------------------------------------------------------------ hand-made runs
def metrics_of(seed: float) -> dict:
    """An eval-rm `metrics` block with distinct values per run (the keys of a real summary)."""
    v = lambda k: round(0.5 + ((seed * 7919 + k * 104729) % 4000) / 10000, 6)
    return {"n": 400, "n_ties": 0, "accuracy": v(1), "margin_mean": v(2) * 3, "margin_std": v(3) * 2,
            "reward_chosen_mean": v(4), "reward_rejected_mean": -v(5), "n_categories": 3,
            "pairs_jain": v(6), "pairs_gini": v(7) - 0.4, "pairs_lan_f": v(6), "cat_jain": v(8),
            "cat_gini": v(9) - 0.45, "cat_lan_f": v(8), "gap_accuracy": v(10) - 0.4, "gap_margin": v(11),
            "gap_resource": v(12) - 0.5, "w1_margin_max": v(13), "lan_tau": -1.0,
            "length_chosen_mean": 20.5, "length_rejected_mean": 19.8, "length_spearman_chosen": v(14) - 0.6,
            "length_spearman_rejected": v(15) - 0.6, "length_spearman_all": v(16) - 0.6,
            "length_spearman_margin": v(17) - 0.6, "length_longer_preferred": v(18)}


def make_run(root: Path, task: str, point: str, *, kind: str, mode: str, seed: int = 0, marker: bool = True,
             model_kind: bool = True, head: str = "linear", extra: dict | None = None,
             data: str = "eval.jsonl",
             alpha: float = 0.1, tau: float = -1.0, gamma: float = 0.5) -> tuple[Path, dict]:
    """RUN = root/task/point with config.yaml, summary.json, eval/summary.json and (non-scalar kinds)
    final/fairhpc_model.json; returns (RUN, its eval summary)."""
    d = root / task / point
    (d / "eval").mkdir(parents=True)
    (d / "final").mkdir()
    cfg = {"task": task, "seed": seed, "output_dir": str(d),
           "objective": {"mode": mode, "alpha": alpha, "tau": tau, "gamma": gamma},
           "model": {"name_or_path": "tiny", "head": head}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "summary.json").write_text(json.dumps({"task": task, "mode": mode, "seed": seed, "steps": 10}))
    s = sum(map(ord, f"{task}{point}"))
    by_cat = {c: {"n": 100 + i, "accuracy": round(0.6 + 0.1 * i + (s % 13) / 1000, 6), "n_ties": 0,
                  "margin": {"n": 100 + i, "mean": 0.3 * i + (s % 7) / 100}} for i, c in enumerate(CATS)}
    ev = {"kind": "reward_model", "ties": "wrong", "model": str(d / "final"), "data": data,
          "metrics": metrics_of(s), "by_category": by_cat,
          "lan_f_by_tau": {"pairs": {"-1": 0.9, "0.5": 0.8 + (s % 11) / 1000},
                           "categories": {"-1": 0.95, "0.5": 0.85}}, **(extra or {})}
    if model_kind:
        ev["model_kind"] = kind
    (d / "eval" / "summary.json").write_text(json.dumps(ev))
    if marker and kind != "scalar":
        (d / "final" / "fairhpc_model.json").write_text(json.dumps({"kind": kind}))
    return d, ev


def armo_extra(shift: float) -> dict:
    gate = {c: {o: (0.7 if (i == j) else 0.1) + shift * (j == 3) for j, o in enumerate(OBJECTIVES)}
            for i, c in enumerate(CATS)}
    return {"armo": {"names": list(OBJECTIVES),
                     "accuracy": {o: 0.5 + 0.05 * j for j, o in enumerate(OBJECTIVES)},
                     "gate_mean": {o: 0.25 for o in OBJECTIVES}, "gate_mean_by_category": gate}}


MOE_EXTRA = {"moe": {"names": ["expert_0", "expert_1"], "accuracy": {"expert_0": 0.7, "expert_1": 0.71},
                     "gate_mean": {"expert_0": 0.4, "expert_1": 0.6},
                     "gate_mean_by_category": {c: {"expert_0": 0.4, "expert_1": 0.6} for c in CATS}}}
PAIR_EXTRA = {"pairwise": {"position_consistency": 0.81, "position_bias_a": -0.02, "p_chosen_mean": 0.7}}


@pytest.fixture
def four_kinds(tmp_path):
    """Nine runs of the four kinds, as the demo workflow makes them; -> {run dir: eval summary}."""
    root = tmp_path / "runs"
    specs = [("rm", "bt_seed0", "scalar", "bt", {}), ("rm", "fr_alpha0.1_tau-1_seed0", "scalar", "fr", {}),
             ("rm", "bt_headmoe_seed0", "moe", "bt", MOE_EXTRA),
             ("rm", "fr_alpha0.1_tau-1_headmoe_seed0", "moe", "fr", MOE_EXTRA),
             ("pair_pm", "bt_seed0", "pair_pm", "bt", PAIR_EXTRA),
             ("pair_pm", "fr_alpha0.1_tau-1_seed0", "pair_pm", "fr", PAIR_EXTRA),
             ("pair_pm", "fc_gamma0.5_tau-1_seed0", "pair_pm", "fc", PAIR_EXTRA),
             ("armo", "bt_seed0", "armo", "bt", armo_extra(0.0)),
             ("armo", "fr_alpha0.1_tau-1_seed0", "armo", "fr", armo_extra(0.05))]
    runs = {}
    for task, point, kind, mode, extra in reversed(specs):  # the report orders them itself
        d, ev = make_run(root, task, point, kind=kind, mode=mode, extra=extra,
                         head="moe" if kind == "moe" else "linear")
        runs[str(d)] = ev
    return runs


def read_csv(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "comparison.csv")


# ------------------------------------------------------------------------------------------ the table
def test_table_numbers_are_the_summaries_numbers(four_kinds, tmp_path):
    out = tmp_path / "out"
    res = rm_compare.compare(list(four_kinds), str(out))
    assert res["runs"] == 9 and sorted(p.name for p in out.iterdir()) == sorted(rm_compare.FILES)
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    df = read_csv(out)
    assert len(df) == 9 and set(df["dir"]) == set(four_kinds)
    # kinds in the report's order, modes bt, fr, fc within a kind
    assert list(df["kind"]) == ["scalar"] * 2 + ["moe"] * 2 + ["pair_pm"] * 3 + ["armo"] * 2
    assert list(df["mode"]) == ["bt", "fr", "bt", "fr", "bt", "fr", "fc", "bt", "fr"]
    for _, row in df.iterrows():
        ev = four_kinds[row["dir"]]
        for k, v in ev["metrics"].items():  # every scalar of eval-rm's metrics, unchanged
            assert row[k] == v, (row["label"], k)
        for c in CATS:
            assert row[f"accuracy[{c}]"] == ev["by_category"][c]["accuracy"]
            assert row[f"n[{c}]"] == ev["by_category"][c]["n"]
            assert row[f"margin_mean[{c}]"] == ev["by_category"][c]["margin"]["mean"]
        assert row["lan_f_pairs[0.5]"] == ev["lan_f_by_tau"]["pairs"]["0.5"]
        acc, n = ev["metrics"]["accuracy"], ev["metrics"]["n"]
        assert row["accuracy_se"] == pytest.approx(math.sqrt(acc * (1 - acc) / n))
        if row["kind"] == "pair_pm":
            assert row["position_consistency"] == 0.81 and row["position_bias_a"] == -0.02
        else:
            assert math.isnan(row["position_consistency"])
    md = (out / "comparison.md").read_text()
    for _, row in df.iterrows():  # the Markdown table shows the same numbers, rounded
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {row['label']} | 400 |"))
        assert f"| {row['accuracy']:.3f} |" in line
        assert all(f"| {row[f'accuracy[{c}]']:.3f} " in line for c in CATS)
        fair = [ln for ln in md.splitlines() if ln.startswith(f"| {row['label']} |")][1]
        assert f"| {row['cat_jain']:.4f} |" in fair and f"| {row['gap_accuracy']:.3f} |" in fair
    assert df["label"].is_unique
    assert "scalar RM bt" in set(df["label"]) and "pair-pm fc γ0.5 τ-1" in set(df["label"])


def test_gate_weights_only_for_armo(four_kinds, tmp_path):
    out = tmp_path / "out"
    rm_compare.compare(list(four_kinds), str(out))
    df = read_csv(out)
    gate_cols = [c for c in df.columns if c.startswith("gate[")]
    per_cat = {f"gate[{c}][{o}]" for c in CATS for o in OBJECTIVES}
    assert per_cat <= set(gate_cols)
    for _, row in df.iterrows():
        filled = row[gate_cols].notna()
        if row["kind"] == "armo":
            assert filled.all()
            ev = four_kinds[row["dir"]]["armo"]
            for c in CATS:
                for o in OBJECTIVES:
                    assert row[f"gate[{c}][{o}]"] == ev["gate_mean_by_category"][c][o]
        else:  # the moe head's expert gate is not an objective gate: no column of it
            assert not filled.any(), row["label"]
    assert not any("expert" in c for c in df.columns)
    md = (out / "comparison.md").read_text()
    assert md.count("## ArmoRM: mean gate weight per category") == 1
    assert "### ArmoRM bt" in md and "### ArmoRM fr α0.1 τ-1" in md
    assert "| harmless | 0.700 | 0.100 | 0.100 | 0.100 | helpfulness |" in md

    # without an ArmoRM run: no gate column and no gate section
    others = [d for d in four_kinds if "/armo/" not in d]
    rm_compare.compare(others, str(tmp_path / "no_armo"))
    assert not [c for c in read_csv(tmp_path / "no_armo").columns if c.startswith("gate[")]
    assert "gate weight" not in (tmp_path / "no_armo" / "comparison.md").read_text()


def test_missing_eval_summary_is_an_error_naming_the_path(four_kinds, tmp_path, capsys):
    bare, _ = make_run(tmp_path / "other", "rm", "bt_seed1", kind="scalar", mode="bt")
    (bare / "eval" / "summary.json").unlink()
    out = tmp_path / "out"
    with pytest.raises(ReportError, match=str(bare / "eval" / "summary.json")):
        rm_compare.compare([*four_kinds, str(bare)], str(out))
    assert not out.exists()  # every run is checked before anything is written
    rc = main(["report-rm-kinds", "--runs", *four_kinds, str(bare), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and str(bare / "eval" / "summary.json") in err and "missing" in err
    assert not out.exists()
    with pytest.raises(ReportError, match="not a directory"):
        rm_compare.compare([str(tmp_path / "nowhere")], str(out))
    with pytest.raises(ReportError, match="given twice"):
        rm_compare.compare([next(iter(four_kinds))] * 2, str(out))


def test_other_evaluations_are_refused(tmp_path):
    d, ev = make_run(tmp_path, "dpo", "dpo_seed0", kind="scalar", mode="dpo")
    ev["kind"] = "policy"
    (d / "eval" / "summary.json").write_text(json.dumps(ev))
    with pytest.raises(ReportError, match="not a reward-model evaluation"):
        rm_compare.compare([str(d)], str(tmp_path / "out"))


def test_kind_from_marker_then_summary_then_config(tmp_path):
    # no marker and no model_kind: the config decides (task rm with head moe, task pair_pm)
    moe, _ = make_run(tmp_path, "rm", "a", kind="moe", mode="bt", marker=False, model_kind=False, head="moe")
    ppm, _ = make_run(tmp_path, "pair_pm", "b", kind="pair_pm", mode="bt", marker=False, model_kind=False)
    scalar, _ = make_run(tmp_path, "rm", "c", kind="scalar", mode="bt", marker=False, model_kind=False)
    # the marker wins over the summary's model_kind
    armo, ev = make_run(tmp_path, "armo", "d", kind="armo", mode="bt", extra=armo_extra(0))
    ev["model_kind"] = "scalar"
    (armo / "eval" / "summary.json").write_text(json.dumps(ev))
    loaded = rm_compare.load_runs([str(moe), str(ppm), str(scalar), str(armo)])
    runs = {r["row"]["dir"]: r["row"] for r in loaded}
    assert {d: (r["kind"], r["kind_source"]) for d, r in runs.items()} == {
        str(moe): ("moe", "config.yaml"), str(ppm): ("pair_pm", "config.yaml"),
        str(scalar): ("scalar", "config.yaml"), str(armo): ("armo", "final/fairhpc_model.json")}
    # the summary's model_kind without a marker
    s2, _ = make_run(tmp_path, "rm", "e", kind="moe", mode="bt", marker=False)
    assert rm_compare.load_rm_run(s2)["row"]["kind_source"] == "eval summary"


def test_labels_tell_seeds_apart_and_hyperparameters_show(tmp_path):
    a, _ = make_run(tmp_path, "rm", "fr_alpha0.1_tau-1_seed0", kind="scalar", mode="fr", seed=0)
    b, _ = make_run(tmp_path, "rm", "fr_alpha0.1_tau-1_seed1", kind="scalar", mode="fr", seed=1)
    c, _ = make_run(tmp_path, "pair_pm", "fc_gamma2_tau0.5_seed0", kind="pair_pm", mode="fc", gamma=2.0,
                    tau=0.5)
    labels = [r["row"]["label"] for r in rm_compare.load_runs([str(c), str(b), str(a)])]
    assert labels == ["scalar RM fr α0.1 τ-1 seed0", "scalar RM fr α0.1 τ-1 seed1", "pair-pm fc γ2 τ0.5"]


def test_bayes_ceiling_of_synthetic_data_and_different_data_flagged(tmp_path):
    data = tmp_path / "eval.jsonl"
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "category": c, "p_chosen": p}
            for c, p in (("harmless", 0.9), ("harmless", 0.3), ("helpful", 0.6), ("honest", 0.8))]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, _ = make_run(tmp_path, "rm", "bt_seed0", kind="scalar", mode="bt", data=str(data))
    b, _ = make_run(tmp_path, "armo", "bt_seed0", kind="armo", mode="bt", data=str(data), extra=armo_extra(0))
    out = tmp_path / "out"
    rm_compare.compare([str(a), str(b)], str(out))
    df = read_csv(out)
    assert df["data_oracle_accuracy"].tolist() == [pytest.approx((0.9 + 0.7 + 0.6 + 0.8) / 4)] * 2
    assert df["data_oracle_accuracy[harmless]"].tolist() == [pytest.approx(0.8)] * 2
    md = (out / "comparison.md").read_text()
    assert "| *Bayes ceiling of the data* |  | 0.750 |" in md and "different data" not in md
    c, _ = make_run(tmp_path, "pair_pm", "bt_seed0", kind="pair_pm", mode="bt", data="other.jsonl")
    rm_compare.compare([str(a), str(c)], str(tmp_path / "out2"))
    md = (tmp_path / "out2" / "comparison.md").read_text()
    assert "**The runs were scored on different data**" in md and "Bayes ceiling" not in md


# ------------------------------------------------------------------------------------------ the workflow
def workflow_config(path: str, **changes) -> dict:
    """config.yaml with a workflow config laid over it, as Snakemake does with --configfile."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(cfg, yaml.safe_load((REPO / path).read_text()))
    update_config(cfg, copy.deepcopy(changes))
    return cfg


def test_the_rule_collects_each_run_of_the_named_grids_once():
    cfg = workflow_config("configs/workflows/reward_models.yaml")
    plan = wf.plan(cfg, REPO)
    studies = rm_compare.plan_studies(plan, cfg["rm_comparison"]["grids"])
    assert list(studies) == [("tiny", "armo-synthetic")]
    runs = studies[("tiny", "armo-synthetic")]
    assert sorted((r.task, r.point) for r in runs) == sorted(
        [("rm", p) for p in ("bt_seed0", "fr_alpha0.1_tau-1_seed0", "bt_headmoe_seed0",
                             "fr_alpha0.1_tau-1_headmoe_seed0")]
        + [("pair_pm", p) for p in ("bt_seed0", "fr_alpha0.1_tau-1_seed0", "fc_gamma0.5_tau-1_seed0")]
        + [("armo", p) for p in ("bt_seed0", "fr_alpha0.1_tau-1_seed0")])
    # every kind reads the same held-out pairs
    assert {r.eval_data for r in runs} == {"results/reward_models/armo/data/eval.jsonl"}
    inputs = rm_compare.study_inputs(studies, "tiny", "armo-synthetic")
    assert len(inputs) == 18 and all(f.endswith("summary.json") for f in inputs)
    # a grid named twice, or two grids sharing a run: each run once
    assert len(rm_compare.plan_studies(plan, ["rm", "rm", "armo"])[("tiny", "armo-synthetic")]) == 4
    with pytest.raises(wf.WorkflowConfigError, match="no grid of rm_comparison.grids trains model 'x'"):
        rm_compare.study_runs(studies, "x", "armo-synthetic")


def test_the_rule_refuses_grids_it_cannot_compare():
    plan = wf.plan(workflow_config("config.yaml"), REPO)
    with pytest.raises(wf.WorkflowConfigError, match=r"rm_comparison.grids\[1\]: 'nope' is not a grid"):
        rm_compare.plan_studies(plan, ["rm", "nope"])
    with pytest.raises(wf.WorkflowConfigError, match="grid 'dpo' trains task dpo"):
        rm_compare.plan_studies(plan, ["dpo"])
    cfg = workflow_config("configs/workflows/reward_models.yaml")
    cfg["grids"][0]["eval"] = {"enabled": False}
    with pytest.raises(wf.WorkflowConfigError, match="grid 'rm' has eval.enabled: false"):
        rm_compare.plan_studies(wf.plan(cfg, REPO), ["rm"])


def test_schema_takes_rm_comparison_and_checks_it():
    cfg = workflow_config("config.yaml")
    wf.check_schema(copy.deepcopy(cfg), REPO)  # absent: off
    wf.check_schema({**copy.deepcopy(cfg), "rm_comparison": {"grids": ["rm"]}}, REPO)
    for bad, needle in (({"grids": "rm"}, "is not of type 'array'"), ({"grids": []}, "should be non-empty"),
                        ({"grid": ["rm"]}, "'grids' is a required property")):
        with pytest.raises(wf.WorkflowConfigError, match=needle):
            wf.check_schema({**copy.deepcopy(cfg), "rm_comparison": bad}, REPO)


DRY = {
    # data, ops, 2 embed shards, gather, regress, 9 reward models trained and scored in their job,
    # 4 study reports and the comparison
    "configs/workflows/reward_models.yaml": {
        "armo_make_data": 1, "build_ops": 1, "armo_embed": 2, "armo_gather": 1, "armo_regress": 1,
        "train_and_evaluate": 9, "report_study": 4, "rm_comparison": 1, "all": 1},
    # the hub fetch on the submit host, 16 embed shards of the 8B backbone, 3 modes x 4 kinds
    "configs/workflows/reward_models_paper.yaml": {
        "fetch_hub": 1, "build_ops": 1, "armo_embed": 16, "armo_gather": 1, "armo_regress": 1,
        "train_and_evaluate": 12, "report_study": 4, "rm_comparison": 1, "all": 1},
}


@pytest.mark.parametrize("path", sorted(DRY))
def test_dry_run_job_counts(path):
    with tempfile.TemporaryDirectory() as wd:
        res = smk("-n", "-p", "-d", wd, "--configfile", path, timeout=300)
    assert job_counts(res.stdout) == DRY[path]
    cmd = next(ln for ln in res.stdout.splitlines() if "fairhpc report-rm-kinds --runs " in ln)
    assert cmd.count("/runs/") == DRY[path]["train_and_evaluate"]
    assert "/reports/rm_comparison/" in cmd
    if path.endswith("_paper.yaml"):  # GPU jobs: 8 ranks for the trained models, one GPU per embed shard
        assert "gres=gpu:8" in res.stdout and "gres=gpu:1" in res.stdout
        assert "model.name_or_path=sfairXC/FsfairX-LLaMA3-RM-v0.1" in res.stdout
        assert "model.name_or_path=meta-llama/Meta-Llama-3-8B-Instruct" in res.stdout


@pytest.mark.slow
def test_demo_workflow_compares_the_four_kinds(tmp_path):
    """configs/workflows/reward_models.yaml run by Snakemake into tmp_path: the comparison holds one row per
    run of the four kinds, each above chance, with ArmoRM's gate weights."""
    cfg = str(REPO / "configs" / "workflows" / "reward_models.yaml")
    smk("--cores", "2", "--configfile", cfg, "-d", str(tmp_path), timeout=1500)
    out = tmp_path / "results" / "reward_models" / "reports" / "rm_comparison" / "tiny" / "armo-synthetic"
    assert sorted(p.name for p in out.iterdir()) == sorted(rm_compare.FILES)
    df = read_csv(out)
    assert sorted(df["kind"]) == sorted(["scalar"] * 2 + ["moe"] * 2 + ["pair_pm"] * 3 + ["armo"] * 2)
    assert df["dir"].is_unique and len(df) == 9
    assert df["n"].eq(400).all() and df["data"].nunique() == 1
    # above chance by more than 3 standard errors (0.5 + 3 * 0.025), below the data's Bayes ceiling (+ noise)
    assert (df["accuracy"] > 0.575).all(), df[["label", "accuracy"]]
    assert (df["accuracy"] < df["data_oracle_accuracy"] + 0.05).all()
    for _, row in df.iterrows():  # the numbers are those of each run's own summary
        ev = json.loads((tmp_path / row["dir"] / "eval" / "summary.json").read_text())
        assert row["accuracy"] == ev["metrics"]["accuracy"] and row["cat_jain"] == ev["metrics"]["cat_jain"]
    armo = df[df["kind"] == "armo"]
    # the gate puts most weight on the deciding objective of each category
    assert (armo["gate[harmless][safety]"] > 0.5).all() and (armo["gate[honest][correctness]"] > 0.5).all()
    assert df[df["kind"] != "armo"].filter(like="gate[").isna().all().all()

"""`fairhpc grid-plan`: jobs and GPU-hours of the paper grids against hand counts."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fairhpc import gridplan
from fairhpc import workflow as wf

REPO = Path(__file__).resolve().parents[1]


def plan(*files):
    return wf.plan(gridplan.workflow_config([str(REPO / f) for f in files]), REPO)


def test_reward_model_paper_grid_gpu_hours_by_hand():
    c = gridplan.cost(plan("configs/grids/rm.yaml"))
    rows = {r["grid"]: r for r in c["grids"]}
    # rm-main: 2 bases x (bt, fr, fc) = 6 runs, each 1 node x 8 GPUs x 1440 min = 192 GPU-h
    assert rows["rm-main"]["train_jobs"] == 6 and rows["rm-main"]["train_gpu_hours"] == 6 * 192
    # the tau ablation: fr x 5 taus + fc x 3 taus = 8 runs; fr and fc at tau -1 are runs of rm-main
    assert rows["rm-tau-ablation"]["train_jobs"] == 8
    assert c["total"]["train_jobs"] == 12 and c["total"]["train_gpu_hours"] == 12 * 192
    # evaluation: reward models are scored in their training job; one RewardBench job (1 GPU x 4 h) per run
    assert c["total"]["eval_jobs"] == 12 and c["total"]["eval_gpu_hours"] == 12 * 4
    assert c["total"]["gpu_hours"] == 2304 + 48


def test_dpo_paper_grid_gpu_hours_by_hand():
    c = gridplan.cost(plan("configs/grids/dpo.yaml"))
    # 2 bases x (dpo, fr, fc) = 6 runs x 8 GPUs x 24 h; one eval-policy job each, 1 GPU x 8 h
    assert c["total"]["train_jobs"] == 6 and c["total"]["train_gpu_hours"] == 6 * 8 * 24
    assert c["total"]["eval_jobs"] == 6 and c["total"]["eval_gpu_hours"] == 6 * 8
    assert {r["nodes_per_train_job"] for r in c["grids"]} == {1}
    # the paper's policy benchmarks of each policy: AlpacaEval and MT-Bench answers (1 GPU x 4 h each), their
    # API judges (no GPU), lm-eval (1 GPU x 8 h)
    stages = {s["rule"]: s for s in c["stages"]}
    assert {r: s["jobs"] for r, s in stages.items()} == dict.fromkeys(
        ("alpaca_eval_generate", "alpaca_eval_judge", "mt_bench_generate", "mt_bench_judge", "lm_eval"), 6)
    assert c["total"]["stage_gpu_hours"] == 6 * 4 + 6 * 4 + 6 * 8
    assert c["total"]["gpu_hours"] == 1152 + 48 + 96


@pytest.mark.parametrize("path", ["configs/grids/dpo.yaml", "configs/workflows/reward_models_paper.yaml",
                                  "configs/workflows/rlchf_paper.yaml", "configs/workflows/pg_paper.yaml"])
def test_plan_counts_what_snakemake_schedules(path):
    """Every job that asks the cluster for a GPU in `snakemake -n` is counted by the plan, with the same GPUs
    and time limit, and the plan counts no job that Snakemake does not schedule."""
    from test_workflow import dry, job_blocks

    c = gridplan.cost(plan(path))
    want = {}
    out = re.sub(r"\n[ \t]+(?=(?:local)?rule \w+:)", "\n", dry("--configfile", path).stdout)  # grouped jobs too
    for b in job_blocks(out):
        r = b["resources"]
        gpus = int(r["gres"].split(":")[1]) if r.get("gres", "None") != "None" else 0
        if gpus:
            key = (b["rule"], gpus * int(r.get("nodes", 1)), int(r["runtime"]))
            want[key] = want.get(key, 0) + 1
    got = {}
    for s in c["stages"]:
        if s["gpus_per_job"]:
            key = (s["rule"], s["gpus_per_job"], round(s["hours_per_job"] * 60))
            got[key] = got.get(key, 0) + s["jobs"]
    train = {k: sum(1 for _ in v) for k, v in plan(path).grids.items()}
    assert sum(v for (rule, *_), v in want.items() if rule in ("train", "train_and_evaluate")) == \
        c["total"]["train_jobs"], train
    want_stages = {k: v for k, v in want.items() if k[0] not in ("train", "train_and_evaluate", "evaluate",
                                                                  "eval_bias_benchmark")}
    assert got == want_stages


def test_embedded_default_asks_for_no_gpu():
    c = gridplan.cost(plan())
    assert c["total"]["gpu_hours"] == 0 and c["total"]["train_jobs"] == 18 and c["total"]["eval_jobs"] == 8


def test_command_prints_table_and_json(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fairhpc.cli", "grid-plan", "--configfile",
                          str(REPO / "configs/grids/rm.yaml")], capture_output=True, text=True, check=True).stdout
    assert "| rm-main | rm | 6 | 1 x 8 | 24 | 1152 |" in out and "GPU-hours requested (first attempts): 2352" in out
    js = subprocess.run([sys.executable, "-m", "fairhpc.cli", "grid-plan", "--json"], capture_output=True,
                        text=True, check=True).stdout
    assert json.loads(js)["total"]["train_jobs"] == 18


@pytest.mark.parametrize("content, needle", [(None, "file not found"), ("grids: [", "not valid YAML"),
                                             ("- a\n- b\n", "expected a mapping")])
def test_bad_configfile_is_named(tmp_path, content, needle):
    f = tmp_path / "grid.yaml"
    if content is not None:
        f.write_text(content)
    res = subprocess.run([sys.executable, "-m", "fairhpc.cli", "grid-plan", "--configfile", str(f)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 2 and str(f) in res.stderr and needle in res.stderr

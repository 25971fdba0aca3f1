"""`fairhpc grid-plan`: jobs and GPU-hours of the paper grids against hand counts."""

import json
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

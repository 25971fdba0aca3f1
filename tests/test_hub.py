"""Offline compute nodes (fairhpc/hub.py, rules/hub.smk): the hub items of a grid, the DAG-time refusal of a
grid whose model is not in the cache, and a real training run under HF_HUB_OFFLINE=1 from a local cache."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_train import run_cli

from fairhpc import hub
from fairhpc import workflow as wf
from fairhpc.gridplan import workflow_config

REPO = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef0123456789abcdef01234567"


def put_in_cache(cache: Path, name: str, files_from: Path, kind: str = "models") -> None:
    """Lay `files_from` out as the hub cache does: CACHE/hub/<kind>--org--name/{refs/main, snapshots/SHA/}."""
    repo = cache / "hub" / f"{kind}--{name.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    snap = repo / "snapshots" / SHA
    snap.mkdir(parents=True)
    for f in files_from.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory):
    import torch

    from fairhpc.config import TinyModelConfig
    from fairhpc.models import build_tiny_reward_model
    from fairhpc.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("tiny-rm")
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_reward_model(TinyModelConfig(hidden_size=32, num_hidden_layers=1, intermediate_size=64),
                                    tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def offline_grid(tmp_path, cache, fetch=False):
    cfg = {
        "results": str(tmp_path / "results"),
        "hub": {"offline": True, "fetch": fetch, "cache": str(cache)},
        "models": {"hubrm": {"overrides": {"model.name_or_path": "org/tiny-rm"}}},
        "grids": [{"name": "g", "task": "rm", "base_config": "configs/runs/rm_tiny.yaml", "models": ["hubrm"],
                   "datasets": ["synthetic"], "seeds": [0], "modes": {"bt": {}}}],
    }
    path = tmp_path / "offline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_items_of_the_paper_grids():
    names = {(it["kind"], it["name"]) for it in hub.items(wf.plan(workflow_config(
        [str(REPO / "configs/grids/rm.yaml")]), REPO))}
    assert {("model", "RLHFlow/LLaMA3-SFT"), ("model", "Qwen/Qwen2.5-7B-Instruct"),
            ("dataset", "Anthropic/hh-rlhf"), ("dataset", "allenai/reward-bench"),
            ("dataset", "allenai/pref-test-sets")} <= names
    # the embedded default names nothing on the hub: tiny models, synthetic data
    assert hub.items(wf.plan(workflow_config([]), REPO)) == []


@pytest.mark.parametrize("path, expected", [
    ("configs/workflows/reward_models_paper.yaml", {("dataset", "RLHFlow/ArmoRM-Multi-Objective-Data-v0.1")}),
    ("configs/workflows/pg_paper.yaml", {("model", "facebook/opt-350m"),
                                         ("model", "textattack/bert-base-uncased-yelp-polarity")}),
    ("configs/workflows/rlchf_paper.yaml", {("model", "google/gemma-2-27b-it"),
                                            ("model", "meta-llama/Llama-3.1-8B-Instruct")}),
])
def test_items_of_the_systems_paper_workflows(path, expected):
    """What the systems read besides the run's model: ArmoRM's ratings, the reward classifier of policy
    gradient, RLCHF's judge and candidate policy."""
    names = {(it["kind"], it["name"]) for it in hub.items(wf.plan(workflow_config([str(REPO / path)]), REPO))}
    assert expected <= names, names


def test_missing_model_fails_at_dag_time_naming_it(tmp_path):
    cfg = offline_grid(tmp_path, tmp_path / "empty-cache")
    with pytest.raises(wf.WorkflowConfigError, match="model org/tiny-rm"):
        wf.plan(workflow_config([str(cfg)]), REPO)
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(cfg)], cwd=REPO,
                         capture_output=True, text=True, check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "org/tiny-rm" in out and "hub.fetch is false" in out, out[-2000:]
    assert "rule train" not in out  # nothing was scheduled


def test_cached_model_passes_and_trains_offline(tmp_path, tiny_rm_dir):
    cache = tmp_path / "hf"
    put_in_cache(cache, "org/tiny-rm", tiny_rm_dir)
    cfg = offline_grid(tmp_path, cache)
    plan = wf.plan(workflow_config([str(cfg)]), REPO)  # no refusal: the model is cached
    assert plan.hub_items() == [{"kind": "model", "name": "org/tiny-rm",
                                 "used_by": f"{tmp_path}/results/runs/rm/hubrm/synthetic/bt_seed0: model.name_or_path"}]
    assert not plan.fetches_hub() and hub.job_env(plan.hub) == \
        f"export HF_HOME={cache} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1; "
    # the job's command under the job's environment: loads org/tiny-rm from the cache with no network
    out = tmp_path / "run"
    res = run_cli(["train-rm", "--config", str(REPO / "configs/runs/rm_tiny.yaml"), "model.name_or_path=org/tiny-rm",
                   "data.synthetic.n_train=32", "data.synthetic.n_eval=16", "train.max_steps=2",
                   f"output_dir={out}"],
                  env_extra={"HF_HOME": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    # the same name without the cache fails offline, naming it
    res = run_cli(["train-rm", "--config", str(REPO / "configs/runs/rm_tiny.yaml"), "model.name_or_path=org/tiny-rm",
                   "train.max_steps=1", f"output_dir={tmp_path / 'run2'}"],
                  env_extra={"HF_HOME": str(tmp_path / "none"), "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2 and "model.name_or_path: 'org/tiny-rm' is a hub name, HF_HUB_OFFLINE" in res.stderr, res.stderr[-2000:]


def test_fetch_records_the_commit_of_each_item(tmp_path, tiny_rm_dir):
    cache = tmp_path / "hf"
    put_in_cache(cache, "org/tiny-rm", tiny_rm_dir)
    items = [{"kind": "model", "name": "org/tiny-rm", "used_by": "x"}]
    out = tmp_path / "fetched.json"
    res = run_cli(["fetch-hub", "--items", json.dumps(items), "--cache", str(cache), "--out", str(out)],
                  env_extra={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(out.read_text())["items"][0]["revision"] == SHA
    missing = [*items, {"kind": "model", "name": "org/absent", "used_by": "grids[0]"}]
    res = run_cli(["fetch-hub", "--items", json.dumps(missing), "--cache", str(cache), "--check-only"])
    assert res.returncode == 2 and "model org/absent (used by grids[0])" in res.stderr
    assert "org/tiny-rm" not in res.stderr.split("cache")[-1]


def test_paper_grid_jobs_run_offline():
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--configfile", "configs/grids/dpo.yaml"],
                         cwd=REPO, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    train_cmds = [line for line in res.stdout.splitlines() if "fairhpc train-dpo" in line]
    assert len(train_cmds) == 6 and all("HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1" in c for c in train_cmds)
    assert "rule fetch_hub:" in res.stdout

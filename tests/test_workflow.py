"""The Snakemake workflow as Snakemake runs it: a dry run of each config, its error on a bad config, lint, the
profiles, the prepare_data rule, and a training job stopped by SIGTERM and resumed by Snakemake's retry."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def dry(*args, timeout=300):
    """A dry run in a fresh working directory (outputs already made in the repository do not count)."""
    import tempfile

    with tempfile.TemporaryDirectory() as wd:
        return smk("-n", "-p", "-d", wd, *args, timeout=timeout)


def smk(*args, cwd=REPO, timeout=600, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the `fairhpc` command
    res = subprocess.run(["timeout", str(timeout), *SNAKEMAKE, *args], check=False, cwd=cwd, env=env, capture_output=True,
                         text=True)
    if check:
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return res


def job_counts(out: str) -> dict:
    """The 'Job stats' table of a dry run -> {rule: count}."""
    table = out[out.index("Job stats:"):]
    counts = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        if parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def job_blocks(out: str) -> list[dict]:
    """Every 'rule X:' block of a dry run (-p) as {rule, wildcards, resources: dict}."""
    blocks = []
    for chunk in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(?:local)?rule (\w+):", chunk)
        if not m:
            continue
        b = {"rule": m.group(1), "text": chunk, "resources": {}}
        r = re.search(r"^\s+resources: (.*)$", chunk, re.MULTILINE)
        if r:
            b["resources"] = dict(kv.split("=", 1) for kv in re.split(r", (?=\w+=)", r.group(1)))
        w = re.search(r"^\s+wildcards: (.*)$", chunk, re.MULTILINE)
        b["wildcards"] = dict(kv.split("=", 1) for kv in w.group(1).split(", ")) if w else {}
        blocks.append(b)
    return blocks


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------ each config
# the jobs of a dry run of each workflow config; the grid behind them is checked in test_workflow_units.py
DAGS = {
    # config.yaml: 10 reward models trained and scored in one job each (train_and_evaluate), 8 DPO policies
    # trained, then evaluated in a job of their own; one report per grid; the ops build before training
    "config.yaml": {"make_data": 1, "build_ops": 1, "train_and_evaluate": 10, "train": 8, "evaluate": 8,
                    "report_study": 2, "all": 1},
    # 12 reward models (the ablation shares 2 with the main grid), each also on RewardBench; 3 studies
    "configs/grids/rm.yaml": {"prepare_data": 2, "fetch_hub": 1, "build_ops": 1, "train_and_evaluate": 12,
                              "eval_bias_benchmark": 12, "report_study": 3, "report_bias_benchmark": 3, "all": 1},
    # and the paper's policy benchmarks of each policy: AlpacaEval 2 and MT-Bench (generate, judge), lm-eval
    "configs/grids/dpo.yaml": {"prepare_data": 2, "fetch_hub": 1, "build_ops": 1, "train": 6, "evaluate": 6, "report_study": 2,
                               "policy_benchmarks_fetch": 1, "alpaca_eval_generate": 6, "alpaca_eval_judge": 6,
                               "mt_bench_generate": 6, "mt_bench_judge": 6, "lm_eval": 6,
                               "policy_benchmarks_report": 2, "all": 1},
}
TRAIN_RULES = ("train", "train_and_evaluate")


@pytest.mark.parametrize("path", sorted(DAGS))
def test_dry_run_of_each_config(path):
    assert sorted(DAGS) == sorted(["config.yaml", *(p.relative_to(REPO).as_posix()
                                                    for p in (REPO / "configs" / "grids").glob("*.yaml"))])
    res = dry(*([] if path == "config.yaml" else ["--configfile", path]))
    assert job_counts(res.stdout) == DAGS[path]
    blocks = job_blocks(res.stdout)
    train = [b for b in blocks if b["rule"] in TRAIN_RULES]
    logs = set()
    for b in train:  # every training job resumes, runs its task's command and writes a log of its own
        task = b["wildcards"]["task"]
        assert f"fairhpc train-{task} --config " in b["text"] and "--resume --on-mismatch restart" in b["text"]
        # reward models are scored in the same job, with the command rule evaluate would run
        assert ("--then-eval 'eval-rm --model " in b["text"]) == (task == "rm")
        assert f"objective.mode={b['wildcards']['point'].split('_')[0]}" in b["text"]
        logs.add(re.search(r"^\s+log: (\S+)", b["text"], re.MULTILINE).group(1))
    assert len(logs) == len(train)
    for b in blocks:  # the resources of the grid reach the job
        if path != "config.yaml" and b["rule"] in TRAIN_RULES:
            r = b["resources"]
            assert (r["gres"], r["nodes"], r["tasks_per_node"], r["mpi"], r["slurm_extra"]) == \
                ("gpu:8", "1", "8", "srun", "--signal=TERM@600"), r
            assert b["text"].count("exec srun --nodes=1 --ntasks=8 --ntasks-per-node=8") == 1
        if path != "config.yaml" and b["rule"] in ("evaluate", "eval_bias_benchmark"):
            assert b["resources"]["gres"] == "gpu:1"
        if b["rule"] == "prepare_data":
            assert "fairhpc prepare-data --out " in b["text"]
        if b["rule"] == "evaluate":
            assert b["wildcards"]["task"] == "dpo" and "fairhpc eval-policy " in b["text"]


def test_dpo_eval_waits_for_its_judges():
    res = dry("results/runs/dpo/tiny/synthetic/fr_alpha0.1_tau-1_seed1/eval/summary.json")
    trained = sorted("/".join(b["wildcards"][k] for k in ("task", "point"))
                     for b in job_blocks(res.stdout) if b["rule"] in TRAIN_RULES)
    # the policy, the bt reward model that judges it and the seed-0 dpo policy it is compared with
    assert trained == ["dpo/dpo_seed0", "dpo/fr_alpha0.1_tau-1_seed1", "rm/bt_seed0"]
    assert job_counts(res.stdout)["evaluate"] == 1


# the config checks themselves: test_workflow_units.py; here only that Snakemake stops with their message
BAD = [
    ({"grids": [{"name": "g", "task": "rm", "base_config": "configs/runs/rm_tiny.yaml", "models": ["tiny"],
                 "datasets": ["synthetic"], "seeds": [0], "modes": {"fc": {"gamma": [0.5], "tau": [-1, 2]}}}]},
     ["grids[0] (g).modes.fc", "tau = 2", "tau < 1"]),
    ({"resultz": "out"}, ["Additional properties are not allowed ('resultz' was unexpected)"]),
]


@pytest.mark.parametrize("change,needles", BAD, ids=[n[-1][:40] for _, n in BAD])
def test_bad_config_stops_snakemake_naming_key_and_value(tmp_path, change, needles):
    cfg = write_config(tmp_path / "bad.yaml", change)
    res = smk("-n", "-d", str(tmp_path), "--configfile", str(cfg), check=False, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    for needle in needles:
        assert needle in out, (needle, out[-3000:])
    assert "Job stats" not in out  # rejected before any job was planned


# ------------------------------------------------------------------------------------ lint and profiles
@pytest.mark.parametrize("configfile", ["config.yaml", *sorted(p.relative_to(REPO).as_posix() for p in
                                                              (REPO / "configs" / "workflows").glob("*.yaml"))])
def test_lint_is_clean(configfile):
    # each system's workflow config switches its stage rules on (rules/armo.smk, rlchf.smk, ...)
    res = smk("--lint", *([] if configfile == "config.yaml" else ["--configfile", configfile]), check=False,
              timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "Congratulations, your workflow is in a good condition!" in out, out[-4000:]


def test_slurm_profile_is_found_from_the_repository_root_and_sets_partition_and_account():
    # Snakemake looks for `--profile slurm` in ./slurm, not in ./profiles: ./slurm links to profiles/slurm
    assert (REPO / "slurm").resolve() == (REPO / "profiles" / "slurm").resolve()
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    # no profile that Snakemake loads by default may carry executor settings
    assert not (REPO / "profiles" / "default").exists()
    res = dry("--profile", "slurm", "results/runs/rm/tiny/synthetic/bt_seed0/summary.json")
    block = next(b for b in job_blocks(res.stdout) if b["rule"] in TRAIN_RULES)
    res_ = block["resources"]
    assert res_["slurm_partition"] == profile["default-resources"]["slurm_partition"]
    assert res_["slurm_account"] == profile["default-resources"]["slurm_account"]
    assert res_["runtime"] == "20" and res_["mem_mb"] == "3000"  # from the grid, not the profile defaults
    # partition and account are written in one place only
    hits = [p for p in REPO.rglob("*.yaml") if ".venv" not in p.parts and "slurm_account" in p.read_text()]
    assert [p.relative_to(REPO) for p in hits] == [Path("profiles/slurm/config.yaml")]


def test_local_profile_runs_the_default(tmp_path):
    res = smk("--profile", "profiles/local", "-n", "-d", str(tmp_path))
    counts = job_counts(res.stdout)
    assert counts["train"] + counts["train_and_evaluate"] == 18


def test_conda_env_pins_satisfy_pyproject():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    from packaging.requirements import Requirement

    deps = [Requirement(d) for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    env = yaml.safe_load((REPO / "envs" / "fairhpc.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = {}
    for line in pip:
        name, version = line.split("==")
        pins[name.lower()] = version
    for req in deps:
        assert req.name.lower() in pins, f"{req.name} of pyproject.toml is missing from envs/fairhpc.yaml"
        assert req.specifier.contains(pins[req.name.lower()], prereleases=True), (req, pins[req.name.lower()])


# ------------------------------------------------------------------------------ SIGTERM and resumption
RESUME_CFG = {
    "datasets": {"synthetic": {"make": {"n_train": 480, "n_eval": 64}}},
    "grids": [{"name": "resume", "task": "rm", "base_config": "configs/runs/rm_tiny.yaml", "models": ["tiny"],
               "datasets": ["synthetic"], "seeds": [3], "modes": {"fr": {"alpha": [0.5], "tau": [-1]}},
               "overrides": {"train.save_steps": 4, "train.keep_checkpoints": 50, "train.micro_batch_size": 8,
                             "train.epochs": 1, "train.eval_steps": 0},
               "eval": {"enabled": False}}],
}
RUN = "results/runs/rm/tiny/synthetic/fr_alpha0.5_tau-1_seed3"


def _trainer_pid(workdir: Path):
    """PID of the `fairhpc train-rm` process whose working directory is `workdir` (ours alone)."""
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
            if b"train-rm" in cmd and Path(os.readlink(p / "cwd")) == workdir:
                return int(p.name)
        except OSError:
            continue
    return None


def _final_state(run_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


@pytest.mark.slow
def test_sigterm_mid_training_resumes_on_retry_and_matches_uninterrupted(tmp_path):
    import torch

    cfg = write_config(tmp_path / "resume.yaml", RESUME_CFG)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    killed.mkdir(), clean.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = ["timeout", "900", *SNAKEMAKE, "--cores", "1", "--retries", "1", "--configfile", str(cfg), "-d"]
    proc = subprocess.Popen([*cmd, str(killed)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    latest = killed / RUN / "checkpoints" / "latest"
    t0 = time.time()
    while not (latest.exists() and int(latest.read_text().strip()[len("global_step"):]) >= 8):
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.time() - t0 < 600, "no checkpoint appeared"
        time.sleep(0.1)
    pid = _trainer_pid(killed)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)  # what SLURM sends at the time limit or on preemption
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out[-4000:]
    assert "attempt 2" in out or "Trying to restart job" in out, out[-4000:]

    log = (killed / "results/logs/train/rm/tiny/synthetic/fr_alpha0.5_tau-1_seed3.log").read_text()
    assert "== attempt 1 " in log and "== attempt 2 " in log
    assert "stopped by signal" in log  # attempt 1 checkpointed on the signal and exited
    assert re.search(r"resumed from global_step\d+", log)  # attempt 2 continued from it
    steps = [r["step"] for r in map(json.loads, (killed / RUN / "metrics.jsonl").read_text().splitlines())
             if r["split"] == "train"]
    assert steps == sorted(set(steps))  # no step twice after resuming

    smk("--cores", "1", "--configfile", str(cfg), "-d", str(clean), timeout=900)
    a, b = _final_state(killed / RUN), _final_state(clean / RUN)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    sa = json.loads((killed / RUN / "summary.json").read_text())
    sb = json.loads((clean / RUN / "summary.json").read_text())
    assert sa["steps"] == sb["steps"] and sa["eval"]["accuracy"] == pytest.approx(sb["eval"]["accuracy"], abs=1e-6)

    # the HTML report of the finished workflow holds the grid's table and plots
    html = tmp_path / "report.html"
    smk("--configfile", str(cfg), "-d", str(clean), "--report", str(html), timeout=300)
    text = html.read_text(errors="replace")
    for name in ("results.csv", "accuracy_vs_fairness.png", "fairness_over_training.png", "reward_by_category.png"):
        assert name in text, name


# ------------------------------------------------------------------------------------ data preparation
def test_prepare_data_rule_runs_the_command_on_each_part(tmp_path):
    """The rule's command line (one JSON argument per part) reaches `fairhpc prepare-data`; what the command
    does with the parts is tests/test_prepare.py."""
    from fairhpc.formats import load_preferences

    src = tmp_path / "src with space"
    src.mkdir()
    hh = {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"}
    (src / "helpful-base.jsonl").write_text(json.dumps(hh) + "\n")
    shp = [{"post_id": "p1", "domain": "askscience", "history": "why's the sky blue", "human_ref_A": f"A{i}",
            "human_ref_B": f"B{i}", "labels": 1, "score_ratio": 3.0} for i in range(3)]
    (src / "shp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shp))
    cfg = write_config(tmp_path / "prep.yaml", {"datasets": {"mix": {"prepare": {"train": [
        {"kind": "hh_rlhf", "source": str(src / "helpful-base.jsonl"), "split": "train"},
        {"kind": "shp", "source": str(src / "shp.jsonl"), "split": "train", "max_pairs_per_prompt": 2}]}}}})
    smk("--cores", "1", "-d", str(tmp_path / "wd"), "results/data/mix/train.jsonl", "--configfile", str(cfg))
    exs, _ = load_preferences(str(tmp_path / "wd" / "results" / "data" / "mix" / "train.jsonl"))
    assert [e.category for e in exs] == ["helpful", "shp/askscience", "shp/askscience"]
    assert exs[1].prompt[0]["content"] == "why's the sky blue"
    log = (tmp_path / "wd" / "results" / "logs" / "prepare_data" / "mix" / "train.log").read_text().splitlines()
    assert [json.loads(line)["kept"] for line in log if line.startswith("{")] == [1, 2]


# ------------------------------------------------------------------------------ a changed setting reruns
LR_CFG = {
    "datasets": {"synthetic": {"make": {"n_train": 96, "n_eval": 32}}},
    "grids": [{"name": "lr", "task": "rm", "base_config": "configs/runs/rm_tiny.yaml", "models": ["tiny"],
               "datasets": ["synthetic"], "seeds": [0], "modes": {"bt": {}},
               "overrides": {"train.max_steps": 6, "train.save_steps": 3, "train.warmup_steps": 0,
                             "train.scheduler": "constant", "train.lr": 1e-3, "train.log_steps": 1}}],
}
LR_RUN = "results/runs/rm/tiny/synthetic/bt_seed0"


@pytest.mark.slow
def test_changing_a_setting_outside_the_run_name_retrains_the_run(tmp_path):
    """train.lr is not part of the run's directory name: Snakemake reruns the job ("params changed"), the
    trainer finds a run of another configuration, moves it aside and trains the new one from scratch."""
    cfg = write_config(tmp_path / "lr.yaml", LR_CFG)
    wd = tmp_path / "wd"
    smk("--cores", "1", "--configfile", str(cfg), "-d", str(wd), timeout=900)
    old = _final_state(wd / LR_RUN)
    changed = json.loads(json.dumps(LR_CFG))
    changed["grids"][0]["overrides"]["train.lr"] = 3e-3
    write_config(cfg, changed)
    res = smk("--cores", "1", "--configfile", str(cfg), "-d", str(wd), timeout=900)
    assert "train_and_evaluate" in res.stdout + res.stderr  # the job was rerun
    new = _final_state(wd / LR_RUN)
    assert any(not (old[k] == new[k]).all() for k in old)
    rows = [json.loads(line) for line in (wd / LR_RUN / "metrics.jsonl").read_text().splitlines()]
    assert {r["lr"] for r in rows if r["split"] == "train"} == {3e-3}
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert yaml.safe_load((wd / LR_RUN / "config.yaml").read_text())["train"]["lr"] == 3e-3
    aside = list((wd / LR_RUN).parent.glob("bt_seed0.superseded-*"))
    assert len(aside) == 1 and _final_state(aside[0]).keys() == old.keys()
    assert "train.lr: 0.001 -> 0.003" in (wd / LR_RUN / "train.log").read_text()

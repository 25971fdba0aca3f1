"""The workflow on a real single-node SLURM (slurmctld, slurmd, slurmdbd with MariaDB, munge), brought up by
the project's own scripts/slurm/up.sh and stopped by scripts/slurm/down.sh (only the daemons it started).

Needs root and either the SLURM Debian packages or apt-get to install them (CI: a fresh Debian 12 machine as
root); skipped otherwise, with the reason.  Everything goes through `snakemake --profile slurm` typed in the
repository root, as in the README.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
UP, DOWN = REPO / "scripts" / "slurm" / "up.sh", REPO / "scripts" / "slurm" / "down.sh"
DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "munged", "mariadbd")
PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())["default-resources"]
DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())

pytestmark = pytest.mark.slow


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: scripts/slurm/up.sh installs Debian packages and starts system daemons"
    if not all(shutil.which(d) or Path("/usr/sbin", d).exists() for d in DAEMONS) and not shutil.which("apt-get"):
        return "SLURM is not installed and apt-get is not available to install it"
    return None


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}/usr/sbin{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def slurm():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    up = subprocess.run(["timeout", "900", str(UP)], check=False, capture_output=True, text=True, env=_env())
    if up.returncode != 0:
        subprocess.run([str(DOWN)], check=False, capture_output=True, text=True)
        pytest.fail(f"scripts/slurm/up.sh failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
    state = Path(os.environ.get("FAIRHPC_SLURM_STATE", "/var/tmp/fairhpc-slurm"))
    started = [line.split() for line in (state / "started").read_text().splitlines()]
    assert {"slurmctld", "slurmd", "slurmdbd"} <= {name for name, _ in started}, started
    for name, pid in started:  # each record is the live daemon of that name
        assert Path(f"/proc/{pid}/comm").read_text().strip() == name, (name, pid)
    try:
        yield
    finally:
        down = subprocess.run(["timeout", "300", str(DOWN)], check=False, capture_output=True, text=True)
        assert down.returncode == 0, down.stdout + down.stderr
        alive = [(n, p) for n, p in started if Path(f"/proc/{p}").exists()
                 and Path(f"/proc/{p}/comm").read_text().strip() == n]
        assert not alive, f"still running after scripts/slurm/down.sh: {alive}"


def snakemake_slurm(workdir: Path, *args, timeout: int = 2400) -> subprocess.CompletedProcess:
    cmd = ["timeout", str(timeout), sys.executable, "-m", "snakemake", "--profile", "slurm", "-d", str(workdir),
           "--slurm-init-seconds-before-status-checks", "5", "--seconds-between-status-checks", "5", *args]
    return subprocess.run(cmd, check=False, cwd=REPO, env=_env(), capture_output=True, text=True)


def submitted_jobs(out: str) -> list[str]:
    return re.findall(r"has been submitted with SLURM jobid (\d+)", out)


def sacct(job_ids) -> list[dict]:
    res = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o",
                          "JobID,State,Partition,Account,Timelimit,ExitCode"], capture_output=True, text=True,
                         env=_env(), check=True)
    keys = ("id", "state", "partition", "account", "timelimit", "exit")
    return [dict(zip(keys, line.split("|"))) for line in res.stdout.splitlines() if line.strip()]


def sacct_when_recorded(job_ids, timeout: float = 120.0) -> list[dict]:
    """Accounting reaches slurmdbd asynchronously: wait until every job has a final state."""
    t0 = time.time()
    while True:
        rows = sacct(job_ids)
        if len(rows) == len(job_ids) and not any(r["state"] in ("PENDING", "RUNNING") for r in rows):
            return rows
        assert time.time() - t0 < timeout, rows
        time.sleep(2)


def test_both_tasks_of_the_default_grid_through_the_slurm_profile(slurm, tmp_path):
    """The embedded default's two grids, cut to two points each and fewer synthetic pairs (CI time; the full
    grid is `make demo`): everything else, base configs, resources, the DPO judges, as in config.yaml."""
    grids = copy.deepcopy(DEFAULT["grids"])
    for g in grids:
        g["seeds"] = [0]
        keep = ("bt", "fc") if g["task"] == "rm" else ("dpo", "fr")
        g["modes"] = {m: ({k: v[:1] for k, v in spec.items()} if spec else spec)
                      for m, spec in g["modes"].items() if m in keep}
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({"datasets": {"synthetic": {"make": {"n_train": 480, "n_eval": 160}}},
                                     "grids": grids}))
    res = snakemake_slurm(tmp_path / "wd", "--configfile", str(small))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    jobs = submitted_jobs(out)
    # local rules (data, ops, reports) run on the submit host; training and evaluation are SLURM jobs:
    # 2 reward models (trained and scored in one job) + 2 DPO policies (trained, then evaluated); the 2 DPO
    # evaluations are rule runs of the group `evaluation`, 2 per allocation (profile group-components):
    # 4 + 1 SLURM jobs for 6 rule runs
    assert len(jobs) == len(set(jobs)) == 5, out[-3000:]
    assert out.count("rule evaluate:") == 2 and out.count("Group job evaluation") == 1, out[-3000:]
    rows = sacct_when_recorded(jobs)
    assert {r["state"] for r in rows} == {"COMPLETED"}, rows
    assert {r["partition"] for r in rows} == {PROFILE["slurm_partition"]}
    assert {r["account"] for r in rows} == {PROFILE["slurm_account"]}
    results = tmp_path / "wd" / "results"
    summaries = list((results / "runs").glob("*/tiny/synthetic/*/summary.json"))
    assert sorted(p.parent.name for p in summaries) == ["bt_seed0", "dpo_seed0", "fc_gamma0.5_tau-1_seed0",
                                                       "fr_alpha0.1_tau-1_seed0"]
    for task in ("rm", "dpo"):
        table = (results / "reports" / task / "tiny" / "synthetic" / "results.csv").read_text().splitlines()
        assert len(table) == 1 + 2
        for png in ("accuracy_vs_fairness.png", "fairness_over_training.png", "reward_by_category.png"):
            assert (results / "reports" / task / "tiny" / "synthetic" / png).stat().st_size > 1000
    # every reward model beats chance on the 160 held-out pairs: 0.6 is 2.5 standard deviations of a coin's
    # accuracy above 0.5 (the labels follow a Bradley-Terry model whose Bayes accuracy is about 0.84)
    accs = [json.loads(p.read_text())["eval"]["accuracy"] for p in (results / "runs" / "rm").rglob("summary.json")
            if p.parent.name != "eval"]
    assert len(accs) == 2 and min(accs) > 0.6, accs


TIME_LIMIT_CFG = {
    "retry_growth": {"runtime": 2},
    "datasets": {"synthetic": {"make": {"n_train": 480, "n_eval": 64}}},
    "grids": [{
        "name": "timelimit", "task": "rm", "base_config": "configs/runs/rm_tiny.yaml", "models": ["tiny"],
        "datasets": ["synthetic"], "seeds": [5], "modes": {"fr": {"alpha": [0.5], "tau": [-1]}},
        # 4000 steps at 10-45 steps/s: still training when the shortened time limit strikes
        "overrides": {"train.max_steps": 4000, "train.save_steps": 100, "train.eval_steps": 0,
                      "train.log_steps": 10},
        "eval": {"enabled": False},
        "resources": {"train": {"runtime": 15, "mem_mb": 3000}},
    }],
}
RUN = "results/runs/rm/tiny/synthetic/fr_alpha0.5_tau-1_seed5"


def _job_in(workdir: Path) -> str | None:
    """The SLURM job running in `workdir` (the executor submits with -D workdir)."""
    res = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%Z"], check=False, capture_output=True, text=True,
                         env=_env())
    for line in res.stdout.splitlines():
        job, wd = line.split("|", 1)
        if Path(wd) == workdir:
            return job
    return None


def test_time_limit_kill_resumes_from_checkpoint_on_retry(slurm, tmp_path):
    """SLURM's own time limit stops a training job mid-run: the job's limit is cut to one minute once
    training is under way (so the kill lands mid-training however long start-up took), SLURM sends SIGTERM
    at the limit, the trainer checkpoints, Snakemake resubmits with twice the runtime, the job resumes, and
    the model equals that of the same run never interrupted."""
    import torch
    from safetensors.torch import load_file

    cfg = tmp_path / "timelimit.yaml"
    cfg.write_text(yaml.safe_dump(TIME_LIMIT_CFG))
    target = f"{RUN}/summary.json"
    cmd = ["timeout", "1800", sys.executable, "-m", "snakemake", "--profile", "slurm",
           "--slurm-init-seconds-before-status-checks", "5", "--seconds-between-status-checks", "5"]
    procs = {name: subprocess.Popen([*cmd, "-d", str(tmp_path / name), target, "--configfile", str(cfg)],
                                    cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
             for name in ("killed", "reference")}
    latest = tmp_path / "killed" / RUN / "checkpoints" / "latest"
    t0 = time.time()
    while not latest.exists():
        assert procs["killed"].poll() is None, procs["killed"].stdout.read()[-4000:]
        assert time.time() - t0 < 900, "no checkpoint appeared"
        time.sleep(0.5)
    job = _job_in(tmp_path / "killed")
    assert job is not None
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=1"], check=True, env=_env())
    outs = {name: p.communicate(timeout=1800)[0] for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, (name, outs[name][-5000:])

    jobs = submitted_jobs(outs["killed"])
    rows = sacct_when_recorded(jobs)
    # attempt 1 ran into its (shortened) limit; the retry got 2 x the runtime and completed
    assert [(r["state"], r["timelimit"]) for r in rows] == [("TIMEOUT", "00:01:00"), ("COMPLETED", "00:30:00")], rows
    ref_rows = sacct_when_recorded(submitted_jobs(outs["reference"]))
    assert [(r["state"], r["timelimit"]) for r in ref_rows] == [("COMPLETED", "00:15:00")]

    log = (tmp_path / "killed" / RUN / "train.log").read_text()
    stop = re.search(r"stopped by signal at step (\d+)", log)
    assert stop, log[-3000:]  # the trainer caught SLURM's SIGTERM and wrote a checkpoint
    assert f"resumed from global_step{stop.group(1)}" in log
    assert "== attempt 1 " in log and "== attempt 2 " in log
    assert 100 <= int(stop.group(1)) < 4000

    a = load_file(str(tmp_path / "killed" / RUN / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "reference" / RUN / "final" / "model.safetensors"))
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    sa = json.loads((tmp_path / "killed" / RUN / "summary.json").read_text())
    sb = json.loads((tmp_path / "reference" / RUN / "summary.json").read_text())
    assert sa["steps"] == sb["steps"] == 4000
    assert sa["eval"]["accuracy"] == pytest.approx(sb["eval"]["accuracy"], abs=1e-6)


def test_srun_launcher_starts_one_rank_per_task(slurm, tmp_path):
    """`launcher: srun` (the multi-GPU layout of the paper grids, here 2 CPU ranks): the job's command runs in
    the batch step and srun starts the DeepSpeed ranks, which find each other through SLURM's variables."""
    cfg = tmp_path / "ranks.yaml"
    cfg.write_text(yaml.safe_dump({
        "datasets": {"synthetic": {"make": {"n_train": 128, "n_eval": 32}}},
        "grids": [{"name": "ranks", "task": "rm", "base_config": "configs/runs/rm_tiny.yaml", "models": ["tiny"],
                   "datasets": ["synthetic"], "seeds": [0], "modes": {"fc": {"gamma": [0.5], "tau": [-1]}},
                   "overrides": {"train.max_steps": 6, "objective.scope": "global"}, "eval": {"enabled": False},
                   "resources": {"train": {"launcher": "srun", "tasks_per_node": 2, "cpus": 1, "mem_mb": 4000,
                                           "runtime": 10}}}],
    }))
    run = "results/runs/rm/tiny/synthetic/fc_gamma0.5_tau-1_seed0"
    res = snakemake_slurm(tmp_path / "wd", f"{run}/summary.json", "--configfile", str(cfg), timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    (job,) = submitted_jobs(out)
    assert sacct_when_recorded([job])[0]["state"] == "COMPLETED"
    steps = subprocess.run(["sacct", "-n", "-P", "-j", job, "-o", "JobID,NTasks,State"], capture_output=True,
                           text=True, env=_env(), check=True).stdout.splitlines()
    assert f"{job}.0|2|COMPLETED" in steps, steps  # one srun step of two tasks
    summary = json.loads((tmp_path / "wd" / run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6

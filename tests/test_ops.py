"""Compiled DeepSpeed ops (issue 16): no run waits forever on a build lock, per-environment op folders,
no op built where none is needed.  Real DeepSpeed, torch and processes; every subprocess runs under
`timeout`, so a regression fails instead of hanging.  Each test uses its own ops folder under tmp_path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from fairhpc import ops

REPO = Path(__file__).resolve().parents[1]
SHM = "deepspeed_shm_comm"
TINY = ["data.synthetic.n_train=64", "data.synthetic.n_eval=16", "train.micro_batch_size=4", "train.max_steps=2",
        "train.save_steps=0", "data.max_length=64", "data.max_prompt_length=32"]
HOLD_BATON = ("import sys, time\nfrom torch.utils.file_baton import FileBaton\n"
              "assert FileBaton(sys.argv[1]).try_acquire()\nprint('held', flush=True)\ntime.sleep(600)\n")


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_EXTENSIONS_DIR", ops.AUTO_MARK_ENV)}
    env.update(FAIRHPC_OPS_DIR=str(tmp_path / "ops"), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    env.update(extra)
    return env


def _run(cmd: list[str], env: dict, limit: int) -> subprocess.CompletedProcess:
    """Run under coreutils `timeout` (SIGKILL 10 s after SIGTERM) and a Python-side bound above it."""
    return subprocess.run(["timeout", "-k", "10", str(limit), *cmd], check=False, env=env, capture_output=True,
                          text=True, timeout=limit + 30)


def _cli(args: list[str], env: dict, limit: int, python: str = sys.executable, nproc: int = 1):
    if nproc > 1:
        launch = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                  "--master_port", str(29300 + os.getpid() % 300)]
    else:
        launch = [python]
    return _run([*launch, "-m", "fairhpc.cli", *args], env, limit)


def _wait_for(predicate, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {limit} s waiting for {what}"
        time.sleep(0.2)


# ------------------------------------------------------------------------------------- the folder
def test_ops_dir_is_per_environment_and_respects_the_user(tmp_path, monkeypatch):
    for name in ("TORCH_EXTENSIONS_DIR", ops.AUTO_MARK_ENV):  # set, then removed: undone after the test
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    monkeypatch.setenv("FAIRHPC_OPS_DIR", str(tmp_path / "ops"))
    here = ops.use_ops_dir()
    assert here.parent == tmp_path / "ops" and here.is_dir()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(here)  # exported for torch's builds
    import deepspeed
    import torch
    assert here.name.startswith(f"py{sys.version_info.major}.{sys.version_info.minor}-torch{torch.__version__}-"
                                f"ds{deepspeed.__version__}-")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "another-env"))
    assert ops.env_tag() != here.name  # another environment's path -> another folder
    assert ops.ops_dir() != here  # the exported value is ours, not the user's: recomputed
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert ops.ops_dir() == tmp_path / "mine" and ops.use_ops_dir() == tmp_path / "mine"


def test_needed_ops():
    assert ops.needed_ops(1, {}, "cpu") == []
    assert ops.needed_ops(2, {}, "cpu") == ["ShareMemCommBuilder"]
    assert ops.needed_ops(8, {"zero_optimization": {"stage": 3}}, "cuda") == []  # fairhpc's own configs
    assert ops.needed_ops(8, {"optimizer": {"type": "AdamW"}}, "cuda") == ["FusedAdamBuilder"]
    assert ops.needed_ops(8, {"optimizer": {"type": "AdamW"},
                              "zero_optimization": {"offload_optimizer": {"device": "nvme"}}}, "cuda") == [
        "CPUAdamBuilder", "AsyncIOBuilder"]


# ------------------------------------------------------------------------------------- judging locks
def test_inspect_lock_states(tmp_path, monkeypatch):
    op = tmp_path / "ext" / SHM
    op.mkdir(parents=True)
    lock = op / "lock"
    assert ops.inspect_lock(lock).state == "absent"
    lock.touch()  # left by a killed build: nobody has it open, local filesystem
    assert ops.inspect_lock(lock).state == "stale"
    # the same file on a filesystem another node could hold it from: stale only once older than the bound
    monkeypatch.setattr(ops, "is_shared_fs", lambda path: True)
    assert ops.inspect_lock(lock, stale_after=900).state == "unknown"
    old = time.time() - 1000
    os.utime(lock, (old, old))
    assert ops.inspect_lock(lock, stale_after=900).state == "stale"
    # an owner record of a builder on another node: its heartbeat decides
    (op / ops.OWNER_FILE).write_text(json.dumps({"host": "node-17", "pid": 4242, "boot_id": "x"}))
    state = ops.inspect_lock(lock, stale_after=900)
    assert (state.state, "node-17" in state.why) == ("live", True)
    os.utime(op / ops.OWNER_FILE, (old, old))
    assert ops.inspect_lock(lock, stale_after=900).state == "stale"
    # a live holder on this host (torch's own FileBaton, as during a build) is live whatever its age
    lock.unlink()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_BATON, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        state = ops.inspect_lock(lock, stale_after=0)
        assert state.state == "live" and f"process {holder.pid}" in state.why
        assert ops.clear_stale_locks(tmp_path / "ext") == [] and lock.exists()  # a live lock is never removed
        t0 = time.monotonic()
        with pytest.raises(ops.OpsLockError, match=str(lock)):
            ops.wait_for_lock(lock, timeout=1.0)
        assert time.monotonic() - t0 < 10
    finally:
        holder.kill()
        holder.wait(timeout=30)
    monkeypatch.undo()
    assert lock.exists() and ops.clear_stale_locks(tmp_path / "ext") == [lock] and not lock.exists()


# ------------------------------------------------------------------------------------- real builds and runs
@pytest.mark.slow  # a real DeepSpeed op build (C++ compile, minutes)
def test_killed_build_leaves_a_lock_and_the_next_two_rank_run_takes_it_over(tmp_path):
    """The issue's scenario: a build killed while it holds torch's lock, then a real 2-rank CPU run."""
    ext = tmp_path / "ext"  # set explicitly: even a broken set-up never builds into the user's cache
    env = _env(tmp_path, TORCH_EXTENSIONS_DIR=str(ext))
    lock, so = ext / SHM / "lock", ext / SHM / f"{SHM}.so"
    build = subprocess.Popen(["timeout", "600", sys.executable, "-m", "fairhpc.cli", "build-ops", "--world-size",
                              "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        _wait_for(lambda: lock.exists() or build.poll() is not None, 300, "the build to take its lock")
        assert build.poll() is None, "the build finished before it could be killed"
    finally:
        os.killpg(build.pid, signal.SIGKILL)  # like a time limit: the whole job, compiler included
        build.wait(timeout=30)
    assert lock.exists() and not so.exists()  # what a killed build leaves behind

    t0 = time.monotonic()
    res = _cli(["train-rm", f"output_dir={tmp_path / 'run'}", *TINY], env, 900, nproc=2)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    assert f"removed the stale build lock {lock}" in log
    assert so.exists() and not lock.exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())
    print(f"2-rank run after a killed build: {time.monotonic() - t0:.0f} s")


def test_a_live_holder_fails_the_build_in_bounded_time_naming_the_lock(tmp_path):
    ext = tmp_path / "ext"
    env = _env(tmp_path, TORCH_EXTENSIONS_DIR=str(ext), FAIRHPC_OPS_LOCK_TIMEOUT="5")
    lock = ext / SHM / "lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_BATON, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        res = _cli(["build-ops", "--world-size", "2"], env, 180)
        took = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "fairhpc: build lock error" in res.stderr and str(lock) in res.stderr
    assert f"process {holder.pid}" in res.stderr and "rm " in res.stderr  # who holds it and what to do
    assert took < 120, took
    assert lock.exists() and not (ext / SHM / f"{SHM}.so").exists()  # the live lock was left alone


def _second_env(tmp_path: Path) -> str:
    """A second environment at another path using the same packages (a venv whose site dir adds ours)."""
    venv = tmp_path / "venv2"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "shared.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    return str(venv / "bin" / "python")


@pytest.mark.slow  # a real DeepSpeed op build (C++ compile, minutes)
def test_two_environments_keep_their_own_ops_and_never_rebuild_each_other(tmp_path):
    env = _env(tmp_path)
    pythons = {"a": sys.executable, "b": _second_env(tmp_path)}
    marker = {k: tmp_path / f"{k}.json" for k in pythons}
    state = {}
    for round_ in (1, 2, 3):  # a, b, a, b, a, b: used alternately
        for k, py in pythons.items():
            res = _cli(["build-ops", "--world-size", "2", "--marker", str(marker[k])], env, 900, python=py)
            assert res.returncode == 0, res.stdout + res.stderr
            built = json.loads(marker[k].read_text())
            (op,) = built["ops"]
            folder = Path(op["path"]).parent
            files = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.suffix in (".so", ".o", ".ninja")}
            assert {f"{SHM}.so", "build.ninja"} <= set(files)
            if round_ == 1:
                assert op["compiled"], f"env {k}: a fresh folder must be compiled"
                state[k] = (Path(built["ops_dir"]), files)
            else:
                assert not op["compiled"] and "up to date" in res.stdout, res.stdout
                assert (Path(built["ops_dir"]), files) == state[k], f"env {k} was rebuilt"
    (a_dir, _), (b_dir, _) = state["a"], state["b"]
    assert a_dir != b_dir and a_dir.parent == b_dir.parent == tmp_path / "ops"
    assert a_dir.name.rsplit("-", 1)[0] == b_dir.name.rsplit("-", 1)[0]  # same versions, another path


def test_a_single_process_cpu_run_builds_no_op(tmp_path):
    ext = tmp_path / "ext"
    env = _env(tmp_path, TORCH_EXTENSIONS_DIR=str(ext))
    res = _cli(["train-rm", f"output_dir={tmp_path / 'run'}", *TINY], env, 600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert (tmp_path / "run" / "summary.json").exists()
    assert "deepspeed_shm_comm" not in res.stdout + res.stderr
    assert not [p for p in ext.rglob("*") if p.is_file() and p.name != ops.FLOCK_FILE], list(ext.rglob("*"))

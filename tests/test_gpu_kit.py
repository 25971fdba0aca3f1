"""The GPU kit (scripts/gpu/): its CPU smoke run goes through every step that the GPU run makes, so that the
kit cannot rot between GPU loans, and its wheel list agrees with the project's constraints."""

import csv
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = ["kernels", "bench_fair_loss", "dpo_memory", "train"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_smoke")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    res = subprocess.run(["bash", "scripts/gpu/check.sh", "--cpu-smoke", "--out", str(out)], cwd=REPO, env=env,
                         capture_output=True, text=True, check=False, timeout=600)
    return out, res


@pytest.mark.slow
def test_cpu_smoke_runs_every_step(smoke):
    out, res = smoke
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == STEPS  # a step missing from the summary fails here
    bad = [s for s in summary["steps"] if s["status"] != "ok"]
    assert not bad, bad
    for s in summary["steps"]:
        assert 0 < s["wall_s"] <= s["budget_s"] and all((out / f).is_file() for f in s["outputs"])
    assert summary["kind"].startswith("cpu-smoke") and summary["git_rev"] and summary["versions"]["torch"]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"summary.json", "check.log"} <= set(files), files
    log = (out / "check.log").read_text()
    assert "== versions" in log and "nvidia-smi" in log and "== step train: exit 0" in log


@pytest.mark.slow
def test_cpu_smoke_outputs_hold_measurements(smoke):
    out, _ = smoke
    rows = list(csv.DictReader((out / "kernels.csv").open()))
    assert len(rows) > 100 and all(r["status"] == "pass" for r in rows)
    assert {r["mode"] for r in rows} == {"bt", "dpo", "fr", "fc"} and {r["layout"] for r in rows} == {
        "contiguous", "strided"}
    assert {float(r["tau"]) for r in rows if r["mode"] == "fr"} == {-5.0, -1.0, 0.0, 0.5, 2.0, 10.0}
    assert {r["dtype"] for r in rows} == {"float32", "float16", "bfloat16"}
    assert all(float(r["loss_rel_err"]) < 2e-5 for r in rows)
    bench = list(csv.DictReader((out / "fair_loss.csv").open()))
    assert any(r["op"] == "empty_launch" for r in bench) and any(r["provider"] == "triton" for r in bench)
    dpo = list(csv.DictReader((out / "dpo_memory.csv").open()))
    assert {r["method"] for r in dpo} >= {"eager", "chunked"}
    train = list(csv.DictReader((out / "train.csv").open()))
    verdicts = [r for r in train if r["impl"] == "triton/torch"]
    assert [r["task"] for r in verdicts] == ["rm", "dpo"] and all("agree" in r["note"] for r in verdicts)
    assert all(float(r["loss"]) < 1e-4 for r in verdicts)


def test_kernel_parity_fails_on_a_wrong_gradient(tmp_path, monkeypatch):
    """The parity check can fail: a kernel whose gradient is off by 1 % is reported as a failed case."""
    import importlib.util

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    spec = importlib.util.spec_from_file_location("kernel_parity", REPO / "scripts" / "gpu" / "kernel_parity.py")
    kp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kp)
    import torch

    from fairhpc import losses
    from fairhpc.config import FairnessConfig

    fl = importlib.import_module("fairhpc_kernels.fair_loss")
    if not fl.INTERPRETED:
        fl = importlib.reload(fl)
    launch = fl.LaunchConfig(block=64, single_program_max=64, max_programs=8, row_block=4)
    args = (torch, fl, losses, FairnessConfig, "rm", "fr", -1.0, "float32", 100, False, torch.device("cpu"), launch)
    assert kp.run_case(*args, seed=0)["status"] == "pass"

    class Scaled:  # the kernel module with every gradient scaled by 1.01
        def __getattr__(self, name):
            return getattr(fl, name)

        def fused_loss(self, *a, **kw):
            loss, metrics = fl.fused_loss(*a, **kw)
            return loss + 0.01 * (loss - loss.detach()), metrics

    bad = kp.run_case(torch, Scaled(), *args[2:], seed=0)
    assert bad["status"] == "fail" and float(bad["grad_err"]) > 1e-3


def test_wheel_list_is_pinned_and_agrees_with_constraints():
    def pins(path):
        return {re.sub(r"[-_.]+", "-", n).lower(): v for n, v in
                (line.split("==") for line in path.read_text().splitlines() if line.strip() and line[0] != "#")}

    gpu, cons = pins(REPO / "scripts" / "gpu" / "requirements.txt"), pins(REPO / "constraints.txt")
    assert {"liger-kernel", "deepspeed", "jsonschema"} <= set(gpu)
    for name, version in gpu.items():
        if name in cons:
            assert cons[name] == version, (name, version, cons[name])
    text = (REPO / "scripts" / "gpu" / "wheels.sh").read_text()
    assert "--python-version 3.12" in text and "LIMIT_MIB=60" in text and "--no-build-isolation" in text
    check = (REPO / "scripts" / "gpu" / "check.sh").read_text()
    assert "--target" in check and "--no-deps" in check and check.count('timeout --kill-after') == 1

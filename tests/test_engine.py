"""The engine is task-agnostic: no task names in it, and a task defined elsewhere trains through it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_engine_names_no_task():
    src = (REPO / "fairhpc" / "engine.py").read_text()
    from fairhpc import registry

    words = set(registry.TASKS) | set(registry.ALL_MODES) | {"reward", "policy", "preference", "margin",
                                                            "margins", "reference", "chosen", "rejected"}
    found = sorted(w for w in words if re.search(rf"\b{w}\b", src, re.IGNORECASE))
    assert not found, f"fairhpc/engine.py mentions task-specific words: {found}"
    assert "task ==" not in src and "task==" not in src


def test_every_registered_task_has_a_module_with_its_name():
    from fairhpc import registry
    from fairhpc.tasks import get_task
    from fairhpc.tasks.base import Task

    for name in registry.TASKS:
        cls = get_task(name)
        assert issubclass(cls, Task) and cls.name == name and cls.description
        assert set(cls.progress_keys) <= set(cls.metric_keys)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")


@pytest.mark.slow
def test_a_task_outside_the_package_trains_through_the_engine(tmp_path):
    out = tmp_path / "toy"
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    res = subprocess.run([sys.executable, str(REPO / "tests" / "engine_toy_task.py"), str(out)], check=False,
                         env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(0.0 <= r["hinge_active"] <= 1.0 and r["loss"] >= 0 for r in train)
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [0, 4] and evals[-1]["n"] == 16
    summary = json.loads((out / "summary.json").read_text())
    assert summary["loss_name"] == "hinge" and summary["steps"] == 4
    assert (out / "final" / "model.safetensors").exists()
    from safetensors.torch import load_file

    assert sorted((out / "checkpoints").glob("global_step*"))  # the engine's checkpoints
    assert load_file(str(out / "final" / "model.safetensors"))

"""A run directory belongs to one configuration; resume never mixes runs; faults end cleanly.

Every test trains tiny models for real (DeepSpeed on CPU) through the `fairhpc` command.
"""

import json
import shutil
import subprocess

import pytest
import torch
from test_train import final_state, read_metrics, run_cli

SMALL = ["data.synthetic.n_train=48", "data.synthetic.n_eval=16", "train.micro_batch_size=8", "train.lr=2e-3",
         "train.max_steps=6", "train.save_steps=2", "train.keep_checkpoints=10", "train.log_steps=1"]


def train(out, *extra, resume=False, expect=0, nproc=1):
    args = ["train-rm", *(["--resume"] if resume else []), f"output_dir={out}", *SMALL, *extra]
    res = run_cli(args, nproc=nproc, timeout=600)
    assert res.returncode == expect, res.stdout[-3000:] + res.stderr[-5000:]
    return res


def assert_same_params(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(v, b[k], rtol=0, atol=0, msg=k)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete run with checkpoints at steps 2, 4, 6 (kept as a pristine copy)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(out)
    return out


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow
def test_fresh_run_into_a_used_directory_is_refused_then_overwrite_moves_it_aside(tmp_path, finished):
    out = copy_run(finished, tmp_path / "run")
    before = (out / "metrics.jsonl").read_text()
    res = train(out, expect=2)
    assert "already holds a run" in res.stderr and "--resume" in res.stderr and "--overwrite" in res.stderr
    assert (out / "metrics.jsonl").read_text() == before  # nothing appended
    res = run_cli(["train-rm", "--overwrite", f"output_dir={out}", *SMALL], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    steps = [r["step"] for r in read_metrics(out) if r["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # once, not twice
    aside = list(tmp_path.glob("run.superseded-*"))
    assert len(aside) == 1 and (aside[0] / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_resume_with_another_configuration_is_refused_naming_the_keys(tmp_path, finished):
    out = copy_run(finished, tmp_path / "run")
    cfg_before = (out / "config.yaml").read_text()
    res = train(out, "seed=1", "objective.mode=fr", "objective.alpha=1", resume=True, expect=2)
    for key in ("seed: 0 -> 1", "objective.mode: 'bt' -> 'fr'", "objective.alpha"):
        assert key in res.stderr, res.stderr[-2000:]
    assert (out / "config.yaml").read_text() == cfg_before  # the files still describe the run that ran


@pytest.mark.slow
def test_resume_after_a_data_edit_is_refused(tmp_path):
    from fairhpc.config import load_config
    from fairhpc.synthetic import synthetic_rows

    rows = synthetic_rows(load_config(None, ["data.synthetic.n_train=48"]).data, "train")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    train(out, f"data.train={data}", "data.eval=null")
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    res = train(out, f"data.train={data}", "data.eval=null", resume=True, expect=2)
    assert "data.train.sha256" in res.stderr


@pytest.mark.slow
def test_restart_on_mismatch_trains_the_new_configuration(tmp_path, finished):
    """What the workflow does when Snakemake reruns a job whose parameters changed (e.g. train.lr)."""
    out = copy_run(finished, tmp_path / "run")
    old = final_state(out)
    res = run_cli(["train-rm", "--resume", "--on-mismatch", "restart", f"output_dir={out}", *SMALL,
                   "train.lr=5e-3"], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "train.lr: 0.002 -> 0.005" in res.stdout + res.stderr
    new = final_state(out)
    assert any(not torch.equal(old[k], new[k]) for k in old)
    lrs = [r["lr"] for r in read_metrics(out) if r["split"] == "train"]
    assert len(lrs) == 6 and max(lrs) > 2e-3  # the new peak lr, and the steps once
    # and it is the same model as a fresh run of the new configuration
    fresh = tmp_path / "fresh"
    train(fresh, "train.lr=5e-3")
    assert_same_params(new, final_state(fresh))
    aside = list(tmp_path.glob("run.superseded-*"))
    assert len(aside) == 1
    assert_same_params(old, final_state(aside[0]))


@pytest.mark.slow
def test_resume_of_a_finished_run_changes_nothing(tmp_path, finished):
    out = copy_run(finished, tmp_path / "run")
    metrics = (out / "metrics.jsonl").read_text()
    params = final_state(out)
    train(out, resume=True)
    assert (out / "metrics.jsonl").read_text() == metrics  # no second final eval line
    assert_same_params(params, final_state(out))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "empty", "delete"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, finished, damage):
    out = copy_run(finished, tmp_path / "run")
    expected = final_state(out)
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    newest = out / "checkpoints" / "global_step6"
    if damage == "delete":
        shutil.rmtree(newest)  # `latest` now names a folder that is gone
    else:
        for f in newest.glob("*model_states.pt"):
            data = f.read_bytes()
            f.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"")
    res = train(out, resume=True)
    log = res.stdout + res.stderr
    if damage != "delete":
        assert "global_step6 is unreadable" in log
    assert "resumed from global_step4" in log
    assert_same_params(expected, final_state(out))  # steps 5-6 trained again give the same model


@pytest.mark.slow
def test_checkpoints_are_complete_or_absent_and_record_every_ranks_rng(tmp_path):
    out = tmp_path / "run"
    train(out, "train.max_steps=2", "train.save_steps=1", nproc=2)
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["global_step1", "global_step2", "latest"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "global_step2"
    for c in ("global_step1", "global_step2"):
        assert {p.name for p in (out / "checkpoints" / c).glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}


@pytest.mark.slow
def test_resume_at_and_within_an_epoch_with_two_ranks_and_dropout_matches_uninterrupted(tmp_path):
    """40 pairs / 2 ranks / 4 per micro-batch = 5 micro-batches per epoch; grad_accum 2 -> 2 optimizer steps
    per epoch (the 5th micro-batch is not used), so 2 epochs are 4 steps and never borrow the next epoch."""
    args = ["data.synthetic.n_train=40", "train.micro_batch_size=4", "train.grad_accum=2", "train.epochs=2",
            "train.max_steps=-1", "train.save_steps=1", "model.tiny.attention_dropout=0.3"]
    full = tmp_path / "full"
    train(full, *args, nproc=2)
    recs = [r for r in read_metrics(full) if r["split"] == "train"]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert [r["epoch"] for r in recs] == pytest.approx([0.4, 0.8, 1.4, 1.8])
    part = copy_run(full, tmp_path / "part")
    for name in ("final", "checkpoints/global_step3", "checkpoints/global_step4"):
        shutil.rmtree(part / name)
    (part / "summary.json").unlink()
    res = train(part, *args, resume=True, nproc=2)
    assert "resumed from global_step2" in res.stdout + res.stderr  # saved at the epoch's end
    assert_same_params(final_state(full), final_state(part))
    # mid-epoch: starting the epoch again after the resume must not shift the random state dropout draws from
    mid = copy_run(full, tmp_path / "mid")
    for name in ("final", "checkpoints/global_step2", "checkpoints/global_step3", "checkpoints/global_step4"):
        shutil.rmtree(mid / name, ignore_errors=True)
    (mid / "summary.json").unlink()
    res = train(mid, *args, resume=True, nproc=2)
    assert "resumed from global_step1" in res.stdout + res.stderr
    assert_same_params(final_state(full), final_state(mid))
    # and dropout was on: a run without it differs
    nodrop = tmp_path / "nodrop"
    train(nodrop, *args[:-1], nproc=2)
    assert any(not torch.equal(a, b) for a, b in zip(final_state(full).values(), final_state(nodrop).values()))


@pytest.mark.slow
def test_a_diverging_run_stops_with_the_step_and_writes_nothing_misleading(tmp_path):
    out = tmp_path / "run"
    res = train(out, "train.lr=1e30", "train.max_grad_norm=0", "train.warmup_steps=0", expect=2)
    assert "not finite at optimizer step" in res.stderr
    assert not (out / "summary.json").exists() and not (out / "final").exists()
    text = (out / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text


def _tmpfs(path, size):
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=False,
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.strip()}")


@pytest.mark.slow
def test_a_full_disk_names_the_cause_and_leaves_no_partial_checkpoint(tmp_path):
    disk = tmp_path / "disk"
    _tmpfs(disk, "3m")  # room for the config and metrics, not for a checkpoint with optimizer states
    try:
        out = disk / "run"
        res = train(out, "model.tiny.hidden_size=128", "model.tiny.intermediate_size=256", expect=2)
        assert "no space left on the device" in res.stderr, res.stderr[-3000:]
        assert not list((out / "checkpoints").glob("*.partial"))
        assert not (out / "checkpoints" / "latest").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)

"""Experiment tracking (train.report_to, fairhpc/tracking.py) on real `fairhpc train-rm` runs: TensorBoard
event files read back with TensorBoard's own reader agree with metrics.jsonl, the CSV tracker's rows are
metrics.jsonl's numbers, a resume drops the events of the interrupted attempt, and a tracker whose package
is missing is refused before anything is written, naming the key and the package."""

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
from test_train import read_metrics, run_cli

TINY = ["data.synthetic.n_train=160", "data.synthetic.n_eval=48", "data.max_length=64",
        "data.max_prompt_length=32", "train.micro_batch_size=8", "train.lr=2e-3", "train.log_steps=1",
        "train.eval_steps=4", "model.tiny.hidden_size=32", "model.tiny.num_hidden_layers=1",
        "objective.mode=fr", "objective.alpha=0.5"]


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} read by TensorBoard's EventAccumulator (purges restarted steps itself)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def text_tags(logdir: Path) -> dict[str, str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        t = acc.Tensors(tag)[-1].tensor_proto
        out[tag] = t.string_val[0].decode()
    return out


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    pytest.importorskip("tensorboard")
    out = tmp_path_factory.mktemp("tracked") / "fr_run"
    res = run_cli(["train-rm", f"output_dir={out}", "train.max_steps=8", "train.save_steps=0",
                   "train.report_to=tensorboard,csv", *TINY, "--then-eval",
                   f"eval-rm --model {out / 'final'} --data synthetic --out {out / 'eval'}"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return out


@pytest.mark.slow
def test_tensorboard_events_equal_the_metrics_file(tracked):
    logdir = tracked / "tracking" / "tensorboard" / "fr_run"
    assert list(logdir.glob("events.out.tfevents.*"))
    tb = scalars(logdir)
    lines = read_metrics(tracked)
    train = [r for r in lines if r["split"] == "train"]
    evals = [r for r in lines if r["split"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, 9)) and [r["step"] for r in evals] == [0, 4, 8]
    for key in ("loss", "u", "f", "accuracy", "lr", "grad_norm"):
        assert [s for s, _ in tb[f"train/{key}"]] == [r["step"] for r in train], key
        # TensorBoard stores float32
        assert [v for _, v in tb[f"train/{key}"]] == pytest.approx([r[key] for r in train], rel=1e-6), key
    for key in ("loss", "accuracy", "f"):
        assert [s for s, _ in tb[f"eval/{key}"]] == [0, 4, 8], key
        assert [v for _, v in tb[f"eval/{key}"]] == pytest.approx([r[key] for r in evals], rel=1e-6), key
    # the loss really moved, so equal lists are not two constant series
    assert len({round(r["loss"], 6) for r in train}) > 4
    # the end: the training summary and the held-out evaluation of --then-eval
    summary = json.loads((tracked / "summary.json").read_text())
    assert tb["summary/steps"] == [(8, 8.0)]
    assert tb["summary/eval/accuracy"][0][1] == pytest.approx(summary["eval"]["accuracy"], rel=1e-6)
    ev = json.loads((tracked / "eval" / "summary.json").read_text())
    assert tb["heldout/accuracy"][0][1] == pytest.approx(ev["metrics"]["accuracy"], rel=1e-6)
    assert tb["heldout/gap_margin"][0][1] == pytest.approx(ev["metrics"]["gap_margin"], rel=1e-6)
    for cat, vals in ev["by_category"].items():
        assert tb[f"heldout/by_category/{cat}/accuracy"][0][1] == pytest.approx(vals["accuracy"], rel=1e-6)
    # the resolved config, as text
    config = text_tags(logdir)["config/text_summary"]
    assert "report_to: tensorboard,csv" in config and "alpha: 0.5" in config and "mode: fr" in config


@pytest.mark.slow
def test_csv_tracker_rows_are_the_metrics_lines(tracked):
    d = tracked / "tracking" / "csv" / "fr_run"
    with open(d / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    got = {(r["split"], int(r["step"]), r["name"]): float(r["value"]) for r in rows}
    want = {}
    for rec in read_metrics(tracked):
        for k, v in rec.items():
            if k not in ("split", "step") and isinstance(v, (int, float)):
                want[(rec["split"], rec["step"], k)] = float(v)
            elif isinstance(v, dict):  # per-category values of an evaluation line: name/category
                want.update({(rec["split"], rec["step"], f"{k}/{c}"): float(x) for c, x in v.items()})
    assert got == want  # exact: the same floats, written with repr
    assert len(rows) == len(got)  # no row twice
    with open(d / "config.csv") as f:
        config = {r["name"]: r["value"] for r in csv.DictReader(f)}
    assert config["train.report_to"] == "tensorboard,csv" and config["objective.mode"] == "fr"
    assert float(config["objective.alpha"]) == 0.5 and config["output_dir"] == str(tracked)
    with open(d / "summary.csv") as f:
        summary = {r["name"]: float(r["value"]) for r in csv.DictReader(f)}
    ev = json.loads((tracked / "eval" / "summary.json").read_text())
    assert summary["heldout/accuracy"] == ev["metrics"]["accuracy"]
    assert summary["summary/steps"] == 8.0


@pytest.mark.slow
def test_resume_drops_the_interrupted_attempts_events(tmp_path):
    """A run is cut back to its step-4 checkpoint (as after a kill) and resumed: TensorBoard and the CSV
    tracker then hold each step once, with the resumed attempt's values."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "resumed"
    shared = tmp_path / "tb"  # a tracking_dir outside the run, with a run name of its own
    args = [f"output_dir={out}", "train.max_steps=8", "train.save_steps=4", "train.keep_checkpoints=5",
            "train.report_to=tensorboard,csv", f"train.tracking_dir={shared}", "train.run_name=study/a", *TINY]
    res = run_cli(["train-rm", *args])
    assert res.returncode == 0, res.stderr[-5000:]
    # back to the state of a run killed after its step-4 checkpoint
    shutil.rmtree(out / "checkpoints" / "global_step8")
    (out / "checkpoints" / "latest").write_text("global_step4")
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    res = run_cli(["train-rm", "--resume", *args])
    assert res.returncode == 0, res.stderr[-5000:]
    assert "resumed from global_step4" in res.stdout + res.stderr
    logdir = shared / "tensorboard" / "study" / "a"
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2
    tb = scalars(logdir)
    train = [r for r in read_metrics(out) if r["split"] == "train"]
    assert [s for s, _ in tb["train/loss"]] == list(range(1, 9))  # 5..8 once, not twice
    assert [v for _, v in tb["train/loss"]] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert [s for s, _ in tb["eval/accuracy"]] == [0, 4, 8]
    with open(shared / "csv" / "study" / "a" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train" and r["name"] == "loss"]
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert [float(r["value"]) for r in rows] == [r["loss"] for r in train]
    assert not (out / "tracking").exists()  # everything went to train.tracking_dir


@pytest.mark.parametrize("tracker,package", [("tensorboard", "tensorboard"), ("wandb", "wandb"),
                                             ("mlflow", "mlflow")])
def test_missing_package_is_refused_before_anything_is_written(tracker, package, tmp_path, monkeypatch, capsys):
    from fairhpc.cli import main

    monkeypatch.setitem(sys.modules, package, None)  # `import <package>` fails as when it is not installed
    out = tmp_path / "run"
    assert main(["train-rm", f"output_dir={out}", f"train.report_to=csv,{tracker}", *TINY]) == 2
    err = capsys.readouterr().err
    assert "train.report_to" in err and f"{tracker!r} needs the Python package {package!r}" in err, err
    assert f"pip install {package}" in err
    assert not out.exists()  # refused before the run directory, data or model


def test_report_to_values():
    from fairhpc.config import ConfigError, load_config

    assert load_config(None, []).train.report_to == "none"  # off by default
    assert load_config(None, ["train.report_to=csv,tensorboard"]).train.report_to == "csv,tensorboard"
    for bad in ("tensorbord", "none,csv", "csv,csv", "csv,"):
        with pytest.raises(ConfigError) as e:
            load_config(None, [f"train.report_to={bad}"])
        assert "train.report_to" in str(e.value) and "none, tensorboard, wandb, mlflow, csv" in str(e.value)


def test_only_rank_zero_tracks(tmp_path):
    from fairhpc.config import load_config
    from fairhpc.layout import RunDir
    from fairhpc.tracking import open_trackers

    cfg = load_config(None, [f"output_dir={tmp_path / 'r'}", "train.report_to=csv"])
    assert not open_trackers(cfg, RunDir(cfg.output_dir), 0, is_main=False)
    assert not (tmp_path / "r").exists()
    t = open_trackers(cfg, RunDir(cfg.output_dir), 0, is_main=True)
    t.log_metrics({"split": "train", "step": 1, "loss": 0.5, "grad_norm": None, "ok": True})
    t.close()
    text = (tmp_path / "r" / "tracking" / "csv" / "r" / "metrics.csv").read_text()
    assert text == "split,step,name,value\ntrain,1,loss,0.5\n"  # None and booleans are not scalars

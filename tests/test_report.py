"""`fairhpc report` on real runs of the embedded default (synthetic data, tiny Llama): bt vs fr vs fc,
each trained by `fairhpc train-rm` and scored by `fairhpc eval-rm`; the table agrees with the runs'
files, the plots render, and bad run directories fail with the path named."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODES = ("bt", "fr", "fc")
# the run-config defaults (data.train: synthetic, model: tiny) made small enough for a test
SMALL = ["data.synthetic.n_train=480", "data.synthetic.n_eval=150", "data.max_length=96",
         "data.max_prompt_length=48", "train.max_steps=30", "train.micro_batch_size=16", "train.lr=2e-3",
         "train.save_steps=0", "train.eval_steps=10", "train.log_steps=2"]
PLOTS = ("accuracy_vs_fairness.png", "fairness_over_training.png", "reward_by_category.png",
         "reward_vs_length.png")


def cli(args):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "fairhpc.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from fairhpc.cli import main

    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for mode in MODES:
        out = root / f"{mode}_seed0"
        res = cli(["train-rm", f"output_dir={out}", f"objective.mode={mode}", *SMALL])
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
        # the held-out set of the run, found through RUN/config.yaml next to RUN/final
        assert main(["eval-rm", "--model", str(out / "final"), "--data", "synthetic", "--out", str(out / "eval")]) == 0
        dirs.append(out)
    return dirs


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    from fairhpc.cli import main

    out = tmp_path_factory.mktemp("report")
    assert main(["report", "--runs", *map(str, runs), "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_eval_rm_agrees_with_the_trainers_held_out_evaluation(runs):
    # two code paths over the same model and held-out pairs: the trainer's evaluate() and eval-rm
    for run in runs:
        train_eval = json.loads((run / "summary.json").read_text())["eval"]
        ev = json.loads((run / "eval" / "summary.json").read_text())["metrics"]
        assert ev["n"] == 150
        assert ev["accuracy"] == pytest.approx(train_eval["accuracy"], abs=1.5 / 150)  # at most one flipped pair
        assert ev["pairs_lan_f"] == pytest.approx(train_eval["f"], rel=1e-4)          # f at the run's tau = -1
        assert ev["pairs_jain"] == pytest.approx(train_eval["f"], rel=1e-4)           # f_{-1} is Jain's index


@pytest.mark.slow
def test_comparison_table_bt_fr_fc(runs, report):
    with open(report / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["mode"] for r in rows) == sorted(MODES)
    for r in rows:
        ev = json.loads((Path(runs[0]).parent / r["run"] / "eval" / "summary.json").read_text())
        for key in ("accuracy", "pairs_jain", "pairs_gini", "cat_jain", "cat_gini", "gap_accuracy", "gap_margin",
                    "w1_margin_max", "length_spearman_chosen"):
            assert float(r[key]) == pytest.approx(ev["metrics"][key], rel=1e-9), key
        for cat in ("helpful", "harmless", "honest"):
            assert float(r[f"accuracy[{cat}]"]) == pytest.approx(ev["by_category"][cat]["accuracy"])
        assert float(r["alpha"]) == 0.1 and float(r["tau"]) == -1.0 and r["task"] == "rm"
    md = (report / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| run"))
    for col in ("mode", "acc %", "acc helpful %", "acc honest %", "Jain pairs", "Gini pairs", "Jain cats",
                "Gini cats", "acc gap %", "W1 margin", "rho(len, r_w)"):
        assert f" {col} |" in header, col
    body = [line for line in md.splitlines() if line.startswith("| ") and "_seed0" in line]
    assert sorted(line.split("|")[2].strip() for line in body) == sorted(MODES)
    acc_col = [c.strip() for c in header.split("|")].index("acc %")
    for line in body:  # accuracy in percent, as a number
        run = line.split("|")[1].strip()
        ev = json.loads((Path(runs[0]).parent / run / "eval" / "summary.json").read_text())
        assert float(line.split("|")[acc_col]) == pytest.approx(100 * ev["metrics"]["accuracy"], abs=0.006)


@pytest.mark.slow
def test_plots_render(report):
    import matplotlib.image as mpimg
    import numpy as np

    for name in PLOTS:
        img = mpimg.imread(report / name)
        h, w = img.shape[:2]
        assert h >= 300 and w >= 450, (name, img.shape)
        assert float(np.std(img[..., :3])) > 0.01, name  # something was drawn, not a blank canvas
    wide = mpimg.imread(report / "accuracy_vs_fairness.png")
    assert wide.shape[1] > 1.5 * wide.shape[0]  # two panels side by side


@pytest.mark.slow
def test_benchmark_eval_subdir(runs, tmp_path):
    from fairhpc.cli import main

    data = tmp_path / "crows.csv"
    data.write_text(",sent_more,sent_less,stereo_antistereo,bias_type\n0,Old men drive badly.,Young men drive "
                    "badly.,stereo,age\n1,She cannot do math.,He cannot do math.,stereo,gender\n")
    for run in runs:
        assert main(["eval-benchmark", "--model", str(run / "final"), "--benchmark", "crows_pairs", "--data",
                     str(data), "--out", str(run / "bench_crows")]) == 0
    out = tmp_path / "report"
    assert main(["report", "--runs", *map(str, runs), "--eval-subdir", "bench_crows", "--out", str(out)]) == 0
    md = (out / "results.md").read_text()
    assert "prefers stereotype %" in md and "r(more) - r(less)" in md
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        ev = json.loads((Path(runs[0]).parent / r["run"] / "bench_crows" / "summary.json").read_text())
        assert float(r["metric_score"]) == pytest.approx(ev["metrics"]["metric_score"])


def test_report_errors_name_the_path(tmp_path, capsys):
    from fairhpc.cli import main

    empty = tmp_path / "not_a_run"
    empty.mkdir()
    assert main(["report", "--runs", str(empty), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fairhpc: report error: ") and f"{empty / 'config.yaml'}: missing" in err
    (empty / "config.yaml").write_text("task: rm\nobjective: {mode: bt}\n")
    assert main(["report", "--runs", str(empty), "--out", str(tmp_path / "r")]) == 2
    assert f"{empty / 'summary.json'}: missing (is the run finished?)" in capsys.readouterr().err
    (empty / "summary.json").write_text('{"task": "rm", "steps": 3}')
    (empty / "eval").mkdir()
    (empty / "eval" / "summary.json").write_text('{"metrics": {\n"accuracy": }')
    assert main(["report", "--runs", str(empty), "--out", str(tmp_path / "r")]) == 2
    assert f"{empty / 'eval' / 'summary.json'}: line 2: invalid JSON" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing is written before every run has been read


def test_report_of_a_run_without_evaluation(tmp_path):
    """A finished run whose evaluation is not there yet still gets a table (from its training summary)."""
    from fairhpc.cli import main

    run = tmp_path / "fr_seed3"
    run.mkdir()
    (run / "config.yaml").write_text("task: rm\nseed: 3\nobjective: {mode: fr, alpha: 0.5, tau: -1.0}\n"
                                     "train: {lr: 0.001}\n")
    (run / "summary.json").write_text(json.dumps({"task": "rm", "steps": 7, "eval": {"accuracy": 0.625, "f": 0.9}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"split": "train", "step": s, "f": 0.8 + s / 100}) + "\n"
                                               for s in range(5)))
    out = tmp_path / "r"
    assert main(["report", "--runs", str(run), "--out", str(out)]) == 0
    with open(out / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["mode"] == "fr" and float(row["alpha"]) == 0.5 and row["seed"] == "3"
    assert float(row["train_eval_accuracy"]) == 0.625 and float(row["train_eval_f"]) == 0.9
    assert all((out / p).stat().st_size > 0 for p in PLOTS)

"""Seed statistics of `fairhpc report`: runs that differ only in the seed form one grid point; its tables show
the mean and the 95% Student-t interval over the seeds, the differences to bt are paired by seed, the plot
draws the intervals as error bars, and results.csv keeps one row per seed.  The expected numbers are computed
by hand here (the t quantile for 2 degrees of freedom in closed form), not with the code under test."""

import csv
import json
import math

import pytest

# three seeds of bt and of fr (alpha 1, tau -1): accuracy, category margin gap, Jain's index across categories
BT = {"accuracy": [0.70, 0.74, 0.69], "gap_margin": [1.40, 1.35, 1.38], "cat_jain": [0.990, 0.985, 0.992]}
FR = {"accuracy": [0.68, 0.73, 0.66], "gap_margin": [1.05, 1.02, 1.10], "cat_jain": [0.995, 0.993, 0.996]}
CATS = ("helpful", "harmless", "honest")


def t_quantile_df2(p: float) -> float:
    """Student t quantile for 2 degrees of freedom: (2p - 1) / sqrt(2 p (1 - p))."""
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def by_hand(xs):
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile_df2(0.975) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def make_run(root, name, mode, seed, metrics, alpha=0.1):
    d = root / name
    (d / "eval").mkdir(parents=True)
    (d / "config.yaml").write_text(
        f"task: rm\nseed: {seed}\noutput_dir: {d}\nobjective: {{mode: {mode}, alpha: {alpha}, tau: -1.0, "
        f"gamma: 0.5, beta: 0.1}}\ntrain: {{lr: 0.002, max_steps: 20, log_steps: 1}}\n")
    (d / "summary.json").write_text(json.dumps({"task": "rm", "steps": 20, "eval": {"accuracy": metrics["accuracy"]}}))
    per_example = [{"category": CATS[i % 3], "margin": (i % 7 - 3) / 3 + seed / 10, "reward_chosen": i / 10,
                    "reward_rejected": (i % 5) / 10, "length_chosen": 10 + i % 9, "length_rejected": 8 + i % 4}
                   for i in range(30)]
    (d / "eval" / "per_example.jsonl").write_text("".join(json.dumps(e) + "\n" for e in per_example))
    ev = {"kind": "reward_model", "metrics": {**metrics, "n": 30, "pairs_jain": 0.9},
          "by_category": {c: {"accuracy": metrics["accuracy"] + 0.01 * k} for k, c in enumerate(CATS)}}
    (d / "eval" / "summary.json").write_text(json.dumps(ev))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"split": "eval", "step": s, "f": 0.8 + s / 100 + seed / 50})
                                             + "\n" for s in (0, 10, 20)))
    return d


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from fairhpc.cli import main

    root = tmp_path_factory.mktemp("study")
    runs = []
    for seed in range(3):
        runs.append(make_run(root, f"bt_seed{seed}", "bt", seed, {k: v[seed] for k, v in BT.items()}))
        runs.append(make_run(root, f"fr_alpha1_tau-1_seed{seed}", "fr", seed, {k: v[seed] for k, v in FR.items()},
                             alpha=1.0))
    out = root / "report"
    assert main(["report", "--runs", *map(str, runs), "--out", str(out)]) == 0
    return root, runs, out


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_t_quantile_closed_form_is_the_textbook_value():
    assert t_quantile_df2(0.975) == pytest.approx(4.303, abs=5e-4)  # t table, 2 d.f., two-sided 95%


def test_interval_over_three_seeds_equals_the_hand_computation(study):
    _, _, out = study
    rows = {r["point"]: r for r in read_csv(out / "results_by_point.csv")}
    assert set(rows) == {"bt", "fr_alpha1_tau-1"}
    for point, values in (("bt", BT), ("fr_alpha1_tau-1", FR)):
        r = rows[point]
        assert r["n_seeds"] == "3" and r["seeds"] == "0 1 2"
        for key, xs in values.items():
            mean, sd, lo, hi = by_hand(xs)
            assert float(r[f"{key}_mean"]) == pytest.approx(mean, rel=1e-12), key
            assert float(r[f"{key}_sd"]) == pytest.approx(sd, rel=1e-9), key
            assert float(r[f"{key}_ci_low"]) == pytest.approx(lo, rel=1e-9), key
            assert float(r[f"{key}_ci_high"]) == pytest.approx(hi, rel=1e-9), key
    # bt accuracy: mean 0.71, sd sqrt(0.0007), half-width 4.3027 * 0.026458 / sqrt(3) = 0.06572
    assert float(rows["bt"]["accuracy_ci_high"]) - 0.71 == pytest.approx(0.065724, abs=1e-6)


def test_one_row_per_seed_stays_in_results_csv(study):
    _, _, out = study
    rows = read_csv(out / "results.csv")
    assert len(rows) == 6
    assert sorted((r["point"], r["seed"]) for r in rows) == sorted(
        (p, str(s)) for p in ("bt", "fr_alpha1_tau-1") for s in range(3))
    for r in rows:
        values = BT if r["mode"] == "bt" else FR
        assert float(r["gap_margin"]) == values["gap_margin"][int(r["seed"])]


def test_differences_to_bt_are_paired_by_seed(study):
    _, _, out = study
    diffs = {r["metric"]: r for r in read_csv(out / "differences.csv")}
    assert {r["point"] for r in diffs.values()} == {"fr_alpha1_tau-1"}
    for key, bt in BT.items():
        d = [f - b for f, b in zip(FR[key], bt)]
        mean, sd, lo, hi = by_hand(d)
        r = diffs[key]
        assert r["baseline"] == "bt" and r["pairing"] == "paired" and r["n"] == "3"
        assert float(r["diff_mean"]) == pytest.approx(mean, abs=1e-12)
        assert float(r["diff_sd"]) == pytest.approx(sd, rel=1e-9)
        assert float(r["ci_low"]) == pytest.approx(lo, rel=1e-9) and float(r["ci_high"]) == pytest.approx(hi, rel=1e-9)
    # margin gap: differences -0.35, -0.33, -0.28: mean -0.32, interval [-0.4096, -0.2304], below 0
    assert diffs["gap_margin"]["verdict"] == "lower"
    assert float(diffs["gap_margin"]["ci_high"]) == pytest.approx(-0.32 + 4.302653 * math.sqrt(0.0013) / math.sqrt(3),
                                                                  abs=1e-5)
    # accuracy: -0.02, -0.01, -0.03: the interval [-0.0448, 0.0048] contains 0
    assert diffs["accuracy"]["verdict"] == "no detectable change"
    assert diffs["cat_jain"]["verdict"] == "higher"


def test_markdown_states_means_intervals_and_findings(study):
    _, _, out = study
    md = (out / "results.md").read_text()
    assert "## Means over seeds" in md and "95% t-interval" in md
    mean, _, _, hi = by_hand(BT["accuracy"])
    line = next(li for li in md.splitlines() if li.startswith("| bt |"))
    cells = [c.strip() for c in line.split("|")]
    assert cells[6] == "3"  # n
    assert f"{100 * mean:.2f} ± {100 * (hi - mean):.2f}" in cells  # accuracy in percent
    d_mean, _, d_lo, d_hi = by_hand([f - b for f, b in zip(FR["gap_margin"], BT["gap_margin"])])
    assert f"{d_mean:.3f} [{d_lo:.3f}, {d_hi:.3f}] ↓" in md
    assert "category margin gap: lower at 1, higher at 0, no detectable change at 0 of 1 point(s)" in md
    assert "## Runs (one row per seed)" in md and md.count("_seed") >= 6


def test_pareto_plot_draws_the_intervals_as_error_bars(study, tmp_path):
    import matplotlib.image as mpimg
    import numpy as np

    from fairhpc.report import group_points, load_run, plot_accuracy_vs_fairness, results_frame

    _, runs, out = study
    loaded = [load_run(r) for r in runs]
    points = group_points(loaded)
    drawn = plot_accuracy_vs_fairness(results_frame(loaded), tmp_path / "p.png", points)
    for point, values in (("bt", BT), ("fr_alpha1_tau-1", FR)):
        x, xh, y, yh = drawn["cat_jain"][point]
        mx, _, lo_x, _ = by_hand(values["cat_jain"])
        my, _, lo_y, _ = by_hand(values["accuracy"])
        assert (x, xh, y, yh) == pytest.approx((mx, mx - lo_x, my, my - lo_y), rel=1e-9)
    for name in ("accuracy_vs_fairness.png", "differences.png", "fairness_over_training.png",
                 "reward_by_category.png", "reward_vs_length.png"):
        img = mpimg.imread(out / name)
        assert img.shape[0] >= 200 and float(np.std(img[..., :3])) > 0.01, name


def test_single_seed_points_have_no_interval(tmp_path):
    from fairhpc.cli import main

    runs = [make_run(tmp_path, "bt_seed0", "bt", 0, {k: v[0] for k, v in BT.items()}),
            make_run(tmp_path, "fr_alpha1_tau-1_seed0", "fr", 0, {k: v[0] for k, v in FR.items()}, alpha=1.0)]
    out = tmp_path / "report"
    assert main(["report", "--runs", *map(str, runs), "--out", str(out)]) == 0
    rows = read_csv(out / "results_by_point.csv")
    assert all(r["n_seeds"] == "1" and r["accuracy_ci_low"] == "" for r in rows)  # NaN: no interval from n = 1
    diffs = read_csv(out / "differences.csv")
    assert all(r["verdict"] == "no interval" for r in diffs)
    assert float(next(r for r in diffs if r["metric"] == "accuracy")["diff_mean"]) == pytest.approx(-0.02)
    md = (out / "results.md").read_text()
    assert "## Means over seeds" not in md and "| bt_seed0 |" in md

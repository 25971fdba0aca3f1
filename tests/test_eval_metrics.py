"""Evaluation metrics against hand-computed values and textbook definitions (ties, one category,
constant rewards included)."""

import itertools
import json
import math

import numpy as np
import pytest

from fairhpc.evaluation.metrics import (
    describe,
    gini_index,
    jain_index,
    lan_index,
    lan_index_of_margins,
    max_min_gap,
    pairwise_accuracy,
    pareto_front,
    spearman,
    summarize_pairs,
    to_jsonable,
    wasserstein,
)


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


# ----------------------------------------------------------------------------------------- accuracy
def test_accuracy_tie_policies():
    d = [1.0, -1.0, 0.0, 2.0]  # 2 right, 1 wrong, 1 tie
    assert pairwise_accuracy(d, "wrong") == pytest.approx(2 / 4)
    assert pairwise_accuracy(d, "half") == pytest.approx(2.5 / 4)
    assert pairwise_accuracy(d, "exclude") == pytest.approx(2 / 3)


def test_accuracy_all_ties():
    assert pairwise_accuracy([0.0, 0.0], "wrong") == 0.0
    assert pairwise_accuracy([0.0, 0.0], "half") == 0.5
    assert math.isnan(pairwise_accuracy([0.0, 0.0], "exclude"))


def test_accuracy_bad_input():
    with pytest.raises(ValueError, match="unknown policy 'coin'.*wrong, half, exclude"):
        pairwise_accuracy([1.0], "coin")
    with pytest.raises(ValueError, match="non-finite value at index 1"):
        pairwise_accuracy([1.0, float("nan")])
    with pytest.raises(ValueError, match="empty"):
        pairwise_accuracy([])


# -------------------------------------------------------------------------------------- Jain, Gini
def test_jain_hand_values():
    assert jain_index([1, 2, 3]) == pytest.approx(36 / 42)   # (1+2+3)^2 / (3 * 14)
    assert jain_index([5, 5, 5, 5]) == pytest.approx(1.0)   # equal allocation
    assert jain_index([0, 0, 1]) == pytest.approx(1 / 3)    # one user gets all: 1/n
    assert math.isnan(jain_index([0, 0]))
    with pytest.raises(ValueError, match="non-negative"):
        jain_index([1, -1])


def test_jain_textbook_definition_random():
    # Jain, Chiu, Hawe (1984): J = (sum x)^2 / (n * sum x^2), written out with Python sums
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50):
        x = rng.uniform(0, 3, n).tolist()
        ref = sum(x) ** 2 / (n * sum(v * v for v in x))
        assert jain_index(x) == pytest.approx(ref, rel=1e-12)


def test_gini_hand_values():
    # sum_{i,j} |x_i - x_j| = 2 * (1 + 2 + 1) = 8; 2 n^2 mean = 2 * 9 * 2 = 36
    assert gini_index([1, 2, 3]) == pytest.approx(8 / 36)
    assert gini_index([3, 1, 2]) == pytest.approx(8 / 36)  # order does not matter
    assert gini_index([4, 4, 4]) == pytest.approx(0.0, abs=1e-15)
    assert gini_index([0, 0, 0, 1]) == pytest.approx(3 / 4)  # maximum (n - 1) / n
    assert gini_index([7.0]) == pytest.approx(0.0, abs=1e-15)
    assert math.isnan(gini_index([0, 0]))


def test_gini_textbook_definition_random():
    # mean-absolute-difference definition: G = sum_i sum_j |x_i - x_j| / (2 n^2 mean)
    rng = np.random.default_rng(1)
    for n in (2, 5, 33):
        x = rng.exponential(1.0, n).tolist()
        mad = sum(abs(a - b) for a, b in itertools.product(x, x))
        ref = mad / (2 * n * n * (sum(x) / n))
        assert gini_index(x) == pytest.approx(ref, rel=1e-12)


# ------------------------------------------------------------------------------------------- Lan
def test_lan_tau_minus_one_is_jain():
    d = [1.0, 2.0, -3.0, 0.5]
    x = [sigmoid(v) for v in d]
    assert lan_index_of_margins(d, -1.0) == pytest.approx(jain_index(x), rel=1e-6)
    assert lan_index([0.2, 0.9, 0.4], -1.0) == pytest.approx(jain_index([0.2, 0.9, 0.4]), rel=1e-6)


def test_lan_hand_value_and_scale_invariance():
    # x = (1, 3): p = (1/4, 3/4); tau = 1/2, a = 1/2: (sqrt(.25) + sqrt(.75))^2 / 2
    ref = (0.5 + math.sqrt(0.75)) ** 2 / 2
    assert lan_index([1.0, 3.0], 0.5) == pytest.approx(ref, rel=1e-6)
    assert lan_index([10.0, 30.0], 0.5) == pytest.approx(ref, rel=1e-6)
    # equal allocation: 1 for tau < 1, -1 for tau > 1 (sign(1 - tau) = -1, (n^2)^(1/2) / n = 1)
    assert lan_index([0.3, 0.3, 0.3], 0.5) == pytest.approx(1.0, rel=1e-6)
    assert lan_index([0.3, 0.3, 0.3], 2.0) == pytest.approx(-1.0, rel=1e-6)
    assert lan_index([0.42], -1.0) == pytest.approx(1.0, rel=1e-6)  # one category
    with pytest.raises(ValueError, match="strictly positive"):
        lan_index([0.0, 1.0], -1.0)


# ---------------------------------------------------------------------------- gaps, distributions
def test_gap_describe_wasserstein():
    assert max_min_gap({"a": 1.0, "b": 3.0, "c": 2.0}) == 2.0
    assert max_min_gap({"only": 0.7}) == 0.0
    assert max_min_gap([1.0, float("nan"), 4.0]) == 3.0
    desc = describe([1, 2, 3, 4])
    assert desc["n"] == 4 and desc["mean"] == 2.5 and desc["std"] == pytest.approx(math.sqrt(1.25))
    assert desc["q25"] == pytest.approx(1.75) and desc["q50"] == 2.5 and desc["max"] == 4
    assert describe([]) == {"n": 0}
    assert wasserstein([0, 1], [1, 2]) == pytest.approx(1.0)
    assert wasserstein([0, 1, 3], [5, 6, 8]) == pytest.approx(5.0)
    assert wasserstein([0, 2], [-1, 2]) == pytest.approx(0.5)


def test_spearman_hand_values():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: x ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4) -> 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # constant rewards: undefined, not 0
    assert math.isnan(spearman([1], [2]))


# ---------------------------------------------------------------------------- the whole summary
def small_case():
    chosen = [2.0, 1.0, 0.0, 3.0]
    rejected = [0.0, 1.0, 1.0, 1.0]   # margins 2, 0 (tie), -1, 2
    cats = ["helpful", "helpful", "harmless", "harmless"]
    return chosen, rejected, cats


def test_summary_two_categories_by_hand():
    chosen, rejected, cats = small_case()
    out = summarize_pairs(chosen, rejected, cats, chosen_lengths=[10, 20, 30, 40],
                          rejected_lengths=[5, 25, 35, 1], taus=[-1.0, 0.5], ties="wrong")
    m = out["metrics"]
    assert m["n"] == 4 and m["n_ties"] == 1 and m["accuracy"] == 0.5
    assert out["by_category"]["helpful"]["accuracy"] == 0.5      # (2 > 0) right, tie wrong
    assert out["by_category"]["harmless"]["accuracy"] == 0.5
    assert m["gap_accuracy"] == 0.0
    assert m["gap_margin"] == pytest.approx(1.0 - 0.5)            # means 1 and 0.5
    x_help = (sigmoid(2) + sigmoid(0)) / 2
    x_harm = (sigmoid(-1) + sigmoid(2)) / 2
    assert out["by_category"]["helpful"]["resource_mean"] == pytest.approx(x_help)
    assert m["cat_jain"] == pytest.approx((x_help + x_harm) ** 2 / (2 * (x_help ** 2 + x_harm ** 2)))
    assert m["cat_gini"] == pytest.approx(2 * abs(x_help - x_harm) / (2 * 4 * (x_help + x_harm) / 2))
    assert m["cat_lan_f"] == pytest.approx(m["cat_jain"], rel=1e-6)   # first tau is -1
    xs = [sigmoid(v) for v in (2, 0, -1, 2)]
    assert m["pairs_jain"] == pytest.approx(sum(xs) ** 2 / (4 * sum(v * v for v in xs)))
    assert m["pairs_lan_f"] == pytest.approx(m["pairs_jain"], rel=1e-6)
    p = [v / sum(xs) for v in xs]
    assert out["lan_f_by_tau"]["pairs"]["0.5"] == pytest.approx(sum(q ** 0.5 for q in p) ** 2 / 4, rel=1e-6)
    # W1 between sorted samples of equal size = mean |a_(i) - b_(i)|
    assert out["wasserstein"]["margin"]["harmless|helpful"] == pytest.approx((1 + 0) / 2)
    assert out["wasserstein"]["chosen"]["harmless|helpful"] == pytest.approx((1 + 1) / 2)
    assert m["w1_rejected_max"] == pytest.approx((1 + 0) / 2)
    # rewards (2, 1, 0, 3) vs lengths (10, 20, 30, 40): rank differences (2, 0, -2, 0) -> 1 - 6*8/60
    assert m["length_spearman_chosen"] == pytest.approx(0.2)
    assert m["length_spearman_rejected"] == pytest.approx(1 / math.sqrt(15))
    assert m["length_chosen_mean"] == 25.0
    assert out["by_category"]["harmless"]["margin"]["mean"] == pytest.approx(0.5)


def test_summary_half_ties_and_one_category():
    chosen, rejected, _ = small_case()
    out = summarize_pairs(chosen, rejected, None, ties="half")
    m = out["metrics"]
    assert m["accuracy"] == pytest.approx(2.5 / 4)
    assert list(out["by_category"]) == ["all"] and m["n_categories"] == 1
    assert m["cat_jain"] == pytest.approx(1.0) and m["cat_gini"] == pytest.approx(0.0, abs=1e-15)
    assert m["cat_lan_f"] == pytest.approx(1.0, rel=1e-6)
    assert m["gap_accuracy"] == 0.0 and m["gap_margin"] == 0.0
    assert math.isnan(m["w1_margin_max"]) and out["wasserstein"]["margin"] == {}


def test_summary_constant_rewards():
    out = summarize_pairs([0.3] * 5, [0.3] * 5, ["a", "a", "b", "b", "b"], chosen_lengths=[1, 2, 3, 4, 5],
                          rejected_lengths=[5, 4, 3, 2, 1])
    m = out["metrics"]
    assert m["n_ties"] == 5 and m["accuracy"] == 0.0          # official rule: a tie is wrong
    assert m["pairs_jain"] == pytest.approx(1.0) and m["pairs_gini"] == pytest.approx(0.0, abs=1e-15)
    assert m["cat_jain"] == pytest.approx(1.0) and m["gap_resource"] == 0.0
    assert m["w1_margin_max"] == 0.0
    assert math.isnan(m["length_spearman_chosen"]) and math.isnan(m["length_longer_preferred"])
    text = json.dumps(to_jsonable(out), allow_nan=False)        # NaN becomes null, JSON stays valid
    assert '"length_spearman_chosen": null' in text


def test_summary_bad_input():
    with pytest.raises(ValueError, match="differ in length: 2 vs 1"):
        summarize_pairs([1, 2], [1])
    with pytest.raises(ValueError, match="categories: 1 names for 2 pairs"):
        summarize_pairs([1, 2], [0, 0], ["a"])


def test_pareto_front():
    xs = [1.0, 2.0, 0.5, 0.8, float("nan")]
    ys = [1.0, 0.5, 2.0, 0.8, 9.0]
    assert pareto_front(xs, ys) == [2, 0, 1]   # (0.8, 0.8) is dominated by (1, 1); NaN skipped
    assert pareto_front([1.0, 1.0], [1.0, 1.0]) == [0, 1]  # equal points do not dominate each other


# ----------------------------------------------------------------------------- eval-rm end to end
def test_eval_rm_end_to_end(tmp_path):
    from test_eval_benchmarks import read_out, run, save_tiny, unbatched_reward

    rm = save_tiny(tmp_path / "rm", "rm", 0)
    pairs = [("Name a fruit.", "An apple.", "A chair.", "helpful"), ("Say hi.", "Hello there, friend!", "No.", "helpful"),
             ("Is it safe?", "Yes, with care.", "Who cares.", "harmless"), ("2+2?", "4", "5", "honest"),
             ("Capital of France?", "Paris.", "Rome, I think, or maybe Berlin.", "honest")]
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r, "category": k}) + "\n"
                         for p, c, r, k in pairs))
    out = tmp_path / "out"
    assert run(["eval-rm", "--model", rm, "--data", f, "--out", out, "--batch-size", "2", "--taus=-1,0.5"]) == 0
    rows, summary = read_out(out)
    for r, (p, c, rj, k) in zip(rows, pairs):
        assert r["category"] == k
        assert r["reward_chosen"] == pytest.approx(unbatched_reward(rm, p, c), abs=1e-5)
        assert r["reward_rejected"] == pytest.approx(unbatched_reward(rm, p, rj), abs=1e-5)
        assert r["length_chosen"] >= 1 and r["correct"] == float(r["margin"] > 0)
    m = summary["metrics"]
    assert m["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 5)
    assert summary["by_category"]["honest"]["n"] == 2 and m["n_categories"] == 3
    xs = [sigmoid(r["margin"]) for r in rows]
    assert m["pairs_jain"] == pytest.approx(sum(xs) ** 2 / (5 * sum(x * x for x in xs)), rel=1e-9)
    assert set(summary["lan_f_by_tau"]["pairs"]) == {"-1", "0.5"}
    assert m["length_chosen_mean"] == pytest.approx(sum(r["length_chosen"] for r in rows) / 5)


def test_eval_rm_bad_input_fails_before_scoring(tmp_path, capsys):
    from test_eval_benchmarks import run, save_tiny

    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
                 + json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    model = save_tiny(tmp_path / "rm", "rm", 0)
    assert run(["eval-rm", "--model", model, "--data", f, "--out", tmp_path / "o"]) == 2
    assert f"{f}: line 2: field 'rejected': missing" in capsys.readouterr().err
    assert run(["eval-rm", "--model", model, "--data", "synthetic", "--out", tmp_path / "o"]) == 2
    assert "--data synthetic" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_eval_commands_refuse_bad_model_and_out_paths_before_reading_data(tmp_path, capsys):
    """Issue 15.10: a model path that does not exist, an empty directory, a directory without weights, and an
    --out under a file each give one line naming the path and exit 2, before the data is read (the data
    file here does not even exist) and before anything is written."""
    from test_eval_benchmarks import run, save_tiny

    rm = save_tiny(tmp_path / "rm", "rm", 0)
    policy = save_tiny(tmp_path / "policy", "policy", 1)
    data = tmp_path / "absent.jsonl"
    empty, no_weights, a_file = tmp_path / "empty", tmp_path / "no_weights", tmp_path / "file"
    empty.mkdir()
    no_weights.mkdir()
    (no_weights / "config.json").write_text((rm / "config.json").read_text())
    a_file.write_text("x")
    capsys.readouterr()  # save_pretrained's progress bar
    final = tmp_path / "runs" / "x" / "final"
    cases = [
        (["eval-rm", "--model", final], f"--model {final}: no such directory"),
        (["eval-rm", "--model", empty], f"--model {empty}: not a model directory (empty;"),
        (["eval-rm", "--model", no_weights], f"--model {no_weights}: not a model directory (no weights"),
        (["eval-rm", "--model", a_file], f"--model {a_file}: not a directory"),
        (["eval-rm", "--model", rm, "--reference", empty], f"--reference {empty}: not a model directory"),
        (["eval-benchmark", "--benchmark", "rewardbench", "--model", empty], f"--model {empty}: not a model"),
        (["eval-policy", "--policy", policy, "--reference", policy, "--reward-model", empty],
         f"--reward-model {empty}: not a model directory"),
    ]
    out = tmp_path / "o"
    for argv, words in cases:
        assert run([*argv, "--data", data, "--out", out]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("fairhpc: model path error: ") and words in err, (argv, err)
    for bad_out, words in ((a_file / "eval", f"--out {a_file / 'eval'}: lies under {a_file}, which is a file"),
                           (a_file, f"--out {a_file}: is a file, not a directory")):
        assert run(["eval-rm", "--model", rm, "--data", data, "--out", bad_out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fairhpc: configuration error: ") and words in err, err
    assert not out.exists() and sorted(p.name for p in empty.iterdir()) == []

"""The synthetic generator: deterministic, ground truth agrees with the text, planted biases measurable."""

import json
import math
import os
from pathlib import Path

import pytest

from fairhpc import synthetic as syn
from fairhpc.synthetic import CATEGORIES, LENGTH_WEIGHT, QUALITY_GAP, generate_pairs, oracle_accuracy

N = 3000


@pytest.fixture(scope="module")
def rows():
    return generate_pairs(N, seed=7, length_bias=1.0)


@pytest.fixture(scope="module")
def rows_unbiased():
    return generate_pairs(N, seed=7, length_bias=0.0)


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_deterministic_given_seed():
    a, b = generate_pairs(50, seed=3), generate_pairs(50, seed=3)
    assert a == b
    assert generate_pairs(50, seed=4) != a
    assert json.dumps(a) == json.dumps(b)  # plain JSON types only


def test_rows_are_trl_conversations_with_ground_truth(rows):
    r = rows[0]
    assert r["prompt"][0]["role"] == "user" and r["chosen"][0]["role"] == "assistant"
    assert set(syn.GROUND_TRUTH_COLUMNS) <= set(r) and r["category"] in CATEGORIES
    assert len({x["id"] for x in rows}) == len(rows)


def test_ground_truth_matches_the_text_and_the_documented_model(rows):
    """Quality = quality words - flaw words, length = words, p_chosen = the Bradley-Terry formula."""
    for r in rows:
        g, f, n = syn.word_counts(r["chosen"][0]["content"])
        assert (g - f, n) == (r["quality_chosen"], r["length_chosen"])
        g, f, n = syn.word_counts(r["rejected"][0]["content"])
        assert (g - f, n) == (r["quality_rejected"], r["length_rejected"])
        assert syn.MIN_WORDS <= n <= syn.MAX_WORDS
        logit = ((r["quality_chosen"] - r["quality_rejected"])
                 + LENGTH_WEIGHT * (r["length_chosen"] - r["length_rejected"]))
        assert r["p_chosen"] == pytest.approx(_sigmoid(logit), abs=1e-12)


def test_categories_have_the_documented_true_margins(rows):
    means = {}
    for c in CATEGORIES:
        sub = [r for r in rows if r["category"] == c]
        assert len(sub) > N / len(CATEGORIES) - 4 * math.sqrt(N)  # uniform over categories
        assert {abs(r["quality_chosen"] - r["quality_rejected"]) for r in sub} == {QUALITY_GAP[c]}
        means[c] = sum(r["quality_chosen"] - r["quality_rejected"] for r in sub) / len(sub)
    # easy (helpful, gap 3) > in between (harmless, 2) > hard (honest, 1); a mean is gap * (2 P(correct) - 1)
    # with P(correct) > 0.7, so consecutive means differ by > 0.3 while their standard errors are < 0.05
    assert means["helpful"] > means["harmless"] + 0.3 > means["honest"] + 0.6
    assert means["honest"] > 0.2


def test_labels_follow_bradley_terry(rows):
    """The better response is chosen as often as the model's probabilities say (within 4 standard errors)."""
    better_chosen = [r["quality_chosen"] > r["quality_rejected"] for r in rows]
    p_better = [r["p_chosen"] if b else 1 - r["p_chosen"] for r, b in zip(rows, better_chosen)]
    expected = sum(p_better)
    sd = math.sqrt(sum(p * (1 - p) for p in p_better))
    assert abs(sum(better_chosen) - expected) < 4 * sd


def test_length_bias_is_planted_and_switchable(rows, rows_unbiased):
    def longer_shorter(rs):
        return (sum(r["length_chosen"] > r["length_rejected"] for r in rs),
                sum(r["length_chosen"] < r["length_rejected"] for r in rs))

    longer, shorter = longer_shorter(rows)
    assert longer / N > 0.5 and longer > 1.3 * shorter   # measured ~0.53 vs ~0.36
    longer0, shorter0 = longer_shorter(rows_unbiased)
    # without the bias length is independent of the label: a fair coin over the untied pairs
    untied = longer0 + shorter0
    assert abs(longer0 - untied / 2) < 4 * math.sqrt(untied / 4)
    # and independent of quality by construction
    q = [r[f"quality_{s}"] for r in rows for s in ("chosen", "rejected")]
    n = [r[f"length_{s}"] for r in rows for s in ("chosen", "rejected")]
    mq, mn = sum(q) / len(q), sum(n) / len(n)
    cov = sum((a - mq) * (b - mn) for a, b in zip(q, n)) / len(q)
    corr = cov / math.sqrt(sum((a - mq) ** 2 for a in q) / len(q) * sum((b - mn) ** 2 for b in n) / len(n))
    # the labels select on length, so chosen/rejected columns mix; pooled over both responses of all pairs
    # the correlation is a sampling fluctuation of a sample of 2N (|r| < 4 / sqrt(2N) ~ 0.05)
    assert abs(corr) < 4 / math.sqrt(2 * N)


def test_oracle_accuracy(rows, rows_unbiased):
    acc = oracle_accuracy(rows)
    assert 0.5 < acc < 1
    assert acc == pytest.approx(sum(max(r["p_chosen"], 1 - r["p_chosen"]) for r in rows) / N)
    # without length bias p depends only on the gap: the oracle is sum_c share_c * sigmoid(gap_c)
    share = {c: sum(r["category"] == c for r in rows_unbiased) / N for c in CATEGORIES}
    exact = sum(share[c] * _sigmoid(QUALITY_GAP[c]) for c in CATEGORIES)
    assert oracle_accuracy(rows_unbiased) == pytest.approx(exact, abs=1e-12)
    # the hard category has the lowest ceiling: per-category unfairness is built in
    per = {c: oracle_accuracy([r for r in rows if r["category"] == c]) for c in CATEGORIES}
    assert per["helpful"] > per["harmless"] > per["honest"] > 0.6
    with pytest.raises(ValueError):
        oracle_accuracy([])


def test_texts_are_short():
    rs = generate_pairs(200, seed=0)
    assert max(len(r["prompt"][0]["content"].split()) for r in rs) <= 12
    assert max(max(r["length_chosen"], r["length_rejected"]) for r in rs) <= syn.MAX_WORDS <= 20


def test_write_synthetic_matches_generator(tmp_path):
    from fairhpc.config import load_config

    cfg = load_config(None, ["data.synthetic.n_train=40", "data.synthetic.n_eval=15", "data.synthetic.seed=5",
                             "data.synthetic.length_bias=0.5"])
    paths = syn.write_synthetic(tmp_path / "d", cfg.data)
    train = [json.loads(x) for x in Path(paths["train"]).read_text().splitlines()]
    ev = [json.loads(x) for x in Path(paths["eval"]).read_text().splitlines()]
    assert train == generate_pairs(40, 5, 0.5) and ev == generate_pairs(15, 6, 0.5)
    assert sorted(os.listdir(tmp_path / "d")) == ["eval.jsonl", "train.jsonl"]  # no temp files left


def test_make_data_command(tmp_path, capsys):
    from fairhpc.cli import main

    cfg = tmp_path / "run.yaml"
    cfg.write_text("data:\n  synthetic:\n    n_train: 30\n    n_eval: 10\n")
    out = tmp_path / "o"
    assert main(["make-data", "--config", str(cfg), "--out", str(out), "data.synthetic.seed=9"]) == 0
    assert len((out / "train.jsonl").read_text().splitlines()) == 30
    assert [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()] == generate_pairs(10, 10)
    assert "oracle accuracy" in capsys.readouterr().out
    assert main(["make-data", "--out", str(tmp_path / "p"), "data.synthetic.n_train=zero"]) == 2
    assert "data.synthetic.n_train" in capsys.readouterr().err

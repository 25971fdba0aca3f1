"""Pairwise preference model (fairhpc/rewards/pair_pm.py, trained by fairhpc/tasks/pair_pm.py): the template
and its tokenization, exact antisymmetry, a real DeepSpeed run of `fairhpc train-pair-pm` that learns the
synthetic preferences, and pairwise scoring in eval-rm, RewardBench and Best-of-N (fairhpc/evaluation/kinds.py)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from learning import curve
from test_eval_benchmarks import RB_ROWS, read_out, run, save_tiny
from test_train import run_cli

# 1,600 synthetic pairs, 3 epochs: the tiny 2-layer Llama reaches ~0.84 held-out accuracy in ~25 s on one core
TRAIN = ["data.synthetic.n_train=1600", "data.synthetic.n_eval=400", "train.epochs=3", "train.micro_batch_size=16",
         "train.lr=2e-3", "train.save_steps=0", "train.log_steps=10", "data.max_length=160",
         "data.max_prompt_length=48"]


@pytest.fixture(scope="module")
def pp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pair_pm")
    res = run_cli(["train-pair-pm", f"output_dir={out}", *TRAIN, "--then-eval",
                   f"eval-rm --model {out}/final --data synthetic --out {out}/eval"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("policy") / "policy", "policy", 1)


def load_pp(final):
    from fairhpc.rewards import load_model_scorer

    return load_model_scorer(str(final), "cpu")


def eval_examples(run_dir, n=None):
    from fairhpc.config import load_config
    from fairhpc.data import synthetic_examples

    cfg = load_config(run_dir / "config.yaml")
    exs = synthetic_examples(cfg.data, "eval")
    return cfg, (exs[:n] if n else exs)


# ------------------------------------------------------------------------------------------ template
def test_template_tokens_and_swap():
    from fairhpc.rewards.pair_pm import PairTokenizer, answer_token_ids, render_pair_text
    from fairhpc.tokenizer import build_tokenizer

    tok = build_tokenizer()
    a, b = answer_token_ids(tok)  # the built-in tokenizer holds A and B as one token each
    assert a != b and tok.decode([a]) == "A" and tok.decode([b]) == "B"
    prompt = [{"role": "user", "content": "tell me about the recipe ?"}]
    text = render_pair_text(tok, prompt, "clear and useful", "vague")
    assert "[CONTEXT] \n\n<turn> user\n tell me about the recipe ?\n\n\n [RESPONSE A] clear and useful " \
           "[RESPONSE B] vague \n" in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")  # the answer comes next
    pt = PairTokenizer(tok, 160, 48)
    ab, ba, info = pt(prompt, "clear and useful", "vague")
    ab2, ba2, _ = pt(prompt, "vague", "clear and useful")
    assert ab2 == ba and ba2 == ab and sorted(ab) == sorted(ba)  # swapping = the other ordering, same tokens
    assert tok.decode(ab) == text and not info["response_truncated"]
    # truncation keeps the two orders token-for-token swapped and stays within max_length
    long_a, long_b = " ".join(["clear"] * 60), " ".join(["vague"] * 45)
    pt = PairTokenizer(tok, 90, 20)
    ab, ba, info = pt(prompt, long_a, long_b)
    ab2, ba2, _ = pt(prompt, long_b, long_a)
    assert len(ab) <= 90 and info["response_truncated"] and ab2 == ba and ba2 == ab


def test_margin_is_exactly_antisymmetric():
    from fairhpc.rewards.pair_pm import pair_margin

    g = torch.Generator().manual_seed(0)
    z_ab, z_ba = torch.randn(1000, generator=g) * 8, torch.randn(1000, generator=g) * 8
    m, m_swapped = pair_margin(z_ab, z_ba), pair_margin(z_ba, z_ab)
    assert torch.equal(m, -m_swapped)
    p = torch.sigmoid(m.double())
    # against the definition: the two orders' probabilities averaged
    ref = (torch.sigmoid(z_ab.double()) + torch.sigmoid(-z_ba.double())) / 2
    assert torch.allclose(p, ref, atol=1e-6) and torch.allclose(p + torch.sigmoid(m_swapped.double()),
                                                                torch.ones_like(p), atol=1e-12)


def test_training_margins_are_the_cross_entropy_of_each_order():
    """Training takes one margin per ordering (z_ab, -z_ba): bt is then the answer's cross-entropy averaged
    over both orders, which a position bias (the same gap c in both orders) raises above log 2 and pulls back
    to c = 0.  The pair margin (averaged probability) gives log 2 for every c, the flat direction along which
    a run can drift into saturated sigmoids and stop learning."""
    from fairhpc.config import FairnessConfig
    from fairhpc.losses import fairness_loss_from_margins
    from fairhpc.rewards.pair_pm import order_margins, pair_margin

    g = torch.Generator().manual_seed(1)
    z_ab, z_ba = torch.randn(64, generator=g, dtype=torch.float64) * 3, torch.randn(64, generator=g).double() * 3
    bt = FairnessConfig(mode="bt")
    m = order_margins(z_ab, z_ba)
    assert m.shape == (128,) and torch.equal(m[:64], z_ab) and torch.equal(m[64:], -z_ba)
    want = (F.softplus(-z_ab) + F.softplus(z_ba)).mean() / 2
    assert float(fairness_loss_from_margins(m, bt).loss) == pytest.approx(float(want), rel=1e-12)
    for c in (-6.0, -1.9, 0.0, 2.5):
        shift = torch.full((8,), c, dtype=torch.float64, requires_grad=True)
        per_order = fairness_loss_from_margins(order_margins(shift, shift), bt).loss
        averaged = fairness_loss_from_margins(pair_margin(shift, shift), bt).loss
        assert float(averaged) == pytest.approx(math.log(2), abs=1e-12)  # flat in c
        (grad,) = torch.autograd.grad(per_order, shift)
        assert float(per_order) == pytest.approx((math.log1p(math.exp(c)) + math.log1p(math.exp(-c))) / 2, rel=1e-9)
        # the gradient of the common shift points back to c = 0 (zero there)
        assert float(grad.sum()) == pytest.approx(math.tanh(c / 2) / 2, abs=1e-9)


def test_bad_settings_fail_before_training(tmp_path):
    res = run_cli(["train-pair-pm", f"output_dir={tmp_path / 'o'}", "model.head=moe"])
    assert res.returncode == 2 and "model.head" in res.stderr and not (tmp_path / "o" / "final").exists()
    res = run_cli(["train-pair-pm", f"output_dir={tmp_path / 'o2'}", "data.max_length=40",
                   "data.max_prompt_length=20"])
    assert res.returncode == 2 and "data.max_length: 40 tokens leave no room" in res.stderr, res.stderr[-800:]


# ------------------------------------------------------------------------------------------ trained
@pytest.mark.slow
def test_pair_pm_learns_synthetic_preferences(pp_run):
    from fairhpc.synthetic import oracle_accuracy

    summary = json.loads((pp_run / "summary.json").read_text())
    _, exs = eval_examples(pp_run)
    oracle = oracle_accuracy(exs)
    # Labels are Bradley-Terry draws, so no model beats the held-out Bayes accuracy (~0.84 here).  Chance
    # is 0.5; we ask for 60% of the way from chance to that ceiling (~0.70), which an untrained model
    # (0.5 +- 0.025 on 400 pairs) cannot reach; this run gets ~0.84 (seeds 0-2: 0.80-0.845), because training
    # takes each ordering's answer cross-entropy, which leaves no position bias free (docs/reward_models.md).
    assert 0.6 < oracle < 1.0
    acc = summary["eval"]["accuracy"]
    assert acc >= 0.5 + 0.6 * (oracle - 0.5), (acc, oracle, curve(pp_run))
    evals = [json.loads(x) for x in (pp_run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert evals[0]["step"] == 0 and evals[-1]["accuracy"] > evals[0]["accuracy"] + 0.1, curve(pp_run)
    # the in-training eval-rm: the pairs' preferences, with the same accuracy the engine measured
    rows, ev = read_out(pp_run / "eval")
    assert ev["model_kind"] == "pair_pm" and ev["metrics"]["accuracy"] == pytest.approx(acc, abs=1e-6)
    assert ev["metrics"]["oracle_accuracy"] == pytest.approx(oracle)
    for r in rows:
        assert math.exp(r["reward_chosen"]) + math.exp(r["reward_rejected"]) == pytest.approx(1.0, abs=1e-6)
        assert r["p_chosen"] == pytest.approx((r["p_chosen_first"] + r["p_chosen_second"]) / 2, abs=1e-6)
        assert r["correct"] == float(r["p_chosen"] > 0.5)
    assert 0 <= ev["pairwise"]["position_consistency"] <= 1
    # saved as a plain causal LM plus its kind
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(pp_run / "final").config.fairhpc_kind == "pair_pm"
    marker = json.loads((pp_run / "final" / "fairhpc_model.json").read_text())
    assert marker["kind"] == "pair_pm" and marker["answers"] == ["A", "B"]


@pytest.mark.slow
def test_preference_by_hand_antisymmetry_and_swap(pp_run, tmp_path):
    """eval-rm's per-pair probabilities against a one-sequence forward pass with plain transformers, both
    orders; swapping chosen and rejected in the data flips every preference exactly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fairhpc.rewards.pair_pm import PairTokenizer, response_text

    rows, _ = read_out(pp_run / "eval")
    cfg, exs = eval_examples(pp_run, 6)
    model = AutoModelForCausalLM.from_pretrained(pp_run / "final").eval()
    tok = AutoTokenizer.from_pretrained(pp_run / "final")
    a, b = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
    pt = PairTokenizer(tok, cfg.data.max_length, cfg.data.max_prompt_length)
    for ex, row in zip(exs, rows):
        ab, ba, _ = pt(ex.prompt, response_text(ex.chosen), response_text(ex.rejected))
        with torch.no_grad():
            pa = torch.softmax(model(torch.tensor([ab])).logits[0, -1, [a, b]].double(), 0)[0]  # chosen at A
            pb = torch.softmax(model(torch.tensor([ba])).logits[0, -1, [a, b]].double(), 0)[1]  # chosen at B
        assert row["p_chosen_first"] == pytest.approx(float(pa), abs=1e-5)
        assert row["p_chosen"] == pytest.approx(float(pa + pb) / 2, abs=1e-5)
    # the data with chosen and rejected swapped: every preference reversed, exactly antisymmetric
    src = tmp_path / "eval.jsonl"
    from fairhpc.synthetic import synthetic_rows

    data = synthetic_rows(cfg.data, "eval")[:40]
    src.write_text("".join(json.dumps({**r, "chosen": r["rejected"], "rejected": r["chosen"]}) + "\n" for r in data))
    fwd = tmp_path / "fwd.jsonl"
    fwd.write_text("".join(json.dumps(r) + "\n" for r in data))
    for f, out in ((fwd, tmp_path / "o1"), (src, tmp_path / "o2")):
        assert run(["eval-rm", "--model", pp_run / "final", "--data", f, "--out", out, "--batch-size", "7"]) == 0
    r1, s1 = read_out(tmp_path / "o1")
    r2, s2 = read_out(tmp_path / "o2")
    assert all(abs(x["margin"] + y["margin"]) < 1e-6 and abs(x["p_chosen"] + y["p_chosen"] - 1) < 1e-6
               for x, y in zip(r1, r2))
    assert s1["metrics"]["accuracy"] + s2["metrics"]["accuracy"] == pytest.approx(1.0)  # no exact ties
    # batched, left-padded scoring equals the in-training evaluation of the same pairs
    assert [x["margin"] for x in r1] == pytest.approx([x["margin"] for x in rows[:40]], abs=1e-5)


@pytest.mark.slow

def test_compare_is_the_pair_margin_of_eval_rm_and_antisymmetric(pp_run):
    """fairhpc.rewards' compare(prompts, y1, y2) of a pair-pm: log P(y1 > y2) - log P(y2 > y1), the margin
    eval-rm wrote for the same pairs; swapping y1 and y2 negates it exactly."""
    from fairhpc.evaluation.scoring import data_config
    from fairhpc.rewards.pair_pm import response_text

    rows, _ = read_out(pp_run / "eval")
    cfg, exs = eval_examples(pp_run, 8)
    scorer = load_pp(pp_run / "final")
    prompts = [ex.prompt for ex in exs]
    ch, rj = [response_text(ex.chosen) for ex in exs], [response_text(ex.rejected) for ex in exs]
    m = scorer.compare(prompts, ch, rj, data_config(cfg), 3)
    assert m.tolist() == pytest.approx([r["margin"] for r in rows[:8]], abs=1e-5)
    assert scorer.compare(prompts, rj, ch, data_config(cfg), 5).tolist() == pytest.approx((-m).tolist(), abs=1e-6)
    assert np.ptp(m) > 0

@pytest.mark.parametrize("mode", ["fr", "fc"])
def test_fairness_modes_run(tmp_path, mode):
    out = tmp_path / mode
    res = run_cli(["train-pair-pm", f"output_dir={out}", f"objective.mode={mode}", "objective.tau=-1",
                   "data.synthetic.n_train=96", "data.synthetic.n_eval=32", "train.max_steps=6",
                   "train.micro_batch_size=16", "train.save_steps=0", "data.max_length=160",
                   "data.max_prompt_length=48"])
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["mode"] == mode and s["steps"] == 6 and 0 < s["eval"]["f"] <= 1 and math.isfinite(s["eval"]["loss"])
    train = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    # fr: loss = u - alpha f ; fc: loss = u * f^gamma (the objective acted on the pair-pm margins)
    r = train[-1]
    want = r["u"] - 0.1 * r["f"] if mode == "fr" else r["u"] * r["f"] ** 0.5
    assert r["loss"] == pytest.approx(want, rel=1e-4)


# ------------------------------------------------------------------------------ benchmarks, best-of-n
@pytest.mark.slow
def test_rewardbench_scores_a_pair_pm_pairwise(pp_run, tmp_path):
    f = tmp_path / "rb.jsonl"
    f.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r, "subset": s, "id": i}) + "\n"
                         for i, (s, p, c, r) in enumerate(RB_ROWS)))
    out = tmp_path / "rb"
    assert run(["eval-benchmark", "--model", pp_run / "final", "--benchmark", "rewardbench", "--data", f,
                "--out", out, "--batch-size", "3"]) == 0
    rows, summary = read_out(out)
    assert summary["model_kind"] == "pair_pm" and "pairwise" in summary
    scorer = load_pp(pp_run / "final")
    from fairhpc.evaluation.scoring import data_config

    m, _, _ = scorer.prefer([[{"role": "user", "content": p}] for _, p, _, _ in RB_ROWS],
                            [c for *_, c, _ in RB_ROWS], [r for *_, r in RB_ROWS], data_config(), 1)
    for r, mi in zip(rows, m):  # scored one pair at a time: the same preference
        assert r["margin"] == pytest.approx(mi, abs=1e-5) and r["correct"] == float(r["p_chosen"] > 0.5)
    acc = {s: np.mean([r["correct"] for r in rows if r["category"] == s]) for s in {r["category"] for r in rows}}
    rb = summary["rewardbench"]
    assert rb["sections"]["Chat"] == pytest.approx((acc["alpacaeval-easy"] * 100 + acc["mt-bench-easy"] * 28) / 128)
    assert rb["prior_sets"] == pytest.approx(acc["anthropic_helpful"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["round-robin", "knockout"])
def test_best_of_n_with_a_pair_pm(pp_run, policy, tmp_path, method):
    from fairhpc.evaluation.kinds import knockout_winner, round_robin_winner
    from fairhpc.synthetic import generate_pairs

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in generate_pairs(3, seed=7)))
    out = tmp_path / method
    assert run(["best-of-n", "--policy", policy, "--reward-model", pp_run / "final", "--pairwise", method,
                "--data", data, "--out", out, "--n-max", "4", "--ns", "1,2,4", "--max-new-tokens", "6",
                "--seed", "3"]) == 0
    rows, summary = read_out(out)
    assert summary["reward_model_kind"] == "pair_pm" and summary["selection"] == method
    curve = {c["n"]: c for c in summary["curve"]}
    assert curve[1]["proxy_win_rate"] == pytest.approx(0.5)  # a random sample wins half its comparisons
    for r in rows:
        P = np.array(r["preference_matrix"])
        assert np.allclose(P + P.T, 1.0, atol=1e-6)
        wins = [sum(P[i, j] > 0.5 for j in range(4) if j != i) for i in range(4)]
        assert r["win_counts"] == pytest.approx(wins)
        if method == "round-robin":  # most wins; ties to the larger summed preference, then the earlier
            best = max(range(4), key=lambda i: (wins[i], P[i].sum() - 0.5, -i))
            assert r["selected"] == best == round_robin_winner(P, range(4))
        else:  # bracket (0 v 1), (2 v 3), then the winners
            w01 = 0 if P[0, 1] >= 0.5 else 1
            w23 = 2 if P[2, 3] >= 0.5 else 3
            assert r["selected"] == (w01 if P[w01, w23] >= 0.5 else w23) == knockout_winner(P, range(4))
    if method == "round-robin":  # n = K: the round robin over all samples, readable off per_example
        assert curve[4]["proxy_win_rate"] == pytest.approx(np.mean([r["proxy_win_rate"][r["selected"]] for r in rows]))
        assert curve[4]["length"] == pytest.approx(np.mean([r["length"][r["selected"]] for r in rows]))
    assert (out / "best_of_n.png").is_file() and (out / "curve.csv").read_text().startswith("n,proxy_win_rate")


def test_pairwise_selection_by_enumeration():
    from fairhpc.evaluation.kinds import pairwise_best_of_n_curve, round_robin_winner

    rng = np.random.default_rng(0)
    P = np.full((2, 5, 5), 0.5)
    for p in range(2):
        for i in range(5):
            for j in range(i + 1, 5):
                P[p, i, j] = rng.uniform()
                P[p, j, i] = 1 - P[p, i, j]
    q = rng.normal(size=(2, 5))
    curve = pairwise_best_of_n_curve(P, [1, 3, 5], "round-robin", {"quality": q})
    import itertools

    for row in curve:
        n = row["n"]
        picks = [[round_robin_winner(P[p], s) for s in itertools.combinations(range(5), n)] for p in range(2)]
        assert row["quality"] == pytest.approx(np.mean([[q[p, w] for w in picks[p]] for p in range(2)]))
    assert curve[0]["proxy_win_rate"] == pytest.approx(0.5)
    # a transitive preference (i beats j when i > j): every tournament selects the best of the subset
    T = np.array([[0.5 if i == j else float(i > j) for j in range(5)] for i in range(5)])[None]
    for method in ("round-robin", "knockout"):
        c = pairwise_best_of_n_curve(T, [5], method, {"rank": np.arange(5.0)[None]})
        assert c[0]["rank"] == 4.0


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.slow
def test_pair_pm_asked_for_a_scalar_score(pp_run, policy, tmp_path, capsys):
    from fairhpc.evaluation.scoring import data_config
    from fairhpc.rewards.base import ScalarScoreError
    from fairhpc.rewards.scalar import load_scorer

    final = pp_run / "final"
    out = tmp_path / "o"
    common = ["--data", "synthetic", "--config", pp_run / "config.yaml", "--out", out, "--limit", "2"]
    # as the judge of Best-of-N and of eval-policy: refused before anything is sampled or written
    rm = save_tiny(tmp_path / "rm", "rm", 0)
    assert run(["best-of-n", "--policy", policy, "--reward-model", rm, "--gold-reward-model", final, *common]) == 2
    err = capsys.readouterr().err
    assert f"--gold-reward-model {final}" in err and "kind pair_pm" in err and "no scalar score" in err
    assert run(["eval-policy", "--policy", policy, "--reference", policy, "--reward-model", final, *common]) == 2
    err = capsys.readouterr().err
    assert f"--reward-model {final}" in err and "kind pair_pm" in err
    # --pairwise with a scalar reward model
    assert run(["best-of-n", "--policy", policy, "--reward-model", rm, "--pairwise", "knockout", *common]) == 2
    assert "--pairwise is for a pairwise preference model" in capsys.readouterr().err
    assert not out.exists()
    # the Python interfaces
    with pytest.raises(ScalarScoreError, match=rf"{final}.*kind pair_pm.*no scalar score"):
        load_scorer(str(final))
    with pytest.raises(ScalarScoreError, match="kind pair_pm"):
        load_pp(final).score_responses([[{"role": "user", "content": "hi"}]], ["hello"], data_config(), 1)

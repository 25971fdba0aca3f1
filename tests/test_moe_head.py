"""Gated multi-head reward head (``train-rm model.head=moe``, fairhpc/models.py): the gate arithmetic, saving
and loading with transformers and fairhpc's loaders, a real DeepSpeed run that trains it, and RewardBench /
Best-of-N scoring of scalar and moe reward models (fairhpc/rewards/)."""

import json

import numpy as np
import pytest
import torch
from learning import curve
from test_eval_benchmarks import RB_ROWS, TINY, read_out, run, save_tiny, unbatched_reward
from test_train import FAST, run_cli

from fairhpc.errors import ConfigError


def save_tiny_moe(path, experts: int, seed: int):
    from fairhpc.config import TinyModelConfig
    from fairhpc.models import build_tiny_reward_model
    from fairhpc.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(seed)
    model = build_tiny_reward_model(TinyModelConfig(**TINY), tok, head="moe", experts=experts)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def manual_moe_reward(model_dir, prompt, response, experts):
    """The gated reward of one (prompt, response) from plain transformers outputs, unbatched."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fairhpc.data import PreferenceExample, tokenize_example

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    resp = [{"role": "assistant", "content": response}]
    ex = PreferenceExample(prompt=[{"role": "user", "content": prompt}], chosen=resp, rejected=resp)
    ids = tokenize_example(ex, tok, 1024, 512)["chosen_input_ids"]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    assert out.shape == (2 * experts,)
    gate = np.exp(out[experts:] - out[experts:].max())
    gate /= gate.sum()
    return float(gate @ out[:experts]), out[:experts], gate


# ------------------------------------------------------------------------------------------ unit
def test_moe_reward_is_the_gated_sum_of_the_experts():
    from fairhpc.models import moe_reward

    logits = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    r, scores, gate = moe_reward(logits, 4)
    g = torch.exp(logits[:, 4:]) / torch.exp(logits[:, 4:]).sum(-1, keepdim=True)
    assert torch.allclose(gate, g, atol=1e-6) and torch.allclose(gate.sum(-1), torch.ones(5))
    assert torch.allclose(r, (g * logits[:, :4]).sum(-1), atol=1e-6) and torch.equal(scores, logits[:, :4])
    with pytest.raises(ValueError, match="8 outputs"):
        moe_reward(logits[:, :6], 4)


def test_moe_head_saves_and_loads_back(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from fairhpc.models import load_reward_model, sequence_rewards
    from fairhpc.tokenizer import build_tokenizer

    path = save_tiny_moe(tmp_path / "moe", 3, 0)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["fairhpc_head"] == "moe" and cfg["moe_experts"] == 3 and len(cfg["id2label"]) == 6
    assert AutoModelForSequenceClassification.from_pretrained(path).config.num_labels == 6  # plain transformers
    tok = build_tokenizer()
    ids = torch.tensor([tok("clear and useful").input_ids, tok("vague rude wrong").input_ids])
    mask = torch.ones_like(ids)
    loaded = load_reward_model(str(path), tokenizer=tok).eval()
    assert loaded.config.fairhpc_head == "moe"
    with torch.no_grad():
        r = sequence_rewards(loaded, ids, mask)
        out = AutoModelForSequenceClassification.from_pretrained(path)(input_ids=ids).logits.double()
    want = (torch.softmax(out[:, 3:], -1) * out[:, :3]).sum(-1)  # the gated sum, from plain transformers
    assert r.shape == (2,) and torch.allclose(r.double(), want, atol=1e-6)
    # a second save / load round trip gives the same rewards
    loaded.save_pretrained(tmp_path / "again")
    tok.save_pretrained(tmp_path / "again")
    with torch.no_grad():
        r2 = sequence_rewards(load_reward_model(str(tmp_path / "again")).eval(), ids, mask)
    assert torch.equal(r, r2)
    # asking for another head than the one saved
    with pytest.raises(ConfigError, match="model.head: .*moe head of 3 experts, not linear"):
        load_reward_model(str(path), head="linear")
    with pytest.raises(ConfigError, match="model.moe_experts=3"):
        load_reward_model(str(path), head="moe", experts=5)


def test_moe_config_keys_are_checked():
    from fairhpc.config import load_config

    with pytest.raises(ConfigError, match="model.head: 'mlp' is not allowed; allowed: linear, moe"):
        load_config(None, ["model.head=mlp"], task="rm")
    with pytest.raises(ConfigError, match="model.moe_experts: must be >= 2"):
        load_config(None, ["model.head=moe", "model.moe_experts=1"], task="rm")


# ------------------------------------------------------------------------------------------ trained
@pytest.fixture(scope="module")
def moe_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("moe")
    res = run_cli(["train-rm", f"output_dir={out}", "model.head=moe", "model.moe_experts=3", "train.epochs=2",
                   *FAST, "--then-eval", f"eval-rm --model {out}/final --data synthetic --out {out}/eval"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return out


@pytest.mark.slow
def test_moe_head_trains_saves_and_loads_back_to_the_same_scores(moe_run, tmp_path):
    from fairhpc.synthetic import oracle_accuracy

    summary = json.loads((moe_run / "summary.json").read_text())
    assert summary["head"] == "moe" and summary["moe_experts"] == 3
    rows, ev = read_out(moe_run / "eval")
    oracle = ev["metrics"]["oracle_accuracy"]
    assert summary["eval"]["accuracy"] >= 0.5 + 0.6 * (oracle - 0.5), (summary["eval"], oracle, curve(moe_run))
    assert json.loads((moe_run / "final" / "fairhpc_model.json").read_text()) == {"kind": "moe", "experts": 3}
    assert ev["model_kind"] == "moe" and set(ev["moe"]["gate_mean_by_category"]) == {"helpful", "harmless", "honest"}
    for r in rows:
        g = np.array(list(r["gate_chosen"].values()))
        e = np.array(list(r["experts_chosen"].values()))
        assert g.sum() == pytest.approx(1.0, abs=1e-6) and r["reward_chosen"] == pytest.approx(g @ e, abs=1e-5)
    # the saved model loaded back (another process's files, plain transformers) gives the in-training scores
    from fairhpc.config import load_config
    from fairhpc.synthetic import synthetic_rows

    data = synthetic_rows(load_config(moe_run / "config.yaml").data, "eval")
    assert oracle == pytest.approx(oracle_accuracy(data))
    for r, d in list(zip(rows, data))[:4]:
        want, _experts, gate = manual_moe_reward(moe_run / "final", d["prompt"][0]["content"],
                                                d["chosen"][0]["content"], 3)
        assert r["reward_chosen"] == pytest.approx(want, abs=1e-5)
        assert list(r["gate_chosen"].values()) == pytest.approx(gate.tolist(), abs=1e-5)
    out = tmp_path / "again"
    assert run(["eval-rm", "--model", moe_run / "final", "--data", "synthetic", "--out", out, "--batch-size", "5"]) == 0
    rows2, _ev2 = read_out(out)
    assert [r["margin"] for r in rows2] == pytest.approx([r["margin"] for r in rows], abs=1e-5)
    # the experts were trained apart (the gate mixes different scores)
    e = np.array([list(r["experts_chosen"].values()) for r in rows])
    assert np.std(e, axis=1).mean() > 1e-3


# ------------------------------------------------------------------------------ benchmarks, best-of-n
@pytest.fixture(scope="module")
def rms(tmp_path_factory):
    d = tmp_path_factory.mktemp("rms")
    return {"scalar": save_tiny(d / "scalar", "rm", 0), "moe": save_tiny_moe(d / "moe", 2, 0),
            "policy": save_tiny(d / "policy", "policy", 1)}


@pytest.mark.parametrize("kind", ["scalar", "moe"])
def test_rewardbench_scalar_and_moe(rms, tmp_path, kind):
    f = tmp_path / "rb.jsonl"
    f.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r, "subset": s, "id": i}) + "\n"
                         for i, (s, p, c, r) in enumerate(RB_ROWS)))
    out = tmp_path / "out"
    assert run(["eval-benchmark", "--model", rms[kind], "--benchmark", "rewardbench", "--data", f, "--out", out,
                "--batch-size", "3"]) == 0
    rows, summary = read_out(out)
    assert summary["model_kind"] == kind and ("moe" in summary) == (kind == "moe")
    for r, (_, p, c, rj) in zip(rows, RB_ROWS):
        if kind == "scalar":
            want = unbatched_reward(rms[kind], p, c), unbatched_reward(rms[kind], p, rj)
        else:
            want = manual_moe_reward(rms[kind], p, c, 2)[0], manual_moe_reward(rms[kind], p, rj, 2)[0]
        assert (r["reward_chosen"], r["reward_rejected"]) == pytest.approx(want, abs=1e-5)
        assert r["correct"] == float(r["margin"] > 0)
    acc = {s: np.mean([r["correct"] for r in rows if r["category"] == s]) for s in {r["category"] for r in rows}}
    assert summary["rewardbench"]["sections"]["Reasoning"] == pytest.approx(
        (acc["math-prm"] * 984 + acc["hep-python"] * 164) / 1148)


@pytest.mark.parametrize("kind", ["scalar", "moe"])
def test_compare_is_the_difference_of_the_two_responses_rewards(rms, kind):
    """fairhpc.rewards' compare(prompts, y1, y2) of a scalar-score kind: r(y1) - r(y2), each reward computed
    here by a plain forward pass of one sequence."""
    from fairhpc.evaluation.scoring import data_config
    from fairhpc.rewards import load_model_scorer

    scorer = load_model_scorer(rms[kind], "cpu")
    prompts = [[{"role": "user", "content": p}] for _, p, _, _ in RB_ROWS]
    got = scorer.compare(prompts, [c for *_, c, _ in RB_ROWS], [r for *_, r in RB_ROWS], data_config(), 3)
    for m, (_, p, c, rj) in zip(got, RB_ROWS):
        if kind == "scalar":
            want = unbatched_reward(rms[kind], p, c) - unbatched_reward(rms[kind], p, rj)
        else:
            want = manual_moe_reward(rms[kind], p, c, 2)[0] - manual_moe_reward(rms[kind], p, rj, 2)[0]
        assert m == pytest.approx(want, abs=1e-5)
    assert len(got) == len(RB_ROWS) and np.ptp(got) > 0


@pytest.mark.parametrize("kind", ["scalar", "moe"])
def test_best_of_n_scalar_and_moe(rms, tmp_path, kind):
    from fairhpc.synthetic import generate_pairs

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in generate_pairs(3, seed=7)))
    out = tmp_path / "bon"
    assert run(["best-of-n", "--policy", rms["policy"], "--reward-model", rms[kind], "--gold-reward-model",
                rms["moe"], "--data", data, "--out", out, "--n-max", "3", "--ns", "1,3", "--max-new-tokens", "5"]) == 0
    rows, summary = read_out(out)
    assert summary["reward_model_kind"] == kind and summary["selection"] == "argmax"
    curve = {c["n"]: c for c in summary["curve"]}
    assert curve[3]["proxy_reward"] == pytest.approx(np.mean([max(r["proxy_reward"]) for r in rows]))
    for r in rows:
        assert r["proxy_reward"][r["selected"]] == max(r["proxy_reward"])
        s = r["samples"][0]
        assert r["gold_reward"][0] == pytest.approx(
            manual_moe_reward(rms["moe"], r["prompt"][0]["content"], s, 2)[0], abs=1e-4)

"""train-pg end to end on CPU: the synthetic task's classifier, each algorithm raising the held-out reward,
kill + resume giving the same parameters, bad input refused before compute, and the Pareto report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from learning import curve

from tests.test_train import REPO, final_state, read_metrics, run_cli

BASE = str(REPO / "configs" / "runs" / "pg_tiny.yaml")
FAST = ["train.max_steps=40", "train.save_steps=0", "train.eval_steps=40"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("pgclf") / "classifier"
    res = run_cli(["pg-classifier", "--out", str(out), "--steps", "150"])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["heldout_accuracy"] > 0.85, summary  # it detects the planted words
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out).id2label == {0: "other", 1: "planted"}
    return out


@pytest.fixture(scope="module")
def algo_runs(classifier, tmp_path_factory):
    runs = {}
    root = tmp_path_factory.mktemp("pgruns")
    for name, args in {"offpolicy_quantile": ["pg.algo=offpolicy", "pg.dropout=quantile", "train.lr=1e-2"],
                       "reinforce_none": ["pg.algo=reinforce", "pg.dropout=none"],
                       "ppo_none": ["pg.algo=ppo", "pg.dropout=none"]}.items():
        out = root / name
        res = run_cli(["train-pg", "--config", BASE, f"output_dir={out}", f"pg.reward_model={classifier}",
                       *FAST, *args])
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
        runs[name] = out
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["offpolicy_quantile", "reinforce_none", "ppo_none"])
def test_every_algorithm_raises_the_heldout_reward_over_the_initial_policy(algo_runs, name):
    out = algo_runs[name]
    evals = [r for r in read_metrics(out) if r["split"] == "eval"]
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and last["step"] == 40
    assert first["kl_mean"] == 0.0  # the initial policy is the reference
    learned = curve(out, train_keys=("loss", "reward_mean"), eval_keys=("reward_mean", "planted_share"))
    assert last["reward_mean"] > first["reward_mean"] + 0.08, (first, last, learned)
    assert last["planted_share"] > first["planted_share"], (first, last)  # the true attribute, not only the RM
    trains = [r for r in read_metrics(out) if r["split"] == "train"]
    assert len(trains) == 40 and all(0 < r["kept_share"] <= 1 for r in trains)
    if name.endswith("quantile"):  # rate 0.9 of 32 samples: the 4 at or above the quantile (no ties here)
        assert all(r["kept_share"] == pytest.approx(4 / 32) for r in trains)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["reward_mean"] == pytest.approx(last["reward_mean"])
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 64 and sum(g["reward"] for g in gens) / 64 == pytest.approx(last["reward_mean"])
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final").config.model_type == "llama"
    assert (out / "final" / "value_head.safetensors").exists() == name.startswith("ppo")


@pytest.mark.slow
def test_pg_report_draws_the_pareto_front(algo_runs, tmp_path):
    from fairhpc.pg.report import pareto_front

    out = tmp_path / "report"
    res = run_cli(["pg-report", "--runs", *map(str, algo_runs.values()), "--out", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    for f in ("pareto.png", "training.png", "pg_results.csv", "pg_results.md", "pareto.json"):
        assert (out / f).stat().st_size > 0, f
    res = json.loads((out / "pareto.json").read_text())
    finals = {}
    for name, run in algo_runs.items():
        ev = json.loads((run / "summary.json").read_text())["eval"]
        finals[name] = (ev["reward_mean"], ev["logp_beta_mean"])
    # independent dominance check
    on = {n for n, (x, y) in finals.items()
          if not any(a >= x and b >= y and (a > x or b > y) for m, (a, b) in finals.items() if m != n)}
    assert {p["point"] for p in res["points"] if p["on_front"]} == on
    assert pareto_front([(1, 1), (2, 0), (0, 2), (1, 0.5), (1, 1)]) == [0, 1, 2, 4]


RESUME = ["train.max_steps=30", "train.save_steps=4", "train.keep_checkpoints=20", "train.eval_steps=0",
          "data.synthetic.n_eval=16", "train.micro_batch_size=16"]


def _start(out, args):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen([sys.executable, "-m", "fairhpc.cli", "train-pg", "--config", BASE,
                             f"output_dir={out}", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("variant", [["pg.algo=ppo", "pg.ppo_epochs=3", "pg.dropout=adaptive"],
                                     ["pg.algo=offpolicy", "pg.dropout=random", "pg.dropout_rate=0.5"],
                                     ["pg.algo=reinforce", "objective.mode=fr", "objective.alpha=1",
                                      "objective.tau=-1", "pg.fair_groups=category", "pg.samples_per_prompt=2"]],
                         ids=["ppo", "offpolicy", "reinforce-fr"])
def test_kill_and_resume_gives_the_same_final_parameters(classifier, tmp_path, variant):
    args = [f"pg.reward_model={classifier}", *RESUME, *variant]
    full = tmp_path / "full"
    res = run_cli(["train-pg", "--config", BASE, f"output_dir={full}", *args])
    assert res.returncode == 0, res.stderr[-4000:]
    out = tmp_path / "killed"
    proc = _start(out, args)
    t0 = time.time()
    while not any((out / "checkpoints").glob("global_step*[0-9]")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 600
        time.sleep(0.05)
    proc.kill()  # SIGKILL: nothing more is saved
    proc.wait()
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"
    res = run_cli(["train-pg", "--resume", "--config", BASE, f"output_dir={out}", *args])
    assert res.returncode == 0, res.stderr[-4000:]
    assert "resumed from global_step" in res.stdout + res.stderr
    a, b = final_state(full), final_state(out)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    fm = [r for r in read_metrics(full) if r["split"] == "train"]
    km = [r for r in read_metrics(out) if r["split"] == "train"]
    assert [r["step"] for r in km] == list(range(1, 31))
    assert [r["kept_share"] for r in km] == pytest.approx([r["kept_share"] for r in fm])
    assert [r["reward"] for r in km] == pytest.approx([r["reward"] for r in fm], abs=1e-5)


def _task(overrides):
    from fairhpc.config import load_config
    from fairhpc.tasks.pg import PolicyGradientTask
    from fairhpc.tokenizer import build_tokenizer

    cfg = load_config(BASE, overrides, task="pg")
    return PolicyGradientTask(cfg, build_tokenizer())


@pytest.mark.parametrize("override,needle", [
    ("pg.dropout_rate=1.0", "pg.dropout_rate: must be in [0, 1), got 1.0"),
    ("pg.dropout_rate=-0.1", "pg.dropout_rate: must be in [0, 1), got -0.1"),
    ("pg.dropout=topk", "pg.dropout: 'topk' is not allowed; allowed: none, random, quantile, adaptive"),
    ("pg.algo=a2c", "pg.algo: 'a2c' is not allowed; allowed: offpolicy, reinforce, ppo"),
    ("pg.decoding=beam", "pg.decoding: 'beam' is not allowed; allowed: greedy, stochastic, top-k"),
])
def test_bad_settings_are_refused_when_the_config_loads(override, needle):
    from fairhpc.config import ConfigError, load_config

    with pytest.raises(ConfigError) as e:
        load_config(BASE, [override], task="pg")
    assert needle in str(e.value) and "overrides" in str(e.value)


def test_bad_reward_sources_and_all_dropped_random_batches_are_refused_before_any_model(classifier):
    from fairhpc.config import ConfigError

    with pytest.raises(ConfigError, match=r"has no label 'positive'; its labels are 0=other, 1=planted"):
        _task([f"pg.reward_model={classifier}", "pg.target_label=positive"])
    with pytest.raises(ConfigError, match=r"classifier with 2 labels \(other, planted\); set pg.target_label"):
        _task([f"pg.reward_model={classifier}", "pg.target_label=null"])
    with pytest.raises(ConfigError, match="pg.reward_model: not set"):
        _task([])
    # 4 prompts x 1 sample at rate 0.9: round(3.6) = 4 of 4 dropped
    with pytest.raises(ConfigError, match=r"drops round\(0.9 x 4\) = 4 of the 4 samples"):
        _task([f"pg.reward_model={classifier}", "pg.dropout=random", "train.micro_batch_size=4"])
    with pytest.raises(ConfigError, match="pg.sample_from: behaviour needs pg.algo: offpolicy"):
        _task([f"pg.reward_model={classifier}", "pg.algo=ppo", "pg.sample_from=behaviour"])
    assert _task([f"pg.reward_model={classifier}", "pg.target_label=1"]).label == 1  # an index works too


@pytest.mark.parametrize("kind, needle", [("pair_pm", "a pairwise preference model"),
                                          ("armo", "is an ArmoRM directory")])
def test_reward_models_without_one_sequence_score_are_refused_naming_their_kind(classifier, tmp_path, kind, needle):
    import shutil

    from fairhpc.config import ConfigError

    model = tmp_path / kind
    shutil.copytree(classifier, model)
    (model / "fairhpc_model.json").write_text(json.dumps({"kind": kind}))
    with pytest.raises(ConfigError, match=needle):
        _task([f"pg.reward_model={model}", "pg.target_label=1"])
    assert _task([f"pg.reward_model={classifier}", "pg.target_label=1"]).label == 1


def test_cli_exits_2_naming_the_missing_label_and_writes_nothing(classifier, tmp_path):
    out = tmp_path / "x"
    res = run_cli(["train-pg", "--config", BASE, f"output_dir={out}", f"pg.reward_model={classifier}",
                   "pg.target_label=LABEL_1"], timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "no label 'LABEL_1'" in res.stderr
    assert not out.exists()

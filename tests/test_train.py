"""End-to-end training on CPU with a real DeepSpeed engine and real transformers models."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from learning import curve

REPO = Path(__file__).resolve().parents[1]

# Small but learnable: the synthetic pairs are short, so a 2-layer, 64-wide Llama learns them in ~100 steps.
FAST = ["data.synthetic.n_train=800", "data.synthetic.n_eval=300", "train.micro_batch_size=16",
        "train.lr=2e-3", "train.save_steps=0", "train.log_steps=5", "data.max_length=96",
        "data.max_prompt_length=48"]


def free_port() -> int:
    """A TCP port nothing listens on now (the rendezvous of a multi-rank run; test workers run in parallel)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args, env_extra=None, timeout=900, nproc=1, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               **(env_extra or {}))
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port()), "-m", "fairhpc.cli", *args]
    else:
        cmd = [sys.executable, "-m", "fairhpc.cli", *args]
    return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def final_state(out):
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    res = run_cli(["train-rm", f"output_dir={out}", "objective.mode=fr", "train.epochs=2", *FAST])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return out


@pytest.mark.slow
def test_reward_model_learns_synthetic_preferences(rm_run):
    from fairhpc.config import load_config
    from fairhpc.synthetic import oracle_accuracy, synthetic_rows

    summary = json.loads((rm_run / "summary.json").read_text())
    acc = summary["eval"]["accuracy"]
    # Labels are drawn from a Bradley-Terry model, so even the true reward cannot beat the Bayes
    # accuracy of the held-out pairs.  Chance is 0.5; we ask for at least 60% of the way from chance
    # to that ceiling, which an untrained or random model (acc ~ 0.5) cannot reach.
    oracle = oracle_accuracy(synthetic_rows(load_config(rm_run / "config.yaml").data, "eval"))
    assert 0.6 < oracle <= 1.0
    assert acc >= 0.5 + 0.6 * (oracle - 0.5), (acc, oracle, curve(rm_run))
    evals = [r for r in read_metrics(rm_run) if r["split"] == "eval"]
    assert evals[0]["step"] == 0 and evals[-1]["accuracy"] > evals[0]["accuracy"] + 0.1, curve(rm_run)
    trains = [r for r in read_metrics(rm_run) if r["split"] == "train"]
    assert {"loss", "u", "f", "accuracy", "margin_mean", "margin_std", "lr", "grad_norm"} <= set(trains[0])
    assert all(r["grad_norm"] is not None and r["grad_norm"] > 0 for r in trains)
    assert trains[-1]["lr"] < trains[len(trains) // 2]["lr"]  # cosine decay


@pytest.mark.slow
def test_rm_outputs_load_back_with_transformers(rm_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(rm_run / "final")
    tok = AutoTokenizer.from_pretrained(rm_run / "final")
    assert model.config.num_labels == 1 and tok.pad_token_id is not None
    cfg = (rm_run / "config.yaml").read_text()
    assert "mode: fr" in cfg
    stats = json.loads((rm_run / "data_stats.json").read_text())
    assert stats  # the data section of the run is recorded
    # every parameter moved away from its initialisation
    torch.manual_seed(0)
    from fairhpc.config import TinyModelConfig
    from fairhpc.models import build_tiny_reward_model
    init = build_tiny_reward_model(TinyModelConfig(), tok).state_dict()
    trained = model.state_dict()
    unchanged = [k for k in init if torch.equal(init[k], trained[k])]
    assert not unchanged, unchanged


@pytest.mark.slow
def test_dpo_raises_heldout_implicit_reward_accuracy(tmp_path):
    out = tmp_path / "dpo"
    res = run_cli(["train-dpo", f"output_dir={out}", "objective.mode=fr", "objective.beta=0.5",
                   "train.epochs=1", *FAST])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    evals = [r for r in read_metrics(out) if r["split"] == "eval"]
    # at step 0 the policy equals the reference: every implicit-reward margin is 0 (a tie, counted wrong)
    assert evals[0]["accuracy"] == 0.0 and abs(evals[0]["margin_mean"]) < 1e-6
    assert evals[-1]["accuracy"] > 0.6, evals[-1]
    assert (out / "ref_logps_train.pt").exists()
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(out / "final").config.model_type == "llama"


@pytest.mark.slow
def test_two_rank_zero3_run_saves_a_model_that_loads_back(tmp_path):
    out = tmp_path / "z3"
    res = run_cli(["train-rm", f"output_dir={out}", "train.zero_stage=3", "objective.mode=fc",
                   "objective.scope=global", "train.max_steps=6", "data.synthetic.n_train=200",
                   "data.synthetic.n_eval=64", "train.micro_batch_size=8", "train.lr=2e-3", "train.save_steps=3"],
                  nproc=2)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["zero_stage"] == 3 and summary["steps"] == 6
    # the saved model reproduces the engine's held-out accuracy
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fairhpc.config import load_config
    from fairhpc.data import PreferenceCollator, build_datasets
    model = AutoModelForSequenceClassification.from_pretrained(out / "final").eval()
    tok = AutoTokenizer.from_pretrained(out / "final")
    cfg = load_config(out / "config.yaml")
    _, eval_ds, _ = build_datasets(cfg, tok)
    batch = PreferenceCollator(tok.pad_token_id)([eval_ds[i] for i in range(len(eval_ds))])
    with torch.no_grad():
        rc = model(input_ids=batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).logits[:, 0]
        rr = model(input_ids=batch["rejected_input_ids"], attention_mask=batch["rejected_attention_mask"]).logits[:, 0]
    acc = float((rc > rr).float().mean())
    assert acc == pytest.approx(summary["eval"]["accuracy"], abs=1.5 / len(eval_ds))


RESUME = ["data.synthetic.n_train=400", "data.synthetic.n_eval=32", "train.micro_batch_size=8",
          "train.grad_accum=2", "train.lr=1e-3", "train.max_steps=24", "train.save_steps=4",
          "train.keep_checkpoints=10", "objective.mode=fr"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    res = run_cli(["train-rm", f"output_dir={out}", *RESUME])
    assert res.returncode == 0, res.stderr[-5000:]
    return final_state(out)


def _start(out, extra=()):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen([sys.executable, "-m", "fairhpc.cli", "train-rm", f"output_dir={out}", *RESUME,
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(proc, out, step, timeout=600):
    t0 = time.time()
    while time.time() - t0 < timeout:
        latest = out / "checkpoints" / "latest"
        if latest.exists() and int(latest.read_text().strip()[len("global_step"):]) >= step:
            return
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    raise TimeoutError("no checkpoint appeared")


@pytest.mark.slow
def test_kill_after_checkpoint_then_resume_matches_uninterrupted(tmp_path, uninterrupted):
    out = tmp_path / "killed"
    proc = _start(out)
    _wait_for_checkpoint(proc, out, 8)
    proc.kill()  # SIGKILL: no chance to save anything more
    proc.wait()
    assert not (out / "summary.json").exists()
    res = run_cli(["train-rm", "--resume", f"output_dir={out}", *RESUME])
    assert res.returncode == 0, res.stderr[-5000:]
    assert "resumed from global_step" in res.stdout + res.stderr
    resumed = final_state(out)
    for k in uninterrupted:
        torch.testing.assert_close(resumed[k], uninterrupted[k], rtol=1e-5, atol=1e-6, msg=k)
    steps = [r["step"] for r in read_metrics(out) if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 24  # no duplicated lines after resuming


@pytest.mark.slow
def test_sigterm_saves_checkpoint_and_resume_matches(tmp_path, uninterrupted):
    out = tmp_path / "term"
    proc = _start(out)
    _wait_for_checkpoint(proc, out, 4)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, log[-3000:]
    assert "stopped by signal" in log
    res = run_cli(["train-rm", "--resume", f"output_dir={out}", *RESUME])
    assert res.returncode == 0, res.stderr[-5000:]
    resumed = final_state(out)
    for k in uninterrupted:
        torch.testing.assert_close(resumed[k], uninterrupted[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("args,needle", [
    (["objective.mode=fc", "objective.tau=3"], "objective.tau"),
    (["objective.mode=dpo"], "not a rm mode"),
    (["train.zero_stage=4"], "train.zero_stage: 4 is not allowed; allowed: 0, 1, 2, 3"),
    (["train.learning_rate=1"], "unknown key train.learning_rate"),
    (["data.train=/nonexistent/prefs.jsonl"], "/nonexistent/prefs.jsonl"),
])
def test_bad_input_fails_fast_with_a_clear_message(tmp_path, args, needle):
    res = run_cli(["train-rm", f"output_dir={tmp_path / 'x'}", *args], timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    assert needle in res.stderr
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_config_file_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("objective:\n  mode: fr\n  tau: [1\n")
    res = run_cli(["train-rm", "--config", str(bad)], timeout=120)
    assert res.returncode == 2 and str(bad) in res.stderr and "line" in res.stderr


@pytest.mark.slow
def test_dpo_cached_reference_equals_reference_model_per_step(tmp_path):
    """Precomputed reference log-probs must give the same training as a live reference model."""
    common = ["objective.mode=fc", "objective.beta=0.5", "train.max_steps=5", "data.synthetic.n_train=120",
              "data.synthetic.n_eval=16", "train.micro_batch_size=8", "train.lr=1e-3", "train.save_steps=0"]
    states = []
    for pre in ("true", "false"):
        out = tmp_path / pre
        res = run_cli(["train-dpo", f"output_dir={out}", f"train.precompute_ref={pre}", *common])
        assert res.returncode == 0, res.stderr[-5000:]
        assert (out / "ref_logps_train.pt").exists() == (pre == "true")
        states.append(final_state(out))
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("task,mode", [("rm", "fr"), ("dpo", "fc")])
def test_training_with_the_fused_kernel_matches_the_torch_reference(tmp_path, task, mode):
    """loss_impl=triton (Triton interpreter on CPU) and loss_impl=torch give the same parameters."""
    common = [f"objective.mode={mode}", "objective.tau=0.5", "train.max_steps=6", "data.synthetic.n_train=96",
              "data.synthetic.n_eval=16", "train.micro_batch_size=8", "train.lr=2e-3", "train.save_steps=0"]
    states = []
    for impl in ("triton", "torch"):
        out = tmp_path / impl
        res = run_cli([f"train-{task}", f"output_dir={out}", f"objective.loss_impl={impl}", *common],
                      env_extra={"TRITON_INTERPRET": "1"})
        assert res.returncode == 0, res.stderr[-5000:]
        assert json.loads((out / "summary.json").read_text())["loss_impl"] == impl
        states.append(final_state(out))
    moved = 0
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=1e-4, atol=1e-5, msg=k)
    init_out = tmp_path / "init"  # and training did change the parameters being compared
    res = run_cli([f"train-{task}", f"output_dir={init_out}", *common, "train.lr=1e-12"])
    assert res.returncode == 0, res.stderr[-5000:]
    init = final_state(init_out)
    moved = sum(not torch.allclose(init[k], states[0][k], atol=1e-5) for k in init)
    assert moved > len(init) // 2


def test_triton_impl_is_refused_before_training_without_gpu_or_interpreter(tmp_path):
    res = run_cli(["train-rm", f"output_dir={tmp_path / 'x'}", "objective.loss_impl=triton"],
                  env_extra={"TRITON_INTERPRET": "0"}, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "objective.loss_impl: triton cannot run here" in res.stderr
    assert not (tmp_path / "x" / "checkpoints").exists()

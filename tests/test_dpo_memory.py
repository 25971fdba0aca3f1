"""The fair-DPO step without [2B, T, V] logits: phase 1 chunked log-probs, phase 2 the fairness objective on
the margins, and training runs with model.logprob_impl=chunked equal to eager (2 ranks, ZeRO-0 and ZeRO-3)."""

import json

import pytest
import torch
from test_train import final_state, read_metrics, run_cli
from torch.utils._python_dispatch import TorchDispatchMode

from fairhpc.config import FairnessConfig
from fairhpc.losses import PreferenceLoss
from fairhpc.models import sequence_logps


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def tiny_policy(vocab, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=False, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def pairs(vocab, b, length, seed=1):
    """[2B, L] chosen rows then rejected rows: prompt (not counted) + response, right padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (2 * b, length), generator=g)
    mask = torch.ones_like(ids)
    for r in range(2 * b):
        mask[r, length - (r * 3) % 11:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :8] = -100
    return ids, mask, labels


@pytest.mark.parametrize("loss_impl", ["torch", "triton"])
def test_dpo_step_holds_no_logits_tensor_and_matches_eager(loss_impl):
    """One fair-DPO step (fr, tau = -1) on a tiny Llama with V = 2,000 and 2B = 8 rows of 40 tokens: the
    eager step creates tensors of 2B x T x V = 640,000 elements; the chunked step's largest tensor is the
    LM-head weight or its gradient (V x H = 64,000), never a [2B, T, V] one.  float32: the sequence
    log-probs (about -200) agree to 1e-4 (each path is within 4e-5 of float64), the loss to 3e-5 and the
    gradients to 1e-4 of their largest entry."""
    vocab, b, length = 2000, 4, 40
    policy, ref = tiny_policy(vocab), tiny_policy(vocab, seed=5)
    ids, mask, labels = pairs(vocab, b, length)
    cfg = FairnessConfig(mode="fr", alpha=0.5, tau=-1.0, beta=0.5, loss_impl=loss_impl)
    loss_fn = PreferenceLoss("dpo", cfg)
    out = {}
    for impl in ("eager", "chunked"):
        policy.zero_grad(set_to_none=True)
        with LargestTensor() as seen:
            with torch.no_grad():
                r = sequence_logps(ref, ids, mask, labels, impl, chunk_tokens=16)
            lp = sequence_logps(policy, ids, mask, labels, impl, chunk_tokens=16)  # phase 1
            res = loss_fn(lp[:b], lp[b:], r[:b], r[b:])  # phase 2: the objective on the B margins
            res.loss.backward()
        grads = {k: p.grad.clone() for k, p in policy.named_parameters()}
        out[impl] = (res.loss.detach(), lp.detach(), grads, seen.largest)
    n_logits = 2 * b * length * vocab
    assert out["eager"][3] >= n_logits
    assert out["chunked"][3] == vocab * 32  # the weight-sized gradient; a chunk is 16 x V = 32,000
    torch.testing.assert_close(out["chunked"][0], out["eager"][0], rtol=0, atol=3e-5)
    torch.testing.assert_close(out["chunked"][1], out["eager"][1], rtol=0, atol=1e-4)
    for k, g in out["eager"][2].items():
        torch.testing.assert_close(out["chunked"][2][k], g, rtol=0, atol=1e-4 * g.abs().max().item(), msg=k)


# ------------------------------------------------------------------------------------------ training runs
COMMON = ["objective.mode=fr", "objective.alpha=0.5", "objective.beta=0.5", "train.max_steps=4",
          "data.synthetic.n_train=64", "data.synthetic.n_eval=16", "train.micro_batch_size=4", "train.lr=1e-3",
          "train.save_steps=0", "train.log_steps=1", "data.max_prompt_length=16", "data.max_length=48"]
# ZeRO-3 runs keep the reference in the step (a ZeRO-3 inference engine: its partitioned LM head is gathered
# by the head's hooks too); the chunked one also recomputes activations (gradient checkpointing)
SETTINGS = {0: [], 3: ["train.precompute_ref=false"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for stage, extra in SETTINGS.items():
        for impl in ("eager", "chunked"):
            d = tmp_path_factory.mktemp(f"z{stage}_{impl}")
            gc = ["model.gradient_checkpointing=true"] if stage == 3 and impl == "chunked" else []
            res = run_cli(["train-dpo", f"output_dir={d}", f"train.zero_stage={stage}",
                           f"model.logprob_impl={impl}", *COMMON, *extra, *gc], nproc=2, timeout=600)
            assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
            out[stage, impl] = d
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 3])
def test_chunked_training_equals_eager(runs, stage):
    """Same losses (float32: 5e-6 absolute on losses ~0.7) at every logged step and on the held-out set, and
    the same final parameters to 2e-5 (4 AdamW steps of lr 1e-3: an update is ~1e-3 per step)."""
    eager, chunked = runs[stage, "eager"], runs[stage, "chunked"]
    me, mc = read_metrics(eager), read_metrics(chunked)
    assert [(r["split"], r["step"]) for r in me] == [(r["split"], r["step"]) for r in mc]
    assert sum(r["split"] == "train" for r in me) == 4
    for a, c in zip(me, mc):
        for k in ("loss", "u", "f", "margin_mean"):
            assert abs(a[k] - c[k]) <= 5e-6, (a["split"], a["step"], k, a[k], c[k])
    # the policy moved away from the reference: the comparison is not of two untrained models
    assert abs(me[-1]["margin_mean"]) > 1e-3
    se, sc = final_state(eager), final_state(chunked)
    assert se.keys() == sc.keys() and "lm_head.weight" in se
    for k in se:
        torch.testing.assert_close(sc[k], se[k], rtol=0, atol=2e-5, msg=k)
    for d, impl in ((eager, "eager"), (chunked, "chunked")):
        summary = json.loads((d / "summary.json").read_text())
        assert summary["logprob_impl"] == impl and summary["world_size"] == 2 and summary["zero_stage"] == stage


def test_bad_config_value_is_refused():
    from fairhpc.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.logprob_impl"):
        load_config(None, ["model.logprob_impl=fast"])
    with pytest.raises(ConfigError, match="model.logprob_chunk_tokens"):
        load_config(None, ["model.logprob_chunk_tokens=0"])


@pytest.mark.slow
def test_memory_benchmark_runs_on_cpu_and_records_its_figures(tmp_path):
    """The benchmark of rule bench_dpo_memory at one small case: a row per method with the same loss, ratios to
    eager, device and versions, and the plot."""
    import csv
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out_csv, out_png = tmp_path / "dpo_memory.csv", tmp_path / "dpo_memory.png"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_dpo_memory.py"), "--csv", str(out_csv),
                          "--png", str(out_png), "--cases", "4096:64:64:2", "--methods", "eager,chunked",
                          "--repeats", "1"], cwd=repo, env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = {r["method"]: r for r in csv.DictReader(out_csv.open())}
    assert set(rows) == {"eager", "chunked"} and all(r["status"] == "ok" for r in rows.values())
    assert float(rows["eager"]["peak_ratio"]) == 1.0 and float(rows["eager"]["time_ratio"]) == 1.0
    assert float(rows["chunked"]["loss"]) == pytest.approx(float(rows["eager"]["loss"]), rel=1e-5)
    assert float(rows["chunked"]["peak_mib"]) >= 0 and float(rows["chunked"]["time_s"]) > 0
    assert rows["chunked"]["device"].startswith("CPU") and rows["chunked"]["torch"] == torch.__version__
    assert rows["chunked"]["git_rev"] not in ("", "unknown")
    assert out_png.stat().st_size > 0

"""Sequence log-probs without the [N, T, V] logits (fairhpc/logprobs.py, kernels/seq_logprob.py).

Every comparison is against an independent full-logits computation: log_softmax of F.linear over the whole
vocabulary, gathered at the labels and summed per row, differentiated by autograd.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fairhpc import logprobs as L
from fairhpc.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
N, T, H, V = 4, 13, 24, 37  # T * N = 52 positions; chunks of 5 rows; V = 37 is no multiple of a block


def full_logits_reference(hidden, weight, bias, labels):
    """(sums, count) and autograd's gradients: the textbook formula over the whole vocabulary."""
    z = F.linear(hidden, weight, bias).double()
    logp = torch.log_softmax(z, -1)
    valid = labels != -100
    tok = logp.gather(2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (tok * valid).sum(-1), valid.sum(-1)


def make_inputs(dtype, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(N, T, H, generator=g, dtype=torch.float64) * 2).to(dtype)
    weight = (torch.randn(V, H, generator=g, dtype=torch.float64) / H**0.5 * 3).to(dtype)
    b = (torch.randn(V, generator=g, dtype=torch.float64)).to(dtype) if bias else None
    labels = torch.randint(0, V, (N, T), generator=g)
    labels[0, :4] = -100  # left padding / prompt
    labels[1, -3:] = -100  # right padding
    labels[2, :2] = -100
    labels[2, -5:] = -100  # padding on both sides
    labels[3, 6] = -100  # a hole
    labels[3, 7] = V - 1  # the last vocabulary entry
    upstream = torch.randn(N, generator=g, dtype=torch.float64)
    return hidden, weight, b, labels, upstream


def run(fn, hidden, weight, bias, labels, upstream):
    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight, *(() if bias is None else (bias,)))]
    h, w = leaves[:2]
    b = leaves[2] if bias is not None else None
    out = fn(h, w, b, labels)
    sums = out[0]
    (sums.double() * upstream).sum().backward()
    return sums.detach(), [t.grad for t in leaves]


def chunked(impl, chunk=5):
    return lambda h, w, b, lab: L.chunked_sequence_logps(h, w, lab, b, impl=impl, chunk_tokens=chunk)


def assert_matches(got, ref, tol_sum, tol_grad):
    (s, grads), (rs, rgrads) = got, ref
    torch.testing.assert_close(s.double(), rs, rtol=0, atol=tol_sum)
    for g, rg in zip(grads, rgrads):
        scale = rg.abs().max().item()
        torch.testing.assert_close(g.double(), rg, rtol=0, atol=tol_grad * scale)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk", [1, 5, 64])  # one row per chunk; T*N not a multiple; one chunk for all
def test_chunked_float64_equals_full_logits_to_1e10(bias, chunk):
    x = make_inputs(torch.float64, bias=bias)
    ref = run(full_logits_reference, *x)
    got = run(chunked("chunked", chunk), *x)
    assert_matches(got, ref, 1e-10, 1e-10)
    # and the library's own eager path is the same formula
    eager = run(lambda h, w, b, lab: L.eager_sequence_logps(h, w, lab, b), *x)
    assert_matches(eager, ref, 1e-12, 1e-12)
    # the hidden states of positions that do not count get exactly zero gradient
    grad_h = got[1][0]
    assert torch.equal(grad_h[0, :4], torch.zeros(4, H, dtype=torch.float64))


def test_mean_and_count():
    h, w, b, lab, _ = make_inputs(torch.float64)
    out = L.chunked_sequence_logps(h, w, lab, b, chunk_tokens=3)
    sums, count = full_logits_reference(h, w, b, lab)
    assert out.count.tolist() == count.tolist() == [9, 10, 6, 12]
    torch.testing.assert_close(out.mean, sums / count, rtol=0, atol=1e-12)
    # an extra loss mask removes positions like -100 labels do
    mask = torch.ones(N, T, dtype=torch.long)
    mask[:, -1] = 0
    lab2 = lab.clone()
    lab2[:, -1] = -100
    masked = L.chunked_sequence_logps(h, w, lab, b, mask=mask, chunk_tokens=4)
    torch.testing.assert_close(masked.sum, full_logits_reference(h, w, b, lab2)[0], rtol=0, atol=1e-10)


def test_float32_tolerance():
    """float32 inputs against the float64 truth: |sum error| <= 2e-5 (sums are ~30 in size), gradients
    within 2e-6 of their largest entry."""
    x64 = make_inputs(torch.float64)
    ref = run(full_logits_reference, *x64)
    x32 = (*(t.float() if t is not None else None for t in x64[:3]), x64[3], x64[4])
    got = run(chunked("chunked", 5), *x32)
    assert got[0].dtype == torch.float32
    assert_matches(got, ref, 2e-5, 2e-6)


def test_bfloat16_accumulates_in_float32():
    """bfloat16 hidden states and weight: sums come back float32 and agree with the float64 truth of the
    same (bfloat16-rounded) inputs to bfloat16's logit rounding (the logits are bf16 matmul outputs, as in
    the eager model); the LM-head gradient is summed over chunks in float32."""
    x64 = make_inputs(torch.float64)
    xb = (*(t.bfloat16() for t in x64[:3]), x64[3], x64[4])
    ref = run(full_logits_reference, *(t.double() for t in xb[:3]), xb[3], xb[4])
    got = run(chunked("chunked", 5), *xb)
    assert got[0].dtype == torch.float32 and got[1][1].dtype == torch.bfloat16
    torch.testing.assert_close(got[0].double(), ref[0], rtol=0, atol=0.15)
    eager_bf16 = L.eager_sequence_logps(*xb[:2], xb[3], xb[2]).sum  # the same bf16 logits, full
    torch.testing.assert_close(got[0], eager_bf16, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------ Triton
@pytest.fixture
def small_block(monkeypatch):
    from fairhpc_kernels import seq_logprob

    assert seq_logprob.INTERPRETED, "run the tests with TRITON_INTERPRET=1"
    monkeypatch.setattr(seq_logprob, "DEFAULT_BLOCK_V", 16)  # V = 37: three blocks, the last one partial


def test_triton_float64_equals_full_logits_to_1e10(small_block):
    x = make_inputs(torch.float64)
    assert_matches(run(chunked("triton", 5), *x), run(full_logits_reference, *x), 1e-10, 1e-10)


def test_triton_float32_tolerance(small_block):
    x64 = make_inputs(torch.float64, seed=3, bias=False)
    ref = run(full_logits_reference, *x64)
    x32 = (x64[0].float(), x64[1].float(), None, x64[3], x64[4])
    got = run(chunked("triton", 7), *x32)
    assert_matches(got, ref, 2e-5, 2e-6)
    torch_chunked = run(chunked("chunked", 7), *x32)
    assert_matches(got, (torch_chunked[0].double(), [g.double() for g in torch_chunked[1]]), 1e-5, 1e-6)


def test_triton_kernels_on_extreme_rows(small_block):
    """Rows of large logits (z ~ +-1e3: exp(z) overflows float32) and a row where one logit dominates: the
    online logsumexp neither overflows nor loses the label (float32: lse to an ulp of 1e3, 6e-5)."""
    from fairhpc_kernels import seq_logprob as k

    z = torch.randn(3, 37, dtype=torch.float32) * 5
    z[0] += 1e3
    z[1, 20] = 900.0
    z[2] -= 1e3
    t = torch.tensor([0, 20, 36])
    lse, pick = k.lse_pick(z, t)
    torch.testing.assert_close(lse, torch.logsumexp(z.double(), -1).float(), rtol=2e-7, atol=0)
    assert torch.equal(pick, z[torch.arange(3), t])
    g = torch.tensor([1.0, -0.5, 2.0])
    dz = k.softmax_grad_(z.clone(), t, lse, g)
    ref = g[:, None] * (F.one_hot(t, 37) - torch.softmax(z.double(), -1))
    torch.testing.assert_close(dz.double(), ref, rtol=0, atol=2e-4)
    assert torch.isfinite(dz).all()


def test_kernels_compile_for_an_h100_target():
    """The interpreter accepts code the compiler rejects: build both kernels for sm_90 (no GPU needed)."""
    pytest.importorskip("triton.backends.nvidia")
    code = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fairhpc_kernels import seq_logprob as k
n = 0
for dt, f64 in (("fp32", False), ("bf16", False), ("fp16", False), ("fp64", True)):
    for kern, ptrs in ((k._lse_pick_kernel, {"z_ptr": "*" + dt, "tgt_ptr": "*i64", "lse_ptr": "*fp32",
                                             "pick_ptr": "*fp32"}),
                       (k._softmax_grad_kernel, {"z_ptr": "*" + dt, "tgt_ptr": "*i64", "lse_ptr": "*fp32",
                                                 "g_ptr": "*fp32"})):
        if f64:
            ptrs = {a: ("*fp64" if b == "*fp32" else b) for a, b in ptrs.items()}
        sig = {a: ptrs.get(a, "i32") for a in kern.arg_names}
        sig["BLOCK_V"] = sig["F64"] = "constexpr"
        src = ASTSource(fn=kern, signature=sig, constexprs={"BLOCK_V": 4096, "F64": f64})
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
        n += 1
print(f"compiled {n} specialisations for sm_90")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=False, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "compiled 8 specialisations for sm_90" in res.stdout


# ------------------------------------------------------------------------------------------ models
def tiny_lm(vocab=101, hidden=32, dtype=torch.float64, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=False, pad_token_id=0)
    return LlamaForCausalLM(cfg).to(dtype)


def batch(vocab=101, n=3, length=17, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left-padded prompt
    mask[1, -5:] = 0  # right padding
    mask[2, :2] = 0
    mask[2, -3:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :7] = -100  # the prompt does not count
    return ids, mask, labels


def model_grads(model, impl, ids, mask, labels, upstream, **kw):
    from fairhpc.models import sequence_logps

    model.zero_grad(set_to_none=True)
    lp = sequence_logps(model, ids, mask, labels, impl, **kw)
    (lp.double() * upstream).sum().backward()
    return lp.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_model_sequence_logps_chunked_and_triton_equal_eager(checkpointing, small_block):
    """Through a real transformers Llama (float64): the log-probs and the gradient of every parameter
    (LM head, final norm, layers, embeddings) of chunked and triton equal eager to 1e-10, also with
    gradient checkpointing in training mode."""
    model = tiny_lm()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    ids, mask, labels = batch()
    up = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    ref_lp, ref_g = model_grads(model, "eager", ids, mask, labels, up)
    # independent: the HF logits of the full model
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    lsm = torch.log_softmax(logits[:, :-1], -1)
    tgt = labels[:, 1:]
    manual = (lsm.gather(2, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (tgt != -100)).sum(-1)
    torch.testing.assert_close(ref_lp, manual, rtol=0, atol=1e-12)
    assert len(ref_g) == len(list(model.parameters()))
    for impl in ("chunked", "triton"):
        lp, grads = model_grads(model, impl, ids, mask, labels, up, chunk_tokens=4)
        torch.testing.assert_close(lp, ref_lp, rtol=0, atol=1e-10)
        assert grads.keys() == ref_g.keys()
        for k, g in grads.items():
            torch.testing.assert_close(g, ref_g[k], rtol=0, atol=1e-10 * max(1.0, ref_g[k].abs().max().item()),
                                       msg=f"{impl} {k}")


def test_model_behind_a_wrapper_and_configure():
    """A wrapper module whose forward calls the LM (as a policy with a value head does) takes the chunked
    path; configure() records the implementation that calls without one use."""
    from fairhpc.models import sequence_logps

    class Wrapper(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, **kw):
            return self.lm(**kw)

    lm = tiny_lm()
    calls = []
    lm.lm_head.register_forward_hook(lambda mod, inp, out: calls.append(tuple(out.shape)))
    ids, mask, labels = batch()
    w = Wrapper(lm)
    eager = sequence_logps(w, ids, mask, labels, "eager")
    assert calls == [(3, 17, 101)]
    L.configure(w, "chunked", 3)
    assert getattr(lm, L._TAG) == ("chunked", 3)
    chunk = sequence_logps(w, ids, mask, labels)
    assert calls[-1] == (3,)  # the head returned the sequence sums, not logits
    torch.testing.assert_close(chunk, eager, rtol=0, atol=1e-10)


def test_auto_and_unsupported_models():
    lm = tiny_lm()
    assert L.resolve_impl("auto", "cpu") == "chunked"
    assert L.resolve_impl("eager", "cpu") == "eager"
    with pytest.raises(ConfigError, match="model.logprob_impl: unknown value 'fast'"):
        L.resolve_impl("fast", "cpu")
    with pytest.raises(ConfigError, match="triton cannot run here"):
        L.resolve_impl("triton", "cuda")  # the interpreter runs on CPU tensors only
    # a model whose logits are post-processed (softcapping) goes eager under auto; chunked is refused
    lm.config.final_logit_softcapping = 30.0
    ids, mask, labels = batch()
    calls = []
    lm.lm_head.register_forward_hook(lambda mod, inp, out: calls.append(tuple(out.shape)))
    from fairhpc.models import sequence_logps

    sequence_logps(lm, ids, mask, labels, "auto")
    assert calls == [(3, 17, 101)]
    with pytest.raises(ConfigError, match="final_logit_softcapping"):
        sequence_logps(lm, ids, mask, labels, "chunked")


def test_config_key():
    from fairhpc import registry
    from fairhpc.config import ModelConfig

    assert registry.LOGPROB_IMPLS == L.IMPLS
    assert ModelConfig().logprob_impl == "auto" and ModelConfig().logprob_chunk_tokens == -1
    assert L.default_chunk_tokens(32000) == 524 and L.default_chunk_tokens(128256) == 130


# ------------------------------------------------------------------------------------------ bad input
class Counting:
    """Counts the model's forward calls: a bad input must be refused before any of them."""

    def __init__(self, model):
        self.n = 0
        model.register_forward_pre_hook(lambda *a: setattr(self, "n", self.n + 1))


@pytest.mark.parametrize("impl", ["eager", "chunked"])
def test_bad_labels_and_empty_sequences_fail_before_compute(impl):
    from fairhpc.models import sequence_logps

    lm = tiny_lm()
    count = Counting(lm)
    ids, mask, labels = batch()
    bad = labels.clone()
    bad[1, 9] = 101  # == V
    with pytest.raises(DataError, match=r"labels\[1, 8\] = 101 is not a token id .* vocabulary of 101"):
        sequence_logps(lm, ids, mask, bad, impl)
    bad = labels.clone()
    bad[2, 10] = -7
    with pytest.raises(DataError, match=r"= -7 is not a token id"):
        sequence_logps(lm, ids, mask, bad, impl)
    empty = labels.clone()
    empty[1] = -100
    with pytest.raises(DataError, match=r"sequence\(s\) \[1\] of the batch have no label token"):
        sequence_logps(lm, ids, mask, empty, impl, allow_empty=False)
    assert count.n == 0
    # allowed: the empty sequence's log-prob is 0 (the empty sum), the others unchanged
    lp = sequence_logps(lm, ids, mask, empty, impl, allow_empty=True)
    assert lp[1] == 0 and count.n == 1
    # the LM head and the model's hidden size disagree
    lm.config.hidden_size = 48
    with pytest.raises(ConfigError, match="hidden size mismatch: the model's config has hidden_size 48"):
        sequence_logps(lm, ids, mask, labels, impl)
    assert count.n == 1


def test_bad_inputs_of_the_op():
    h, w, _, lab, _ = make_inputs(torch.float64)
    with pytest.raises(ConfigError, match=r"hidden size mismatch: the hidden states have 24 features but the "
                                          r"LM-head weight \(37, 25\) takes 25"):
        L.chunked_sequence_logps(h, torch.zeros(V, H + 1, dtype=torch.float64), lab)
    with pytest.raises(ConfigError, match="bias has shape"):
        L.chunked_sequence_logps(h, w, lab, torch.zeros(V + 1, dtype=torch.float64))
    with pytest.raises(DataError, match=r"labels of shape \(4, 12\) do not match"):
        L.chunked_sequence_logps(h, w, lab[:, :-1])
    bad = lab.clone()
    bad[3, 0] = V
    with pytest.raises(DataError, match=r"labels\[3, 0\] = 37"):
        L.chunked_sequence_logps(h, w, bad)
    empty = lab.clone()
    empty[0] = -100
    with pytest.raises(DataError, match="no label token"):
        L.chunked_sequence_logps(h, w, empty)
    with pytest.raises(ConfigError, match="chunk_tokens must be >= 1 or -1"):
        L.chunked_sequence_logps(h, w, lab, chunk_tokens=0)

"""The fused Triton fairness loss (kernels/fair_loss.py, imported as fairhpc_kernels.fair_loss) against the
torch reference (fairhpc.losses), run on CPU by the Triton interpreter (TRITON_INTERPRET=1).

The reference is evaluated in float64 on the very same input values (float16/bfloat16 inputs upcast), so
each difference is the kernel's own float32 error.  Tolerances, from what float32 can deliver: loss and
metrics rtol 2e-5 (sums of up to 4097 float32 terms and one exp of ln(n f): a few 1e-7 observed);
gradients rtol 1e-4 with atol 2e-5 * max|grad| (float32 closed form; elements near the 1e-5 relative level
occur only where the gradient is tiny next to its maximum, tau = 10); float16 / bfloat16 gradients are
stored in the input dtype, so their half-ulp (4.9e-4 / 3.9e-3) sets rtol 2e-3 / 1e-2.  A wrong term or
factor in a formula gives errors of order 1e-2 or more: these bounds separate the two.
Also here: the compile check for a real GPU target, the two-rank global scope, packaging next to Hugging
Face's `kernels`, and the CPU run of the microbenchmark.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (pytest brings tomli there)
    import tomli as tomllib

from fairhpc.config import FairnessConfig
from fairhpc.losses import (
    METRIC_KEYS,
    LossOutput,
    PreferenceLoss,
    check_finite,
    compute_loss,
    dpo_loss,
    kernel_spec,
    rm_loss,
)

REPO = Path(__file__).resolve().parents[1]
FR_TAUS = [-5.0, -1.0, -1e-6, 0.0, 1e-4, 0.3, 0.7, 2.0, 10.0]
FC_TAUS = [-5.0, -1.0, -1e-6, 0.0, 1e-4, 0.3, 0.7]
TOL = {  # input (and gradient) dtype: (gradient rtol, atol relative to max|grad|, atol floor: the dtype's
    torch.float32: (1e-4, 2e-5, 0.0),          # spacing near 0, e.g. float16 gradients of 1e-23 store as 0)
    torch.float16: (2e-3, 2e-3, 2.0**-24),
    torch.bfloat16: (1e-2, 1e-2, 0.0),
}


@pytest.fixture(scope="module")
def fl():
    """The kernel module with its kernels built for the interpreter (TRITON_INTERPRET is read when the
    kernels are decorated, i.e. at import); the variable is restored after this module's tests."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        try:
            mod = importlib.import_module("fairhpc_kernels.fair_loss")
        except ModuleNotFoundError as e:
            pytest.fail(f"fairhpc_kernels is not importable ({e}): install the project (pip install -e .)")
        if not mod.INTERPRETED:
            mod = importlib.reload(mod)
        assert mod.INTERPRETED
        yield mod
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


@pytest.fixture(scope="module")
def small(fl):
    """A launch plan with the multi-program path from 65 pairs on (8 partial rows, merged 4 at a time)."""
    return fl.LaunchConfig(block=64, single_program_max=64, max_programs=8, row_block=4)


def make_inputs(kind: str, n: int, dtype=torch.float32, seed: int = 0, scale: float = 3.0):
    """RM: two reward vectors; DPO: four sequence log-prob vectors (beta = 0.5 puts margins at O(scale))."""
    g = torch.Generator().manual_seed(seed)
    if kind == "rm":
        xs = [torch.randn(n, generator=g, dtype=torch.float64) * scale for _ in range(2)]
    else:
        ref = -(20 + 180 * torch.rand(2, n, generator=g, dtype=torch.float64))
        pol = ref + torch.randn(2, n, generator=g, dtype=torch.float64) * scale
        xs = [pol[0], pol[1], ref[0], ref[1]]
    return [x.to(dtype) for x in xs]


def fused(fl, kind, *xs, cfg, launch=None):
    """The kernel on the objective of a run config (the spec built by fairhpc.losses, as in training)."""
    return LossOutput(*fl.fused_loss(kind, *xs, spec=kernel_spec(cfg), launch=launch))


def reference(kind, xs, cfg, go):
    x64 = [x.detach().double().requires_grad_() for x in xs]
    out = (rm_loss if kind == "rm" else dpo_loss)(*x64, cfg=cfg)
    out.loss.backward(torch.tensor(go, dtype=torch.float64))
    return out, [x.grad for x in x64]


def check_against_reference(fl, kind, xs, cfg, launch=None, go=-0.73):
    """Run the kernel with grad_output = go and compare loss, every metric and every input gradient."""
    ins = [x.clone().requires_grad_() for x in xs]
    out = fused(fl, kind, *ins, cfg=cfg, launch=launch)
    assert out.loss.dtype == torch.float32 and out.loss.shape == () and out.loss.requires_grad
    out.loss.backward(torch.tensor(go))
    ref, ref_grads = reference(kind, xs, cfg, go)
    torch.testing.assert_close(out.loss.double(), ref.loss, rtol=2e-5, atol=1e-6)
    assert tuple(out.metrics) == METRIC_KEYS
    d_scale = max(abs(ref.metrics["margin_min"].item()), abs(ref.metrics["margin_max"].item()), 1.0)
    for k in METRIC_KEYS:
        m = out.metrics[k]
        assert m.dtype == torch.float32 and not m.requires_grad, k
        atol = 2e-6 * d_scale if k.startswith("margin") else 1e-6
        torch.testing.assert_close(m.double(), ref.metrics[k].double(), rtol=2e-5, atol=atol, msg=k)
    rtol, arel, floor = TOL[xs[0].dtype]
    for x, g_ref in zip(ins, ref_grads):
        assert x.grad is not None and x.grad.dtype == x.dtype and x.grad.shape == x.shape
        torch.testing.assert_close(x.grad.double(), g_ref, rtol=rtol,
                                   atol=max(arel * g_ref.abs().max().item(), floor))
    return out


def objectives():
    cases = [("bt", -1.0)] + [("fr", t) for t in FR_TAUS] + [("fc", t) for t in FC_TAUS]
    return [pytest.param(m, t, id=f"{m}-tau{t:g}") for m, t in cases]


# ------------------------------------------------------------------------------------ values and gradients
@pytest.mark.parametrize("kind", ["rm", "dpo"])
@pytest.mark.parametrize("mode,tau", objectives())
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_every_objective_matches_reference(fl, kind, mode, tau, reduction):
    if kind == "dpo" and mode == "bt":
        mode = "dpo"
    cfg = FairnessConfig(mode=mode, tau=tau, alpha=0.3, gamma=0.7, beta=0.5, reduction=reduction)
    check_against_reference(fl, kind, make_inputs(kind, 1000, seed=len(mode) + int(tau * 10)), cfg)


@pytest.mark.parametrize("kind", ["rm", "dpo"])
@pytest.mark.parametrize("n", [1, 7, 1000, 4097])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_batch_sizes_and_dtypes(fl, kind, n, dtype):
    cfg = (FairnessConfig(mode="fr", tau=-1.0, alpha=0.3) if kind == "rm"
           else FairnessConfig(mode="fc", tau=0.5, gamma=0.5, beta=0.5, reduction="sum"))
    out = check_against_reference(fl, kind, make_inputs(kind, n, dtype, seed=n), cfg, go=1.9)
    if n == 1:  # one pair: p = 1, so f = 1 for every tau < 1
        assert out.metrics["f"].item() == pytest.approx(1.0, rel=1e-6)


class _Spy:
    """Records the grids a kernel is launched with."""

    def __init__(self, kernel):
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return self.kernel[grid]


@pytest.mark.parametrize("kind,mode,tau,reduction,n", [
    ("rm", "fr", -1.0, "mean", 1000),
    ("rm", "fc", 0.0, "sum", 300),
    ("rm", "bt", 2.0, "mean", 65),
    ("dpo", "fr", 10.0, "sum", 300),
    ("dpo", "fc", 0.3, "mean", 1000),
    ("dpo", "fr", 1e-4, "mean", 129),
])
def test_multi_program_path(fl, small, monkeypatch, kind, mode, tau, reduction, n):
    spies = {name: _Spy(getattr(fl, name)) for name in
             ("_fair_loss_fwd_kernel", "_fair_loss_partials_kernel", "_fair_loss_finish_kernel",
              "_fair_loss_grad_kernel")}
    for name, spy in spies.items():
        monkeypatch.setattr(fl, name, spy)
    mode = "dpo" if (kind, mode) == ("dpo", "bt") else mode
    cfg = FairnessConfig(mode=mode, tau=tau, alpha=0.5, gamma=0.4, beta=0.5, reduction=reduction)
    xs = make_inputs(kind, n, seed=3)
    multi = check_against_reference(fl, kind, xs, cfg, launch=small)
    chunk = 64 * math.ceil(math.ceil(n / 8) / 64)
    assert spies["_fair_loss_fwd_kernel"].grids == []
    assert spies["_fair_loss_partials_kernel"].grids == [(math.ceil(n / chunk),)]
    assert spies["_fair_loss_finish_kernel"].grids == [(1,)]
    assert spies["_fair_loss_grad_kernel"].grids == [(math.ceil(n / 64),)]
    # and the single-program path gives the same numbers to float32 rounding
    single = fused(fl, kind, *xs, cfg=cfg)
    for k in METRIC_KEYS:
        torch.testing.assert_close(multi.metrics[k], single.metrics[k], rtol=2e-6, atol=1e-6)


EXTREME = {  # margins within |d| <= 50
    "spread": torch.linspace(-50.0, 50.0, 41),
    "all_negative": -50.0 + torch.linspace(0.0, 1.0, 19),
    "all_positive": 50.0 - torch.linspace(0.0, 1.0, 19),
    "plus_minus": torch.tensor([-50.0, 50.0, -50.0, 50.0, 0.0, -49.0, 49.0]),
}


@pytest.mark.parametrize("mode,tau", [("bt", -1.0), ("fr", -5.0), ("fr", 0.0), ("fr", 0.3), ("fr", 10.0),
                                      ("fc", -5.0), ("fc", 0.0), ("fc", 0.9)])
def test_extreme_margins_stay_finite_and_right(fl, mode, tau):
    cfg = FairnessConfig(mode=mode, tau=tau, alpha=0.5, gamma=0.5)
    tiny = fl.LaunchConfig(block=16, single_program_max=16, max_programs=4, row_block=2)
    for name, d in EXTREME.items():
        for launch in (None, tiny):
            for dtype in (torch.float32, torch.float16):
                xs = [d.to(dtype), torch.zeros_like(d, dtype=dtype)]
                _, ref_grads = reference("rm", xs, cfg, 2.5)
                if ref_grads[0].abs().max() > torch.finfo(dtype).max / 4:
                    continue  # e.g. fr, tau = 10: |dL/dd| ~ 1e19 has no float16 representation
                with warnings.catch_warnings():
                    # an overflow or nan anywhere inside the kernel, even in a discarded lane, fails here
                    warnings.simplefilter("error", RuntimeWarning)
                    out = check_against_reference(fl, "rm", xs, cfg, launch=launch, go=2.5)
                assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.metrics.values()), name


def very_negative_batches():
    """Random batches whose margins all lie in [-50, -20] (n = 3 ... 40), four of them with a few positive
    margins mixed in, and issue 13's case (fc, tau = -1: gradient 2.6e-5 off before the shifts were folded)."""
    out = [torch.tensor([-48.83, -46.81, -39.04])]
    for case in range(8):
        g = torch.Generator().manual_seed(1000 + case)
        d = -20.0 - 30.0 * torch.rand((3, 5, 9, 40)[case % 4], generator=g)
        if case >= 4:
            d[:2] = torch.tensor([3.0, 0.5])
        out.append(d)
    return out


@pytest.mark.parametrize("mode,tau", objectives())
def test_very_negative_margins_keep_float32_precision(fl, mode, tau):
    """ln x ~ -45 for every pair: the kernel must not form differences of logarithms of that size."""
    cfg = FairnessConfig(mode=mode, tau=tau, alpha=0.3, gamma=0.7)
    small = fl.LaunchConfig(block=16, single_program_max=16, max_programs=4, row_block=2)
    for d in very_negative_batches():
        xs = [d, torch.zeros_like(d)]
        check_against_reference(fl, "rm", xs, cfg)
        if d.numel() > 16:  # the multi-program path merges rows with different shifts
            check_against_reference(fl, "rm", xs, cfg, launch=small)


def test_float32_range_of_fr_with_large_tau(fl):
    """fr, tau = 10: f ~ -x_min^(-0.9) leaves float32 near d_min = -98.  Inside the range the kernel is
    right; outside it the loss is inf (never nan) and check_finite names tau and the margins."""
    cfg = FairnessConfig(mode="fr", tau=10.0, alpha=0.1)
    inside = torch.tensor([-90.0, 5.0, 3.0])
    check_against_reference(fl, "rm", [inside, torch.zeros(3)], cfg)
    out = fused(fl, "rm", torch.tensor([-100.0, 5.0, 3.0]), torch.zeros(3), cfg=cfg)
    assert out.loss.item() == math.inf and out.metrics["f"].item() == -math.inf
    with pytest.raises(FloatingPointError, match=r"objective.tau=10.0 \(fr\): loss, f not finite.*\[-100, 5\]"):
        check_finite(out, cfg)
    check_finite(fused(fl, "rm", inside, torch.zeros(3), cfg=cfg), cfg)  # no error inside the range


class _ArgSpy:
    """Records the arguments a kernel is launched with."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.calls.append(args)
            return self.kernel[grid](*args, **kw)
        return launch


def test_strided_inputs_are_read_in_place(fl, monkeypatch):
    """A DPO step passes stride-2 slices of [n, 2] log-prob tensors: the kernel reads them where they are
    (no copy) and computes what it computes on contiguous copies."""
    spy = _ArgSpy(fl._fair_loss_fwd_kernel)
    monkeypatch.setattr(fl, "_fair_loss_fwd_kernel", spy)
    cfg = FairnessConfig(mode="fc", tau=-1.0, beta=0.5)
    pc, pr, rc, rr = make_inputs("dpo", 37, seed=12)
    pol = torch.stack([pc, pr], dim=1).requires_grad_()  # [n, 2]: (chosen, rejected), as a policy returns
    ref = torch.stack([rc, rr], dim=1)
    views = [pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1]]
    assert all(v.stride(0) == 2 for v in views)
    out = fused(fl, "dpo", *views, cfg=cfg)
    (args,) = spy.calls
    assert [t.data_ptr() for t in args[:4]] == [v.data_ptr() for v in views] and list(args[4:8]) == [2] * 4
    out.loss.backward()
    dense = check_against_reference(fl, "dpo", [pc, pr, rc, rr], cfg, go=1.0)
    assert torch.equal(out.loss, dense.loss)
    _, ref_grads = reference("dpo", [pc, pr, rc, rr], cfg, 1.0)
    torch.testing.assert_close(pol.grad.double(), torch.stack(ref_grads[:2], dim=1), rtol=1e-4,
                               atol=2e-5 * ref_grads[0].abs().max().item())


def test_kernel_module_imports_nothing_from_fairhpc():
    """The kernel is a leaf: importing it loads no fairhpc module (issue 8)."""
    code = ("import sys, fairhpc_kernels.fair_loss\n"
            "print(sorted(m for m in sys.modules if m == 'fairhpc' or m.startswith('fairhpc.')))")
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=False, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_kernel_metric_layout_is_the_reference_one(fl):
    assert fl.METRIC_KEYS == METRIC_KEYS


def test_tau_near_zero_and_both_branches_of_lam(fl):
    """f and dL/dd are continuous through tau = 0 (the entropy limit, taken exactly at tau = 0) and accurate
    on both sides of the switch between the expm1 form (|tau (T/S - 1)| <= 0.5 and |tau| < 0.5) and the
    log-sum-exp form; the sweep is checked to visit both."""
    d = make_inputs("rm", 200, seed=5, scale=4.0)
    xs = [d[0] - 2.0, d[1]]  # mostly negative margins: x^-tau spreads widely, so |w| crosses 0.5
    x = torch.sigmoid(xs[0].double() - xs[1].double())
    branch = set()
    for tau in [-0.7, -0.5, -0.5 + 1e-6, -0.35, -0.2, -1e-3, -1e-7, 0.0, 1e-7, 1e-3, 0.1, 0.2, 0.35,
                0.5 - 1e-6, 0.5, 0.6]:
        w = ((x * x ** -tau).sum() / x.sum() - 1).item()  # T/S - 1
        branch.add(abs(tau) < 0.5 and abs(w) <= 0.5)
        check_against_reference(fl, "rm", xs, FairnessConfig(mode="fr", tau=tau, alpha=1.0))
    assert branch == {True, False}
    grads = []
    for tau in (-1e-7, 0.0, 1e-7):
        ins = [t.clone().requires_grad_() for t in xs]
        fused(fl, "rm", *ins, cfg=FairnessConfig(mode="fc", tau=tau, gamma=0.5)).loss.backward()
        grads.append(ins[0].grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(grads[2], grads[1], rtol=1e-5, atol=1e-9)


def test_backward_scales_by_grad_output(fl):
    xs = make_inputs("dpo", 50, seed=9)
    cfg = FairnessConfig(mode="fr", tau=-1.0, alpha=0.5, beta=0.5)
    grads = {}
    for go in (1.0, 3.5, -0.25, 0.0):
        ins = [x.clone().requires_grad_() for x in xs]
        fused(fl, "dpo", *ins, cfg=cfg).loss.backward(torch.tensor(go))
        grads[go] = [x.grad for x in ins]
    for go in (3.5, -0.25):
        for a, b in zip(grads[go], grads[1.0]):
            torch.testing.assert_close(a, go * b, rtol=1e-6, atol=0.0)
    assert all((g == 0).all() for g in grads[0.0])
    # through autograd (loss * 3 + other terms): the incoming gradient is what it is, not 1
    ins = [x.clone().requires_grad_() for x in xs]
    out = fused(fl, "dpo", *ins, cfg=cfg)
    (3.0 * out.loss + ins[0].sum() * 0.0).backward()
    torch.testing.assert_close(ins[1].grad, 3.0 * grads[1.0][1], rtol=1e-6, atol=0.0)


def test_gradients_only_where_required_and_none_under_no_grad(fl):
    pc, pr, rc, rr = make_inputs("dpo", 33, seed=2)
    pc.requires_grad_()
    pr.requires_grad_()
    cfg = FairnessConfig(mode="fc", tau=0.5, beta=0.5)
    out = fused(fl, "dpo", pc, pr, rc, rr, cfg=cfg)
    out.loss.backward()
    assert pc.grad is not None and pr.grad is not None and rc.grad is None and rr.grad is None
    _, ref_grads = reference("dpo", [pc, pr, rc, rr], cfg, 1.0)
    torch.testing.assert_close(pc.grad.double(), ref_grads[0], rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        ev = fused(fl, "dpo", pc, pr, rc, rr, cfg=cfg)
    assert not ev.loss.requires_grad and ev.loss.grad_fn is None
    for k in METRIC_KEYS:
        assert torch.equal(ev.metrics[k], out.metrics[k]), k


def test_compute_loss_dispatches_to_the_kernel(fl):
    c, r = make_inputs("rm", 20, seed=4)
    cfg = FairnessConfig(mode="fr", tau=-1.0, loss_impl="triton")
    out = compute_loss("rm", c.requires_grad_(), r, cfg=cfg)
    assert "FairLoss" in type(out.loss.grad_fn).__name__
    ref = compute_loss("rm", c, r, cfg=FairnessConfig(mode="fr", tau=-1.0, loss_impl="torch"))
    torch.testing.assert_close(out.loss, ref.loss, rtol=2e-6, atol=1e-7)
    assert PreferenceLoss("rm", cfg, "cpu").impl == "triton"  # the interpreter runs CPU tensors
    with pytest.raises(ValueError, match="float32, float16 or bfloat16.*loss_impl=torch"):
        PreferenceLoss("rm", cfg, "cpu", torch.float64)  # raised when the step is built


def test_unsupported_combinations_raise(fl):
    with pytest.raises(ValueError, match="got torch.float64"):
        fl.check_supported(torch.float64, "cpu")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1 is set"):
        fl.check_supported(torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="runs on CUDA, not on meta"):
        fl.check_supported(torch.float32, "meta")
    spec = fl.FairLossSpec(objective="fc", tau=0.5, gamma=0.5)
    c, r = make_inputs("rm", 8)
    with pytest.raises(TypeError, match="FairLossSpec"):
        fl.fused_loss("rm", c, r, spec=FairnessConfig(mode="fc", tau=0.5))
    with pytest.raises(ValueError, match="rm loss takes 2 tensors, got 3"):
        fl.fused_loss("rm", c, r, r, spec=spec)
    with pytest.raises(ValueError, match="one shape"):
        fl.fused_loss("rm", c, r[:7], spec=spec)
    with pytest.raises(ValueError, match="one shape"):
        fl.fused_loss("rm", c.view(2, 4), r.view(2, 4), spec=spec)
    with pytest.raises(ValueError, match="1 <= n"):
        fl.fused_loss("rm", c[:0], r[:0], spec=spec)
    with pytest.raises(ValueError, match="kind must be one of rm, dpo"):
        fl.fused_loss("ppo", c, r, spec=spec)
    with pytest.raises(RuntimeError, match="initialised torch.distributed"):
        fl.fused_loss("rm", c, r, spec=fl.FairLossSpec(global_scope=True))
    with pytest.raises(ValueError, match="power of two"):
        fl.LaunchConfig(block=100)
    for bad, match in (({"objective": "bt"}, "objective must be one of utility, fr, fc"),
                       ({"reduction": "max"}, "reduction must be"), ({"tau": math.nan}, "tau must be a finite number"),
                       ({"objective": "fc", "tau": 1.0}, "fc needs tau < 1")):
        with pytest.raises(ValueError, match=match):
            fl.FairLossSpec(**bad)


def test_cpu_without_interpreter_raises_at_construction(tmp_path):
    """Without TRITON_INTERPRET, loss_impl=triton on CPU is refused when the step is built, not per step."""
    code = ("from fairhpc.config import ConfigError, FairnessConfig\nfrom fairhpc.losses import PreferenceLoss\n"
            "try:\n    PreferenceLoss('rm', FairnessConfig(mode='fr', loss_impl='triton'), 'cpu')\n"
            "except ConfigError as e:\n    print('refused:', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=False, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "refused:" in res.stdout and "needs a CUDA device" in res.stdout
    assert "loss_impl=torch" in res.stdout


# ------------------------------------------------------------------------------------------ global scope
@pytest.mark.slow
def test_global_scope_two_ranks_equals_concatenated_batch(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29637",
           str(REPO / "tests" / "kernels_dist.py"), str(tmp_path)]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "ok").read_text().startswith("checked 11 cases on 2 ranks")


# ------------------------------------------------------------------------------------------ real compiler
def test_kernels_compile_for_an_h100_target():
    """The interpreter accepts code the compiler rejects: build every kernel for sm_90 (no GPU needed)."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, str(REPO / "tests" / "kernels_compile.py")], cwd=REPO, env=env,
                         capture_output=True, text=True, check=False, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "specialisations for sm_90" in res.stdout


# ------------------------------------------------------------------------------------------ packaging
def test_kernels_folder_is_not_a_regular_package_named_kernels():
    assert (REPO / "kernels" / "fair_loss.py").is_file()
    assert not (REPO / "kernels" / "__init__.py").exists(), \
        "kernels/__init__.py: `import kernels` from the repository root would shadow Hugging Face's kernels"


def test_transformers_sees_hf_kernels_exactly_when_installed():
    """From the repository root (sys.path[0] = cwd, as with `python -m pytest`), transformers' probe for
    Hugging Face's `kernels` answers as the installed distributions say, never because of kernels/."""
    code = r"""
import importlib.metadata as md, json
from packaging import version
from transformers.utils import import_utils as iu
try:
    v = md.version("kernels")
except md.PackageNotFoundError:
    v = None
lo, hi = version.parse(iu.KERNELS_MIN_VERSION), version.parse(iu.KERNELS_MAX_VERSION)
in_range = v is not None and lo <= version.parse(v) < hi
found, _ = iu._is_package_available("kernels", return_version=True)
print(json.dumps({"dist": v, "in_range": in_range, "found": found, "available": iu.is_kernels_available()}))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["found"] == (got["dist"] is not None), got
    assert got["available"] == got["in_range"], got


def test_pyproject_maps_fairhpc_kernels_and_lists_every_package():
    st = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert st["package-dir"]["fairhpc_kernels"] == "kernels"
    listed = set(st["packages"])
    assert "fairhpc_kernels" in listed and "kernels" not in listed
    subdirs = {"fairhpc." + ".".join(p.relative_to(REPO / "fairhpc").parts)
               for p in (REPO / "fairhpc").rglob("*") if p.is_dir() and "__pycache__" not in p.parts
               and any(f.suffix == ".py" for f in p.iterdir())}  # a folder of data files is package data
    assert {"fairhpc"} | subdirs <= listed, f"add to [tool.setuptools] packages: {sorted(subdirs - listed)}"


def test_fairhpc_kernels_importable_away_from_the_repository(tmp_path):
    code = "import fairhpc_kernels.fair_loss as m; print(m.__file__); print(callable(m.fused_loss))"
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=False, timeout=300)
    assert res.returncode == 0, ("fairhpc_kernels must be importable once the project is installed "
                                 "(pip install -e .): " + res.stderr[-2000:])
    path, ok = res.stdout.split()[-2:]
    assert path.endswith("fair_loss.py") and ok == "True"


# ------------------------------------------------------------------------------------------ benchmark
def test_benchmark_runs_on_cpu_and_writes_csv_and_plot(tmp_path):
    out_csv, out_png = tmp_path / "bench" / "fair_loss.csv", tmp_path / "bench" / "fair_loss.png"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path, even on a GPU machine
    script = REPO / "benchmarks" / "bench_fair_loss.py"
    res = subprocess.run([sys.executable, str(script), "--csv", str(out_csv), "--png", str(out_png),
                          "--sizes", "8,33,100000"], cwd=REPO, env=env,
                         capture_output=True, text=True, check=False, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "not meaningful" in res.stderr and "[100000] skipped" in res.stderr
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    required = {"op", "kind", "provider", "mode", "size", "dtype", "p20_ms", "p50_ms", "p80_ms", "launches",
                "peak_mem_mib", "rel_err_loss", "rel_err_grad", "device", "torch", "triton", "git_rev",
                "date", "note"}
    assert required <= set(rows[0])
    # the floor of a fused op, an empty kernel's launch: measured on CUDA only, a row either way
    empty = [r for r in rows if r["op"] == "empty_launch"]
    assert len(empty) == 1 and empty[0]["p50_ms"] == "" and "not timed" in empty[0]["note"]
    rows = [r for r in rows if r["op"] == "fair_loss"]
    # 2 kinds x 2 sizes x 3 providers (torch.compile is skipped on CPU) x 3 modes
    assert len(rows) == 36
    assert {(r["kind"], r["provider"], r["mode"], r["size"]) for r in rows} == {
        (k, p, m, s) for k in ("rm", "dpo") for p in ("torch_fp64", "torch_fp32", "triton")
        for m in ("forward", "backward", "full") for s in ("8", "33")}
    for r in rows:
        assert r["p50_ms"] == r["p20_ms"] == r["p80_ms"] == r["launches"] == ""  # no interpreter timings
        assert "not meaningful" in r["note"] and r["device"].startswith("cpu")
        assert r["torch"] == torch.__version__ and r["git_rev"] and r["date"]
        assert float(r["rel_err_grad"]) < 1e-5 and float(r["rel_err_loss"]) < 1e-5
    # the float64 eager reference differs from the yardstick only by rounding its result to float32 (half an
    # ulp, 2^-24); the float32 eager baseline computes in float32 and is further off
    err = {p: [float(r["rel_err_grad"]) for r in rows if r["provider"] == p] for p in ("torch_fp64", "torch_fp32")}
    assert max(err["torch_fp64"]) <= 2.0**-24 < max(err["torch_fp32"])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

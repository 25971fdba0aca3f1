"""The torch reference objectives against an independent float64 evaluation of docs/method.md's formulas
(sections "The objectives" and "The closed-form gradient"), the scope rule and the step scope."""

import math
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from fairhpc.config import ConfigError, FairnessConfig, load_config
from fairhpc.losses import (
    TAU_SERIES_EPS,
    PreferenceLoss,
    check_finite,
    dpo_loss,
    fairness_loss_from_margins,
    lan_fairness,
    loss_scale,
    rm_loss,
    step_statistics,
    uses_global_scope,
)

TAUS = [-5.0, -1.0, -1e-7, 0.0, 1e-7, 0.5, 2.0, 10.0]
REPO = Path(__file__).resolve().parents[1]


def allowed(mode, tau):
    if mode in ("fr", "fc") and tau == 1:
        return False
    return not (mode == "fc" and tau > 1)


def gen(*key) -> torch.Generator:
    """A generator seeded from the test's parameters, the same in every run (hash() of a str is not: it
    changes with PYTHONHASHSEED)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


# ------------------------------------------------------------------ independent float64 evaluation
def naive_f(d, tau):
    """f_tau straight from the definition (no log space), float64; tau = 0 via exp(H)/n."""
    x = torch.sigmoid(d.double())
    n = x.numel()
    p = x / x.sum()
    if tau == 0:
        return torch.exp(-(p * p.log()).sum()) / n
    a = 1 - tau
    return math.copysign(1.0, a) * (p ** a).sum() ** (1 / tau) / n


def naive_loss(d, cfg):
    d = d.double()
    u = (-torch.nn.functional.logsigmoid(d)).mean()
    f = naive_f(d, cfg.tau)
    loss = {"bt": u, "dpo": u, "fr": u - cfg.alpha * f, "fc": u * f ** cfg.gamma}[cfg.mode]
    return loss * (d.numel() if cfg.reduction == "sum" else 1)


def closed_form_grad(d, cfg):
    """dL/dd_k from docs/method.md's closed form (no autograd)."""
    d = d.double()
    n = d.numel()
    s = torch.sigmoid(d)
    S = s.sum()
    r = s / S
    tau, a = cfg.tau, 1 - cfg.tau
    du = (s - 1) / n
    u = (-torch.nn.functional.logsigmoid(d)).mean()
    f = naive_f(d, tau)
    if tau == 0:
        H = -(r * r.log()).sum()
        df = -f * (r.log() + H) / S * s * (1 - s)
    else:
        P = (r ** a).sum()
        df = math.copysign(1.0, a) * a / (n * tau * S) * P ** (1 / tau - 1) * (r ** (a - 1) - P) * s * (1 - s)
    g = {"bt": du, "dpo": du, "fr": du - cfg.alpha * df,
         "fc": f ** cfg.gamma * du + cfg.gamma * u * f ** (cfg.gamma - 1) * df}[cfg.mode]
    return g * (n if cfg.reduction == "sum" else 1)


@pytest.mark.parametrize("mode", ["bt", "fr", "fc"])
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_values_and_gradients_match_independent_float64(mode, tau, reduction):
    if not allowed(mode, tau):
        pytest.skip("rejected combination (tested below)")
    g = gen(mode, tau, reduction)
    d = (torch.randn(37, generator=g, dtype=torch.float64) * 4).requires_grad_()
    cfg = FairnessConfig(mode=mode, tau=tau, alpha=0.3, gamma=0.7, reduction=reduction)
    out = fairness_loss_from_margins(d, cfg)
    out.loss.backward()
    ref = naive_loss(d.detach(), cfg)
    # near tau = 0 the naive definition itself loses ~1e-16/|tau| to cancellation
    rtol = 1e-6 if 0 < abs(tau) < 1e-3 else 1e-10
    torch.testing.assert_close(out.loss.double(), ref, rtol=rtol, atol=1e-12)
    torch.testing.assert_close(d.grad, closed_form_grad(d.detach(), cfg), rtol=max(rtol, 1e-8), atol=1e-12)
    torch.testing.assert_close(out.metrics["f"].double(), naive_f(d.detach(), tau).double(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["fr", "fc"])
@pytest.mark.parametrize("tau", [-5.0, -1.0, 0.0, 1e-7, 0.5, 10.0])
def test_gradcheck(mode, tau):
    if not allowed(mode, tau):
        pytest.skip("rejected combination")
    d = (torch.randn(9, generator=gen(mode, tau), dtype=torch.float64) * 2).requires_grad_()
    cfg = FairnessConfig(mode=mode, tau=tau, alpha=0.5, gamma=0.5)
    assert torch.autograd.gradcheck(lambda t: fairness_loss_from_margins(t, cfg).loss, (d,))


@pytest.mark.parametrize("mode", ["bt", "fr", "fc"])
@pytest.mark.parametrize("tau", TAUS)
def test_extreme_margins_stay_finite(mode, tau):
    if not allowed(mode, tau):
        pytest.skip("rejected combination")
    for dtype in (torch.float32, torch.float64):
        d = torch.tensor([-50.0, -20.0, 0.0, 20.0, 50.0, -49.0], dtype=dtype, requires_grad=True)
        out = fairness_loss_from_margins(d, FairnessConfig(mode=mode, tau=tau))
        out.loss.backward()
        assert torch.isfinite(out.loss) and torch.isfinite(d.grad).all(), (dtype, out.loss, d.grad)
        assert all(torch.isfinite(v) for v in out.metrics.values())
    # and the value is still right where float64 can evaluate the definition directly
    ref = naive_loss(d.detach(), FairnessConfig(mode=mode, tau=tau))
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-9, atol=1e-12)


def test_tau_zero_limit_is_continuous_across_the_switch():
    d = torch.randn(50, generator=gen("continuity"), dtype=torch.float64) * 3
    for sign in (1.0, -1.0):  # each side of each switch (the series below, the exact form above)
        inside = fairness_loss_from_margins(d, FairnessConfig(tau=sign * TAU_SERIES_EPS * (1 - 1e-9)))
        outside = fairness_loss_from_margins(d, FairnessConfig(tau=sign * TAU_SERIES_EPS * (1 + 1e-9)))
        torch.testing.assert_close(inside.metrics["f"], outside.metrics["f"], rtol=1e-6, atol=0)
    f_in = naive_f(d, TAU_SERIES_EPS * 0.5)  # the series is right inside, not merely continuous
    got = fairness_loss_from_margins(d, FairnessConfig(mode="fr", tau=TAU_SERIES_EPS * 0.5, alpha=1.0))
    torch.testing.assert_close((got.metrics["u"].double() - got.loss.double()), f_in, rtol=1e-6, atol=0)
    # and it approaches exp(H)/n
    torch.testing.assert_close(lan_fairness(d, 0.0).double(), naive_f(d, 0.0).double(), rtol=1e-6, atol=0)


def test_jain_index_and_equal_allocation():
    d = torch.randn(64, generator=gen("jain"), dtype=torch.float64)
    x = torch.sigmoid(d)
    jain = x.sum() ** 2 / (64 * (x ** 2).sum())
    torch.testing.assert_close(lan_fairness(d, -1.0).double(), jain.float().double(), rtol=1e-6, atol=0)
    # equal allocation: sum p^a = n^(1-a) => f = 1 for every tau < 1
    for tau in (-5, -1, 0, 0.5):
        assert abs(lan_fairness(torch.full((10,), 1.3), tau).item() - 1.0) < 1e-6


def test_metrics():
    d = torch.tensor([1.0, -2.0, 3.0, 0.0])
    m = fairness_loss_from_margins(d, FairnessConfig(mode="bt")).metrics
    assert m["accuracy"].item() == pytest.approx(0.5)  # a tie (0) is not counted as correct
    assert m["margin_mean"].item() == pytest.approx(0.5)
    assert m["margin_std"].item() == pytest.approx(d.std(unbiased=False).item(), rel=1e-6)
    assert m["margin_min"].item() == -2.0 and m["margin_max"].item() == 3.0
    assert m["u"].item() == pytest.approx((-torch.nn.functional.logsigmoid(d)).mean().item(), rel=1e-6)


def test_rm_and_dpo_margins():
    cfg = FairnessConfig(mode="fr", tau=0.5)
    g = gen("margins")
    c, r = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(rm_loss(c, r, cfg).loss, fairness_loss_from_margins(c - r, cfg).loss)
    pc, pr, rc, rr = (torch.randn(8, generator=g, dtype=torch.float64) * 10 for _ in range(4))
    dcfg = FairnessConfig(mode="fc", tau=-1, beta=0.1)
    expect = fairness_loss_from_margins(0.1 * ((pc - rc) - (pr - rr)), dcfg).loss
    torch.testing.assert_close(dpo_loss(pc, pr, rc, rr, dcfg).loss, expect)


@pytest.mark.parametrize("bad,match", [
    ({"mode": "fr", "tau": 1.0}, "tau = 1"),
    ({"mode": "fc", "tau": 1.0}, "tau = 1"),
    ({"mode": "fc", "tau": 2.0}, "fc needs tau < 1"),
    ({"mode": "xx"}, "unknown mode 'xx'"),
    ({"mode": "fr", "tau": float("nan")}, "finite"),
    ({"mode": "fr", "reduction": "max"}, "allowed: mean, sum"),
])
def test_invalid_objective_rejected(bad, match):
    with pytest.raises(ConfigError, match=match):
        FairnessConfig(**bad)


def test_invalid_objective_rejected_at_config_time_with_key():
    with pytest.raises(ConfigError, match=r"objective.tau.*fc needs tau < 1"):
        load_config(None, ["objective.mode=fc", "objective.tau=2"])
    with pytest.raises(ConfigError, match=r"objective.mode.*not a rm mode.*bt, fr, fc"):
        load_config(None, ["objective.mode=dpo"], task="rm")


def test_auto_impl_is_the_torch_reference_on_cpu():
    cfg = FairnessConfig(mode="fr", loss_impl="torch")
    assert PreferenceLoss("rm", cfg, "cpu").impl == "torch"
    assert PreferenceLoss("rm", FairnessConfig(mode="fr"), "cpu").impl == "torch"  # auto on CPU


@pytest.mark.slow
def test_global_scope_two_ranks_equals_concatenated_batch(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29611",
           str(REPO / "tests" / "dist_global_scope.py"), str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "ok").read_text().strip() == "checked 2 ranks"


# ------------------------------------------------------------------ scopes
def test_the_scope_rule():
    assert uses_global_scope("global", 2) and uses_global_scope("global", 8)
    assert not uses_global_scope("global", 1)  # one rank: global is micro
    assert not uses_global_scope("micro", 8) and not uses_global_scope("step", 8)  # step: once per step
    assert [loss_scale(s, 4, 3) for s in ("micro", "global", "step")] == [1, 4, 12]
    assert loss_scale("global", 1, 3) == 1 and loss_scale("step", 1, 3) == 3


def split(t, sizes):
    return list(torch.split(t, sizes))


@pytest.mark.parametrize("mode,tau", [("bt", -1.0), ("fr", -1.0), ("fr", 0.0), ("fr", 1e-7), ("fr", 2.0),
                                      ("fr", 10.0), ("fc", -5.0), ("fc", -1.0), ("fc", 0.0), ("fc", 0.5)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_step_scope_micro_batches_add_up_to_the_full_batch(mode, tau, reduction):
    """scope step: each micro-batch's loss with the step's statistics held fixed; the sum of their gradients
    is the gradient of the loss of one process over the whole step (float64, to rounding)."""
    sizes = [5, 1, 9, 4]
    d = torch.randn(sum(sizes), generator=gen("step", mode, tau), dtype=torch.float64) * 4
    d[0], d[7] = -45.0, 30.0  # far-apart shifts in different micro-batches
    kw = {"mode": mode, "tau": tau, "alpha": 0.3, "gamma": 0.7, "reduction": reduction}
    full_d = d.clone().requires_grad_()
    full = fairness_loss_from_margins(full_d, FairnessConfig(**kw))
    full.loss.backward()
    cfg = FairnessConfig(scope="step", **kw)
    stats = step_statistics(split(d, sizes), cfg)  # the no-graph pass over the step's micro-batches
    parts = [t.clone().requires_grad_() for t in split(d, sizes)]
    outs = [fairness_loss_from_margins(t, cfg, stats=stats) for t in parts]
    sum(o.loss for o in outs).backward()
    got = torch.cat([t.grad for t in parts])
    torch.testing.assert_close(got, full_d.grad, rtol=1e-9, atol=1e-13 * full_d.grad.abs().max().item())
    for o in outs:  # every micro-batch reports the step's loss and metrics
        torch.testing.assert_close(o.loss, full.loss, rtol=1e-12, atol=0.0)
        for k, v in full.metrics.items():
            torch.testing.assert_close(o.metrics[k], v, rtol=1e-6, atol=1e-6, msg=k)
    # and the micro scope differs (the test could fail): f of a micro-batch is not f of the step
    if mode != "bt":
        micro = fairness_loss_from_margins(parts[0].detach(), FairnessConfig(**kw))
        assert abs(micro.metrics["f"].item() - full.metrics["f"].item()) > 1e-3


def test_step_scope_through_preference_loss_and_its_refusals():
    cfg = FairnessConfig(mode="fr", tau=-1.0, scope="step")
    c, r = (torch.randn(12, generator=gen("pl", i), dtype=torch.float64) for i in range(2))
    loss = PreferenceLoss("rm", cfg, "cpu")
    assert loss.impl == "torch"
    stats = step_statistics([c[:6] - r[:6], c[6:] - r[6:]], cfg)
    ins = [c.clone().requires_grad_(), r]
    out = loss(ins[0][:6], r[:6], stats=stats)
    whole = rm_loss(c, r, FairnessConfig(mode="fr", tau=-1.0))
    torch.testing.assert_close(out.loss, whole.loss)
    with pytest.raises(ValueError, match="scope=step needs stats"):
        loss(c, r)
    with pytest.raises(ValueError, match="stats were computed for tau = -1.0"):
        rm_loss(c, r, FairnessConfig(mode="fr", tau=0.5), stats=stats)
    with pytest.raises(ConfigError, match="triton does not implement objective.scope=step"):
        PreferenceLoss("rm", FairnessConfig(mode="fr", scope="step", loss_impl="triton"), "cpu")


# ------------------------------------------------------------------ precision and range
@pytest.mark.parametrize("mode,tau", [("fr", -1.0), ("fr", 0.0), ("fr", 2.0), ("fc", -5.0), ("fc", 0.5)])
def test_float32_formula_is_the_float64_one_rounded(mode, tau):
    """dtype=float32 (the microbenchmark's fp32 eager baseline) evaluates the same formula."""
    d = torch.randn(300, generator=gen("fp32", mode, tau)) * 3
    cfg = FairnessConfig(mode=mode, tau=tau, alpha=0.3, gamma=0.7)
    grads = {}
    for dt in (torch.float32, torch.float64):
        x = d.clone().requires_grad_()
        out = fairness_loss_from_margins(x, cfg, dtype=dt)
        out.loss.backward()
        grads[dt] = (out.loss.double(), x.grad.double())
    torch.testing.assert_close(grads[torch.float32][0], grads[torch.float64][0], rtol=1e-5, atol=1e-7)
    scale = grads[torch.float64][1].abs().max().item()
    torch.testing.assert_close(grads[torch.float32][1], grads[torch.float64][1], rtol=1e-4, atol=1e-5 * scale)
    assert not torch.equal(grads[torch.float32][1], grads[torch.float64][1])


def test_check_finite_names_tau_and_the_margins():
    """fr, tau = 10, d = (-100, 5, 3): f = -7.4e38 is beyond float32 (the loss, 7.4e37, is not)."""
    cfg = FairnessConfig(mode="fr", tau=10.0, alpha=0.1)
    out = fairness_loss_from_margins(torch.tensor([-100.0, 5.0, 3.0], dtype=torch.float64), cfg)
    assert out.loss.item() == pytest.approx(7.406053e37, rel=1e-6) and out.metrics["f"].item() == -math.inf
    with pytest.raises(FloatingPointError, match=r"objective.tau=10.0 \(fr\): f not finite.*\[-100, 5\]"):
        check_finite(out, cfg)
    check_finite(fairness_loss_from_margins(torch.tensor([-90.0, 5.0, 3.0]), cfg), cfg)

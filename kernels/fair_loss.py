"""Fused fairness-aware preference loss: one Triton op (kernels, host launcher, autograd.Function).

Imported as ``fairhpc_kernels.fair_loss`` (pyproject maps the package ``fairhpc_kernels`` to this folder,
which has no ``__init__.py`` so that it never poses as Hugging Face's ``kernels`` distribution).  The op is a
leaf: it imports torch and triton only and takes the objective as a :class:`FairLossSpec` of plain numbers
(``fairhpc.losses`` builds the spec from the run config and decides the scope).

For the n margins of a batch (RM: d = chosen - rejected; DPO: d = beta * ((pc - rc) - (pr - rr))) the op
computes the loss, u, f, accuracy and margin statistics and, in the same pass, dL/dd (docs/method.md,
"The closed-form gradient"), so that backward only scales by grad_output.  Inputs may be float32, float16
or bfloat16, contiguous or strided; all arithmetic is float32.

Numerics (x = sigmoid(d), S = sum x, T = sum x^a, a = 1 - tau, lam = ln(sum p^a) / tau = ln(n |f|)):

* ln x = logsigmoid(d) without cancellation.  Sums are kept relative to shifts, S0 = S / x(d_max) and
  T0 = T / x(d_t)^a (d_t = d_max for a >= 0, d_min for a < 0), updated online as in flash attention, so x^a
  cannot overflow even for tau = 10 and d = -50.  A shift never enters as a large logarithm: every
  ln x_k - ln x(d_ref) is formed from the margins (``_ls_diff``), and the shifts cancel analytically in
  lam = (a (ln x(d_t) - ln x(d_max)) + ln T0 - ln S0) / tau + ln S0.  (Subtracting logs of size 40 cost
  float32 gradients 1e-4 relative when every margin is below -20.)
* For small |tau| the difference ln T - ln S cancels, so the kernel also accumulates
  Q0 = sum x ((x / x_max)^-tau - 1) / tau / x_max = sum e (-l) phi(-tau l), l = ln(x / x_max), e = e^l,
  phi(z) = expm1(z) / z, and uses lam = (Q0/S0) psi(tau Q0/S0) + ln S0 with psi(w) = log1p(w) / w.  Nothing
  is divided by tau, tau = 0 gives the entropy limit exp(H)/n exactly (phi = psi = 1), and Q0 is re-based
  exactly when the shift moves (``_rebase_q``).  phi and psi use short series near 0 (tl.exp / tl.log only:
  no libdevice, so the op also runs under TRITON_INTERPRET=1).
* df/dd_k = f a h_k with h_k = (r_k^-tau / P - 1) / tau * s_k (1 - s_k) / S
          = expm1(y_k) / tau * exp(lw_k),  y_k = -tau (ln r_k + lam),  lw_k = ln s_k + ln(1 - s_k) - ln S;
  exp(y_k + lw_k) <= 1 always, so the large-y branch cannot overflow, and tau -> 0 is again exact.
* Range: float32 holds |f| < 3.4e38.  fr with tau > 1 weights the smallest x most (f ~ -x_min^(1-1/tau));
  with tau = 10 that passes the float32 range near d_min = -98.  The loss is then inf (not nan):
  ``fairhpc.losses.check_finite`` turns it into an error naming tau and the margins.

Launch plan (``LaunchConfig``): n <= single_program_max: one program, one launch (stats, finish, gradient).
Larger n: per-program partial rows, a one-program finishing step, an elementwise gradient launch.
``spec.global_scope``: local rows -> one all_gather of 10 floats per rank (a sum cannot merge shifted sums,
and a separate MAX round would be a second collective) -> every rank finishes the same rows in the same
order (bitwise-identical global loss) -> local elementwise gradient.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.distributed as dist
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

# ------------------------------------------------------------------------------------------ constants
ROW = 10  # partial-row fields: n, dmax, dmin, S0, Q0, T0, usum, npos, mean, M2 (see _chunk_stats)
N_SCALARS = 5  # written by the finishing step for the gradient launch: cu, cf, ln S0, lam, max margin
TAU_Q = 0.5  # |tau| below which the Q (expm1) form of lam is accumulated
KINDS = ("rm", "dpo")  # rm: (chosen, rejected) rewards; dpo: (policy chosen, policy rejected, ref chosen,
N_INPUTS = {"rm": 2, "dpo": 4}  # ref rejected) sequence log-probs
OBJECTIVES = ("utility", "fr", "fc")  # u;  u - alpha f;  u f^gamma
REDUCTIONS = ("mean", "sum")
METRIC_KEYS = ("loss", "u", "f", "accuracy", "margin_mean", "margin_std", "margin_min", "margin_max")
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_N = 2**31 - 2**20  # int32 offsets, with room for the last tile


# ------------------------------------------------------------------------------------------ jit helpers
@triton.jit
def _psi(w):
    """log(1 + w) / w for w > -1 (psi(0) = 1); series below |w| = 0.1 (truncation < 1e-9)."""
    small = tl.abs(w) < 0.1
    s = tl.where(small, w, 0.0)
    ser = 1.0 + s * (-0.5 + s * (1.0 / 3.0 + s * (-0.25 + s * (0.2 + s * (-1.0 / 6.0 + s * (
        1.0 / 7.0 - s * 0.125))))))
    big = tl.where(small, 1.0, w)
    return tl.where(small, ser, tl.log(1.0 + big) / big)


@triton.jit
def _phi_series(y):
    """(exp(y) - 1) / y for |y| <= 0.5 (truncation < 1.5e-8 relative)."""
    return 1.0 + y * (1.0 / 2.0 + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (1.0 / 120.0 + y * (
        1.0 / 720.0 + y * (1.0 / 5040.0 + y * (1.0 / 40320.0)))))))


@triton.jit
def _l1p(d):
    """ln(1 + exp(-|d|)), in (0, ln 2]."""
    t = tl.exp(-tl.abs(d))
    return t * _psi(t)


@triton.jit
def _logsigmoid_pair(d):
    """(ln sigmoid(d), ln sigmoid(-d)) = (ln x, ln(1 - x)), both free of cancellation."""
    l1p = _l1p(d)
    return tl.minimum(d, 0.0) - l1p, tl.minimum(-d, 0.0) - l1p


@triton.jit
def _ls_diff(d, ref):
    """ln sigmoid(d) - ln sigmoid(ref) from the margins: for d, ref << 0 this is d - ref (exact for nearby
    floats), not the difference of two logarithms of size |d| rounded apart."""
    return (tl.minimum(d, 0.0) - tl.minimum(ref, 0.0)) - (_l1p(d) - _l1p(ref))


@triton.jit
def _t_ref(dmax, dmin, a):
    """The margin where a ln x peaks: T is shifted by x(d_t)^a."""
    return tl.where(a >= 0.0, dmax, dmin)


@triton.jit
def _rebase_q(q, s, delta, a, tau):
    """Q0 of sums measured from ln x_max = m to m + delta (delta >= 0):
    Q0' = e^(-a delta) Q0 + S0 (e^(-a delta) - e^(-delta)) / tau  (= S0 delta e^-delta phi(tau delta))."""
    y = tau * delta
    small = tl.abs(y) < 0.5
    e0 = tl.exp(-delta)
    e1 = tl.exp(-a * delta)
    coef = tl.where(small, delta * e0 * _phi_series(tl.where(small, y, 0.0)),
                    (e1 - e0) / tl.where(small, 1.0, tau))
    return e1 * q + s * coef


@triton.jit
def _load_margins(p0, p1, p2, p3, st0, st1, st2, st3, offs, mask, beta, KIND: tl.constexpr):
    """RM (KIND 0): d = p0 - p1.  DPO (KIND 1): d = beta * ((p0 - p2) - (p1 - p3)), in float32.
    st*: element strides (1 is specialised by the compiler: contiguous loads stay vectorised)."""
    x0 = tl.load(p0 + offs * st0, mask=mask, other=0.0).to(tl.float32)
    x1 = tl.load(p1 + offs * st1, mask=mask, other=0.0).to(tl.float32)
    if KIND == 0:
        d = x0 - x1
    else:
        x2 = tl.load(p2 + offs * st2, mask=mask, other=0.0).to(tl.float32)
        x3 = tl.load(p3 + offs * st3, mask=mask, other=0.0).to(tl.float32)
        d = beta * ((x0 - x2) - (x1 - x3))
    return d


@triton.jit
def _chunk_stats(p0, p1, p2, p3, st0, st1, st2, st3, lo, hi, beta, a, tau, inv_tau,
                 KIND: tl.constexpr, USE_Q: tl.constexpr, BLOCK: tl.constexpr):
    """One partial row over margins [lo, hi), hi > lo:
    n, dmax, dmin, S0 = S / x(dmax), Q0 (relative to x(dmax)), T0 = T / x(d_t)^a, sum -ln x, #(d > 0),
    mean d, M2 = sum (d - mean)^2.
    The shifts follow the running extremes (online rescaling), so one read of the inputs suffices."""
    acc_s = tl.zeros([BLOCK], tl.float32)
    acc_q = tl.zeros([BLOCK], tl.float32)
    acc_t = tl.zeros([BLOCK], tl.float32)
    acc_u = tl.zeros([BLOCK], tl.float32)
    acc_p = tl.zeros([BLOCK], tl.float32)
    acc_1 = tl.zeros([BLOCK], tl.float32)
    acc_2 = tl.zeros([BLOCK], tl.float32)
    # the chunk's first margin: the initial shifts (finite, so no inf - inf) and the centre of the moments
    # (no cancellation when |mean| >> std)
    c = _load_margins(p0, p1, p2, p3, st0, st1, st2, st3, lo, lo < hi, beta, KIND)
    dmax = c
    dmin = c
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < hi
        d = _load_margins(p0, p1, p2, p3, st0, st1, st2, st3, offs, mask, beta, KIND)
        d = tl.where(mask, d, c)  # idle lanes hold a real margin: no inf/nan even where they are discarded
        new_max = tl.maximum(dmax, tl.max(d, axis=0))
        new_min = tl.minimum(dmin, tl.min(d, axis=0))
        delta = _ls_diff(new_max, dmax)  # >= 0: how far the S shift moves
        f_t = tl.exp(a * _ls_diff(_t_ref(dmax, dmin, a), _t_ref(new_max, new_min, a)))
        if USE_Q:
            acc_q = _rebase_q(acc_q, acc_s, delta, a, tau)
        acc_s = acc_s * tl.exp(-delta)
        acc_t = acc_t * f_t
        dmax = new_max
        dmin = new_min
        ls = _ls_diff(d, dmax)  # ln(x / x_max) <= 0
        e_s = tl.exp(ls)
        acc_s += tl.where(mask, e_s, 0.0)
        acc_t += tl.where(mask, tl.exp(a * _ls_diff(d, _t_ref(dmax, dmin, a))), 0.0)
        if USE_Q:
            z = -tau * ls
            small = tl.abs(z) < 0.5
            q_small = -ls * e_s * _phi_series(tl.where(small, z, 0.0))
            q_big = (tl.exp(a * ls) - e_s) * inv_tau  # a > 0.5 here and ls <= 0: no overflow
            acc_q += tl.where(mask, tl.where(small, q_small, q_big), 0.0)
        acc_u += tl.where(mask, -_logsigmoid_pair(d)[0], 0.0)
        acc_p += tl.where(mask & (d > 0.0), 1.0, 0.0)
        dc = tl.where(mask, d - c, 0.0)
        acc_1 += dc
        acc_2 += dc * dc
    nn = (hi - lo).to(tl.float32)
    s1 = tl.sum(acc_1, axis=0)
    return (nn, dmax, dmin, tl.sum(acc_s, axis=0), tl.sum(acc_q, axis=0), tl.sum(acc_t, axis=0),
            tl.sum(acc_u, axis=0), tl.sum(acc_p, axis=0), c + s1 / nn, tl.sum(acc_2, axis=0) - s1 * s1 / nn)


@triton.jit
def _combine_rows(rows, R, a, tau, USE_Q: tl.constexpr, RB: tl.constexpr):
    """Merge R >= 1 partial rows (online over blocks of RB rows): re-base the shifted sums to the common
    extremes, merge the moments with Chan et al.'s pairwise formula.  Fixed order: every caller gets the same
    bits."""
    nn = 0.0
    s0 = 0.0
    q0 = 0.0
    t0 = 0.0
    usum = 0.0
    npos = 0.0
    mean = 0.0
    m2 = 0.0
    dmax = tl.load(rows + 1)  # row 0's extremes: finite initial shifts
    dmin = tl.load(rows + 2)
    for r0 in range(0, R, RB):
        r = r0 + tl.arange(0, RB)
        mk = r < R
        base = rows + r * 10
        v_n = tl.load(base + 0, mask=mk, other=0.0)
        v_max = tl.load(base + 1, mask=mk, other=-float("inf"))
        v_min = tl.load(base + 2, mask=mk, other=float("inf"))
        v_s = tl.load(base + 3, mask=mk, other=0.0)
        v_q = tl.load(base + 4, mask=mk, other=0.0)
        v_t = tl.load(base + 5, mask=mk, other=0.0)
        v_mean = tl.load(base + 8, mask=mk, other=0.0)
        new_max = tl.maximum(dmax, tl.max(v_max, axis=0))
        new_min = tl.minimum(dmin, tl.min(v_min, axis=0))
        new_t = _t_ref(new_max, new_min, a)
        # each row's own shifts (idle lanes: finite stand-ins, weight 0)
        r_max = tl.where(mk, v_max, new_max)
        r_delta = _ls_diff(new_max, r_max)
        w_t = tl.where(mk, tl.exp(a * _ls_diff(_t_ref(r_max, tl.where(mk, v_min, new_min), a), new_t)), 0.0)
        delta = _ls_diff(new_max, dmax)
        if USE_Q:
            q0 = _rebase_q(q0, s0, delta, a, tau) + tl.sum(
                tl.where(mk, _rebase_q(v_q, v_s, r_delta, a, tau), 0.0), axis=0)
        s0 = s0 * tl.exp(-delta) + tl.sum(tl.where(mk, v_s * tl.exp(-r_delta), 0.0), axis=0)
        t0 = t0 * tl.exp(a * _ls_diff(_t_ref(dmax, dmin, a), new_t)) + tl.sum(v_t * w_t, axis=0)
        dmax = new_max
        dmin = new_min
        usum += tl.sum(tl.load(base + 6, mask=mk, other=0.0), axis=0)
        npos += tl.sum(tl.load(base + 7, mask=mk, other=0.0), axis=0)
        n_b = tl.sum(v_n, axis=0)
        mean_b = tl.sum(v_n * v_mean, axis=0) / n_b
        dm = v_mean - mean_b
        m2_b = tl.sum(tl.load(base + 9, mask=mk, other=0.0), axis=0) + tl.sum(v_n * dm * dm, axis=0)
        tot = nn + n_b
        delta_m = mean_b - mean
        mean = mean + delta_m * (n_b / tot)
        m2 = m2 + m2_b + delta_m * delta_m * (nn * n_b / tot)
        nn = tot
    return nn, dmax, dmin, s0, q0, t0, usum, npos, mean, m2


@triton.jit
def _finish(nn, dmax, dmin, s0, q0, t0, usum, npos, mean, m2, a, tau, inv_tau, sgn, alpha, gamma,
            MODE: tl.constexpr, USE_Q: tl.constexpr, REDUCE_SUM: tl.constexpr):
    """Scalars of the loss from a merged row: (loss, u, f, accuracy, mean, std, min, max) and the gradient
    coefficients (cu, cf, ln S0, lam) of dL/dd_k = cu (s_k - 1) + cf h_k."""
    ln_s0 = tl.log(s0)  # ln S - ln x(dmax)
    ln_n = tl.log(nn)
    # lam = (ln T - ln S) / tau + ln S; the shifts ln x(dmax), ln x(d_t) cancel but for their difference
    lam = (a * _ls_diff(_t_ref(dmax, dmin, a), dmax) + tl.log(t0) - ln_s0) * inv_tau + ln_s0
    if USE_Q:
        qa = q0 / s0
        w = tau * qa  # = sum r (x / x_max)^-tau - 1
        ok = tl.abs(w) <= 0.5  # else (or inf/nan after an extreme shift) the log-sum-exp form is exact enough
        lam = tl.where(ok, qa * _psi(tl.where(ok, w, 0.0)) + ln_s0, lam)
    f = sgn * tl.exp(lam - ln_n)
    u = usum / nn
    if MODE == 0:  # utility: L = u
        loss = u
        cu = 1.0 / nn
        cf = 0.0
    elif MODE == 1:  # fr: L = u - alpha f
        loss = u - alpha * f
        cu = 1.0 / nn
        cf = -alpha * a * f
    else:  # fc: L = u f^gamma (f > 0: fc requires tau < 1)
        fg = tl.exp(gamma * (lam - ln_n))
        loss = u * fg
        cu = fg / nn
        cf = gamma * a * u * fg
    if REDUCE_SUM:
        loss = loss * nn
        cu = cu * nn
        cf = cf * nn
    std = tl.sqrt(tl.maximum(m2 / nn, 0.0))
    return loss, u, f, npos / nn, mean, std, dmin, dmax, cu, cf, ln_s0, lam


@triton.jit
def _grad_margins(d, cu, cf, dmax, ln_s0, lam, tau, inv_tau, HAS_F: tl.constexpr):
    """dL/dd for a tile of margins (closed form, docs/method.md)."""
    ln1mx = _logsigmoid_pair(d)[1]
    g = -cu * tl.exp(ln1mx)  # du/dd = (s - 1) / n, scaled into cu
    if HAS_F:
        ln_r = _ls_diff(d, dmax) - ln_s0  # ln(x / S), the shift folded in
        v = ln_r + lam
        y = -tau * v
        lw = ln_r + ln1mx
        ew = tl.exp(lw)
        small = tl.abs(y) < 0.5
        h_small = -v * _phi_series(tl.where(small, y, 0.0)) * ew
        h_big = (tl.exp(tl.where(small, 0.0, y) + lw) - ew) * inv_tau
        g += cf * tl.where(small, h_small, h_big)
    return g


@triton.jit
def _store8(ptr, v0, v1, v2, v3, v4, v5, v6, v7):
    tl.store(ptr + 0, v0)
    tl.store(ptr + 1, v1)
    tl.store(ptr + 2, v2)
    tl.store(ptr + 3, v3)
    tl.store(ptr + 4, v4)
    tl.store(ptr + 5, v5)
    tl.store(ptr + 6, v6)
    tl.store(ptr + 7, v7)


@triton.jit
def _store_outputs(loss_ptr, metrics_ptr, loss, u, f, acc, mean, std, dmin, dmax):
    """The loss and the metrics in METRIC_KEYS order."""
    tl.store(loss_ptr, loss)
    _store8(metrics_ptr, loss, u, f, acc, mean, std, dmin, dmax)


@triton.jit
def _store_row(row, nn, dmax, dmin, s0, q0, t0, usum, npos, mean, m2):
    """A partial row (ROW fields, the order _combine_rows reads)."""
    _store8(row, nn, dmax, dmin, s0, q0, t0, usum, npos)
    tl.store(row + 8, mean)
    tl.store(row + 9, m2)


# ------------------------------------------------------------------------------------------ kernels
@triton.jit(do_not_specialize=["n"])  # n = 1 must not become a constexpr
def _fair_loss_fwd_kernel(p0, p1, p2, p3, st0, st1, st2, st3, g_ptr, loss_ptr, metrics_ptr, n, beta, a, tau,
                          inv_tau, sgn, alpha, gamma, KIND: tl.constexpr, MODE: tl.constexpr,
                          USE_Q: tl.constexpr, REDUCE_SUM: tl.constexpr, WRITE_GRAD: tl.constexpr,
                          BLOCK: tl.constexpr):
    """Small batches, grid (1,): statistics, loss and metrics, then dL/dd, in one launch."""
    nn, dmax, dmin, s0, q0, t0, usum, npos, mean, m2 = _chunk_stats(
        p0, p1, p2, p3, st0, st1, st2, st3, 0, n, beta, a, tau, inv_tau, KIND, USE_Q, BLOCK)
    loss, u, f, acc, mean, std, dmin, dmax, cu, cf, ln_s0, lam = _finish(
        nn, dmax, dmin, s0, q0, t0, usum, npos, mean, m2, a, tau, inv_tau, sgn, alpha, gamma,
        MODE, USE_Q, REDUCE_SUM)
    _store_outputs(loss_ptr, metrics_ptr, loss, u, f, acc, mean, std, dmin, dmax)
    if WRITE_GRAD:
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n
            d = tl.where(mask, _load_margins(p0, p1, p2, p3, st0, st1, st2, st3, offs, mask, beta, KIND), dmax)
            g = _grad_margins(d, cu, cf, dmax, ln_s0, lam, tau, inv_tau, MODE != 0)
            tl.store(g_ptr + offs, g, mask=mask)


@triton.jit(do_not_specialize=["n", "chunk"])
def _fair_loss_partials_kernel(p0, p1, p2, p3, st0, st1, st2, st3, rows_ptr, n, chunk, beta, a, tau, inv_tau,
                               KIND: tl.constexpr, USE_Q: tl.constexpr, BLOCK: tl.constexpr):
    """Large batches, grid (G,): program i writes the partial row of margins [i chunk, (i+1) chunk)."""
    pid = tl.program_id(0)
    lo = pid * chunk
    hi = tl.minimum(lo + chunk, n)
    nn, dmax, dmin, s0, q0, t0, usum, npos, mean, m2 = _chunk_stats(
        p0, p1, p2, p3, st0, st1, st2, st3, lo, hi, beta, a, tau, inv_tau, KIND, USE_Q, BLOCK)
    _store_row(rows_ptr + pid * 10, nn, dmax, dmin, s0, q0, t0, usum, npos, mean, m2)


@triton.jit(do_not_specialize=["R"])
def _fair_loss_finish_kernel(rows_ptr, R, out_ptr, loss_ptr, metrics_ptr, a, tau, inv_tau, sgn, alpha, gamma,
                             MODE: tl.constexpr, USE_Q: tl.constexpr, REDUCE_SUM: tl.constexpr,
                             ROW_ONLY: tl.constexpr, RB: tl.constexpr):
    """Finishing step, grid (1,): merge R rows.  ROW_ONLY: write the merged row to out_ptr (a rank's
    contribution to the all_gather); else write loss, metrics and the N_SCALARS gradient scalars there."""
    nn, dmax, dmin, s0, q0, t0, usum, npos, mean, m2 = _combine_rows(rows_ptr, R, a, tau, USE_Q, RB)
    if ROW_ONLY:
        _store_row(out_ptr, nn, dmax, dmin, s0, q0, t0, usum, npos, mean, m2)
    else:
        loss, u, f, acc, mean, std, dmin, dmax, cu, cf, ln_s0, lam = _finish(
            nn, dmax, dmin, s0, q0, t0, usum, npos, mean, m2, a, tau, inv_tau, sgn, alpha, gamma,
            MODE, USE_Q, REDUCE_SUM)
        _store_outputs(loss_ptr, metrics_ptr, loss, u, f, acc, mean, std, dmin, dmax)
        tl.store(out_ptr + 0, cu)
        tl.store(out_ptr + 1, cf)
        tl.store(out_ptr + 2, ln_s0)
        tl.store(out_ptr + 3, lam)
        tl.store(out_ptr + 4, dmax)


@triton.jit(do_not_specialize=["n"])
def _fair_loss_grad_kernel(p0, p1, p2, p3, st0, st1, st2, st3, g_ptr, scal_ptr, n, beta, tau, inv_tau,
                           KIND: tl.constexpr, HAS_F: tl.constexpr, BLOCK: tl.constexpr):
    """Elementwise dL/dd from the finishing step's scalars, grid (cdiv(n, BLOCK),)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    cu = tl.load(scal_ptr + 0)
    cf = tl.load(scal_ptr + 1)
    ln_s0 = tl.load(scal_ptr + 2)
    lam = tl.load(scal_ptr + 3)
    dmax = tl.load(scal_ptr + 4)
    d = tl.where(mask, _load_margins(p0, p1, p2, p3, st0, st1, st2, st3, offs, mask, beta, KIND), dmax)
    tl.store(g_ptr + offs, _grad_margins(d, cu, cf, dmax, ln_s0, lam, tau, inv_tau, HAS_F), mask=mask)


@triton.jit(do_not_specialize=["n"])
def _fair_loss_bwd_kernel(g_ptr, go_ptr, o0, o1, o2, o3, n, beta, KIND: tl.constexpr,
                          W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr, W3: tl.constexpr,
                          BLOCK: tl.constexpr):
    """grad_input = dd/d(input) * dL/dd * grad_output, read from device memory (no host sync).
    RM: (+1, -1).  DPO (pc, pr, rc, rr): (+beta, -beta, -beta, +beta)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0) * tl.load(go_ptr).to(tl.float32)
    if KIND == 1:
        g = g * beta
    if W0:
        tl.store(o0 + offs, g.to(o0.dtype.element_ty), mask=mask)
    if W1:
        tl.store(o1 + offs, (-g).to(o1.dtype.element_ty), mask=mask)
    if W2:
        tl.store(o2 + offs, (-g).to(o2.dtype.element_ty), mask=mask)
    if W3:
        tl.store(o3 + offs, g.to(o3.dtype.element_ty), mask=mask)


INTERPRETED = isinstance(_fair_loss_fwd_kernel, InterpretedFunction)  # TRITON_INTERPRET=1 at import


# ------------------------------------------------------------------------------------------ host side
@dataclasses.dataclass(frozen=True)
class FairLossSpec:
    """The objective as plain numbers.  ``fairhpc.losses.kernel_spec`` builds it from the run config.

    objective: "utility" (L = u), "fr" (L = u - alpha f) or "fc" (L = u f^gamma, needs tau < 1);
    tau: Lan et al.'s parameter (tau = 0: the entropy limit); beta: DPO temperature (margins of kind "dpo");
    reduction: "mean" over pairs or "sum" (n times the mean); global_scope: the batch is the concatenation
    of the shards of every rank of the process group (one all_gather per call)."""

    objective: str = "utility"
    tau: float = -1.0
    alpha: float = 0.0
    gamma: float = 1.0
    beta: float = 1.0
    reduction: str = "mean"
    global_scope: bool = False

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {self.reduction!r}")
        for key in ("tau", "alpha", "gamma", "beta"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{key} must be a finite number, got {v!r}")
        if self.objective == "fc" and self.tau >= 1:
            raise ValueError(f"objective fc needs tau < 1 (f <= 0 for tau >= 1), got tau = {self.tau}")


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Block sizes of the launch plan (defaults suit an H100; tests shrink them to reach every path)."""

    block: int = 1024  # margins per tile (power of two)
    single_program_max: int = 8192  # up to this n: one program, one launch
    max_programs: int = 1024  # partial rows of the multi-program path
    row_block: int = 1024  # rows merged per step of the finishing loop (power of two)
    num_warps: int = 4

    def __post_init__(self):
        for key, least in (("block", 16), ("row_block", 2)):
            v = getattr(self, key)
            if v < least or v & (v - 1):
                raise ValueError(f"LaunchConfig.{key} must be a power of two >= {least}, got {v}")
        for key in ("single_program_max", "max_programs", "num_warps"):
            if getattr(self, key) < 1:
                raise ValueError(f"LaunchConfig.{key} must be >= 1, got {getattr(self, key)}")


DEFAULT_LAUNCH = LaunchConfig()


def check_supported(dtype: torch.dtype, device: torch.device | str) -> None:
    """Raise ValueError/RuntimeError if the kernel cannot run on inputs of ``dtype`` on ``device``
    (``fairhpc.losses.PreferenceLoss`` calls it when a training step is built; fused_loss repeats it)."""
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"the fused fairness kernel takes float32, float16 or bfloat16 inputs, got {dtype}")
    device = torch.device(device)
    if device.type == "cuda":
        if INTERPRETED:
            raise RuntimeError("TRITON_INTERPRET=1 is set: the kernel runs on CPU tensors only; unset it "
                               "to run on CUDA")
        if not torch.cuda.is_available():
            raise RuntimeError("the fused fairness kernel needs a working CUDA device; none is available")
    elif device.type == "cpu":
        if not INTERPRETED:
            raise RuntimeError("the fused fairness kernel needs a CUDA device (inputs are on cpu); set "
                               "TRITON_INTERPRET=1 before importing triton to run the (slow) Triton "
                               "interpreter on CPU")
    else:
        raise RuntimeError(f"the fused fairness kernel runs on CUDA, not on {device.type}")


# torch >= 2.13 names it all_gather_single; all_gather_into_tensor is the same collective before that
_all_gather_fn = getattr(dist, "all_gather_single", None) or getattr(dist, "all_gather_into_tensor", None)


def _all_gather(out: torch.Tensor, inp: torch.Tensor, group) -> None:
    _all_gather_fn(out, inp, group=group)


def _check_inputs(kind: str, tensors: tuple[torch.Tensor, ...]) -> int:
    if kind not in N_INPUTS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if len(tensors) != N_INPUTS[kind]:
        raise ValueError(f"{kind} loss takes {N_INPUTS[kind]} tensors, got {len(tensors)}")
    t0 = tensors[0]
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"input {i} of the {kind} loss is a {type(t).__name__}, not a tensor")
        if t.dim() != 1 or t.shape != t0.shape:
            raise ValueError(f"the {kind} loss takes 1-D tensors of one shape [n]; got shapes "
                             f"{[tuple(x.shape) for x in tensors]}")
        if t.device != t0.device:
            devices = [str(x.device) for x in tensors]
            raise ValueError(f"the {kind} loss inputs are on different devices: {devices}")
    n = t0.numel()
    if not 1 <= n <= MAX_N:
        raise ValueError(f"the fused fairness kernel takes 1 <= n <= {MAX_N} pairs, got n = {n}")
    return n


def _strided(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its element offsets fit int32 (any stride: a DPO step's stride-2 slices of the
    reference log-probs are read in place), else a contiguous copy."""
    return t if t.numel() * max(t.stride(0), 1) < 2**31 else t.contiguous()


def _scalar_args(spec: FairLossSpec):
    tau = float(spec.tau)
    a = 1.0 - tau
    return {"beta": float(spec.beta), "a": a, "tau": tau, "inv_tau": (1.0 / tau) if tau != 0 else 0.0,
            "sgn": float((a > 0) - (a < 0))}  # sign(1 - tau): tau = 1 gives f = 0


def fair_loss_forward(kind: str, tensors, spec: FairLossSpec, group=None,
                      launch: LaunchConfig = DEFAULT_LAUNCH, need_grad: bool = True):
    """Host launcher.  tensors: 2 (RM) or 4 (DPO) [n] tensors on one device (any stride).
    Returns (loss: float32 [], metrics: float32 [8] in METRIC_KEYS order, g: float32 [n] = dL/dd or None)."""
    n = tensors[0].numel()
    dev = tensors[0].device
    ptrs = list(tensors) + [tensors[0]] * (4 - len(tensors))  # RM: p2, p3 are never read (KIND 0)
    strides = [t.stride(0) for t in ptrs]
    s = _scalar_args(spec)
    kind_c, mode_c = KINDS.index(kind), OBJECTIVES.index(spec.objective)
    use_q = abs(s["tau"]) < TAU_Q
    red_sum = spec.reduction == "sum"
    loss = torch.empty((), dtype=torch.float32, device=dev)
    metrics = torch.empty(len(METRIC_KEYS), dtype=torch.float32, device=dev)
    g = torch.empty(n, dtype=torch.float32, device=dev) if need_grad else None
    blk, nw = launch.block, launch.num_warps

    if not spec.global_scope and n <= launch.single_program_max:
        _fair_loss_fwd_kernel[(1,)](
            *ptrs, *strides, g if need_grad else metrics, loss, metrics, n, s["beta"], s["a"], s["tau"],
            s["inv_tau"], s["sgn"], float(spec.alpha), float(spec.gamma), KIND=kind_c, MODE=mode_c,
            USE_Q=use_q, REDUCE_SUM=red_sum, WRITE_GRAD=need_grad, BLOCK=blk, num_warps=nw)
        return loss, metrics, g

    # per-program partial rows (one row when a small global batch goes straight to the all_gather)
    if n <= launch.single_program_max:
        chunk = n
    else:
        chunk = blk * triton.cdiv(triton.cdiv(n, launch.max_programs), blk)
    n_prog = triton.cdiv(n, chunk)
    rows = torch.empty(n_prog * ROW, dtype=torch.float32, device=dev)
    _fair_loss_partials_kernel[(n_prog,)](
        *ptrs, *strides, rows, n, chunk, s["beta"], s["a"], s["tau"], s["inv_tau"], KIND=kind_c,
        USE_Q=use_q, BLOCK=blk, num_warps=nw)
    fin = {"a": s["a"], "tau": s["tau"], "inv_tau": s["inv_tau"], "sgn": s["sgn"], "alpha": float(spec.alpha),
           "gamma": float(spec.gamma), "MODE": mode_c, "USE_Q": use_q, "REDUCE_SUM": red_sum,
           "RB": launch.row_block}
    if spec.global_scope:
        if n_prog > 1:
            local = torch.empty(ROW, dtype=torch.float32, device=dev)
            _fair_loss_finish_kernel[(1,)](rows, n_prog, local, loss, metrics, **fin, ROW_ONLY=True,
                                           num_warps=nw)
        else:
            local = rows
        world = dist.get_world_size(group)
        rows = torch.empty(world * ROW, dtype=torch.float32, device=dev)
        _all_gather(rows, local, group)  # the step's one collective
        n_prog = world
    scal = torch.empty(N_SCALARS, dtype=torch.float32, device=dev)
    _fair_loss_finish_kernel[(1,)](rows, n_prog, scal, loss, metrics, **fin, ROW_ONLY=False, num_warps=nw)
    if need_grad:
        _fair_loss_grad_kernel[(triton.cdiv(n, blk),)](
            *ptrs, *strides, g, scal, n, s["beta"], s["tau"], s["inv_tau"], KIND=kind_c, HAS_F=mode_c != 0,
            BLOCK=blk, num_warps=nw)
    return loss, metrics, g


def fair_loss_backward(g: torch.Tensor, grad_output: torch.Tensor, kind: str, beta: float,
                       needs: tuple[bool, ...], dtypes: tuple[torch.dtype, ...],
                       launch: LaunchConfig = DEFAULT_LAUNCH):
    """Input gradients (None where not needed): dL/dd times grad_output times dd/d(input), one launch."""
    n = g.numel()
    outs = [torch.empty(n, dtype=dt, device=g.device) if need else None for need, dt in zip(needs, dtypes)]
    if not any(needs):
        return outs
    ptrs = [o if o is not None else g for o in outs] + [g] * (4 - len(outs))
    flags = list(needs) + [False] * (4 - len(needs))
    go = grad_output.detach().to(device=g.device, dtype=torch.float32).reshape(())
    _fair_loss_bwd_kernel[(triton.cdiv(n, launch.block),)](
        g, go, *ptrs, n, float(beta), KIND=KINDS.index(kind), W0=flags[0], W1=flags[1], W2=flags[2],
        W3=flags[3], BLOCK=launch.block, num_warps=launch.num_warps)
    return outs


@dataclasses.dataclass(frozen=True)
class _Call:
    """Everything backward needs besides tensors, as one object (no long tuples of None)."""

    kind: str
    spec: FairLossSpec
    group: object
    launch: LaunchConfig


class FairLossFunction(torch.autograd.Function):
    """loss, metrics = FairLossFunction.apply(call, *inputs); the gradient is computed in forward."""

    @staticmethod
    def forward(ctx, call: _Call, *tensors):
        loss, metrics, g = fair_loss_forward(call.kind, tensors, call.spec, call.group, call.launch,
                                             need_grad=True)
        ctx.save_for_backward(g)
        ctx.call = call
        ctx.dtypes = tuple(t.dtype for t in tensors)
        ctx.mark_non_differentiable(metrics)
        ctx.set_materialize_grads(False)  # no zero tensor is built for the metrics' (absent) gradient
        return loss, metrics

    @staticmethod
    def backward(ctx, grad_loss, _grad_metrics):
        if grad_loss is None:  # only the metrics were used downstream
            return (None,) * (1 + len(ctx.dtypes))
        (g,) = ctx.saved_tensors
        call = ctx.call
        grads = fair_loss_backward(g, grad_loss, call.kind, call.spec.beta, tuple(ctx.needs_input_grad[1:]),
                                   ctx.dtypes, call.launch)
        return (None, *grads)


def fused_loss(kind: str, *tensors: torch.Tensor, spec: FairLossSpec, group=None,
               launch: LaunchConfig | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The fused counterpart of ``fairhpc.losses.rm_loss`` / ``dpo_loss``: (loss, metrics).

    kind "rm": (chosen_rewards [n], rejected_rewards [n]); kind "dpo": (policy_chosen_logps,
    policy_rejected_logps, ref_chosen_logps, ref_rejected_logps), each [n], any stride.  Returns a float32
    scalar loss and a dict of detached float32 metrics (METRIC_KEYS); gradients flow to every input that
    requires them.
    """
    if not isinstance(spec, FairLossSpec):
        raise TypeError(f"spec must be a FairLossSpec, got {type(spec).__name__}")
    _check_inputs(kind, tensors)
    for t in tensors:
        check_supported(t.dtype, t.device)
    if spec.global_scope and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("spec.global_scope needs an initialised torch.distributed process group")
    tensors = tuple(_strided(t) for t in tensors)
    call = _Call(kind, spec, group, launch or DEFAULT_LAUNCH)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        loss, metrics = FairLossFunction.apply(call, *tensors)
    else:  # evaluation: no gradient is computed or stored
        loss, metrics, _ = fair_loss_forward(kind, tensors, spec, group, call.launch, need_grad=False)
    return loss, {k: metrics[i] for i, k in enumerate(METRIC_KEYS)}

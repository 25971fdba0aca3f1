"""Fairness-aware preference objectives: the plain-torch reference, the scope rule and the dispatch.

Ouyang et al., "Towards Reward Fairness in RLHF: From a Resource Allocation Perspective" (ACL 2025),
with Lan et al.'s fairness family f_tau (Lan, Kao, Chiang, Sabharwal 2010, eq. 15).  The math, the
scopes and the numerics are written out in docs/method.md.

For a batch of n preference pairs with margins d (RM: r_w - r_l; DPO: beta * log-ratio difference):

    x_i = sigmoid(d_i)                       # the "resource" allocated to pair i
    u   = mean_i -logsigmoid(d_i)            # Bradley-Terry / DPO utility loss
    p_i = x_i / S,  S = sum x,  a = 1 - tau
    f   = sign(a) * (sum p^a)^(1/tau) / n    # /n as in the authors' code; tau -> 0: exp(H(p)) / n

    bt | dpo : L = u
    fr       : L = u - alpha * f             # Fairness Regularization
    fc       : L = u * f^gamma               # Fairness Coefficient

L depends on the batch only through a handful of sums (S, T = sum x^a, sum -ln x, n and, for the tau -> 0
series, sum x ln x and sum x (ln x)^2).  That is what the scopes exchange:

* ``micro``: the batch is this rank's micro-batch;
* ``global``: the micro-step's batches of every rank: one all_gather of a row of sums per rank;
* ``step``: every micro-batch of every rank in the optimizer step: :func:`step_statistics` reduces the
  margins of the whole step (computed without a graph) once, and each micro-batch's loss is evaluated with
  those sums held fixed (``stats=``) so that the gradients of its micro-batches add up to the gradient of one
  process over the whole step.

Everything is computed in float64 in log space (``dtype=torch.float32`` gives the same formula in float32,
for the microbenchmark's baseline).  This module is the reference the fused Triton kernel
(``fairhpc_kernels.fair_loss``) must match; it also turns the run config into the kernel's spec and
chooses the implementation (``objective.loss_impl``).
"""

from __future__ import annotations

import dataclasses
import math
from collections import namedtuple
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fairhpc.config import ConfigError, FairnessConfig

LossOutput = namedtuple("LossOutput", ["loss", "metrics"])
METRIC_KEYS = ("loss", "u", "f", "accuracy", "margin_mean", "margin_std", "margin_min", "margin_max")

# Below this |tau| the exact expression ln(sum p^a) / tau cancels catastrophically; use the series
# ln(sum p^(1-tau)) / tau = H + tau * V / 2 + O(tau^2), H = entropy of p, V = Var_p(ln p).
# At |tau| = 1e-5 both branches agree to ~1e-10 relative in float64 (tested for continuity).
TAU_SERIES_EPS = 1e-5

# A row of a batch's statistics: 4 shifts (no gradient) and 9 sums.  A0..A2 are measured in units of
# e^(max ln x), B0 in units of e^(max a ln x), so that no exp() overflows; rows merge by rescaling.
_N_MAX, _N_SUM = 4, 9  # maxes: max ln x, max a ln x, max d, -min d
# sums: A0 = S, A1 = sum x ln x, A2 = sum x (ln x)^2, B0 = T, sum -ln x, n, sum d, sum d^2, #(d > 0)


# ------------------------------------------------------------------------------------------ the scope rule
def world_size(group=None) -> int:
    """Ranks of ``group`` (1 without an initialised torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def uses_global_scope(scope: str, world: int) -> bool:
    """THE scope rule: does one micro-step's loss exchange sums across ranks?

    True only for ``objective.scope: global`` with more than one rank; with one rank ``global`` is the
    ``micro`` scope.  ``step`` exchanges once per optimizer step, in :func:`step_statistics`, never per
    micro-step, so it is False here.  The reference, the kernel's spec and the training engine all ask this
    function.
    """
    return scope == "global" and world > 1


def loss_scale(scope: str, world: int, grad_accum: int) -> int:
    """Factor for the micro-batch loss before a data-parallel engine's backward.

    DeepSpeed divides each micro-step's loss by ``grad_accum`` and averages gradients over ranks.  Under
    ``micro`` scope that mean is the objective.  Under ``global`` (world > 1) each rank's gradient already
    is its share of the gradient of the micro-step's global loss, so the rank average must be undone
    (x world).  Under ``step`` each micro-batch's gradient is its share of the gradient of the whole step's
    loss: undo both (x world x grad_accum).
    """
    if scope == "step":
        return world * grad_accum
    return world if uses_global_scope(scope, world) else 1


# ------------------------------------------------------------------------------------------ statistics rows
@dataclasses.dataclass(frozen=True)
class StepStatistics:
    """The fairness statistics of a whole optimizer step (all micro-batches of all ranks), no graph.

    maxes: float64 [4] (max ln x, max a ln x, max d, -min d); sums: float64 [9] (see the row layout above),
    sums of x measured relative to the maxes.  Build with :func:`step_statistics`; pass as ``stats=``.
    """

    maxes: torch.Tensor
    sums: torch.Tensor
    tau: float


def _row(d: torch.Tensor, a: float):
    """(maxes [4] without graph, sums [9] with graph) of one batch of margins d (1-D, compute dtype)."""
    lnx = F.logsigmoid(d)  # ln x_i, x_i = sigmoid(d_i) in (0, 1]
    with torch.no_grad():
        # shifts keep every exp() in range; they are constants for autograd (any value is exact)
        maxes = torch.stack([lnx.max(), (a * lnx).max(), d.max(), -d.min()])
    e = torch.exp(lnx - maxes[0])  # x / e^m_s
    dd = d.detach()
    sums = torch.stack([
        e.sum(), (e * lnx).sum(), (e * lnx * lnx).sum(), torch.exp(a * lnx - maxes[1]).sum(), (-lnx).sum(),
        d.new_tensor(float(d.numel())), dd.sum(), (dd * dd).sum(), (dd > 0).to(d.dtype).sum(),
    ])
    return maxes, sums


def _rescale(maxes: torch.Tensor, to: torch.Tensor) -> torch.Tensor:
    """Factors [..., 9] that move sums measured from ``maxes`` [..., 4] to the shifts ``to`` [4]."""
    fs = torch.exp(maxes[..., 0] - to[0]).unsqueeze(-1)
    ft = torch.exp(maxes[..., 1] - to[1]).unsqueeze(-1)
    one = torch.ones_like(fs).expand(*fs.shape[:-1], _N_SUM - 4)
    return torch.cat([fs, fs, fs, ft, one], dim=-1)


def _merge(maxes: torch.Tensor, sums: torch.Tensor):
    """Merge rows [R, 4] / [R, 9] (no graph) into one: common maxes, rescaled sums added in row order."""
    top = maxes.max(dim=0).values
    return top, (sums * _rescale(maxes, top)).sum(dim=0)


def _all_gather_rows(maxes: torch.Tensor, sums: torch.Tensor, group):
    """One collective: every rank's (maxes, sums) as [world, 4] / [world, 9], identical on every rank."""
    local = torch.cat([maxes, sums.detach()])
    out = local.new_empty(world_size(group) * local.numel())
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, local, group=group)
    out = out.view(-1, local.numel())
    return out[:, :_N_MAX], out[:, _N_MAX:]


def step_statistics(margins: Sequence[torch.Tensor] | torch.Tensor, cfg: FairnessConfig, group=None,
                    dtype: torch.dtype = torch.float64) -> StepStatistics:
    """The statistics of an optimizer step from the margins of its micro-batches (``objective.scope: step``).

    margins: the [n_b] margins of each micro-batch of this rank (computed without a graph: a forward pass
    under torch.no_grad()).  With torch.distributed initialised the rows of all ranks of ``group`` are
    combined in one all_gather, so every rank gets the same statistics.  Pass the result as ``stats=`` to the
    loss of each micro-batch.
    """
    if isinstance(margins, torch.Tensor):
        margins = [margins]
    tau = float(cfg.tau)
    with torch.no_grad():
        rows = [_row(_check_margins(m).to(dtype), 1.0 - tau) for m in margins]
        if not rows:
            raise ValueError("step_statistics needs the margins of at least one micro-batch")
        maxes, sums = _merge(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))
        if world_size(group) > 1:
            maxes, sums = _merge(*_all_gather_rows(maxes, sums, group))
    return StepStatistics(maxes, sums, tau)


def _check_margins(margins: torch.Tensor) -> torch.Tensor:
    if margins.dim() != 1 or margins.numel() == 0:
        raise ValueError(f"margins must be a non-empty 1-D tensor, got shape {tuple(margins.shape)}")
    return margins


# ------------------------------------------------------------------------------------------ the reference
def fairness_loss_from_margins(margins: torch.Tensor, cfg: FairnessConfig, group=None, *,
                               stats: StepStatistics | None = None,
                               dtype: torch.dtype = torch.float64) -> LossOutput:
    """Loss and metrics from pairwise margins.

    margins: [n] tensor (any float dtype; math in ``dtype``, float64 by default).  Returns the loss (scalar,
    float32 or float64) and detached float32 metrics (METRIC_KEYS).

    * scope ``global`` with more than one rank (:func:`uses_global_scope`): loss and metrics are those of
      the concatenated batch of all ranks, and the gradient w.r.t. the local margins is the exact gradient
      of that global loss (one all_gather of 13 numbers per rank).
    * ``stats`` (scope ``step``): the step's statistics from :func:`step_statistics`.  The loss and metrics
      are those of the whole step; the gradient w.r.t. these margins is their part of the gradient of the
      step's loss.  The sums are ``total + (own - own.detach())``: the value is the step's, the derivative
      is that of this micro-batch's own terms, so summing the gradients of all micro-batches (and ranks)
      gives the gradient of one process over the whole step, because dL/dd_k depends on the batch only
      through the totals (docs/method.md, "Scopes").
    """
    _check_margins(margins)
    out_dtype = torch.promote_types(margins.dtype, torch.float32)
    d = margins.to(dtype)
    tau = float(cfg.tau)
    a = 1.0 - tau
    maxes, sums = _row(d, a)
    if stats is not None:
        if stats.tau != tau:
            raise ValueError(f"stats were computed for tau = {stats.tau}, the objective has tau = {tau}")
        top = torch.maximum(stats.maxes.to(dtype), maxes)  # equal unless the margins moved (dropout)
        own = sums * _rescale(maxes, top)
        sums = stats.sums.to(dtype) * _rescale(stats.maxes.to(dtype), top) + (own - own.detach())
        maxes = top
    elif uses_global_scope(cfg.scope, world_size(group)):
        top, total = _merge(*_all_gather_rows(maxes, sums, group))
        own = sums * _rescale(maxes, top)
        # value: the global total (bitwise the same on every rank); gradient: this rank's own terms
        sums, maxes = total + (own - own.detach()), top
    return _loss_from_sums(maxes, sums, cfg, out_dtype)


def _loss_from_sums(maxes: torch.Tensor, sums: torch.Tensor, cfg: FairnessConfig, out_dtype) -> LossOutput:
    tau = float(cfg.tau)
    a = 1.0 - tau
    A0, A1, A2, B0, usum, n = (sums[i] for i in range(6))
    m_s, m_t = maxes[0], maxes[1]
    u = usum / n
    ln_s = m_s + torch.log(A0)
    # f is computed for every mode: it is reported as a metric even when it is not in the loss
    if abs(tau) >= TAU_SERIES_EPS:
        ln_t = m_t + torch.log(B0)
        ln_p = ln_t - a * ln_s  # ln sum p^a
        f = float((a > 0) - (a < 0)) * torch.exp(ln_p / tau) / n  # sign(1 - tau): tau = 1 gives f = 0
    else:
        e_lnp = A1 / A0 - ln_s                                  # sum p ln p = -H
        e_lnp2 = A2 / A0 - 2.0 * ln_s * (A1 / A0) + ln_s ** 2   # sum p (ln p)^2
        h = -e_lnp
        v = e_lnp2 - h * h                                      # Var_p(ln p)
        f = torch.exp(h + 0.5 * tau * v) / n

    if cfg.mode in ("bt", "dpo"):
        loss = u
    elif cfg.mode == "fr":
        loss = u - cfg.alpha * f
    elif cfg.mode == "fc":
        loss = u * f ** cfg.gamma
    else:  # FairnessConfig validates the mode; this guards hand-built objects
        raise ConfigError(f"objective.mode: unknown mode {cfg.mode!r}")
    if cfg.reduction == "sum":
        loss = loss * n

    with torch.no_grad():
        sd, sd2, npos = sums[6], sums[7], sums[8]
        mean = sd / n
        var = torch.clamp(sd2 / n - mean * mean, min=0.0)
        metrics = {
            "loss": loss, "u": u, "f": f, "accuracy": npos / n,
            "margin_mean": mean, "margin_std": var.sqrt(), "margin_min": -maxes[3], "margin_max": maxes[2],
        }
        metrics = {k: v.detach().to(torch.float32) for k, v in metrics.items()}
    return LossOutput(loss.to(out_dtype), metrics)


def lan_fairness(margins: torch.Tensor, tau: float) -> torch.Tensor:
    """Lan et al.'s f_tau of the allocation x = sigmoid(margins) (with the /n of the authors' code)."""
    cfg = FairnessConfig(mode="bt", tau=tau)
    return fairness_loss_from_margins(margins, cfg).metrics["f"]


def check_finite(out: LossOutput, cfg: FairnessConfig) -> None:
    """Raise FloatingPointError, naming tau and the margins, if the loss or a metric is not finite.

    Reads the metrics (a host sync): call it where the metrics are read anyway.  The float32 range ends
    where |f| passes 3.4e38; for fr with tau > 1, f ~ -x_min^(1 - 1/tau) grows without bound as the
    smallest margin falls (tau = 10: near d_min = -98).  docs/method.md, "Range of the results".
    """
    vals = {k: float(v) for k, v in out.metrics.items()}
    bad = [k for k, v in vals.items() if not math.isfinite(v)]
    if not math.isfinite(float(out.loss.detach())):
        bad.insert(0, "loss")
    if bad:
        raise FloatingPointError(
            f"objective.tau={cfg.tau} ({cfg.mode}): {', '.join(dict.fromkeys(bad))} not finite in float32 with "
            f"margins in [{vals['margin_min']:.4g}, {vals['margin_max']:.4g}] (f = {vals['f']:.4g}); "
            "for tau > 1 the fairness term grows as sigmoid(min margin)^(1/tau - 1): the model's margins "
            "diverged -- lower the learning rate, alpha or tau")


def rm_margins(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(f"chosen and rejected rewards differ in shape: {tuple(chosen_rewards.shape)} "
                         f"vs {tuple(rejected_rewards.shape)}")
    return chosen_rewards - rejected_rewards


def dpo_margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                beta: float) -> torch.Tensor:
    """DPO implicit-reward margin beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]."""
    return beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps))


def _from_inputs(d, like, cfg, group, stats, dtype) -> LossOutput:
    out = fairness_loss_from_margins(d, cfg, group, stats=stats, dtype=dtype)
    return out._replace(loss=out.loss.to(torch.promote_types(like.dtype, torch.float32)))


def rm_loss(chosen_rewards, rejected_rewards, cfg: FairnessConfig, group=None, *,
            stats: StepStatistics | None = None, dtype: torch.dtype = torch.float64) -> LossOutput:
    # subtract in the compute dtype: float16/bfloat16 rewards would otherwise round their difference
    d = rm_margins(chosen_rewards.to(dtype), rejected_rewards.to(dtype))
    return _from_inputs(d, chosen_rewards, cfg, group, stats, dtype)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             cfg: FairnessConfig, group=None, *, stats: StepStatistics | None = None,
             dtype: torch.dtype = torch.float64) -> LossOutput:
    ins = [t.to(dtype) for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                 ref_rejected_logps)]
    return _from_inputs(dpo_margins(*ins, cfg.beta), policy_chosen_logps, cfg, group, stats, dtype)


# ------------------------------------------------------------------------------------------ dispatch
_REFERENCE = {"rm": rm_loss, "dpo": dpo_loss}
_N_INPUTS = {"rm": 2, "dpo": 4}


def _kernel():
    from fairhpc_kernels import fair_loss  # the fused Triton op (kernels/ in the repository)

    return fair_loss


def kernel_spec(cfg: FairnessConfig, global_scope: bool = False):
    """The kernel's FairLossSpec of the objective ``cfg`` (``global_scope`` from :func:`uses_global_scope`)."""
    objective = "utility" if cfg.mode in ("bt", "dpo") else cfg.mode
    return _kernel().FairLossSpec(objective=objective, tau=float(cfg.tau), alpha=float(cfg.alpha),
                                  gamma=float(cfg.gamma), beta=float(cfg.beta), reduction=cfg.reduction,
                                  global_scope=global_scope)


class PreferenceLoss:
    """The objective of a training step, with the implementation chosen once at construction.

    loss_impl "auto" uses the fused Triton kernel when the inputs live on CUDA, the torch reference
    otherwise; "triton" always uses the kernel and raises ConfigError here if it cannot run on ``device``;
    "torch" always uses the reference.  Scope ``step`` is computed by the reference (auto picks it; triton
    is refused).  Nothing falls back silently at step time.
    """

    def __init__(self, kind: str, cfg: FairnessConfig, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        if kind not in _REFERENCE:
            raise ValueError(f"kind must be one of {', '.join(_REFERENCE)}, got {kind!r}")
        self.kind, self.cfg, self.device = kind, cfg, torch.device(device)
        impl = cfg.loss_impl
        if impl == "auto":
            impl = "triton" if self.device.type == "cuda" and cfg.scope != "step" else "torch"
        if impl == "triton":
            if cfg.scope == "step":
                raise ConfigError("objective.loss_impl: triton does not implement objective.scope=step; "
                                  "use loss_impl auto or torch")
            try:
                self._specs = {g: kernel_spec(cfg, g) for g in (False, True)}
                _kernel().check_supported(dtype, self.device)
            except (RuntimeError, ValueError, TypeError, ImportError) as e:
                raise ConfigError(f"objective.loss_impl: triton cannot run here: {e}; use "
                                  "objective.loss_impl=torch (or auto)") from None
        self.impl = impl

    def __call__(self, *tensors: torch.Tensor, group=None, stats: StepStatistics | None = None) -> LossOutput:
        """tensors: RM (chosen, rejected) rewards or DPO (policy chosen, policy rejected, ref chosen, ref
        rejected) log-probs, each [n]; stats: the step's statistics under scope ``step``."""
        if len(tensors) != _N_INPUTS[self.kind]:
            raise ValueError(f"{self.kind} loss takes {_N_INPUTS[self.kind]} tensors, got {len(tensors)}")
        if (stats is None) != (self.cfg.scope != "step"):
            raise ValueError("objective.scope=step needs stats=step_statistics(...) for every micro-batch, "
                             f"and other scopes take none (scope {self.cfg.scope!r}, stats given: "
                             f"{stats is not None})")
        if self.impl == "triton":
            spec = self._specs[uses_global_scope(self.cfg.scope, world_size(group))]
            return LossOutput(*_kernel().fused_loss(self.kind, *tensors, spec=spec, group=group))
        return _REFERENCE[self.kind](*tensors, cfg=self.cfg, group=group, stats=stats)


def compute_loss(kind: str, *tensors: torch.Tensor, cfg: FairnessConfig, group=None,
                 stats: StepStatistics | None = None) -> LossOutput:
    """One-shot form of :class:`PreferenceLoss` (dispatch on cfg.loss_impl and the tensors' device)."""
    t = tensors[0]
    return PreferenceLoss(kind, cfg, t.device, t.dtype)(*tensors, group=group, stats=stats)

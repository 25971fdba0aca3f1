"""The numbers of policy-gradient RLHF with reward dropout: dropout masks, the three update losses, GAE.

Everything here is a plain function of tensors (no model, no engine), so each formula can be checked
against a hand computation (tests/test_pg_core.py).  Notation: B samples y_i with reward R_i, log pi(y_i)
under the policy being trained, log beta(y_i) under the behaviour / reference model.

Dropout masks (``keep``, 1 = the sample keeps its policy-gradient weight, 0 = dropped):

* ``none``      every sample is kept.
* ``random``    exactly ``n_drop = floor(rate * B + 1/2)`` distinct samples are dropped (drawn without
                replacement by one ``randperm``); a batch with ``n_drop >= B`` is refused by
                :func:`random_drop_count` (the run config is checked against it before training).
* ``quantile``  keep the samples whose signal is at or above the ``rate``-quantile of the batch (torch's
                linear interpolation).  Ties: every sample equal to the threshold is kept, so a batch with
                ties at the threshold keeps more than ``(1 - rate) * B`` samples.  The largest signal is
                never below the quantile, so a quantile mask always keeps at least one sample.
* ``adaptive``  keep the samples at or above the running mean of the signal over all *earlier* batches
                (the first batch, having no history, keeps everything); ``rate`` is not used.  This mask can
                drop every sample: see :func:`apply_all_dropped`.
"""

from __future__ import annotations

import math

import torch

DROPOUTS = ("none", "random", "quantile", "adaptive")


def random_drop_count(rate: float, n: int) -> int:
    """How many of ``n`` samples ``random`` dropout drops: round(rate * n), halves rounded up."""
    return math.floor(rate * n + 0.5)


def dropout_mask(signal: torch.Tensor, kind: str, rate: float, running_mean: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """[B] float mask of 0/1 for the 1-d ``signal`` (see the module docstring).

    ``running_mean`` (adaptive) is the mean signal of the earlier batches, None when there were none;
    ``generator`` (random) defaults to torch's global generator of the signal's device."""
    if signal.ndim != 1:
        raise ValueError(f"dropout_mask: expected a 1-d signal, got shape {tuple(signal.shape)}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {rate}")
    n = signal.shape[0]
    if kind == "none":
        return torch.ones(n, device=signal.device)
    if kind == "random":
        n_drop = random_drop_count(rate, n)
        if n_drop >= n:
            raise ValueError(f"random dropout at rate {rate} drops round({rate} x {n}) = {n_drop} of {n} "
                             "samples: every sample; raise the batch size or lower the rate")
        mask = torch.ones(n, device=signal.device)
        order = torch.randperm(n, generator=generator, device=generator.device if generator else signal.device)
        mask[order[:n_drop].to(signal.device)] = 0.0
        return mask
    if kind == "quantile":
        q = torch.quantile(signal.double(), rate)
        return (signal.double() >= q).float()
    if kind == "adaptive":
        if running_mean is None:
            return torch.ones(n, device=signal.device)
        return (signal.double() >= running_mean).float()
    raise ValueError(f"unknown dropout {kind!r}; allowed: {', '.join(DROPOUTS)}")


def apply_all_dropped(mask: torch.Tensor, signal: torch.Tensor, policy: str) -> tuple[torch.Tensor, bool]:
    """(mask, whether every sample was dropped).  A mask with no kept sample is refused (``error``) or keeps
    the samples with the largest signal (``keep_best``, all of them on a tie); never an empty update."""
    if bool(mask.any()):
        return mask, False
    if policy == "error":
        raise FloatingPointError(
            f"reward dropout dropped every one of the {mask.numel()} samples of this step (largest signal "
            f"{float(signal.max()):.4g}); set pg.all_dropped: keep_best, or another dropout")
    return (signal == signal.max()).float(), True


# ------------------------------------------------------------------------------------------ the updates
def importance_weights(logp_pi: torch.Tensor, logp_beta: torch.Tensor, clip: float) -> torch.Tensor:
    """w = pi(y) / beta(y), clipped to [0, clip] (0 = no clipping), without gradient."""
    w = torch.exp((logp_pi - logp_beta).detach().double())
    return (w.clamp(max=clip) if clip > 0 else w).to(logp_pi.dtype)


def offpolicy_coefficients(reward, logp_pi, logp_beta, keep, clip: float, reward_scale: float = 1.0):
    """The stop-gradient factor of the off-policy update: w_i * (scale * R_i - log pi(y_i)) * keep_i."""
    w = importance_weights(logp_pi, logp_beta, clip)
    return (w * (reward_scale * reward - logp_pi.detach()) * keep).detach()


def offpolicy_terms(reward, logp_pi, logp_beta, keep, clip: float, reward_scale: float = 1.0):
    """Per-sample loss of Reward Dropout's update on samples from beta:
    loss_i = NLL_pi(y_i) * stopgrad(w_i * (R_i - log pi(y_i)) * keep_i); the batch loss is their mean."""
    coef = offpolicy_coefficients(reward, logp_pi, logp_beta, keep, clip, reward_scale)
    return -logp_pi * coef


def kl_estimate(logp_pi: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """The per-sample KL estimate log pi(y) - log ref(y) of samples from pi (0 when pi == ref)."""
    return logp_pi - logp_ref


def reinforce_returns(reward, logp_pi, logp_ref, kl_coef: float, reward_scale: float = 1.0):
    """r_i = scale * R_i - kl_coef * (log pi(y_i) - log ref(y_i)), without gradient."""
    return (reward_scale * reward - kl_coef * kl_estimate(logp_pi, logp_ref)).detach()


def reinforce_terms(returns, logp_pi, keep, baseline: torch.Tensor | float):
    """Per-sample REINFORCE loss -(r_i - b) * log pi(y_i) * keep_i (b: the baseline, no gradient)."""
    adv = (returns - baseline).detach()
    return -adv * keep * logp_pi


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over the response tokens of each row.

    rewards, values, mask: [B, T] (mask 1 on the response tokens, which come first in a row's response
    positions; the value after the last token is 0).  delta_t = r_t + gamma V_{t+1} - V_t,
    A_t = delta_t + gamma lambda A_{t+1}.  Returns (advantages, returns = advantages + values), 0 off mask."""
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        next_v = values[:, t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last) * m
        adv[:, t] = last
    return adv, (adv + values) * mask


def token_rewards(reward, logp_old_tok, logp_ref_tok, mask, kl_coef: float, reward_scale: float = 1.0):
    """PPO's per-token rewards: -kl_coef * (log pi_old - log ref) on every response token, plus
    scale * R on the last one.  [B], [B, T], [B, T], [B, T] -> [B, T]."""
    r = -kl_coef * (logp_old_tok - logp_ref_tok) * mask
    last = mask.long().cumsum(1).argmax(1)  # index of the last response token of each row
    r[torch.arange(r.shape[0]), last] += reward_scale * reward
    return r


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over the masked entries (std with n - 1, +1e-8)."""
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def ppo_policy_terms(logp_tok, logp_old_tok, adv, mask, clip: float):
    """Token terms of PPO's clipped surrogate, -min(rho A, clip(rho, 1 - eps, 1 + eps) A) * mask, and the
    token-wise indicator that clipping was active.  rho = exp(log pi - log pi_old)."""
    ratio = torch.exp(logp_tok - logp_old_tok)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip, 1 + clip) * adv
    terms = -torch.minimum(unclipped, clipped) * mask
    return terms, ((clipped < unclipped).float() * mask)


def ppo_value_terms(values, values_old, returns, mask, clip: float):
    """Token terms of the clipped value loss 0.5 * max((V - G)^2, (V_old + clip(V - V_old, +-eps) - G)^2)."""
    v_clip = values_old + (values - values_old).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (v_clip - returns) ** 2) * mask

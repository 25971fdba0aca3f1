"""Fairness in the policy-gradient step: the policy's expected reward per group as the allocated resource.

For a step's samples i = 1..N with rewards R_i, grouped (by prompt or by category) into groups g with N_g
samples each, the allocation of group g is

    x_g = sigmoid(mu_g),   mu_g = the group's expected reward, estimated by its mean reward in the batch

(the same map of a real number into (0, 1) as the reward-model objectives' x = sigmoid(margin), so that
f_tau, its limits tau -> 0 and tau = -1 (Jain's index) and every number of docs/method.md carry over), and
f = f_tau(x_1..x_G) (Lan et al.'s family, fairhpc.losses).  With J = E[R] (the mean over samples):

    fr:  maximise J_fr = J + alpha * f
    fc:  maximise J_fc = f^gamma * J          (the policy-gradient loss -J scaled by f^gamma)

Score-function gradient.  grad mu_g = E_g[R grad log pi] and grad J = E[R grad log pi], so with
c_g = df/dmu_g = df/dx_g * sigmoid'(mu_g) (taken by autograd through the reference f_tau in float64):

    grad J_fr = E[ (1 + alpha * (N / N_g) * c_g) R grad log pi ]
    grad J_fc = E[ (f^gamma + gamma f^(gamma-1) J (N / N_g) c_g) R grad log pi ]

so each sample's reward is multiplied by its group's factor (:func:`fair_rewards`) and every algorithm then
runs on the shaped reward as it runs on R (REINFORCE and off-policy on the sample's reward, PPO on the reward
at the last token, before GAE).  The factor is computed from the batch (plug-in estimates of mu_g and J,
held fixed: no gradient flows through them), so the estimator is consistent, with a bias of order 1/N_g
from estimating mu_g on the same samples; it is unbiased for fixed c_g (docs/pg.md, "Fairness in policy
gradient").  Off-policy samples give importance-weighted group means (``weights``).  f involves only G
numbers, so this is computed with the float64 torch reference, not the fused kernel (which pays off for
batches of thousands of pairs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fairhpc.config import FairnessConfig
from fairhpc.losses import fairness_loss_from_margins

MODES = ("pg", "fr", "fc")


def fairness_of(mu: torch.Tensor, tau: float) -> torch.Tensor:
    """f_tau of x = sigmoid(mu), differentiable in mu (float64): the fr objective with alpha = 1 is
    u - f with u = mean softplus(-mu), so f = u - L_fr."""
    mu = mu.double()
    fr = fairness_loss_from_margins(mu, FairnessConfig(mode="fr", alpha=1.0, tau=tau))
    return F.softplus(-mu).mean() - fr.loss.double()


def group_index(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the distinct group labels, each sample's position among them)."""
    labels, inverse = torch.unique(groups, return_inverse=True)
    return labels, inverse


def group_means(rewards: torch.Tensor, inverse: torch.Tensor, n_groups: int,
                weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean reward per group, samples per group) in float64; ``weights`` (importance weights pi/q of
    off-policy samples) make the means estimates of the policy's expected rewards."""
    r = rewards.double() * (weights.double() if weights is not None else 1.0)
    counts = torch.zeros(n_groups, dtype=torch.float64, device=r.device).index_add_(
        0, inverse, torch.ones_like(r))
    sums = torch.zeros(n_groups, dtype=torch.float64, device=r.device).index_add_(0, inverse, r)
    return sums / counts, counts


def fair_rewards(rewards: torch.Tensor, groups: torch.Tensor, mode: str, alpha: float = 0.0, tau: float = -1.0,
                 gamma: float = 1.0, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """(shaped rewards, statistics) for one step's samples (module docstring).

    rewards [N], groups [N] integer labels; mode pg returns the rewards unchanged.  The statistics: ``f``,
    the group means ``group_reward`` (float64, in label order), their ``worst_group_reward``,
    ``best_group_reward`` and ``group_gap``, the groups ``groups`` and each group's ``factor``."""
    if mode not in MODES:
        raise ValueError(f"objective.mode: {mode!r} is not a policy-gradient mode; allowed: {', '.join(MODES)}")
    if rewards.shape != groups.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and groups {tuple(groups.shape)} must be the same 1-d shape")
    labels, inverse = group_index(groups)
    mu, counts = group_means(rewards.detach(), inverse, len(labels), weights)
    mu_leaf = mu.clone().requires_grad_(True)
    with torch.enable_grad():
        f = fairness_of(mu_leaf, tau)
        (c,) = torch.autograd.grad(f, mu_leaf)
    f = f.detach()
    n = float(rewards.numel())
    if mode == "pg":
        factor = torch.ones_like(mu)
    elif mode == "fr":
        factor = 1.0 + alpha * (n / counts) * c
    else:
        r = rewards.detach().double() * (weights.double() if weights is not None else 1.0)
        j = r.mean()
        factor = f ** gamma + gamma * f ** (gamma - 1.0) * j * (n / counts) * c
    shaped = (rewards.double() * factor[inverse]).to(rewards.dtype)
    stats = {"f": float(f), "group_reward": mu.tolist(), "groups": labels.tolist(), "factor": factor.tolist(),
             "worst_group_reward": float(mu.min()), "best_group_reward": float(mu.max()),
             "group_gap": float(mu.max() - mu.min())}
    return shaped, stats

"""Reward-dropout masks, the off-policy / REINFORCE / PPO losses and GAE against independent computations."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from fairhpc.pg import core


@pytest.mark.parametrize("n", [7, 10, 16, 32, 64])
@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.8, 0.9, 0.95])
def test_random_drops_exactly_round_rate_times_batch_distinct_samples(n, rate):
    n_drop = math.floor(rate * n + 0.5)
    if n_drop >= n:
        with pytest.raises(ValueError, match="every sample"):
            core.dropout_mask(torch.zeros(n), "random", rate)
        return
    seen = set()
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        mask = core.dropout_mask(torch.randn(n), "random", rate, generator=g)
        assert set(mask.tolist()) <= {0.0, 1.0}
        assert int((mask == 0).sum()) == n_drop  # without replacement: exactly n_drop distinct indices
        seen.add(tuple(mask.tolist()))
    if 0 < n_drop < n:
        assert len(seen) > 1  # the dropped set is drawn, not fixed


def test_quantile_keeps_exactly_the_samples_at_or_above_the_quantile_with_ties():
    s = torch.tensor([1.0, 2.0, 2.0, 2.0, 3.0, 0.0, 5.0, 2.0])
    # sorted 0 1 2 2 2 2 3 5; the 0.5-quantile sits at position 3.5, between two 2s -> threshold 2:
    # every tied 2 is kept, so 6 of 8 samples are kept although the rate asks for 4
    assert core.dropout_mask(s, "quantile", 0.5).tolist() == [0, 1, 1, 1, 1, 0, 1, 1]
    # 0.9-quantile at position 6.3: 3 + 0.3 * (5 - 3) = 3.6 -> only the 5 is kept
    assert core.dropout_mask(s, "quantile", 0.9).tolist() == [0, 0, 0, 0, 0, 0, 1, 0]
    t = torch.arange(5.0)
    assert core.dropout_mask(t, "quantile", 0.75).tolist() == [0, 0, 0, 1, 1]  # threshold exactly 3
    assert core.dropout_mask(t, "quantile", 0.0).tolist() == [1, 1, 1, 1, 1]
    ties = torch.full((6,), 0.7)
    assert core.dropout_mask(ties, "quantile", 0.95).tolist() == [1] * 6  # all tied: all kept, never empty


def test_adaptive_drops_below_the_running_mean_of_earlier_batches():
    s = torch.tensor([0.1, 0.5, 0.9, 0.4])
    assert core.dropout_mask(s, "adaptive", 0.9, running_mean=None).tolist() == [1, 1, 1, 1]  # first batch
    assert core.dropout_mask(s, "adaptive", 0.9, running_mean=0.45).tolist() == [0, 1, 1, 0]
    assert core.dropout_mask(s, "adaptive", 0.0, running_mean=0.5).tolist() == [0, 1, 1, 0]  # rate unused


def test_all_dropped_batch_keeps_the_best_or_raises_never_nan():
    s = torch.tensor([0.1, 0.3, 0.3, 0.2])
    mask = core.dropout_mask(s, "adaptive", 0.5, running_mean=0.9)
    assert mask.sum() == 0
    kept, dropped = core.apply_all_dropped(mask, s, "keep_best")
    assert dropped and kept.tolist() == [0, 1, 1, 0]
    with pytest.raises(FloatingPointError, match="dropped every one of the 4 samples"):
        core.apply_all_dropped(mask, s, "error")
    same, dropped = core.apply_all_dropped(torch.tensor([1.0, 0, 0, 0]), s, "error")
    assert not dropped and same.tolist() == [1, 0, 0, 0]


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_rate_outside_unit_interval_and_unknown_kind_are_refused(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        core.dropout_mask(torch.zeros(4), "quantile", bad)
    with pytest.raises(ValueError, match="unknown dropout 'topk'"):
        core.dropout_mask(torch.zeros(4), "topk", 0.5)


def test_offpolicy_update_equals_a_float64_evaluation_of_the_formula():
    R = np.array([0.9, 0.1, 0.5, 0.7, 0.0])
    lp = np.array([-10.0, -12.5, -9.0, -11.0, -14.0])
    lb = np.array([-10.5, -12.0, -9.5, -10.0, -13.0])
    keep = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    clip, scale = 1.2, 2.0
    w = np.minimum(np.exp(lp - lb), clip)
    coef = w * (scale * R - lp) * keep
    expected_loss = np.mean(-lp * coef)
    expected_grad = -coef / len(R)  # d loss / d log pi(y_i): the coefficient is held fixed
    lp_t = torch.tensor(lp, dtype=torch.float32, requires_grad=True)
    loss = core.offpolicy_terms(torch.tensor(R, dtype=torch.float32), lp_t, torch.tensor(lb, dtype=torch.float32),
                                torch.tensor(keep, dtype=torch.float32), clip, scale).mean()
    loss.backward()
    assert float(loss.detach()) == pytest.approx(expected_loss, rel=1e-6)
    np.testing.assert_allclose(lp_t.grad.numpy(), expected_grad, rtol=1e-6)
    # dropout none = the plain update of the formula without the mask
    ones = core.dropout_mask(torch.tensor(R), "none", 0.9)
    plain = np.mean(-lp * w * (scale * R - lp))
    got = core.offpolicy_terms(torch.tensor(R), torch.tensor(lp), torch.tensor(lb), ones, clip, scale).mean()
    assert float(got) == pytest.approx(plain, rel=1e-12)


def _tiny_policy():
    from fairhpc.config import TinyModelConfig
    from fairhpc.models import build_tiny_policy
    from fairhpc.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_tiny_policy(TinyModelConfig(hidden_size=32, num_hidden_layers=1, intermediate_size=64), tok)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, len(tok), (4, 9), generator=g)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :4] = -100  # a 4-token prompt, a 5-token response
    return model, ids, mask, labels


@pytest.mark.parametrize("algo", ["offpolicy", "reinforce"])
def test_a_dropped_sample_contributes_zero_gradient(algo):
    from fairhpc.models import sequence_logps

    model, ids, mask, labels = _tiny_policy()
    R = torch.tensor([0.9, 0.2, 0.6, 0.1])
    keep = torch.tensor([1.0, 0.0, 1.0, 0.0])

    def terms():
        lp = sequence_logps(model, ids, mask, labels)
        if algo == "offpolicy":
            return core.offpolicy_terms(R, lp, lp.detach() - 0.1, keep, clip=2.0)
        return core.reinforce_terms(R, lp, keep, baseline=R.mean())

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    full = grads(terms().sum())
    kept_only = grads(terms()[[0, 2]].sum())
    dropped = grads(terms()[1])
    for a, b, c in zip(full, kept_only, dropped):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        assert torch.count_nonzero(c) == 0
    assert any(torch.count_nonzero(g) for g in full)  # the kept samples do move the model


def test_kl_penalty_is_zero_when_policy_equals_reference():
    from fairhpc.models import sequence_logps

    model, ids, mask, labels = _tiny_policy()
    ref = copy.deepcopy(model)
    lp, lr = sequence_logps(model, ids, mask, labels), sequence_logps(ref, ids, mask, labels)
    R = torch.tensor([0.3, 0.1, 0.8, 0.5])
    assert torch.equal(core.kl_estimate(lp, lr), torch.zeros(4))
    assert torch.equal(core.reinforce_returns(R, lp, lr, kl_coef=0.7), R)
    m = torch.tensor([[1.0, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    tok = torch.randn(4, 3)
    r = core.token_rewards(R, tok, tok.clone(), m, kl_coef=0.5)
    expected = torch.zeros(4, 3)
    expected[0, 2], expected[1, 1], expected[2, 0], expected[3, 2] = R
    assert torch.equal(r, expected)


def test_gae_equals_hand_computed_values():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[0.0, -0.1, 1.0], [0.5, 2.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[0.2, 0.4, 0.6], [0.3, 0.1, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]], dtype=torch.float64)
    adv, ret = core.gae(rewards, values, mask, gamma, lam)
    # row 0: deltas with V after the last token = 0
    d2 = 1.0 - 0.6
    d1 = -0.1 + gamma * 0.6 - 0.4
    d0 = 0.0 + gamma * 0.4 - 0.2
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    # row 1 ends after two tokens
    e1 = 2.0 - 0.1
    e0 = 0.5 + gamma * 0.1 - 0.3
    b1 = e1
    b0 = e0 + gamma * lam * b1
    expected = torch.tensor([[a0, a1, a2], [b0, b1, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, (expected + values) * mask)


def test_ppo_clipped_losses_equal_hand_computed_values():
    eps = 0.2
    lp = torch.log(torch.tensor([[1.5, 0.9, 0.5]], dtype=torch.float64))  # ratios 1.5, 0.9, 0.5 (old = 0)
    old = torch.zeros(1, 3, dtype=torch.float64)
    adv = torch.tensor([[1.0, -2.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.float64)
    terms, clipped = core.ppo_policy_terms(lp, old, adv, mask, eps)
    # -min(r A, clip(r) A): 1.5*1 vs 1.2*1 -> 1.2; 0.9*-2 = -1.8 vs 0.9*-2 -> -1.8; 0.5*-1 vs 0.8*-1 -> -0.8
    torch.testing.assert_close(terms, torch.tensor([[-1.2, 1.8, 0.8]], dtype=torch.float64))
    assert clipped.tolist() == [[1.0, 0.0, 1.0]]
    v = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    v_old = torch.tensor([[0.5, 0.1]], dtype=torch.float64)
    g = torch.tensor([[0.0, 0.2]], dtype=torch.float64)
    vt = core.ppo_value_terms(v, v_old, g, torch.ones(1, 2, dtype=torch.float64), eps)
    # token 0: (1 - 0)^2 vs (0.5 + 0.2 - 0)^2 -> 1.0 -> 0.5; token 1: (0 - .2)^2 = .04 vs (0.1 - 0.1 - 0.2)^2 = .04
    torch.testing.assert_close(vt, torch.tensor([[0.5, 0.02]], dtype=torch.float64))

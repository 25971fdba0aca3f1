"""Fairness in the policy-gradient step (fairhpc/pg/fair.py) checked exactly on a bandit.

A handful of prompts in three groups, four actions each, a softmax policy: every response is listable, so the
group expected rewards mu_g, f_tau(sigmoid(mu)), J_fr = J + alpha f and J_fc = f^gamma J and their gradients are
computed exactly in float64 by autograd.  The score-function estimator with the shaped rewards, averaged over
many batches, must equal that gradient within its standard error (REINFORCE from the policy's own samples,
off-policy from a uniform behaviour with importance weights; PPO's clipped surrogate at ratio 1 gives the same
gradient as REINFORCE on the same batch).  The tests fail if the fairness term is dropped or its sign flips:
the exact fair gradient is many standard errors away from the plain one."""

import json
import math

import pytest
import torch

from fairhpc.pg import core
from fairhpc.pg.fair import fair_rewards, fairness_of

P, A = 6, 4
GROUP = torch.tensor([0, 0, 1, 1, 2, 2])


def bandit(seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(P, A, generator=g, dtype=torch.float64) * 0.7
    reward = 4 * torch.rand(P, A, generator=g, dtype=torch.float64)
    reward[4:] *= 0.1  # group 2 can attain less: its prompts' best responses are worth 0.4 at most
    return theta, reward


def exact(theta, reward, mode, alpha=1.0, tau=-1.0, gamma=0.5, parts=False):
    th = theta.clone().requires_grad_(True)
    pi = torch.softmax(th, -1)
    er = (pi * reward).sum(-1)                              # expected reward of each prompt
    mu = torch.stack([er[GROUP == g].mean() for g in range(3)])
    j = er.mean()
    f = fairness_of(mu, tau)
    obj = {"pg": j, "fr": j + alpha * f, "fc": f ** gamma * j}[mode]
    grad, grad_j = torch.autograd.grad([obj], [th], retain_graph=True)[0], torch.autograd.grad(j, th)[0]
    return (grad, grad_j, float(f.detach())) if parts else grad


def estimate(theta, reward, mode, batches=300, m=256, alpha=1.0, tau=-1.0, gamma=0.5, offpolicy=False, seed=1):
    """Mean and standard error over batches of the estimator (1/N) sum_i w_i R'_i grad log pi(a_i | p_i)."""
    g = torch.Generator().manual_seed(seed)
    pi = torch.softmax(theta, -1)
    beta = torch.full_like(pi, 1.0 / A)
    sampler = beta if offpolicy else pi
    prompts = torch.arange(P).repeat_interleave(m)           # m samples of every prompt: N = P m
    ests = []
    for _ in range(batches):
        acts = torch.multinomial(sampler, m, replacement=True, generator=g).reshape(-1)
        r = reward[prompts, acts]
        w = (pi[prompts, acts] / beta[prompts, acts]) if offpolicy else None
        shaped, _ = fair_rewards(r, GROUP[prompts], mode, alpha=alpha, tau=tau, gamma=gamma, weights=w)
        coef = shaped * (w if w is not None else 1.0) / len(r)
        score = torch.nn.functional.one_hot(acts, A).double() - pi[prompts]     # grad_theta[p] log pi(a | p)
        est = torch.zeros(P, A, dtype=torch.float64).index_add_(0, prompts, coef[:, None] * score)
        ests.append(est)
    ests = torch.stack(ests)
    return ests.mean(0), ests.std(0) / math.sqrt(batches)


@pytest.mark.parametrize("mode", ["fr", "fc"])
@pytest.mark.parametrize("offpolicy", [False, True], ids=["reinforce", "offpolicy"])
def test_estimator_matches_the_exact_fair_gradient(mode, offpolicy):
    theta, reward = bandit()
    want = exact(theta, reward, mode)
    mean, se = estimate(theta, reward, mode, offpolicy=offpolicy)
    z = (mean - want).abs() / se
    assert z.max() < 4.5, (z.max(), mean, want)               # 24 coordinates: within the standard error
    # without the fairness gradient (or with its sign flipped) the estimate would sit far from the fair
    # gradient: fr without it is the plain gradient of J; fc without it is f^gamma grad J
    _, grad_j, f = exact(theta, reward, mode, parts=True)
    dropped = grad_j if mode == "fr" else f ** 0.5 * grad_j
    flipped = 2 * dropped - want
    assert ((dropped - want).abs() / se).max() > 10 and ((flipped - want).abs() / se).max() > 10


def test_the_fair_gradient_favours_the_worst_group():
    """fr's gradient step raises the worst group's expected reward more than the plain gradient step does."""
    theta, reward = bandit()

    def mu_after(grad, lr=0.5):
        pi = torch.softmax(theta + lr * grad / grad.norm(), -1)
        er = (pi * reward).sum(-1)
        return torch.stack([er[GROUP == g].mean() for g in range(3)])

    assert mu_after(exact(theta, reward, "fr", alpha=3.0)).min() > mu_after(exact(theta, reward, "pg")).min()


def test_ppo_surrogate_at_ratio_one_gives_the_reinforce_gradient():
    theta, reward = bandit()
    g = torch.Generator().manual_seed(3)
    prompts = torch.arange(P).repeat_interleave(32)
    acts = torch.multinomial(torch.softmax(theta, -1), 32, replacement=True, generator=g).reshape(-1)
    shaped, _ = fair_rewards(reward[prompts, acts], GROUP[prompts], "fr", alpha=1.0, tau=-1.0)
    grads = []
    for ppo in (False, True):
        th = theta.clone().requires_grad_(True)
        logp = torch.log_softmax(th, -1)[prompts, acts][:, None]     # one token per response
        if ppo:
            terms, _ = core.ppo_policy_terms(logp, logp.detach(), shaped[:, None], torch.ones_like(logp), 0.2)
            loss = terms.mean()
        else:
            loss = -(shaped[:, None] * logp).mean()
        (gr,) = torch.autograd.grad(loss, th)
        grads.append(gr)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-14)


def test_pg_mode_leaves_rewards_alone_and_stats_are_per_group():
    r = torch.tensor([0.1, 0.9, 0.2, 0.4, 0.8, 0.6], dtype=torch.float64)
    grp = torch.tensor([5, 5, 7, 7, 9, 9])
    shaped, s = fair_rewards(r, grp, "pg")
    assert torch.equal(shaped, r) and s["groups"] == [5, 7, 9]
    assert s["group_reward"] == pytest.approx([0.5, 0.3, 0.7]) and s["worst_group_reward"] == pytest.approx(0.3)
    assert s["group_gap"] == pytest.approx(0.4)
    # Jain's index (tau = -1) of x = sigmoid(mu): (sum x)^2 / (n sum x^2), the (sum p^2)^-1 / n of the family
    x = torch.sigmoid(torch.tensor([0.5, 0.3, 0.7], dtype=torch.float64))
    assert s["f"] == pytest.approx(float(x.sum() ** 2 / (3 * (x**2).sum())), rel=1e-9)
    # fr: the worst group's samples get the largest factor (df/dmu is largest where mu is smallest)
    _, s = fair_rewards(r, grp, "fr", alpha=1.0, tau=-1.0)
    assert s["factor"][1] == max(s["factor"]) and min(s["factor"]) > 0
    with pytest.raises(ValueError, match="not a policy-gradient mode"):
        fair_rewards(r, grp, "dpo")


# ------------------------------------------------------------------------------------------ train-pg
@pytest.fixture(scope="module")
def fair_runs(tmp_path_factory):
    from test_pg_train import BASE
    from test_train import run_cli

    root = tmp_path_factory.mktemp("pgfair")
    res = run_cli(["pg-classifier", "--out", str(root / "clf"), "--steps", "150"])
    assert res.returncode == 0, res.stderr[-3000:]
    runs = {}
    common = [f"pg.reward_model={root / 'clf'}", "pg.algo=reinforce", "pg.dropout=none", "train.max_steps=20",
              "train.eval_steps=20", "train.save_steps=0", "pg.samples_per_prompt=2"]
    for name, mode in {"pg": ["objective.mode=pg"],
                       "fr": ["objective.mode=fr", "objective.alpha=1", "objective.tau=-1", "pg.fair_groups=category"],
                       "fc": ["objective.mode=fc", "objective.gamma=2", "objective.tau=-1"]}.items():
        out = root / name
        res = run_cli(["train-pg", "--config", BASE, f"output_dir={out}", *common, *mode])
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
        runs[name] = out
    return runs


@pytest.mark.slow
def test_fair_modes_train_and_report_groups(fair_runs):
    from test_train import final_state, read_metrics

    for name, out in fair_runs.items():
        assert json.loads((out / "summary.json").read_text())["mode"] == name
        trains = [r for r in read_metrics(out) if r["split"] == "train"]
        assert len(trains) == 20
        for r in trains:
            assert 0 < r["f"] <= 1 and r["worst_group_reward"] <= r["reward"] + 1e-6 <= r["best_group_reward"] + 2e-6
            assert r["group_gap"] == pytest.approx(r["best_group_reward"] - r["worst_group_reward"], abs=1e-6)
        ev = [r for r in read_metrics(out) if r["split"] == "eval"][-1]
        assert set(ev["reward_by_category"]) == {"harmless", "helpful", "honest"}
        assert ev["worst_category_reward"] == min(ev["reward_by_category"].values())
    # the same seed: the fairness term is what makes the fair runs' parameters differ from the plain run's
    a, b, c = (final_state(fair_runs[k]) for k in ("pg", "fr", "fc"))
    assert any(not torch.equal(a[k], b[k]) for k in a) and any(not torch.equal(a[k], c[k]) for k in a)
    # the first step's rollout is the same in all three (same policy, same draws): same raw rewards
    first = [next(r for r in read_metrics(fair_runs[k]) if r["split"] == "train") for k in ("pg", "fr", "fc")]
    assert first[0]["reward"] == pytest.approx(first[1]["reward"]) == pytest.approx(first[2]["reward"])


@pytest.mark.parametrize("override, needle", [
    (["objective.mode=fc", "objective.tau=2"], "objective.tau"),
    (["objective.mode=fr", "objective.alpha=-1"], "objective.alpha: must be >= 0"),
    (["objective.mode=fc", "objective.gamma=0"], "objective.gamma: must be > 0"),
    (["objective.mode=dpo"], "objective.mode: mode 'dpo' is not a pg mode"),
    (["pg.fair_groups=tenant"], "pg.fair_groups"),
    (["pg.category_reward_scale=honest=-1"], "pg.category_reward_scale: 'honest=-1' is not CATEGORY=FACTOR"),
    (["pg.category_reward_scale=honest"], "pg.category_reward_scale: 'honest' is not CATEGORY=FACTOR"),
    (["pg.category_reward_scale=honest=0.5,honest=2"], "each category once"),
])
def test_bad_fair_settings_are_refused_before_compute(tmp_path, override, needle):
    from test_pg_train import BASE
    from test_train import run_cli

    out = tmp_path / "o"
    res = run_cli(["train-pg", "--config", BASE, f"output_dir={out}", "pg.reward_model=/nonexistent", *override])
    assert res.returncode == 2 and needle in res.stderr, res.stderr[-1500:]
    assert not (out / "final").exists() and not (out / "metrics.jsonl").exists()


def test_category_groups_need_categories(tmp_path):
    from test_pg_train import BASE
    from test_train import run_cli

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"tell me about item {i}"}) + "\n" for i in range(8)))
    out = tmp_path / "o"
    clf = tmp_path / "clf"
    res = run_cli(["pg-classifier", "--out", str(clf), "--steps", "5"])
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli(["train-pg", "--config", BASE, f"output_dir={out}", f"pg.reward_model={clf}", f"data.train={data}",
                   "data.eval=null", "objective.mode=fr", "objective.alpha=1", "pg.fair_groups=category"])
    assert res.returncode == 2 and "pg.fair_groups: category" in res.stderr and str(data) in res.stderr, \
        res.stderr[-1500:]
    assert not (out / "final").exists() and not (out / "metrics.jsonl").exists()
    # a handicap for a category the data does not have
    res = run_cli(["train-pg", "--config", BASE, f"output_dir={out}", f"pg.reward_model={clf}",
                   "pg.category_reward_scale=honest=0.5,legal=0.3"])
    assert res.returncode == 2 and "pg.category_reward_scale: legal not among the categories" in res.stderr, \
        res.stderr[-1500:]
    assert not (out / "final").exists()


def test_category_reward_scale_parses():
    from fairhpc.config import parse_category_scale

    assert parse_category_scale("") == {} and parse_category_scale("honest=0.3, helpful=2") == {
        "honest": 0.3, "helpful": 2.0}


@pytest.mark.slow
def test_pg_report_adds_the_worst_group_axis(fair_runs, tmp_path):
    from PIL import Image
    from test_train import run_cli

    out = tmp_path / "report"
    res = run_cli(["pg-report", "--runs", *map(str, fair_runs.values()), "--out", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads((out / "pareto.json").read_text())
    worst = {}
    for name, run in fair_runs.items():
        ev = json.loads((run / "summary.json").read_text())["eval"]
        worst[name] = (ev["reward_mean"], ev["worst_category_reward"])
    on = {n for n, (x, y) in worst.items()
          if not any(a >= x and b >= y and (a > x or b > y) for m, (a, b) in worst.items() if m != n)}
    assert {p["point"] for p in got["points"] if p["on_worst_group_front"]} == on
    assert {p["point"]: p["mode"] for p in got["points"]} == {"pg": "pg", "fr": "fr", "fc": "fc"}
    header = (out / "pg_results.csv").read_text().splitlines()[0].split(",")
    assert "worst_category_reward" in header and "mode" in header
    w, h = Image.open(out / "pareto.png").size
    assert w > 1.6 * h  # two panels side by side

"""Online iterative DPO / RAFT (fairhpc/online/): pair selection and the margin filter on hand-made scores,
the pair-pm tournament on a transitive hand-made preference, the loop's plan (reference choice, bad configs
refused before compute), the stages on real tiny models, and the workflow end to end with a kill in
iteration 2 (tests of the whole loop are marked slow)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import yaml

from fairhpc.online.select import pick, select_pairs, tournament, tournament_comparisons
from tests.test_train import REPO, run_cli

DEMO = REPO / "configs" / "workflows" / "online_dpo.yaml"


# ------------------------------------------------------------------------------------ pair selection
def test_best_worst_takes_the_first_of_tied_maxima_and_minima():
    pairs, skipped, _ties = pick([0.5, 2.0, -1.0, 2.0, -1.0], "best_worst")
    assert (pairs, skipped) == ([(1, 2, 3.0)], None)


def test_all_equal_rewards_skip_the_prompt_and_are_counted():
    pairs, counts = select_pairs([[1.0, 1.0, 1.0], [0.0, 3.0, 1.0], [-2.0, -2.0]], "best_worst")
    assert pairs == [(1, 1, 0, 3.0)]
    assert counts["skipped_all_equal"] == 2 and counts["prompts"] == 3 and counts["prompts_with_pairs"] == 1


def test_best_random_never_pairs_the_best_with_a_response_rewarded_as_well():
    seen = set()
    for pid in range(200):
        (c, j, g), = pick([3.0, 3.0, 1.0, 0.0], "best_random", seed=7, prompt_id=pid)[0]
        assert c == 0 and j in (2, 3) and g == 3.0 - [3.0, 3.0, 1.0, 0.0][j]
        seen.add(j)
    assert seen == {2, 3}  # both partners below the best are drawn
    # seeded: the same prompt draws the same partner
    assert pick([3.0, 1.0, 0.0, 2.0], "best_random", 1, 5) == pick([3.0, 1.0, 0.0, 2.0], "best_random", 1, 5)


def test_all_pairs_top_pairs_the_best_with_every_lower_response_and_counts_ties():
    pairs, _skipped, ties = pick([1.0, 4.0, 4.0, 0.0], "all_pairs_top")
    assert pairs == [(1, 0, 3.0), (1, 3, 4.0)] and ties == 1


def test_margin_filter_drops_small_gaps_and_counts_prompts_left_without_pairs():
    rewards = [[0.0, 0.4], [0.0, 2.0, 0.1], [5.0, 4.9, 4.95]]
    pairs, counts = select_pairs(rewards, "all_pairs_top", margin=0.5)
    assert pairs == [(1, 1, 0, 2.0), (1, 1, 2, 1.9)]
    assert counts["skipped_margin"] == 2 and counts["pairs_below_margin"] == 3
    # a gap exactly at the threshold is kept
    assert select_pairs([[0.0, 0.5]], "best_worst", margin=0.5)[1]["pairs"] == 1
    with pytest.raises(ValueError, match="margin"):
        select_pairs(rewards, "best_worst", margin=-1)


def test_a_prompt_needs_two_finite_rewards():
    with pytest.raises(ValueError, match="at least 2"):
        pick([1.0], "best_worst")
    with pytest.raises(ValueError, match="finite"):
        pick([1.0, math.nan], "best_worst")


# ------------------------------------------------------------------------------------ tournament
@pytest.mark.parametrize("k", [2, 3, 4, 5, 7, 8, 16])
def test_tournament_finds_the_true_best_and_worst_of_a_transitive_preference(k):
    rng = np.random.default_rng(k)
    utilities = [rng.permutation(k) * 1.0 for _ in range(25)]
    calls = []

    def compare(batch):
        calls.append(len(batch))
        return [utilities[p][i] - utilities[p][j] for p, i, j in batch]

    ends, made = tournament([k] * 25, compare)
    assert ends == [(int(np.argmax(u)), int(np.argmin(u))) for u in utilities]
    assert made == [tournament_comparisons(k)] * 25 == [math.ceil(3 * k / 2) - 2] * 25
    # every round of all prompts is one batched call: a first round, then log2 rounds of the knockouts
    assert len(calls) == 1 + math.ceil(math.log2(math.ceil(k / 2))) if k > 2 else len(calls) == 1


def test_tournament_handles_prompts_of_different_sizes_and_ties():
    utilities = [[0.0, 0.0, 0.0], [1.0, 5.0, 2.0, 0.0, 4.0]]
    ends, made = tournament([3, 5], lambda b: [utilities[p][i] - utilities[p][j] for p, i, j in b])
    assert ends[1] == (1, 3) and made == [3, 6]
    # all tied: a log-odds of 0 is a win of the earlier candidate, so the first is best and the last worst
    assert ends[0] == (0, 2)


# ------------------------------------------------------------------------------------ the plan
def _loop(**change) -> dict:
    cfg = yaml.safe_load(DEMO.read_text())
    loop = cfg["online"][0]
    for k, v in change.items():
        node = loop
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return cfg


def _plan(cfg):
    from fairhpc import workflow as wf
    from fairhpc.gridplan import workflow_config
    from fairhpc.online.plan import OnlinePlan

    full = workflow_config([])
    full.update(cfg)
    return OnlinePlan(full, REPO, wf.plan(full, REPO))


def test_plan_expands_points_iterations_and_the_reference_choice():
    plan = _plan(_loop())
    lp = plan.loop("online-dpo")
    assert [p.point for p in lp["points"]] == ["dpo_seed0", "dpo_seed1", "fr_alpha0.1_tau-1_seed0",
                                               "fr_alpha0.1_tau-1_seed1", "fc_gamma0.5_tau-1_seed0",
                                               "fc_gamma0.5_tau-1_seed1"]
    init = lp["policy"]
    cmd1 = plan.train_command("online-dpo", "fr_alpha0.1_tau-1_seed0", 1)
    cmd3 = plan.train_command("online-dpo", "fr_alpha0.1_tau-1_seed0", 3)
    prev = "results/online_demo/online/online-dpo/fr_alpha0.1_tau-1_seed0/iter2/train/final"
    assert f"model.name_or_path={init}" in cmd1 and f"model.ref_name_or_path={init}" in cmd1
    assert f"model.name_or_path={prev}" in cmd3 and f"model.ref_name_or_path={prev}" in cmd3
    assert "objective.alpha=0.1" in cmd3 and "objective.mode=fr" in cmd3 and cmd3[0] == "train-dpo"
    initial = _plan(_loop(reference="initial")).train_command("online-dpo", "fr_alpha0.1_tau-1_seed0", 3)
    assert f"model.name_or_path={prev}" in initial and f"model.ref_name_or_path={init}" in initial
    # iteration i waits for i-1's training; iteration 1 for the runs that make the models and the prompts
    assert plan.generate_inputs("online-dpo", "dpo_seed0", 2) == [
        "results/online_demo/online/online-dpo/dpo_seed0/iter1/train/summary.json"]
    assert "results/online_demo/runs/rm/tiny/synthetic/bt_seed0/summary.json" in plan.generate_inputs(
        "online-dpo", "dpo_seed0", 1)
    # seeds differ per iteration and point
    seeds = {a[a.index("--seed") + 1] for p in lp["points"] for i in (1, 2, 3)
             for a in [plan.generate_args("online-dpo", p.point, i)]}
    assert len(seeds) == 6  # 2 seeds x 3 iterations (the objective does not change the samples' seed)


def test_raft_trains_by_sft_on_the_best_responses():
    plan = _plan(_loop(algo="raft", modes={"sft": {}}, base_config="configs/runs/online_raft_sft_tiny.yaml"))
    cmd = plan.train_command("online-dpo", "sft_seed0", 2)
    assert cmd[0] == "train-sft" and any(a.endswith("iter2/sft.jsonl") for a in cmd)
    assert not any(a.startswith("model.ref_name_or_path") for a in cmd)


@pytest.mark.parametrize("change, needles", [
    ({"generate.k": 1}, ["generate.k", "K >= 2"]),
    ({"iterations": 0}, ["iterations", "N >= 1"]),
    ({"generate.temperature": 0}, ["generate.temperature"]),
    ({"generate.top_p": 1.5}, ["generate.top_p"]),
    ({"pairs.margin": -0.1}, ["pairs.margin"]),
    ({"modes": {"sft": {}}}, ["modes.sft", "algo dpo"]),
    ({"algo": "raft", "modes": {"sft": {}}, "reference": "initial"}, ["reference", "raft"]),
    ({"base_config": "configs/runs/nope.yaml"}, ["base_config", "nope.yaml"]),
    ({"overrides": {"train.lr": -1}}, ["train.lr"]),
])
def test_bad_loop_settings_are_refused_naming_the_key(change, needles):
    from fairhpc import workflow as wf

    with pytest.raises(wf.WorkflowConfigError) as e:
        _plan(_loop(**change))
    for n in needles:
        assert n in str(e.value), str(e.value)


# ------------------------------------------------------------------------------------ tiny models
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Synthetic data, a tiny reward model and a tiny SFT policy, made by the project's own commands."""
    root = tmp_path_factory.mktemp("online")
    for args in (["make-data", "--out", str(root / "data"), "data.synthetic.n_train=256",
                  "data.synthetic.n_eval=32"],
                 ["train-rm", "--config", str(REPO / "configs/runs/rm_tiny.yaml"), f"output_dir={root / 'rm'}",
                  f"data.train={root / 'data/train.jsonl'}", f"data.eval={root / 'data/eval.jsonl'}",
                  "train.epochs=3", "train.save_steps=0"],
                 ["train-sft", "--config", str(REPO / "configs/runs/online_sft_tiny.yaml"),
                  f"output_dir={root / 'sft'}", f"data.train={root / 'data/train.jsonl'}", "data.eval=null"]):
        res = run_cli(args)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return root


def test_a_policy_as_reward_model_and_k_below_two_are_refused_before_compute(models, tmp_path):
    res = run_cli(["online-score", "--samples", str(tmp_path / "none.jsonl"), "--reward-model",
                   str(models / "sft/final"), "--out", str(tmp_path / "s.jsonl")])
    assert res.returncode == 2 and "a policy" in res.stderr and "--reward-model" in res.stderr, res.stderr
    res = run_cli(["online-generate", "--policy", str(models / "sft/final"), "--prompts",
                   str(models / "data/train.jsonl"), "--iteration", "1", "--iterations", "2", "--k", "1",
                   "--out", str(tmp_path / "x.jsonl")])
    assert res.returncode == 2 and "--k 1" in res.stderr, res.stderr
    res = run_cli(["online-generate", "--policy", str(models / "rm/final"), "--prompts",
                   str(models / "data/train.jsonl"), "--iteration", "1", "--iterations", "2",
                   "--out", str(tmp_path / "x.jsonl")])
    assert res.returncode == 2 and "not a policy" in res.stderr, res.stderr
    assert not any(tmp_path.iterdir())


def test_one_iteration_of_stages_improves_the_judges_heldout_reward(models, tmp_path):
    """generate -> score -> pairs -> DPO -> eval, each through its command, on real tiny models."""
    it = tmp_path / "iter1"
    data, rm, sft = models / "data", str(models / "rm/final"), str(models / "sft/final")
    steps = [
        ["online-generate", "--policy", sft, "--prompts", str(data / "train.jsonl"), "--iteration", "1",
         "--iterations", "2", "--k", "4", "--max-new-tokens", "16", "--batch-size", "32", "--seed", "3",
         "--out", str(it / "samples.jsonl")],
        ["online-score", "--samples", str(it / "samples.jsonl"), "--reward-model", rm, "--out",
         str(it / "scores.jsonl")],
        ["online-pairs", "--scores", str(it / "scores.jsonl"), "--out", str(it)],
        ["online-eval", "--policy", sft, "--reward-model", rm, "--prompts", str(data / "eval.jsonl"),
         "--max-new-tokens", "16", "--samples", "4", "--out", str(tmp_path / "initial")],
        ["train-dpo", "--config", str(REPO / "configs/runs/online_dpo_tiny.yaml"), f"model.name_or_path={sft}",
         f"model.ref_name_or_path={sft}", f"data.train={it / 'pairs.jsonl'}", f"output_dir={it / 'train'}"],
        ["online-eval", "--policy", str(it / "train/final"), "--reward-model", rm, "--prompts",
         str(data / "eval.jsonl"), "--max-new-tokens", "16", "--samples", "4", "--baseline",
         str(tmp_path / "initial"), "--out", str(it / "eval")],
    ]
    for args in steps:
        res = run_cli(args)
        assert res.returncode == 0, (args[0], res.stdout[-2000:], res.stderr[-3000:])
    samples = [json.loads(x) for x in (it / "samples.jsonl").read_text().splitlines()]
    from fairhpc.evaluation.policy import load_prompts

    assert len(samples) == len(load_prompts(str(data / "train.jsonl"))[0]) // 2  # iteration 1's half
    assert all(len(s["responses"]) == 4 for s in samples)
    scores = [json.loads(x) for x in (it / "scores.jsonl").read_text().splitlines()]
    stats = json.loads((it / "pairs_stats.json").read_text())
    pairs = [json.loads(x) for x in (it / "pairs.jsonl").read_text().splitlines()]
    assert stats["pairs"] == len(pairs) == stats["prompts_with_pairs"] > 0
    by_id = {s["prompt_id"]: s for s in scores}
    for p in pairs:  # the chosen response is the best-rewarded sample, the rejected one the worst
        s = by_id[p["prompt_id"]]
        r = [x if y.strip() else math.nan for x, y in zip(s["rewards"], s["responses"])]
        assert p["chosen"][0]["content"] == s["responses"][int(np.nanargmax(r))]
        assert p["rejected"][0]["content"] == s["responses"][int(np.nanargmin(r))]
        assert p["margin"] == pytest.approx(np.nanmax(r) - np.nanmin(r))
    ev = json.loads((it / "eval/summary.json").read_text())
    assert ev["reward_gain"] > 0.2 and ev["win_rate"] > 0.6 and ev["improved"], ev
    assert set(ev["reward_by_category"]) == {"helpful", "honest", "harmless"} and 0 < ev["f_category"] <= 1


# ------------------------------------------------------------------------------------ the workflow
def _workflow_config(models, path):
    """A loop of 2 iterations on the fixture's models (no grid: the loop starts from models on disk)."""
    loop = {"name": "loop", "algo": "dpo", "policy": str(models / "sft/final"), "reward_model": str(models / "rm/final"),
            "prompts": {"train": str(models / "data/train.jsonl"), "eval": str(models / "data/eval.jsonl")},
            "base_config": "configs/runs/online_dpo_tiny.yaml", "iterations": 2, "prompts_per_iteration": 32,
            "eval_prompts": 16, "seeds": [0], "modes": {"fr": {"alpha": [0.1], "tau": [-1]}},
            "generate": {"k": 4, "max_new_tokens": 12, "batch_size": 32},
            "eval": {"samples": 2, "max_new_tokens": 12, "batch_size": 32}}
    path.write_text(yaml.safe_dump({"grids": [], "online": [loop]}, sort_keys=False))
    return path


def _smk(*args, wd, timeout=900, popen=False):
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"
    cmd = ["timeout", str(timeout), sys.executable, "-m", "snakemake", "--cores", "1", "-d", str(wd), *args]
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res.stdout + res.stderr


@pytest.mark.slow
def test_workflow_killed_in_iteration_two_reruns_nothing_of_iteration_one(models, tmp_path):
    """The loop through Snakemake, killed (SIGKILL to the whole process group) once iteration 2 is under way,
    then started again with --rerun-incomplete: no job of iteration 1 runs again, and the final policy and
    its evaluation equal those of an uninterrupted run."""
    import os
    import signal
    import time

    import torch
    from safetensors.torch import load_file

    cfg = _workflow_config(models, tmp_path / "loop.yaml")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    point = "results/online/loop/fr_alpha0.1_tau-1_seed0"
    proc = _smk("--configfile", str(cfg), wd=killed, popen=True)
    started = killed / point / "iter2" / "samples.jsonl"
    t0 = time.time()
    while not started.exists():
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.time() - t0 < 600, "iteration 2 never started"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / point / "iter2" / "eval" / "summary.json").exists()  # killed before iteration 2 ended
    first = {p: p.stat().st_mtime_ns for p in (killed / point / "iter1").rglob("*") if p.is_file()}
    first |= {p: p.stat().st_mtime_ns for p in (killed / "results/online/loop/initial_eval").rglob("*")}
    assert killed / point / "iter1/train/final/model.safetensors" in first

    _smk("--unlock", "--configfile", str(cfg), wd=killed)
    out = _smk("--configfile", str(cfg), "--rerun-incomplete", wd=killed)
    reran = re.findall(r"wildcards: .*iter=(\d+)", out)
    assert reran and set(reran) == {"2"}, out[-3000:]  # only iteration 2's jobs ran again
    assert "rule online_initial_eval" not in out
    assert {p: p.stat().st_mtime_ns for p in first} == first  # nothing of iteration 1 was rewritten

    _smk("--configfile", str(cfg), wd=clean)
    a = load_file(str(killed / point / "iter2/train/final/model.safetensors"))
    b = load_file(str(clean / point / "iter2/train/final/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    ea, eb = (json.loads((d / point / "iter2/eval/summary.json").read_text()) for d in (killed, clean))
    assert ea["reward_mean"] == eb["reward_mean"] and ea["win_rate"] == eb["win_rate"]
    report = (killed / "results/reports/online/loop/online_results.md").read_text()
    assert "fr" in report and (killed / "results/reports/online/loop/online.png").stat().st_size > 1000

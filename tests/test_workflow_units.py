"""The workflow's logic (fairhpc/workflow.py) called directly: the schema, the grid expansion of every config,
refused settings, run names, resources per attempt, launchers, job commands and targets.  No Snakemake run:
tests/test_workflow.py checks that the rules use these functions (`snakemake -n` of each config)."""

import copy
import shlex
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config  # how Snakemake lays --configfile over config.yaml

from fairhpc import layout, registry
from fairhpc import workflow as wf

REPO = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())
GRID_CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs" / "grids").glob("*.yaml"))
# the neighbouring systems' and studies' workflow configs (their own tests count their jobs)
WORKFLOW_CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs" / "workflows").glob("*.yaml"))


def config_of(*overlays: dict) -> dict:
    """config.yaml with each overlay merged over it, as Snakemake merges --configfile / --config."""
    cfg = copy.deepcopy(DEFAULT)
    for o in overlays:
        update_config(cfg, copy.deepcopy(o))
    return cfg


def plan_of(*overlays: dict) -> wf.Plan:
    return wf.plan(config_of(*overlays), REPO)


def load(path: str) -> dict:
    return yaml.safe_load((REPO / path).read_text())


def points(*parts) -> set[str]:
    return {f"{p}_seed{s}" for p, s in parts}


RM_MODES = ("bt", "fr_alpha0.1_tau-1", "fr_alpha1_tau-1", "fc_gamma0.5_tau-1", "fc_gamma2_tau-1")
DPO_MODES = ("dpo", "fr_alpha0.1_tau-1", "fc_gamma0.5_tau-1", "fc_gamma0.5_tau0.5")
ABLATION = ("fr_alpha0.1_tau-5", "fr_alpha0.1_tau-1", "fr_alpha0.1_tau0.5", "fr_alpha0.1_tau2", "fr_alpha0.1_tau10",
            "fc_gamma0.5_tau-5", "fc_gamma0.5_tau-1", "fc_gamma0.5_tau0.5")
PAPER_MAIN = ("bt", "fr_alpha0.1_tau-1", "fc_gamma0.5_tau-1")
PAPER_DPO = ("dpo", "fr_alpha0.1_tau-1", "fc_gamma0.5_tau-1")
# every workflow config of the project -> {grid: {(task, model, dataset): points}}, counted by hand
EXPECTED = {
    "config.yaml": {
        "rm": {("rm", "tiny", "synthetic"): points(*((m, s) for m in RM_MODES for s in (0, 1)))},
        "dpo": {("dpo", "tiny", "synthetic"): points(*((m, s) for m in DPO_MODES for s in (0, 1)))},
    },
    "configs/grids/rm.yaml": {
        "rm-main": {("rm", m, "hh-rlhf"): points(*((p, 0) for p in PAPER_MAIN)) for m in ("llama3-sft", "qwen2.5-sft")},
        "rm-tau-ablation": {("rm", "llama3-sft", "hh-rlhf"): points(*((p, 0) for p in ABLATION))},
    },
    "configs/grids/dpo.yaml": {
        f"dpo-{m.removesuffix('-sft')}": {("dpo", m, "ultrafeedback-shp"): points(*((p, 0) for p in PAPER_DPO))}
        for m in ("llama3-sft", "qwen2.5-sft")
    },
}


def test_every_workflow_config_has_its_expected_grid():
    assert sorted(EXPECTED) == sorted(["config.yaml", *GRID_CONFIGS])


@pytest.mark.parametrize("path", sorted(EXPECTED))
def test_grid_expansion_of_every_config(path):
    plan = plan_of() if path == "config.yaml" else plan_of(load(path))
    expected = EXPECTED[path]
    assert set(plan.grids) == set(expected)
    for grid, studies in expected.items():
        got = {}
        for key in plan.grids[grid]:
            task, model, dataset, point = key
            got.setdefault((task, model, dataset), set()).add(point)
        assert got == studies, grid
        assert len(plan.grids[grid]) == sum(map(len, studies.values()))  # no point listed twice in a grid
    # a point in two grids is one run: the paper's ablation shares fr/fc at tau -1 with the main grid
    assert len(plan.runs) == len({k for keys in plan.grids.values() for k in keys})
    for key, run in plan.runs.items():
        task, model, dataset, point = key
        assert run.dir == f"{plan.results}/runs/{task}/{model}/{dataset}/{point}"
        over = dict(o.split("=", 1) for o in run.overrides)
        assert over["output_dir"] == run.dir and over["seed"] == point.rsplit("seed", 1)[1]
        assert over["objective.mode"] == point.split("_")[0]
        assert (REPO / run.base_config).is_file()


def test_paper_rm_grid_runs_are_counted_once():
    plan = plan_of(load("configs/grids/rm.yaml"))
    # main: 2 bases x (bt, fr, fc) = 6; ablation: fr x 5 taus + fc x 3 taus = 8, of which 2 are main runs
    assert len(plan.runs) == 12
    assert plan.results == "results/paper"


@pytest.mark.parametrize("path", WORKFLOW_CONFIGS)
def test_every_workflow_config_of_the_systems_expands(path):
    """Each grid of a system's workflow config expands into runs of its task, with a base config that exists."""
    plan = plan_of(load(path))
    grids = {g["name"]: g for g in load(path)["grids"]}
    assert set(plan.grids) == set(grids) and plan.runs
    for name, keys in plan.grids.items():
        assert keys, name
        for key in keys:
            assert key[0] == grids[name]["task"] and (REPO / plan.runs[key].base_config).is_file()


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs" / "runs").glob("*.yaml")))
def test_every_run_config_is_the_base_of_a_grid(path):
    """Each run config is the base of a grid or of an online loop (configs/runs/ holds no orphan)."""
    cfgs = [DEFAULT if p == "config.yaml" else load(p) for p in [*EXPECTED, *WORKFLOW_CONFIGS]]
    used = {g["base_config"] for c in cfgs for g in [*c["grids"], *(c.get("online") or [])]}
    assert path in used


def test_utility_modes_take_no_fairness_hyperparameters():
    grid = {"modes": {"bt": None, "fr": {"alpha": [0.1, 1], "tau": [-1, 0.5]}, "fc": {"gamma": [2], "tau": [0]}}}
    got = [(m, p) for m, p in wf.grid_points(grid)]
    assert got == [("bt", {}), ("fr", {"alpha": 0.1, "tau": -1}), ("fr", {"alpha": 0.1, "tau": 0.5}),
                   ("fr", {"alpha": 1, "tau": -1}), ("fr", {"alpha": 1, "tau": 0.5}), ("fc", {"gamma": 2, "tau": 0})]


@pytest.mark.parametrize("mode,params,seed,name", [
    ("bt", {}, 3, "bt_seed3"),
    ("fr", {"alpha": 0.1, "tau": -1.0}, 0, "fr_alpha0.1_tau-1_seed0"),
    ("fc", {"gamma": 1e-5, "tau": 0.5}, 1, "fc_gamma1e-05_tau0.5_seed1"),
    ("fr", {"alpha": 10, "tau": 2}, 0, "fr_alpha10_tau2_seed0"),
])
def test_point_names(mode, params, seed, name):
    assert wf.point_name(mode, params, seed) == name


def test_overrides_round_trip_as_yaml_scalars():
    over = {"train.lr": 1e-5, "data.eval": None, "model.gradient_checkpointing": True, "data.train": "a b.jsonl",
            "seed": 3}
    got = wf.overrides_list(over)
    assert got == ["train.lr=1.0e-05", "data.eval=null", "model.gradient_checkpointing=true",
                   "data.train=a b.jsonl", "seed=3"]
    assert {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in got)} == over


# ------------------------------------------------------------------------------------------ refused
def grid(**change) -> dict:
    g = {"name": "g", "task": "rm", "base_config": "configs/runs/rm_tiny.yaml", "models": ["tiny"],
         "datasets": ["synthetic"], "seeds": [0], "modes": {"bt": {}}}
    return {"grids": [{**g, **change}]}


DPO_EVAL = {"reward_model": "{results}/runs/rm/tiny/synthetic/bt_seed0/final",
            "reference": "{results}/runs/dpo/tiny/synthetic/dpo_seed0/final"}
BENCH = {"name": "b", "benchmark": "bbq", "data": ["bbq.jsonl"]}
BAD = [
    # (overlay on config.yaml, texts the error must contain: the key, the value, why)
    (grid(modes={"fc": {"gamma": [0.5], "tau": [-1, 2]}}), ["grids[0] (g).modes.fc", "tau = 2", "tau < 1"]),
    (grid(modes={"fr": {"alpha": [0.1], "tau": [1]}}), ["grids[0] (g).modes.fr", "tau = 1", "switches fairness off"]),
    (grid(modes={"dpo": {}}), ["grids[0].modes", "'dpo' is not one of ['bt', 'fr', 'fc']"]),
    (grid(modes={"fr": {"alpha": ["high"], "tau": [-1]}}), ["grids[0].modes.fr.alpha[0]", "'high' is not of type"]),
    (grid(task="ppo"), ["grids[0].task", "'ppo' is not one of ['rm', 'dpo'"]),
    (grid(sweep={"seed": [1, 2]}), ["grids[0].sweep", "'seed' does not match"]),
    (grid(sweep={"objective.alpha": [1]}), ["grids[0] (g)", "objective.alpha is set by the grid itself"]),
    (grid(sweep={"train.lr": []}), ["grids[0].sweep.train.lr", "should be non-empty"]),
    (grid(sweep={"train.lr": [-1.0]}), ["point bt_lr-1_seed0", "train.lr: must be"]),
    (grid(sweep={"train.lr": [1e-4]}, inputs={"train.lr": "{results}/x"}), ["grids[0] (g)", "both in sweep and in inputs"]),
    ({"datasets": {"made": {"train": "data/{results}/x.jsonl"}}, **grid(datasets=["made"])},
     ["datasets.made.train", "{results} may only start the path"]),
    (grid(models=["huge"]), ["grids[0] (g).models", "'huge' is not defined under models", "tiny"]),
    (grid(seeds=[-1]), ["grids[0].seeds[0]", "-1 is less than the minimum of 0"]),
    (grid(base_config="configs/runs/nope.yaml"), ["grids[0] (g).base_config", "configs/runs/nope.yaml"]),
    (grid(overrides={"train.zero_stage": 4}), ["point bt_seed0", "train.zero_stage: 4 is not allowed"]),
    (grid(resources={"train": {"launcher": "mpirun"}}), ["grids[0].resources.train.launcher", "'mpirun'"]),
    (grid(resources={"train": {"gpus": 8, "tasks_per_node": 4, "launcher": "srun"}}),
     ["grids[0] (g).resources.train", "tasks_per_node = 4 but gpus = 8"]),
    (grid(resources={"eval": {"tasks_per_node": 1, "launcher": "srun"}}),
     ["grids[0] (g).resources.eval.tasks_per_node", "tasks_per_node >= 2"]),
    (grid(resources={"train": {"nodes": 2}}), ["grids[0] (g).resources.train", "launcher 'local' runs one process"]),
    # bias benchmarks score reward models: refused in DPO grids (they used to fail with MissingInputException)
    (grid(task="dpo", modes={"dpo": {}}, base_config="configs/runs/dpo_tiny.yaml",
          eval={**DPO_EVAL, "benchmarks": [{**BENCH, "benchmark": "rewardbench"}]}),
     ["grids[0] (g).eval.benchmarks[0].benchmark", "'rewardbench' in a dpo grid", "score reward models"]),
    (grid(task="dpo", modes={"dpo": {}}, base_config="configs/runs/dpo_tiny.yaml",
          eval={**DPO_EVAL, "benchmarks": [BENCH]}),
     ["grids[0] (g).eval.benchmarks[0].benchmark", "'bbq' in a dpo grid", "score reward models"]),
    (grid(eval={"benchmarks": [BENCH]}), ["grids[0] (g).eval.benchmarks[0].benchmark", "'bbq' judges a policy"]),
    (grid(eval={"benchmarks": [{**BENCH, "benchmark": "crows_pairs"}] * 2}),
     ["grids[0] (g).eval.benchmarks", "names must differ"]),
    (grid(task="dpo", modes={"dpo": {}}, base_config="configs/runs/dpo_tiny.yaml",
          eval={"reference": DPO_EVAL["reference"]}), ["grids[0] (g).eval", "set eval.reward_model"]),
    (grid(eval={"reference": "x"}), ["grids[0] (g).eval", "reward_model / reference are for policy grids"]),
    ({"grids": [grid()["grids"][0], grid()["grids"][0]]}, ["grids[1] (g).name", "'g' is used by two grids"]),
    ({"grids": [grid()["grids"][0], {**grid()["grids"][0], "name": "h", "overrides": {"train.lr": 0.5}}]},
     ["grids[1] (h): run results/runs/rm/tiny/synthetic/bt_seed0", "also a point of grid 'g'"]),
    ({"datasets": {"both": {"make": {}, "train": "x.jsonl"}}, **grid(datasets=["both"])},
     ["datasets.both", "exactly one of `make`", "got make, train"]),
    ({"retry_growth": {"runtime": 0.5}}, ["retry_growth.runtime", "0.5 is less than the minimum of 1"]),
    ({"resultz": "out"}, ["Additional properties are not allowed ('resultz' was unexpected)"]),
]


@pytest.mark.parametrize("overlay,needles", BAD, ids=[n[-1][:40] for _, n in BAD])
def test_bad_config_is_refused_naming_key_and_value(overlay, needles):
    with pytest.raises(wf.WorkflowConfigError) as e:
        plan_of(overlay)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_schema_enums_are_the_registry():
    from fairhpc.evaluation import BENCHMARKS

    schema = wf.load_schema(REPO)
    g = schema["$defs"]["grid"]
    assert tuple(g["properties"]["task"]["enum"]) == registry.TASKS
    assert set(g["properties"]["modes"]["properties"]) == set(registry.ALL_MODES) == set(wf.MODE_PARAMS)
    per_task = {rule["if"]["properties"]["task"]["const"]: rule["then"]["properties"]["modes"]["propertyNames"]["enum"]
                for rule in g["allOf"]}
    assert {t: tuple(m) for t, m in per_task.items()} == registry.MODES
    utility = {m for m, s in g["properties"]["modes"]["properties"].items() if s["$ref"].endswith("mode_utility")}
    assert utility == set(registry.UTILITY_MODES)
    part = schema["$defs"]["parts"]["items"]["properties"]
    assert tuple(part["format"]["enum"]) == registry.DATA_FORMATS
    bench = schema["$defs"]["eval"]["properties"]["benchmarks"]["items"]["properties"]["benchmark"]["enum"]
    assert tuple(bench) == BENCHMARKS and wf.POLICY_BENCHMARKS <= set(BENCHMARKS)


def test_schema_defaults_are_filled_in_without_sharing():
    cfg = config_of(grid(), {"grids": [grid()["grids"][0], {**grid()["grids"][0], "name": "h"}]})
    wf.check_schema(cfg, REPO)
    a, b = cfg["grids"]
    assert a["resources"]["train"] == {"gpus": 0, "cpus": 1, "mem_mb": 4000, "runtime": 60, "nodes": 1,
                                       "tasks_per_node": 1, "launcher": "local", "signal_grace_s": 0,
                                       "slurm_extra": ""}
    assert a["eval"] == {"enabled": True, "args": "", "benchmarks": []} and cfg["bench"] is False
    a["resources"]["train"]["gpus"] = 8
    assert b["resources"]["train"]["gpus"] == 0


# ------------------------------------------------------------------------------------------ resources
CPU = {"gpus": 0, "cpus": 1, "mem_mb": 3000, "runtime": 20, "nodes": 1, "tasks_per_node": 1, "launcher": "local",
       "signal_grace_s": 0, "slurm_extra": ""}
GPU8 = {"gpus": 8, "cpus": 8, "mem_mb": 500000, "runtime": 1440, "nodes": 2, "tasks_per_node": 8,
        "launcher": "srun", "signal_grace_s": 600, "slurm_extra": "--exclusive"}


def test_resources_grow_per_attempt():
    growth = {"runtime": 2.0, "mem_mb": 1.5}
    got = [wf.job_resources(CPU, a, growth) for a in (1, 2, 3)]
    assert [(r["runtime"], r["mem_mb"], r["attempt"]) for r in got] == [(20, 3000, 1), (40, 4500, 2), (80, 6750, 3)]
    # rounded up, never below what was asked
    assert wf.job_resources({**CPU, "mem_mb": 1001, "runtime": 7}, 2, {"runtime": 1.1, "mem_mb": 1.5})[
        "runtime"] == 8
    assert wf.job_resources({**CPU, "mem_mb": 1001}, 2, growth)["mem_mb"] == 1502
    assert wf.job_resources(CPU, 3, {"runtime": 1, "mem_mb": 1})["runtime"] == 20


def test_resources_of_a_local_and_an_srun_job():
    local = wf.job_resources(CPU, 1, {"runtime": 2, "mem_mb": 1.5})
    assert (local["gres"], local["mpi"], local["tasks_per_node"], local["slurm_extra"], local["nodes"]) == \
        (None, None, None, None, 1)
    srun = wf.job_resources(GPU8, 1, {"runtime": 2, "mem_mb": 1.5})
    assert (srun["gres"], srun["mpi"], srun["tasks_per_node"], srun["nodes"]) == ("gpu:8", "srun", 8, 2)
    assert srun["slurm_extra"] == "--signal=TERM@600 --exclusive"


def test_default_config_resources_come_from_the_grid():
    plan = plan_of()
    run = plan.run("rm", "tiny", "synthetic", "bt_seed0")
    r = wf.job_resources(run.resources["train"], 2, plan.config["retry_growth"])
    assert (r["runtime"], r["mem_mb"]) == (40, 4500)  # config.yaml: 20 min, 3000 MB; growth x2, x1.5
    assert wf.job_resources(run.resources["eval"], 1, plan.config["retry_growth"])["mem_mb"] == 2000


def test_launchers():
    assert wf.launcher(CPU) == "exec"
    cmd = wf.launcher(GPU8)
    assert cmd.startswith("export MASTER_ADDR=$(scontrol show hostnames")
    assert cmd.endswith("exec srun --nodes=2 --ntasks=16 --ntasks-per-node=8 --cpus-per-task=8 --kill-on-bad-exit=1")
    assert "MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))" in cmd


# ------------------------------------------------------------------------------------------ jobs
def test_dpo_evaluation_is_judged_by_runs_of_the_grid():
    plan = plan_of()
    run = plan.run("dpo", "tiny", "synthetic", "fr_alpha0.1_tau-1_seed1")
    inputs = plan.eval_inputs(run)
    assert inputs["judges"] == ["results/runs/rm/tiny/synthetic/bt_seed0/summary.json",
                                "results/runs/dpo/tiny/synthetic/dpo_seed0/summary.json"]
    assert inputs["summary"] == f"{run.dir}/{layout.SUMMARY}" and inputs["data"] == "results/data/synthetic/eval.jsonl"
    cmd = plan.eval_command(run)
    assert cmd == ["eval-policy", "--policy", f"{run.dir}/final", "--reference",
                   "results/runs/dpo/tiny/synthetic/dpo_seed0/final", "--reward-model",
                   "results/runs/rm/tiny/synthetic/bt_seed0/final", "--data", "results/data/synthetic/eval.jsonl",
                   "--out", f"{run.dir}/eval", "--max-new-tokens", "32"]


def test_a_judge_that_is_no_run_of_the_grid_is_refused():
    plan = plan_of({"grids": [DEFAULT["grids"][1] | {"eval": {**DPO_EVAL, "reward_model":
                                                              "{results}/runs/rm/tiny/synthetic/bt_seed7/final"}}]})
    run = plan.run("dpo", "tiny", "synthetic", "dpo_seed0")
    with pytest.raises(wf.WorkflowConfigError, match="bt_seed7, which is not a point of any grid"):
        plan.eval_inputs(run)
    # a hub model or a path outside the results is no dependency
    assert plan.run_dependency("Skywork/Skywork-Reward-Llama-3.1-8B-v0.2") == []


def test_reward_model_evaluation_and_bias_benchmark_commands():
    plan = plan_of(load("configs/grids/rm.yaml"))
    run = plan.run("rm", "llama3-sft", "hh-rlhf", "fr_alpha0.1_tau10_seed0")
    assert plan.eval_command(run) == ["eval-rm", "--model", f"{run.dir}/final", "--data",
                                      "results/paper/data/hh-rlhf/eval.jsonl", "--out", f"{run.dir}/eval",
                                      "--batch-size", "16"]
    out = f"{run.dir}/{layout.bench_subdir('rewardbench')}"
    assert plan.bias_benchmark_command(run, "rewardbench") == [
        "eval-benchmark", "--model", f"{run.dir}/final", "--benchmark", "rewardbench", "--data",
        "allenai/reward-bench", "allenai/pref-test-sets", "--out", out]
    with pytest.raises(wf.WorkflowConfigError, match="no bias benchmark named 'crows'"):
        plan.bias_benchmark_command(run, "crows")
    assert run.outputs() == [f"{run.dir}/summary.json", f"{run.dir}/eval/summary.json", f"{out}/summary.json"]


def test_unknown_run_is_refused_naming_its_directory():
    with pytest.raises(wf.WorkflowConfigError, match="results/runs/rm/tiny/synthetic/bt_seed9 is not a point"):
        plan_of().run("rm", "tiny", "synthetic", "bt_seed9")


def test_train_job_inputs_and_overrides():
    plan = plan_of()
    run = plan.run("rm", "tiny", "synthetic", "fc_gamma2_tau-1_seed1")
    assert plan.train_inputs(run) == {"config": str(REPO / "configs/runs/rm_tiny.yaml"),
                                      "train": "results/data/synthetic/train.jsonl",
                                      "eval": "results/data/synthetic/eval.jsonl"}
    assert shlex.split(wf.quoted(run.overrides)) == [
        "data.train=results/data/synthetic/train.jsonl", "data.eval=results/data/synthetic/eval.jsonl",
        "model.name_or_path=tiny", "objective.mode=fc", "objective.gamma=2.0", "objective.tau=-1.0", "seed=1",
        f"output_dir={run.dir}"]


def test_targets_are_study_reports_and_bias_benchmark_reports():
    assert plan_of().targets() == ["results/reports/rm/tiny/synthetic/results.md",
                                   "results/reports/dpo/tiny/synthetic/results.md"]
    paper = plan_of(load("configs/grids/rm.yaml")).targets()
    assert len(paper) == 6 and sum(f"/{layout.bench_subdir('rewardbench')}/" in t for t in paper) == 3
    assert plan_of({"bench": True}).targets()[-1] == wf.KERNEL_BENCH["csv"]


def test_data_set_helpers():
    cfg = config_of(load("configs/grids/dpo.yaml"))
    wf.check_schema(cfg, REPO)
    assert wf.datasets_with(cfg, "make") == "synthetic"
    assert wf.datasets_with(cfg, "prepare") == r"ultrafeedback\-shp"
    assert wf.datasets_with(DEFAULT, "prepare") == "(?!)"  # matches nothing
    assert wf.make_data_overrides(cfg, "synthetic") == ["data.synthetic.n_train=800", "data.synthetic.n_eval=200",
                                                        "data.synthetic.seed=1234", "data.synthetic.length_bias=1.0"]
    assert [p["kind"] for p in wf.prepare_parts(cfg, "ultrafeedback-shp", "eval")] == ["preferences", "shp"]
    with pytest.raises(wf.WorkflowConfigError, match="datasets.synthetic.prepare.train: not defined"):
        wf.prepare_parts(cfg, "synthetic", "train")


def test_reward_models_are_scored_in_their_training_job_unless_evaluation_is_off():
    cfg = config_of({"grids": [
        {"name": "on", "task": "rm", "base_config": "configs/runs/rm_tiny.yaml", "models": ["tiny"],
         "datasets": ["synthetic"], "seeds": [0], "modes": {"bt": {}}},
        {"name": "off", "task": "rm", "base_config": "configs/runs/rm_tiny.yaml", "models": ["tiny"],
         "datasets": ["synthetic"], "seeds": [1], "modes": {"bt": {}}, "eval": {"enabled": False}}]})
    plan = wf.plan(copy.deepcopy(cfg), REPO)
    assert plan.eval_in_training_points() == "bt_seed0"
    on = plan.run("rm", "tiny", "synthetic", "bt_seed0")
    args = plan.train_eval_args(on)
    assert args[0] == "--then-eval" and args[1].startswith(f"eval-rm --model {on.final} ")
    assert plan.train_eval_args(plan.run("rm", "tiny", "synthetic", "bt_seed1")) == []
    # a run of the same name on another data set, with evaluation off: the rule is chosen by name
    cfg["datasets"]["other"] = {"make": {"n_train": 100, "n_eval": 20}}
    cfg["grids"][1].update(seeds=[0], datasets=["other"])
    with pytest.raises(wf.WorkflowConfigError, match="bt_seed0 are evaluated in one grid and not in another"):
        wf.plan(cfg, REPO).eval_in_training_points()


def test_sweep_multiplies_points_and_sets_the_keys():
    plan = plan_of(grid(modes={"bt": {}, "fr": {"alpha": [1.0], "tau": [-1]}},
                        sweep={"train.lr": [1e-4, 3e-4], "model.gradient_checkpointing": [True]}))
    names = {k[3] for k in plan.grids["g"]}
    assert names == {f"{m}_lr{lr}_gradient_checkpointingtrue_seed0"
                     for m in ("bt", "fr_alpha1_tau-1") for lr in ("0.0001", "0.0003")}
    run = plan.run("rm", "tiny", "synthetic", "bt_lr0.0003_gradient_checkpointingtrue_seed0")
    assert "train.lr=0.0003" in run.overrides and "model.gradient_checkpointing=true" in run.overrides


def test_grid_inputs_become_overrides_and_job_inputs():
    plan = plan_of(grid(inputs={"data.max_train_examples": "{results}/made/{model}/{dataset}/n.txt"}))
    # the value is not checked as a number: the file does not exist yet, the task reads it
    run = plan.run("rm", "tiny", "synthetic", "bt_seed0")
    assert "data.max_train_examples=results/made/tiny/synthetic/n.txt" in run.overrides
    assert plan.train_inputs(run)["input_0"] == "results/made/tiny/synthetic/n.txt"


def test_dataset_made_by_another_rule_is_an_input():
    plan = plan_of({"datasets": {"made": {"train": "{results}/agg/pairs.jsonl", "eval": "{results}/agg/eval.jsonl"}}},
                   grid(datasets=["made"]))
    run = plan.run("rm", "tiny", "made", "bt_seed0")
    assert run.data_files == {"train": "results/agg/pairs.jsonl", "eval": "results/agg/eval.jsonl"}
    assert "data.train=results/agg/pairs.jsonl" in run.overrides
    assert plan.train_inputs(run)["train"] == "results/agg/pairs.jsonl"
    assert plan.eval_command(run)[plan.eval_command(run).index("--data") + 1] == "results/agg/eval.jsonl"

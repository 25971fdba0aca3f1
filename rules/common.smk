# The workflow config checked and expanded (fairhpc/workflow.py, which holds the logic and its unit tests),
# and the small functions through which the rules read it.  Nothing here defines a rule.
#
# Every rule over a run has the wildcards {task}/{model}/{dataset}/{point} of the run directory
#     {results}/runs/{task}/{model}/{dataset}/{point}      point = e.g. fr_alpha0.1_tau-1_seed0

import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from fairhpc import layout, registry
from fairhpc import workflow as wf
from fairhpc.errors import ConfigError
from fairhpc.yamlio import load_yaml

REPO = Path(workflow.basedir)

# Snakemake keeps the last of a repeated key: refuse one in every config file it read (fairhpc/yamlio.py)
for _configfile in workflow.configfiles:
    try:
        load_yaml(_configfile)
    except ConfigError as e:
        raise WorkflowError(str(e)) from None
    except Exception:  # noqa: BLE001 -- not YAML (Snakemake read it as JSON) or unreadable: Snakemake's own
        pass

try:
    PLAN = wf.plan(config, REPO)
except wf.WorkflowConfigError as e:
    raise WorkflowError(str(e)) from None

RESULTS = PLAN.results
# final outputs of the stages defined in other files under rules/ (reports, plots), wanted by target `all`;
# each rule file appends its own
EXTRA_TARGETS = []
TASKS = "|".join(registry.TASKS)
OPS_MARKER = (
    f"{RESULTS}/ops/built.json"  # rules/ops.smk: DeepSpeed ops compiled before training
)
OPS_WORLD, OPS_DEVICE = wf.ops_world_and_device(config)
# tasks whose held-out evaluation runs in the training job, and those that have an evaluation job
TASKS_EVAL_IN_TRAINING = "|".join(registry.EVAL_IN_TRAINING)
TASKS_EVAL_JOB = "|".join(
    t for t in registry.TASKS if t not in registry.EVAL_IN_TRAINING
)
try:
    POINTS_EVAL_IN_TRAINING = PLAN.eval_in_training_points()
except wf.WorkflowConfigError as e:
    raise WorkflowError(str(e)) from None
# path patterns of the rules' outputs
RUN = wf.run_dir(RESULTS, "{task}", "{model}", "{dataset}", "{point}")
RUN_LOG = "{task}/{model}/{dataset}/{point}.log"
STUDY = PLAN.report_dir("{grid}", "{model}", "{dataset}")
BIAS_BENCHMARK = layout.bench_subdir("{benchmark}")


def _run(wildcards) -> wf.Run:
    try:
        return PLAN.run(
            wildcards.task, wildcards.model, wildcards.dataset, wildcards.point
        )
    except wf.WorkflowConfigError as e:
        raise WorkflowError(str(e)) from None


def _study(wildcards) -> list:
    try:
        return PLAN.study(wildcards.grid, wildcards.model, wildcards.dataset)
    except wf.WorkflowConfigError as e:
        raise WorkflowError(str(e)) from None


# ------------------------------------------------------------------------------------------ one run
def run_attr(name):
    """A run's attribute (dir, final, eval_dir, ...) for params."""

    def value(wildcards):
        return getattr(_run(wildcards), name)

    return value


def train_inputs(wildcards) -> dict:
    return PLAN.train_inputs(_run(wildcards))


def train_overrides(wildcards) -> str:
    return wf.quoted(_run(wildcards).overrides)


def train_eval_args(wildcards) -> str:
    return wf.quoted(PLAN.train_eval_args(_run(wildcards)))


def eval_inputs(wildcards) -> dict:
    return PLAN.eval_inputs(_run(wildcards))


def eval_command(wildcards) -> str:
    return wf.quoted(PLAN.eval_command(_run(wildcards)))


def bias_benchmark_command(wildcards) -> str:
    return wf.quoted(PLAN.bias_benchmark_command(_run(wildcards), wildcards.benchmark))


# Resources: each SLURM resource of a job is one call of resource(part, name), so that every rule reads
# its values from the grid of its run (wildcards.task, ...) and runtime and memory grow with the attempt.
def resource(part, name):
    def value(wildcards, attempt):
        r = _run(wildcards).resources[part]
        return wf.job_resources(r, attempt, config["retry_growth"])[name]

    return value


def threads_of(part):
    def threads(wildcards):
        return _run(wildcards).resources[part]["cpus"]

    return threads


def launcher(part):
    def prefix(wildcards):
        return wf.launcher(_run(wildcards).resources[part])

    return prefix


# ------------------------------------------------------------------------------------------ studies
def study_figure(name: str, caption: str, label: str):
    """An output of a study report that goes into `snakemake --report` (captions in rules/report/)."""
    return report(
        f"{STUDY}/{name}",
        caption=f"report/{caption}.rst",
        category="{grid}",
        subcategory="{model} / {dataset}"
        + (": {benchmark}" if "{benchmark}" in name else ""),
        labels={"figure": label},
    )


def study_inputs(wildcards) -> list[str]:
    return [f for run in _study(wildcards) for f in run.outputs()]


def bias_benchmark_inputs(wildcards) -> list[str]:
    return [
        f"{run.bias_benchmark_dir(wildcards.benchmark)}/{layout.SUMMARY}"
        for run in _study(wildcards)
    ]


def study_runs(wildcards) -> str:
    return wf.quoted(run.dir for run in _study(wildcards))


# ------------------------------------------------------------------------------------------ data
def datasets_with(key: str) -> str:
    return wf.datasets_with(config, key)


def make_data_overrides(wildcards) -> str:
    return wf.quoted(wf.make_data_overrides(config, wildcards.dataset))


def prepare_parts(wildcards) -> str:
    parts = wf.prepare_parts(config, wildcards.dataset, wildcards.split)
    return wf.quoted(json.dumps(p) for p in parts)

"""The logic of the Snakemake workflow (Snakefile, rules/): config checks, the grid, run names, resources,
launchers and targets.

Everything here is a plain function of the workflow config (the dict Snakemake loads from config.yaml and
--configfile) and the repository path; rules/common.smk builds a :class:`Plan` once and the rules read it
through small closures over their wildcards.  tests/test_workflow_units.py calls these functions directly.

The grid: each entry of ``config["grids"]`` expands to the points

    model x dataset x seed x (bt/dpo | fr: alpha x tau | fc: gamma x tau)

Utility modes do not multiply over alpha/tau/gamma.  Every point is one run directory

    {results}/runs/{task}/{model}/{dataset}/{point}      point = e.g. fr_alpha0.1_tau-1_seed0

and the same point listed by two grids is one run, trained once.  File names inside a run directory come
from :mod:`fairhpc.layout`.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import shlex
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import yaml

from fairhpc import layout, registry
from fairhpc.config import FairnessConfig, load_config, validate_fairness
from fairhpc.errors import ConfigError
from fairhpc.yamlio import load_yaml

SCHEMA = Path("schemas") / "config.schema.yaml"  # relative to the repository
# the fairness hyperparameters each mode takes, in the order they appear in run names
MODE_PARAMS = {
    **{m: () for m in registry.UTILITY_MODES},
    "fr": ("alpha", "tau"),
    "fc": ("gamma", "tau"),
}
# bias benchmarks that judge a policy's generations, not a reward model's scores (fairhpc eval-benchmark)
POLICY_BENCHMARKS = frozenset({"bbq"})
# the kernel microbenchmark's outputs (rule bench_fair_loss), asked for by the default target when `bench: true`
KERNEL_BENCH = {"csv": "results/bench/fair_loss.csv", "png": "results/bench/fair_loss.png"}
STUDY_TABLES = ("results.csv", "results.md", "results_by_point.csv", "differences.csv")
STUDY_PLOTS = (
    "accuracy_vs_fairness.png",
    "differences.png",
    "fairness_over_training.png",
    "reward_by_category.png",
    "reward_vs_length.png",
)


class WorkflowConfigError(ConfigError):
    """The workflow config is invalid; the message names the key and the value."""


# ----------------------------------------------------------------------------------------- the schema
def key_text(path) -> str:
    """['grids', 0, 'modes', 'fc', 'tau', 1] -> 'grids[0].modes.fc.tau[1]'."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def load_schema(repo: Path) -> dict:
    """schemas/config.schema.yaml with the enumerations of fairhpc/registry.py filled in: the tasks, the
    objective modes (a schema per mode: utility modes take no hyperparameters, fr alpha and tau, fc gamma and
    tau) and, per task, the modes it accepts.  The file itself never lists them, so a new task needs no edit
    there."""
    schema = load_yaml(Path(repo) / SCHEMA)
    grid = schema["$defs"]["grid"]
    grid["properties"]["task"]["enum"] = list(registry.TASKS)
    mode_def = {m: "mode_utility" for m in registry.UTILITY_MODES} | {"fr": "mode_fr", "fc": "mode_fc"}
    grid["properties"]["modes"]["properties"] = {m: {"$ref": f"#/$defs/{mode_def[m]}"} for m in registry.ALL_MODES}
    grid["allOf"] = [
        {"if": {"properties": {"task": {"const": t}}, "required": ["task"]},
         "then": {"properties": {"modes": {"propertyNames": {"enum": list(registry.MODES[t])}}}}}
        for t in registry.TASKS]
    return schema


def check_schema(cfg: dict, repo: Path) -> None:
    """Validate `cfg` against the schema (:func:`load_schema`), then fill in the schema's defaults in place
    (each a fresh copy).  Every violation is reported as 'key: message naming the value'."""
    import jsonschema

    path = Path(repo) / SCHEMA
    schema = load_schema(repo)
    base = jsonschema.Draft202012Validator
    errors = sorted(base(schema).iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = [f"{key_text(e.absolute_path)}: {e.message}" for e in errors[:20]]
        raise WorkflowConfigError(f"invalid workflow config ({path.name}): " + "; ".join(lines))
    check_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, schema)

    jsonschema.validators.extend(base, {"properties": set_defaults})(schema).validate(cfg)


# ------------------------------------------------------------------------------------------ run names
def fmt_value(x) -> str:
    """Shortest exact text of a hyperparameter for run names: 0.1, -1, 10, 1e-05."""
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def grid_points(grid: dict):
    """(mode, {param: value}) of one grid, only the combinations each mode uses."""
    for mode, spec in grid["modes"].items():
        names = MODE_PARAMS[mode]
        spec = spec or {}
        for values in product(*(spec[n] for n in names)):
            yield mode, dict(zip(names, values))


def sweep_points(grid: dict):
    """{run-config key: value} of every combination of the grid's `sweep` lists ({} once when it has none)."""
    sweep = grid.get("sweep") or {}
    for values in product(*sweep.values()):
        yield dict(zip(sweep, values))


def sweep_value(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return fmt_value(v) if isinstance(v, (int, float)) else str(v)


def point_name(mode: str, params: dict, seed: int, sweep: dict | None = None) -> str:
    """'fr', {'alpha': 0.1, 'tau': -1}, 0 -> 'fr_alpha0.1_tau-1_seed0'; a sweep {'pg.dropout_rate': 0.9}
    adds '_dropout_rate0.9' before the seed."""
    return "_".join([mode, *(f"{k}{fmt_value(v)}" for k, v in params.items()),
                     *(f"{k.rsplit('.', 1)[-1]}{sweep_value(v)}" for k, v in (sweep or {}).items()),
                     f"seed{seed}"])


def run_dir(results: str, task: str, model: str, dataset: str, point: str) -> str:
    return f"{results}/runs/{task}/{model}/{dataset}/{point}"


def overrides_list(d: dict) -> list[str]:
    """{'train.lr': 1e-5} -> ['train.lr=1e-05'] (values as YAML scalars, which load_config parses back)."""
    out = []
    for k, v in d.items():
        text = yaml.safe_dump(v, default_flow_style=True).strip()
        out.append(f"{k}={text.removesuffix('...').strip()}")
    return out


def quoted(args) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


# ------------------------------------------------------------------------------------------- checks
def check_resources(where: str, r: dict) -> None:
    """A job's resources: the launcher must fit the number of processes and GPUs."""
    if r["launcher"] == "local" and (r["nodes"] > 1 or r["tasks_per_node"] > 1):
        raise WorkflowConfigError(
            f"{where}: launcher 'local' runs one process; nodes = {r['nodes']} and "
            f"tasks_per_node = {r['tasks_per_node']} need launcher: srun")
    if r["launcher"] == "srun":
        if r["tasks_per_node"] < 2:
            raise WorkflowConfigError(
                f"{where}.tasks_per_node: {r['tasks_per_node']} — launcher 'srun' starts one rank per GPU "
                "and needs tasks_per_node >= 2 (use launcher: local for one process)")
        if r["gpus"] and r["gpus"] != r["tasks_per_node"]:
            raise WorkflowConfigError(
                f"{where}: tasks_per_node = {r['tasks_per_node']} but gpus = {r['gpus']}: "
                "launcher 'srun' starts one rank per GPU")


def check_eval(where: str, grid: dict, results: str) -> dict:
    """The grid's `eval` section with {results} filled in; refuses settings that no rule could serve."""
    ev = copy.deepcopy(grid["eval"])
    for key in ("reward_model", "reference"):
        if key in ev:
            ev[key] = ev[key].replace("{results}", results)
    task = grid["task"]
    if task in registry.EVAL_POLICY_TASKS and ev["enabled"]:
        missing = [k for k in ("reward_model", "reference") if k not in ev]
        if missing:
            raise WorkflowConfigError(
                f"{where}.eval: a DPO policy is judged by a reward model against a reference policy; "
                f"set eval.{' and eval.'.join(missing)} (or eval.enabled: false)")
    if task not in registry.EVAL_POLICY_TASKS and ("reward_model" in ev or "reference" in ev):
        raise WorkflowConfigError(
            f"{where}.eval: reward_model / reference are for policy grids "
            f"({', '.join(registry.EVAL_POLICY_TASKS)}); a {task} model is not judged that way")
    if ev["enabled"] and task not in registry.EVAL_POLICY_TASKS and task not in registry.EVAL_IN_TRAINING:
        raise WorkflowConfigError(
            f"{where}.eval.enabled: task {task} has no held-out evaluation job of the workflow (its own rules "
            "evaluate it); set eval: {{enabled: false}}")
    for i, b in enumerate(ev["benchmarks"]):
        key = f"{where}.eval.benchmarks[{i}].benchmark"
        if registry.EVAL_IN_TRAINING.get(task) != "eval-rm":
            raise WorkflowConfigError(
                f"{key}: {b['benchmark']!r} in a {task} grid: the workflow's bias benchmarks score reward "
                "models (rule eval_bias_benchmark runs on reward-model runs only); list it in a reward-model "
                "grid, or run `fairhpc eval-benchmark` on the policy yourself")
        if b["benchmark"] in POLICY_BENCHMARKS:
            raise WorkflowConfigError(
                f"{key}: {b['benchmark']!r} judges a policy's generated answers, not a reward model's "
                "scores; run `fairhpc eval-benchmark --benchmark bbq` on a policy yourself")
    names = [b["name"] for b in ev["benchmarks"]]
    if len(set(names)) != len(names):
        raise WorkflowConfigError(f"{where}.eval.benchmarks: names must differ; got {', '.join(names)}")
    return ev


def dataset_sources(name: str, ds: dict, results: str) -> tuple[dict, dict]:
    """({'train': file, 'eval': file} made by this workflow, run-config overrides of the data sources).

    A `train` / `eval` path that starts with {results}/ is a file another rule of the workflow makes (e.g. the
    pairs aggregated from simulated rankings): it is filled in and becomes an input of the jobs that read it."""
    given = [k for k in ("make", "prepare", "train") if k in ds]
    if len(given) != 1:
        raise WorkflowConfigError(
            f"datasets.{name}: give exactly one of `make` (synthetic pairs), `prepare` (pairs collected from "
            f"hub / local sources) and `train` (a file or hub name); got {', '.join(given) or 'none'}")
    if given[0] != "train":
        splits = ("train", "eval") if given[0] == "make" else tuple(ds["prepare"])
        files = {split: data_file(results, name, split) for split in splits}
        return files, {"data.train": files["train"], "data.eval": files.get("eval")}
    given = {k: ds[k].replace("{results}", results) if isinstance(ds.get(k), str) else ds.get(k)
             for k in ("train", "eval")}
    made = {k: v for k, v in given.items() if isinstance(v, str) and v.startswith(f"{results}/")}
    for k, v in given.items():
        if isinstance(v, str) and "{results}" in ds[k] and k not in made:
            raise WorkflowConfigError(f"datasets.{name}.{k}: {ds[k]!r}: {{results}} may only start the path")
    return made, {"data.train": given["train"], "data.eval": given["eval"]}


def data_file(results: str, dataset: str, split: str) -> str:
    return f"{results}/data/{dataset}/{split}.jsonl"


# ------------------------------------------------------------------------------------------ the grid
@dataclass(frozen=True)
class Run:
    """One training run of the grid (one run directory) and everything its jobs need."""

    grid: str
    task: str
    model: str
    dataset: str
    point: str
    dir: str
    base_config: str                  # relative to the repository
    overrides: tuple[str, ...]        # key=value arguments of `fairhpc train-<task>`
    data_files: dict                  # split -> file made by the workflow (make_data / prepare_data)
    eval_data: str | None             # held-out pairs the model is scored on
    eval: dict                        # the grid's eval section, {results} filled in
    resources: dict                   # part (train / eval) -> resources
    inputs: tuple = ()                # (run-config key, file made by another rule) of the grid's `inputs`

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.task, self.model, self.dataset, self.point)

    def path(self, *parts: str) -> str:
        return "/".join((self.dir, *parts))

    @property
    def summary(self) -> str:
        return self.path(layout.SUMMARY)

    @property
    def final(self) -> str:
        return self.path(layout.FINAL)

    @property
    def eval_dir(self) -> str:
        return self.path(layout.EVAL)

    def bias_benchmark_dir(self, name: str) -> str:
        return self.path(layout.bench_subdir(name))

    def outputs(self) -> list[str]:
        """The summaries a study report reads: training, held-out evaluation, bias benchmarks."""
        out = [self.summary]
        if self.eval["enabled"]:
            out.append(self.path(layout.EVAL, layout.SUMMARY))
        out += [self.path(layout.bench_subdir(b["name"]), layout.SUMMARY) for b in self.eval["benchmarks"]]
        return out


def _check_grid(g: str, grid: dict, cfg: dict, repo: Path) -> None:
    if not (Path(repo) / grid["base_config"]).is_file():
        raise WorkflowConfigError(
            f"{g}.base_config: file not found: {grid['base_config']} (paths are relative to {repo})")
    for key in ("models", "datasets"):
        for name in grid[key]:
            if name not in cfg[key]:
                raise WorkflowConfigError(
                    f"{g}.{key}: {name!r} is not defined under {key}: defined are "
                    f"{', '.join(cfg[key]) or 'none'}")
    for part in ("train", "eval"):
        check_resources(f"{g}.resources.{part}", grid["resources"][part])
    for key in list(grid.get("sweep") or {}) + list(grid.get("inputs") or {}):
        if key == "seed" or key.startswith(("objective.", "output_dir", "data.train", "data.eval")):
            raise WorkflowConfigError(
                f"{g}: {key} is set by the grid itself (modes, seeds, datasets); it cannot be swept or an input")
    both = set(grid.get("sweep") or {}) & set(grid.get("inputs") or {})
    if both:
        raise WorkflowConfigError(f"{g}: {', '.join(sorted(both))} is both in sweep and in inputs")
    # the meaning of each hyperparameter value, by the trainer's own checks
    for mode, params in grid_points(grid):
        try:
            validate_fairness(FairnessConfig(mode=mode, **{k: float(v) for k, v in params.items()}), grid["task"])
        except ConfigError as e:
            shown = ", ".join(f"{k} = {fmt_value(v)}" for k, v in params.items())
            raise WorkflowConfigError(f"{g}.modes.{mode}: {shown} is invalid: {e}") from None


def build_runs(cfg: dict, repo: Path) -> tuple[dict, dict]:
    """Check the grids of a schema-checked config (:func:`check_schema`) and expand them.

    Returns (runs, grids): runs[(task, model, dataset, point)] = :class:`Run`; grids[name] = list of run keys.
    Fails on the first invalid setting, naming the grid key and the value.
    """
    results = cfg["results"].rstrip("/")
    runs: dict[tuple, Run] = {}
    grids: dict[str, list] = {}
    for gi, grid in enumerate(cfg["grids"]):
        g = f"grids[{gi}] ({grid['name']})"
        if grid["name"] in grids:
            raise WorkflowConfigError(f"{g}.name: {grid['name']!r} is used by two grids")
        _check_grid(g, grid, cfg, repo)
        ev = check_eval(g, grid, results)
        task, keys = grid["task"], []
        for model, dataset, seed, (mode, params), sweep in product(
                grid["models"], grid["datasets"], grid["seeds"], grid_points(grid), list(sweep_points(grid))):
            point = point_name(mode, params, seed, sweep)
            ds = cfg["datasets"][dataset]
            data_files, data_over = dataset_sources(dataset, ds, results)
            inputs = {k: v.replace("{results}", results).replace("{model}", model).replace("{dataset}", dataset)
                      for k, v in (grid.get("inputs") or {}).items()}
            over = {
                **ds["overrides"], **data_over, **cfg["models"][model]["overrides"], **grid["overrides"],
                **sweep, **inputs,
                "objective.mode": mode, **{f"objective.{k}": float(v) for k, v in params.items()},
                "seed": seed, "output_dir": run_dir(results, task, model, dataset, point),
            }
            run = Run(grid=grid["name"], task=task, model=model, dataset=dataset, point=point,
                      dir=over["output_dir"], base_config=grid["base_config"],
                      overrides=tuple(overrides_list(over)), data_files=data_files,
                      eval_data=data_files.get("eval", data_over["data.eval"]), eval=ev,
                      resources=grid["resources"], inputs=tuple(inputs.items()))
            other = runs.get(run.key)
            if other is None:
                # everything else of the run config, checked now rather than on a GPU node; files that the
                # workflow itself makes do not exist yet and are checked as 'synthetic'
                check = {**over, **{f"data.{k}": "synthetic" for k in data_files}}
                # files made by other rules exist only later; their keys are checked by the task itself
                for k in inputs:
                    check.pop(k)
                try:
                    load_config(Path(repo) / grid["base_config"], overrides_list(check), task=task)
                except ConfigError as e:
                    raise WorkflowConfigError(f"{g}: point {point} ({model}, {dataset}): {e}") from None
                runs[run.key] = run
            elif any(getattr(other, k) != getattr(run, k) for k in ("base_config", "overrides", "resources", "eval")):
                raise WorkflowConfigError(
                    f"{g}: run {run.dir} is also a point of grid {other.grid!r} with different settings "
                    "(base_config, overrides, resources or eval); one run directory cannot hold both: align "
                    "them or use another results dir")
            keys.append(run.key)
        grids[grid["name"]] = keys
    return runs, grids


# ------------------------------------------------------------------------------------------ resources
def job_resources(r: dict, attempt: int, growth: dict) -> dict:
    """The Snakemake resources of one job from its grid's resources `r` (one part: train or eval).

    Runtime (minutes) and memory (MB) grow by growth[name] ** (attempt - 1), so a retry after a time-limit or
    out-of-memory kill gets more; `attempt` (1, 2, ...) is passed on for the job log.
    """
    srun = r["launcher"] == "srun"
    flags = [f"--signal=TERM@{r['signal_grace_s']}"] if r["signal_grace_s"] else []
    flags += [r["slurm_extra"]] if r["slurm_extra"] else []
    return {
        "runtime": math.ceil(r["runtime"] * growth["runtime"] ** (attempt - 1)),
        "mem_mb": math.ceil(r["mem_mb"] * growth["mem_mb"] ** (attempt - 1)),
        "nodes": r["nodes"],
        "gres": f"gpu:{r['gpus']}" if r["gpus"] else None,
        # the SLURM plugin then runs the job's shell in the batch step, where srun starts the ranks
        "mpi": "srun" if srun else None,
        "tasks_per_node": r["tasks_per_node"] if srun else None,
        "slurm_extra": " ".join(flags) or None,
        "attempt": attempt,
    }


def launcher(r: dict) -> str:
    """How a job's command starts: `exec` of one process, or `exec srun` of one rank per GPU on every node."""
    if r["launcher"] == "local":
        return "exec"
    # DeepSpeed reads RANK/WORLD_SIZE/LOCAL_RANK from SLURM_PROCID/NTASKS/LOCALID (fairhpc.train); the first
    # node of the allocation is the rendezvous (the SLURM executor passes the job's commands SLURM_JOB_ID but
    # not SLURM_JOB_NODELIST, so the node list comes from squeue)
    return (
        'export MASTER_ADDR=$(scontrol show hostnames "$(squeue -h -j "$SLURM_JOB_ID" -o %N)" | head -n1) '
        "MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000)); "
        f"exec srun --nodes={r['nodes']} --ntasks={r['nodes'] * r['tasks_per_node']} "
        f"--ntasks-per-node={r['tasks_per_node']} --cpus-per-task={r['cpus']} --kill-on-bad-exit=1"
    )


# ------------------------------------------------------------------------------------ data sets
def datasets_with(cfg: dict, key: str) -> str:
    """Wildcard pattern of the data set names that have `key` (make / prepare); never matches if none."""
    names = [re.escape(n) for n, ds in cfg["datasets"].items() if key in ds]
    return "|".join(names) if names else "(?!)"


def make_data_overrides(cfg: dict, dataset: str) -> list[str]:
    """key=value arguments of `fairhpc make-data` for a data set with `make`."""
    ds = cfg["datasets"].get(dataset)
    if ds is None or "make" not in ds:
        raise WorkflowConfigError(f"datasets.{dataset}: not a data set made by the workflow (no `make`)")
    return overrides_list({f"data.synthetic.{k}": v for k, v in ds["make"].items()})


def prepare_parts(cfg: dict, dataset: str, split: str) -> list[dict]:
    """The `prepare` parts of one split, the arguments of `fairhpc prepare-data`."""
    ds = cfg["datasets"].get(dataset)
    if ds is None or split not in ds.get("prepare", {}):
        raise WorkflowConfigError(f"datasets.{dataset}.prepare.{split}: not defined")
    return ds["prepare"][split]


# ------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class Plan:
    """A checked workflow config and its expansion: what every rule asks for."""

    config: dict
    repo: Path
    runs: dict      # (task, model, dataset, point) -> Run
    grids: dict     # grid name -> run keys

    @property
    def results(self) -> str:
        return self.config["results"].rstrip("/")

    def run(self, task: str, model: str, dataset: str, point: str) -> Run:
        key = (task, model, dataset, point)
        if key not in self.runs:
            raise WorkflowConfigError(
                f"{run_dir(self.results, *key)} is not a point of any grid in the config")
        return self.runs[key]

    def studies(self) -> dict:
        """(grid, model, dataset) -> runs: the unit of a study report (one base model, one data set)."""
        out: dict[tuple, list[Run]] = {}
        for name, keys in self.grids.items():
            for key in keys:
                r = self.runs[key]
                out.setdefault((name, r.model, r.dataset), []).append(r)
        return out

    def study(self, grid: str, model: str, dataset: str) -> list[Run]:
        runs = self.studies().get((grid, model, dataset))
        if runs is None:
            raise WorkflowConfigError(
                f"no grid {grid!r} with model {model!r} and dataset {dataset!r} in the config")
        return runs

    def report_dir(self, grid: str, model: str, dataset: str) -> str:
        return f"{self.results}/reports/{grid}/{model}/{dataset}"

    @property
    def hub(self) -> dict:
        return self.config["hub"]

    @property
    def hub_marker(self) -> str:
        return f"{self.results}/hub/fetched.json"

    @functools.cached_property
    def _hub_items(self) -> list[dict]:
        from fairhpc import hub

        return hub.items(self)  # reads every run's config: once per plan, not once per job

    def hub_items(self) -> list[dict]:
        return self._hub_items

    def fetches_hub(self) -> bool:
        """Whether rule fetch_hub runs before the jobs: hub.fetch with a cache or offline jobs, and items."""
        return bool(self.hub["fetch"] and (self.hub["offline"] or self.hub["cache"]) and self.hub_items())

    def hub_inputs(self) -> dict:
        return {"hub": self.hub_marker} if self.fetches_hub() else {}

    def train_inputs(self, run: Run) -> dict:
        return {"config": str(Path(self.repo) / run.base_config), **run.data_files, **self.hub_inputs(),
                **{f"input_{i}": path for i, (_, path) in enumerate(run.inputs)}}

    def run_dependency(self, path: str) -> list[str]:
        """A model path that is another run's final/ -> that run's summary (so that it is trained first)."""
        model = Path(path)
        if not (path.startswith(f"{self.results}/runs/") and model.name == layout.FINAL):
            return []
        parent = str(model.parent)
        if not any(r.dir == parent for r in self.runs.values()):
            raise WorkflowConfigError(f"eval: {path} is the model of {parent}, which is not a point of any grid")
        return [f"{parent}/{layout.SUMMARY}"]

    def eval_inputs(self, run: Run) -> dict:
        out = {"summary": run.summary, **self.hub_inputs()}
        if "eval" in run.data_files:
            out["data"] = run.data_files["eval"]
        if run.task in registry.EVAL_POLICY_TASKS:
            out["judges"] = [d for k in ("reward_model", "reference") for d in self.run_dependency(run.eval[k])]
        return out

    def eval_in_training_points(self) -> str:
        """Regex of the point names whose runs are scored inside their training job (rule
        train_and_evaluate): runs of a task in registry.EVAL_IN_TRAINING with evaluation on.  A point name
        may not be such a run in one place and a run without evaluation in another (the rule is chosen by
        name), which is refused."""
        on = {r.point for r in self.runs.values() if r.task in registry.EVAL_IN_TRAINING and r.eval["enabled"]}
        off = {r.point for r in self.runs.values() if r.task in registry.EVAL_IN_TRAINING and not r.eval["enabled"]}
        if on & off:
            raise WorkflowConfigError(
                f"eval.enabled: runs named {', '.join(sorted(on & off))} are evaluated in one grid and not in "
                "another; give them the same eval.enabled or other seeds / settings")
        return "|".join(re.escape(p) for p in sorted(on)) or "(?!)"

    def train_eval_args(self, run: Run) -> list[str]:
        """Options of `fairhpc train-<task>` that evaluate the run inside its training job (registry
        EVAL_IN_TRAINING), or [] when the run's evaluation is a job of its own or off."""
        if run.task not in registry.EVAL_IN_TRAINING or not run.eval["enabled"]:
            return []
        return ["--then-eval", shlex.join(self.eval_command(run))]

    def eval_data(self, run: Run) -> str:
        if not run.eval_data:
            raise WorkflowConfigError(
                f"{run.dir}: dataset {run.dataset!r} has no eval data to score the model on; add "
                "datasets.<name>.eval or set eval.enabled: false in the grid")
        return run.eval_data

    def eval_command(self, run: Run) -> list[str]:
        """Arguments of `fairhpc` that evaluate a run on its held-out data into RUN/eval/."""
        common = ["--data", self.eval_data(run), "--out", run.eval_dir, *shlex.split(run.eval["args"])]
        if registry.EVAL_IN_TRAINING.get(run.task) == "eval-rm":
            return ["eval-rm", "--model", run.final, *common]
        if run.task in registry.EVAL_POLICY_TASKS:
            return ["eval-policy", "--policy", run.final, "--reference", run.eval["reference"],
                    "--reward-model", run.eval["reward_model"], *common]
        raise WorkflowConfigError(f"{run.dir}: no held-out evaluation command for task {run.task!r}")

    def bias_benchmark_command(self, run: Run, name: str) -> list[str]:
        """Arguments of `fairhpc` that score a reward model on bias benchmark `name` into RUN/bench_<name>/."""
        b = self.bias_benchmark(run, name)
        return ["eval-benchmark", "--model", run.final, "--benchmark", b["benchmark"], "--data", *b["data"],
                "--out", run.bias_benchmark_dir(name), *shlex.split(b["args"])]

    def bias_benchmark(self, run: Run, name: str) -> dict:
        for b in run.eval["benchmarks"]:
            if b["name"] == name:
                return b
        raise WorkflowConfigError(f"{run.dir}: no bias benchmark named {name!r} in its grid's eval.benchmarks")

    def targets(self) -> list[str]:
        """The default target: every study's report (which needs every run, evaluation and bias benchmark),
        the bias-benchmark reports, and the kernel microbenchmark when `bench: true`."""
        out = []
        for study, runs in self.studies().items():
            out.append(f"{self.report_dir(*study)}/results.md")
            out += [f"{self.report_dir(*study)}/{layout.bench_subdir(b['name'])}/results.md"
                    for b in runs[0].eval["benchmarks"]]
        if self.config["bench"]:
            out.append(KERNEL_BENCH["csv"])
        return out


def ops_world_and_device(cfg: dict) -> tuple[int, str]:
    """For `fairhpc build-ops`: the most processes of any grid's or online loop's training job, and cuda if
    any has GPUs."""
    world, gpus = 1, 0
    for grid in [*(cfg.get("grids") or []), *(cfg.get("online") or [])]:  # an online loop trains too
        train = (grid.get("resources") or {}).get("train") or {}
        world = max(world, int(train.get("nodes") or 1) * int(train.get("tasks_per_node") or 1))
        gpus = max(gpus, int(train.get("gpus") or 0))
    return world, ("cuda" if gpus else "cpu")


def plan(cfg: dict, repo: Path) -> Plan:
    """Check the workflow config (schema defaults are filled into `cfg`) and expand its grids."""
    check_schema(cfg, repo)
    if not cfg["grids"] and not cfg.get("online"):
        raise WorkflowConfigError("grids: empty, and no online loops: the config has nothing to run")
    runs, grids = build_runs(cfg, repo)
    p = Plan(cfg, Path(repo), runs, grids)
    if p.hub["offline"] and not p.hub["fetch"]:
        from fairhpc import hub

        try:
            hub.check_cached(p.hub_items(), p.hub["cache"], p.hub["revisions"])
        except ConfigError as e:
            raise WorkflowConfigError(str(e)) from None
    return p

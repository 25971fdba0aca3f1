"""``fairhpc grid-plan``: what ``snakemake --profile slurm`` will ask the cluster for, before anything is
submitted.

The workflow config is assembled as Snakemake assembles it (config.yaml, then each ``--configfile`` merged
over it, lists replaced) and expanded by the same code the rules use (:func:`fairhpc.workflow.plan`).  Per
grid: the training jobs, their nodes and GPUs per job, and the GPU-hours requested (time limit x nodes x GPUs
per node, first attempt); the same for the evaluation jobs (a held-out evaluation job for policies, one job per
bias benchmark of a reward model).  A run listed by two grids is trained once: it counts in both grids' rows
and once in the total.  Retries after a time-limit kill ask for more (``retry_growth``) and are not counted.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from fairhpc import registry
from fairhpc import workflow as wf
from fairhpc.yamlio import load_yaml, loads

REPO = Path(__file__).resolve().parents[1]


def workflow_config(configfiles: list[str], repo: Path = REPO) -> dict:
    """config.yaml of `repo` with each file merged over it, as Snakemake does with --configfile."""
    from snakemake.utils import update_config

    from fairhpc.errors import ConfigError

    cfg = load_yaml(Path(repo) / "config.yaml")
    for path in configfiles:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--configfile {path}: file not found")
        try:
            extra = loads(p.read_text(encoding="utf-8-sig"), f"--configfile {path}")
        except yaml.YAMLError as e:
            raise ConfigError(f"--configfile {path}: not valid YAML: {e}") from None
        if not isinstance(extra, dict):
            raise ConfigError(f"--configfile {path}: expected a mapping at the top level")
        update_config(cfg, copy.deepcopy(extra))
    return cfg


def job_cost(resources: dict) -> dict:
    """One job of a grid part (train / eval): nodes, GPUs per node, hours, GPU-hours (first attempt)."""
    hours = resources["runtime"] / 60
    nodes, tasks = resources.get("nodes", 1), resources.get("tasks_per_node", 1)
    return {"nodes": nodes, "gpus_per_node": resources["gpus"], "hours": hours,
            "gpu_hours": hours * nodes * resources["gpus"],
            "cpu_hours": hours * nodes * tasks * resources["cpus"]}


def stage_jobs(plan: wf.Plan) -> list[dict]:
    """The cluster jobs of the systems' stage rules (rules/policy_benchmarks.smk, armo.smk, rlchf.smk), each
    {"rule", "jobs", "resources"}: what those rules ask for, counted as the rules expand."""
    from fairhpc.evaluation import policy_benchmarks as PB

    cfg, out = plan.config, []
    settings = PB.workflow_settings(cfg)
    pb_runs = PB.benchmark_runs(plan, settings)
    if pb_runs:
        for part, rules in (("alpaca_eval", (("alpaca_eval_generate", "generate"), ("alpaca_eval_judge", "judge"))),
                            ("mt_bench", (("mt_bench_generate", "generate"), ("mt_bench_judge", "judge"))),
                            ("lm_eval", (("lm_eval", "lm_eval"),))):
            if settings[part]["enabled"]:
                out += [{"rule": rule, "jobs": len(pb_runs), "resources": settings["resources"][res]}
                        for rule, res in rules]
    armo = cfg.get("armo") or {}
    studies = {(r.model, r.dataset) for r in plan.runs.values() if r.task == "armo"}
    if studies:
        res = armo["resources"]
        out += [{"rule": "armo_embed", "jobs": len(studies) * int(armo.get("num_shards", 4)), "resources": res["embed"]},
                {"rule": "armo_gather", "jobs": len(studies), "resources": {**res["regress"], "gpus": 0}},
                {"rule": "armo_regress", "jobs": len(studies), "resources": res["regress"]}]
    rlchf = cfg.get("rlchf") or {}
    if rlchf:
        prefix = f"{plan.results}/rlchf/"
        trained = [r for r in plan.runs.values()
                   if str(cfg["datasets"][r.dataset].get("train", "")).replace("{results}", plan.results)
                   .startswith(prefix)]
        out += [{"rule": "rlchf_candidates", "jobs": 2, "resources": rlchf["candidates"]["resources"]},
                {"rule": "rlchf_rank", "jobs": 2, "resources": rlchf["judge"]["resources"]},
                {"rule": "rlchf_eval_groups", "jobs": len(trained), "resources": rlchf["eval"]["resources"]}]
    if cfg.get("online"):
        from fairhpc.online.plan import OnlinePlan

        out += OnlinePlan(cfg, plan.repo, plan).stage_jobs()
    return [s for s in out if s["jobs"]]


def eval_jobs(run: wf.Run) -> int:
    """Evaluation jobs of one run: the held-out evaluation when it is a job of its own, plus one per bias
    benchmark."""
    own = run.eval["enabled"] and run.task not in registry.EVAL_IN_TRAINING
    return int(own) + len(run.eval["benchmarks"])


def cost(plan: wf.Plan) -> dict:
    """{"grids": [row per grid], "total": {...}}: jobs, nodes and GPU-hours of the plan's training and evaluation."""
    rows = []
    for name, keys in plan.grids.items():
        runs = [plan.runs[k] for k in keys]
        train, ev = job_cost(runs[0].resources["train"]), job_cost(runs[0].resources["eval"])
        n_eval = sum(eval_jobs(r) for r in runs)
        rows.append({
            "grid": name, "task": runs[0].task, "train_jobs": len(runs), "nodes_per_train_job": train["nodes"],
            "gpus_per_node": train["gpus_per_node"], "train_hours_per_job": train["hours"],
            "train_gpu_hours": train["gpu_hours"] * len(runs),
            "eval_jobs": n_eval, "eval_gpu_hours": ev["gpu_hours"] * n_eval,
        })
    stages = [{"rule": s["rule"], "jobs": s["jobs"], "gpus_per_job": s["resources"]["gpus"],
               "hours_per_job": job_cost(s["resources"])["hours"],
               "gpu_hours": job_cost(s["resources"])["gpu_hours"] * s["jobs"],
               "cpu_hours": job_cost(s["resources"])["cpu_hours"] * s["jobs"]} for s in stage_jobs(plan)]
    unique = list(plan.runs.values())
    total_train = sum(job_cost(r.resources["train"])["gpu_hours"] for r in unique)
    total_eval = sum(job_cost(r.resources["eval"])["gpu_hours"] * eval_jobs(r) for r in unique)
    total = {"train_jobs": len(unique), "eval_jobs": sum(eval_jobs(r) for r in unique),
             "train_gpu_hours": total_train, "eval_gpu_hours": total_eval,
             "stage_jobs": sum(s["jobs"] for s in stages), "stage_gpu_hours": sum(s["gpu_hours"] for s in stages),
             "gpu_hours": total_train + total_eval + sum(s["gpu_hours"] for s in stages),
             "cpu_hours": sum(job_cost(r.resources["train"])["cpu_hours"]
                              + job_cost(r.resources["eval"])["cpu_hours"] * eval_jobs(r) for r in unique)
                          + sum(s["cpu_hours"] for s in stages),
             "nodes_max": max((r.resources["train"]["nodes"] for r in unique), default=0)}
    return {"grids": rows, "stages": stages, "total": total}


def render(c: dict) -> str:
    head = ("| grid | task | training jobs | nodes x GPUs per job | hours per job | training GPU-h | "
            "eval jobs | eval GPU-h |\n|---|---|---:|---|---:|---:|---:|---:|")
    lines = [head]
    for r in c["grids"]:
        lines.append(f"| {r['grid']} | {r['task']} | {r['train_jobs']} | {r['nodes_per_train_job']} x "
                     f"{r['gpus_per_node']} | {r['train_hours_per_job']:g} | {r['train_gpu_hours']:g} | "
                     f"{r['eval_jobs']} | {r['eval_gpu_hours']:g} |")
    t = c["total"]
    lines.append(f"| **total** (a run in two grids once) | | {t['train_jobs']} | up to {t['nodes_max']} nodes | | "
                 f"{t['train_gpu_hours']:g} | {t['eval_jobs']} | {t['eval_gpu_hours']:g} |")
    if c["stages"]:
        lines += ["", "| stage rule | jobs | GPUs per job | hours per job | GPU-h |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {s['rule']} | {s['jobs']} | {s['gpus_per_job']} | {s['hours_per_job']:g} | {s['gpu_hours']:g} |"
                  for s in c["stages"]]
        lines.append(f"| **total** | {t['stage_jobs']} | | | {t['stage_gpu_hours']:g} |")
    lines.append(f"\nGPU-hours requested (first attempts): {t['gpu_hours']:g}; CPU-hours: {t['cpu_hours']:g}")
    return "\n".join(lines)


def _cmd(args) -> int:
    c = cost(wf.plan(workflow_config(args.configfile or []), REPO))  # WorkflowConfigError is a ConfigError
    print(json.dumps(c, indent=1) if args.json else render(c))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("grid-plan", help="training/evaluation jobs and GPU-hours a workflow config will request",
                       description="Expand the workflow config (config.yaml plus each --configfile, as Snakemake "
                                   "merges them) and print, per grid, the training jobs, nodes and GPUs per job "
                                   "and the GPU-hours requested (time limit x nodes x GPUs, first attempt).")
    p.add_argument("--configfile", nargs="*", default=[], help="workflow config files merged over config.yaml")
    p.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    p.set_defaults(func=_cmd)

"""The workflow config's ``online:`` loops checked and expanded into grid points and per-iteration jobs
(rules/online.smk reads everything from here; tests/test_online.py checks it without Snakemake).

A loop's point is named like a grid point (``fr_alpha0.1_tau-1_seed0``); its iteration i lives in
``{results}/online/<loop>/<point>/iter<i>/``:

    samples.jsonl             K samples per prompt of this iteration's prompt shard, from policy i-1
    scores.jsonl              their rewards (scalar kinds) or the pair-pm tournament's comparisons
    pairs.jsonl, sft.jsonl    the preference pairs (DPO) and best responses (RAFT); pairs_stats.json
    train/                    the training run (train/final is policy i)
    eval/summary.json         held-out reward, win rate against the initial policy, fairness by category

The initial policy's held-out responses and rewards are scored once per loop, in
``{results}/online/<loop>/initial_eval/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from fairhpc import layout, registry
from fairhpc import workflow as wf

ALGO_TASK = {"dpo": "dpo", "raft": "sft"}


@dataclass(frozen=True)
class Point:
    loop: str
    point: str
    mode: str
    params: tuple           # ((key, value), ...) of the objective
    seed: int
    dir: str

    def iter_dir(self, i: int) -> str:
        return f"{self.dir}/iter{i}"


def _fail(where: str, msg: str):
    raise wf.WorkflowConfigError(f"{where}: {msg}")


def _fill(v, results: str):
    if isinstance(v, list):
        return [x.replace("{results}", results) for x in v]
    return v.replace("{results}", results)


def check_loop(where: str, loop: dict) -> None:
    """Settings that no job could run with, refused before anything is submitted."""
    n = loop["iterations"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        _fail(f"{where}.iterations", f"{n!r}: the loop needs N >= 1 iterations")
    g = loop["generate"]
    if not isinstance(g["k"], int) or g["k"] < 2:
        _fail(f"{where}.generate.k", f"{g['k']!r}: K >= 2 samples per prompt are needed to form a pair")
    if not (isinstance(g["temperature"], (int, float)) and g["temperature"] > 0):
        _fail(f"{where}.generate.temperature", f"{g['temperature']!r}: must be > 0 (samples must differ)")
    if not 0 < g["top_p"] <= 1:
        _fail(f"{where}.generate.top_p", f"{g['top_p']!r}: must be in (0, 1]")
    if g["max_new_tokens"] < 1:
        _fail(f"{where}.generate.max_new_tokens", f"{g['max_new_tokens']!r}: must be >= 1")
    m = loop["pairs"]["margin"]
    if not math.isfinite(m) or m < 0:
        _fail(f"{where}.pairs.margin", f"{m!r}: must be a finite number >= 0")
    for key in ("prompts_per_iteration", "eval_prompts"):
        if loop[key] is not None and loop[key] < 1:
            _fail(f"{where}.{key}", f"{loop[key]!r}: must be >= 1 (or null)")
    allowed = registry.MODES[ALGO_TASK[loop["algo"]]]
    for mode in loop["modes"]:
        if mode not in allowed:
            _fail(f"{where}.modes.{mode}", f"algo {loop['algo']} trains with {'/'.join(allowed)}, not {mode}")
    if loop["algo"] == "raft" and loop["reference"] != "previous":
        _fail(f"{where}.reference", "algo raft trains by SFT and has no reference model")
    for part in ("generate", "score", "train", "eval"):
        wf.check_resources(f"{where}.resources.{part}", loop["resources"][part])


def check_model_paths(where: str, loop: dict) -> None:
    """A local initial policy or reward model of the wrong role is refused now (paths made by the workflow
    itself are checked by the jobs that read them)."""
    from fairhpc.errors import ConfigError
    from fairhpc.evaluation.scoring import check_model_role

    for key, role in (("policy", "policy"), ("reward_model", "reward model")):
        path = loop[key]
        if Path(path).is_dir():
            try:
                check_model_role(path, f"{where}.{key}", role)
            except ConfigError as e:
                raise wf.WorkflowConfigError(str(e)) from None


def expand(cfg: dict, repo: Path) -> list[dict]:
    """The checked loops with {results} filled in, each with its points (a list of :class:`Point`)."""
    results = cfg["results"]
    out, names = [], set()
    for n, loop in enumerate(cfg.get("online") or []):
        where = f"online[{n}] ({loop['name']})"
        if loop["name"] in names:
            _fail(where, f"a second loop named {loop['name']!r}")
        names.add(loop["name"])
        loop = {**loop, **{k: loop[k].replace("{results}", results) for k in ("policy", "reward_model")},
                "prompts": {k: _fill(v, results) for k, v in loop["prompts"].items()}}
        if not (Path(repo) / loop["base_config"]).is_file():
            _fail(f"{where}.base_config", f"{loop['base_config']}: file not found (relative to {repo})")
        train = loop["prompts"]["train"]
        if isinstance(train, list) and len(train) != loop["iterations"]:
            _fail(f"{where}.prompts.train", f"{len(train)} prompt sources for {loop['iterations']} iterations: "
                  "give one per iteration, or one source that the iterations share out")
        check_loop(where, loop)
        check_model_paths(where, loop)
        points = []
        for mode, spec in loop["modes"].items():
            for params in wf.grid_points({"modes": {mode: spec}}):
                p_mode, values = params
                for seed in loop["seeds"]:
                    name = wf.point_name(p_mode, values, seed)
                    points.append(Point(loop["name"], name, p_mode, tuple(sorted(values.items())), seed,
                                        f"{results}/online/{loop['name']}/{name}"))
        loop = {**loop, "points": points, "where": where}
        _check_train_config(loop, repo)
        out.append(loop)
    return out


def _check_train_config(loop: dict, repo: Path) -> None:
    """Every point's training config, checked now rather than on a GPU node (models and data that the loop
    makes do not exist yet and are checked as the tiny model and synthetic data)."""
    from fairhpc.config import load_config
    from fairhpc.errors import ConfigError

    probe = OnlinePlan.__new__(OnlinePlan)
    probe.results, probe.repo, probe.plan, probe.loops = "", Path(repo), None, {loop["name"]: loop}
    for p in loop["points"]:
        cmd = probe.train_command(loop["name"], p.point, 1)
        task = cmd[0].removeprefix("train-")
        sets = [s for s in cmd[6:] if not s.startswith(("model.name_or_path=", "model.ref_name_or_path=",
                                                            "data.train=", "output_dir="))]
        sets += ["model.name_or_path=tiny", "data.train=synthetic", f"output_dir={p.dir}/iter1/train"]
        try:
            load_config(Path(repo) / loop["base_config"], sets, task=task)
        except ConfigError as e:
            raise wf.WorkflowConfigError(f"{loop['where']}: point {p.point}: {e}") from None


class OnlinePlan:
    """What rules/online.smk asks: loops, points, each job's inputs and command arguments."""

    def __init__(self, cfg: dict, repo: Path, plan: wf.Plan | None = None):
        self.results = cfg["results"]
        self.repo = Path(repo)
        self.plan = plan
        self.loops = {lp["name"]: lp for lp in expand(cfg, repo)}

    def loop(self, name: str) -> dict:
        return self.loops[name]

    def point(self, loop: str, point: str) -> Point:
        for p in self.loops[loop]["points"]:
            if p.point == point:
                return p
        raise wf.WorkflowConfigError(f"online loop {loop}: no point {point}")

    def initial_eval_dir(self, loop: str) -> str:
        return f"{self.results}/online/{loop}/initial_eval"

    def report_dir(self, loop: str) -> str:
        return f"{self.results}/reports/online/{loop}"

    def _dependency(self, path: str) -> list[str]:
        """A model that another rule of this workflow makes: what to wait for."""
        if self.plan is not None and path.startswith(f"{self.results}/runs/") and Path(path).name == layout.FINAL:
            return self.plan.run_dependency(path)
        return []

    def model_inputs(self, loop: str) -> list[str]:
        """What the loop's first jobs wait for: runs of this workflow that make the initial policy or the
        reward model, and prompt files that its other rules make (under {results}/)."""
        lp = self.loops[loop]
        files = [lp["prompts"]["eval"]] + (lp["prompts"]["train"] if isinstance(lp["prompts"]["train"], list)
                                           else [lp["prompts"]["train"]])
        made = [f for f in files if f.startswith(f"{self.results}/")]
        return self._dependency(lp["policy"]) + self._dependency(lp["reward_model"]) + made + self._hub()

    def _hub(self) -> list[str]:
        """The hub fetch (rule fetch_hub) when the workflow fetches models and data sets first."""
        return list(self.plan.hub_inputs().values()) if self.plan is not None else []

    def policy_before(self, loop: str, point: str, i: int) -> str:
        """Policy i-1: the loop's initial policy for i = 1."""
        return self.loops[loop]["policy"] if i == 1 else f"{self.point(loop, point).iter_dir(i - 1)}/train/{layout.FINAL}"

    def generate_inputs(self, loop: str, point: str, i: int) -> list[str]:
        if i == 1:
            return self.model_inputs(loop)
        return [f"{self.point(loop, point).iter_dir(i - 1)}/train/{layout.SUMMARY}", *self._hub()]

    def generate_args(self, loop: str, point: str, i: int) -> list:
        lp, p = self.loops[loop], self.point(loop, point)
        g = lp["generate"]
        train = lp["prompts"]["train"]
        # one source per iteration (RLHFlow's iterative prompt sets), or one source split into N shards
        src, it, n = (train[i - 1], 1, 1) if isinstance(train, list) else (train, i, lp["iterations"])
        args = ["--policy", self.policy_before(loop, point, i), "--prompts", src, "--split",
                lp["prompts"]["train_split"], "--iteration", it, "--iterations", n, "--k", g["k"],
                "--temperature", g["temperature"], "--top-p", g["top_p"], "--max-new-tokens", g["max_new_tokens"],
                "--engine", g["engine"], "--batch-size", g["batch_size"], "--seed", 1000 * p.seed + i]
        if lp["prompts_per_iteration"]:
            args += ["--per-iteration", lp["prompts_per_iteration"]]
        if g["max_prompt_length"]:
            args += ["--max-prompt-length", g["max_prompt_length"]]
        return args

    def score_args(self, loop: str) -> list:
        lp = self.loops[loop]
        return ["--reward-model", lp["reward_model"], "--selection", lp["pairs"]["selection"],
                "--batch-size", lp["eval"]["batch_size"]]

    def pairs_args(self, loop: str, point: str) -> list:
        lp = self.loops[loop]
        return ["--selection", lp["pairs"]["selection"], "--margin", lp["pairs"]["margin"],
                "--seed", self.point(loop, point).seed]

    def train_command(self, loop: str, point: str, i: int) -> list:
        """`fairhpc train-dpo|train-sft` of iteration i, with its overrides."""
        lp, p = self.loops[loop], self.point(loop, point)
        task = ALGO_TASK[lp["algo"]]
        d = p.iter_dir(i)
        prev = self.policy_before(loop, point, i)
        sets = {**(lp.get("overrides") or {}), "objective.mode": p.mode,
                **{f"objective.{k}": float(v) for k, v in p.params}, "seed": p.seed,
                "model.name_or_path": prev, "output_dir": f"{d}/train",
                "data.train": f"{d}/{'pairs' if task == 'dpo' else 'sft'}.jsonl", "data.eval": None}
        if task == "dpo":
            sets["model.ref_name_or_path"] = prev if lp["reference"] == "previous" else lp["policy"]
        return [f"train-{task}", "--config", str(self.repo / lp["base_config"]), "--resume",
                "--on-mismatch", "restart", *wf.overrides_list(sets)]

    def eval_args(self, loop: str) -> list:
        lp = self.loops[loop]
        ev = lp["eval"]
        args = ["--reward-model", lp["reward_model"], "--prompts", lp["prompts"]["eval"], "--split",
                lp["prompts"]["eval_split"], "--tau", ev["tau"],
                "--max-new-tokens", ev["max_new_tokens"] or lp["generate"]["max_new_tokens"],
                "--batch-size", ev["batch_size"], "--samples", ev["samples"], "--seed", ev["seed"],
                "--temperature", lp["generate"]["temperature"], "--top-p", lp["generate"]["top_p"]]
        if lp["eval_prompts"]:
            args += ["--limit", lp["eval_prompts"]]
        if lp["generate"]["max_prompt_length"]:
            args += ["--max-prompt-length", lp["generate"]["max_prompt_length"]]
        return args

    def iterations(self, loop: str) -> list[int]:
        return list(range(1, self.loops[loop]["iterations"] + 1))

    def eval_summaries(self, loop: str) -> list[str]:
        return [f"{p.iter_dir(i)}/eval/{layout.SUMMARY}" for p in self.loops[loop]["points"]
                for i in self.iterations(loop)]

    def point_dirs(self, loop: str) -> list[str]:
        return [p.dir for p in self.loops[loop]["points"]]

    def targets(self) -> list[str]:
        return [f"{self.report_dir(name)}/online_results.md" for name in self.loops]

    def stage_jobs(self) -> list[dict]:
        """Cluster jobs per rule (fairhpc grid-plan): {"rule", "jobs", "resources"}."""
        out = []
        for lp in self.loops.values():
            n = len(lp["points"]) * lp["iterations"]
            res = lp["resources"]
            out += [{"rule": "online_generate", "jobs": n, "resources": res["generate"]},
                    {"rule": "online_score", "jobs": n, "resources": res["score"]},
                    {"rule": "online_train", "jobs": n, "resources": res["train"]},
                    {"rule": "online_eval", "jobs": n + 1, "resources": res["eval"]}]
        return out

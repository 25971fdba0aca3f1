# Settings and input/param functions of rules/policy_benchmarks.smk (kept apart from the rules, as snakemake --lint
# asks).

from fairhpc.evaluation import policy_benchmarks as PB

try:
    PB_SET = PB.workflow_settings(config)
    PB_RUNS = PB.benchmark_runs(PLAN, PB_SET)
except PB.ConfigError as e:
    raise WorkflowError(str(e)) from None
PB_DIR = f"{RESULTS}/policy_benchmarks"
PB_FETCHED = f"{PB_DIR}/fetched.json"
PB_TASKS = "|".join(sorted({r.task for r in PB_RUNS})) or "(?!)"
# the download goes into the grid's hub cache; with hub.fetch false nothing is downloaded (offline prefix)
if PLAN.hub["fetch"]:
    PB_FETCH_ENV = f"export HF_HOME={PLAN.hub['cache']}; " if PLAN.hub["cache"] else ""
else:
    PB_FETCH_ENV = HUB_ENV


def pb_part(name):
    return PB_SET.get(name, {}) if PB_SET else {}


def pb_resource(part, name):
    def value(wildcards, attempt):
        r = PB_SET["resources"][part]
        return wf.job_resources(r, attempt, config["retry_growth"])[name]

    return value


def pb_threads(part):
    return PB_SET["resources"][part]["cpus"] if PB_SET else 1


def pb_alpaca_args(wildcards) -> str:
    ae = pb_part("alpaca_eval")
    src = ae["instructions_file"] or f"{PB_DIR}/alpaca_eval/instructions.json"
    args = ["--instructions", "", "--instructions-file", src]
    args += ["--max-new-tokens", ae["max_new_tokens"], "--batch-size", ae["batch_size"]]
    args += ["--limit", ae["limit"]] if ae["limit"] else []
    args += ["--generator", f"{wildcards.model}_{wildcards.point}"]
    return wf.quoted(str(a) for a in args)


def pb_alpaca_judge_args(wildcards) -> str:
    ae = pb_part("alpaca_eval")
    ref = ae["reference_outputs"] or f"{PB_DIR}/alpaca_eval/reference_outputs.json"
    return wf.quoted(["--annotator", ae["annotator"], "--reference-outputs", ref])


def pb_mt_data() -> str:
    if (
        not PB_SET
    ):  # no policy_benchmarks section: the rules exist but no target asks for them
        return ""
    return pb_part("mt_bench").get("data_dir") or f"{PB_DIR}/mt_bench_data"


def pb_mt_args() -> str:
    if (
        not PB_SET
    ):  # no policy_benchmarks section: the rules exist but no target asks for them
        return ""
    mt = pb_part("mt_bench")
    args = ["--max-new-tokens", mt["max_new_tokens"], "--sampling", mt["sampling"]]
    args += ["--batch-size", mt["batch_size"]] + (
        ["--limit", mt["limit"]] if mt["limit"] else []
    )
    return wf.quoted(str(a) for a in args)


def pb_mt_judge_args() -> str:
    if (
        not PB_SET
    ):  # no policy_benchmarks section: the rules exist but no target asks for them
        return ""
    mt = pb_part("mt_bench")
    args = ["--judge", mt["judge"], "--reference-model", mt["reference_model"]]
    args += ["--judge-max-new-tokens", mt["judge_max_new_tokens"]]
    args += ["--judge-path", mt["judge_path"]] if mt["judge_path"] else []
    return wf.quoted(str(a) for a in args)


def pb_lm_args() -> str:
    if (
        not PB_SET
    ):  # no policy_benchmarks section: the rules exist but no target asks for them
        return ""
    le = pb_part("lm_eval")
    args = ["--tasks", ",".join(le["tasks"]), "--batch-size", le["batch_size"]]
    args += ["--include-path", le["include_path"]] if le["include_path"] else []
    args += ["--limit", le["limit"]] if le["limit"] else []
    args += (
        ["--num-fewshot", le["num_fewshot"]] if le["num_fewshot"] is not None else []
    )
    return wf.quoted(str(a) for a in args)


def pb_judge_models(kind) -> list[str]:
    """The local judge models of a judging job (MT-Bench judge_path, the model_name of a local alpaca_eval
    annotator config)."""
    if not PB_SET:
        return []
    if kind == "mt_bench":
        return (
            [PB_SET["mt_bench"]["judge_path"]]
            if PB_SET["mt_bench"]["judge_path"]
            else []
        )
    cfg = Path(PB_SET["alpaca_eval"]["annotator"])
    cfg = cfg / "configs.yaml" if cfg.is_dir() else cfg
    if not cfg.is_file():
        return []
    from fairhpc.yamlio import load_yaml

    return [
        a["completions_kwargs"]["model_name"]
        for a in (load_yaml(cfg) or {}).values()
        if isinstance(a, dict) and "model_name" in (a.get("completions_kwargs") or {})
    ]


def pb_judge_inputs(kind):
    """A judge that is another run's final model: that run's summary (so that it is trained first)."""

    def inputs(wildcards) -> list[str]:
        try:
            return [
                d for m in pb_judge_models(kind) for d in PLAN.run_dependency(str(m))
            ]
        except wf.WorkflowConfigError as e:
            raise WorkflowError(str(e)) from None

    return inputs


def pb_outputs(run) -> dict:
    out = {}
    if pb_part("alpaca_eval").get("enabled"):
        out["alpaca_eval"] = f"{run.dir}/alpaca_eval/{layout.SUMMARY}"
    if pb_part("mt_bench").get("enabled"):
        out["mt_bench"] = f"{run.dir}/mt_bench/{layout.SUMMARY}"
    if pb_part("lm_eval").get("enabled"):
        out["lm_eval"] = f"{run.dir}/lm_eval/{layout.SUMMARY}"
    return out


def pb_study_runs(wildcards) -> list:
    return [r for r in _study(wildcards) if r in PB_RUNS]


def pb_report_inputs(wildcards) -> list[str]:
    return [f for r in pb_study_runs(wildcards) for f in pb_outputs(r).values()]


def pb_report_args(wildcards) -> str:
    specs = []
    for r in pb_study_runs(wildcards):
        parts = [f"name={r.model}/{r.point}", f"point={r.point}"]
        parts += [f"{k}={v}" for k, v in pb_outputs(r).items()]
        specs += ["--run", ";".join(parts)]
    base = PB_SET["paper_reference"].get(wildcards.model) if PB_SET else None
    specs += ["--paper", base] if base else []
    return wf.quoted(specs)

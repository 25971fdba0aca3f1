# Settings and input/param functions of rules/armo.smk (kept apart from the rules, as snakemake --lint
# asks).

ARMO = config.get("armo") or {}
ARMO_DIR = f"{RESULTS}/armo"
ARMO_SHARDS = int(ARMO.get("num_shards", 4))
ARMO_STUDY = f"{ARMO_DIR}/{{model}}/{{dataset}}"
ARMO_INPUT_KEYS = ("armo.embeddings", "armo.regression")


def armo_studies():
    """(model, dataset) -> (base config, overrides of the embed and regress stages) of the armo grids."""
    grids = {g["name"]: g for g in config["grids"]}
    out = {}
    for run in sorted(PLAN.runs.values(), key=lambda r: r.dir):
        if run.task != "armo":
            continue
        grid = grids[run.grid]
        ds = config["datasets"][run.dataset]
        _, data_over = wf.dataset_sources(run.dataset, ds, RESULTS)
        over = {
            **ds.get("overrides", {}),
            **data_over,
            **config["models"][run.model]["overrides"],
            **grid.get("overrides", {}),
        }
        over = {k: v for k, v in over.items() if k not in ARMO_INPUT_KEYS}
        out.setdefault(
            (run.model, run.dataset), (run.base_config, over, dict(run.data_files))
        )
    return out


ARMO_RUNS = armo_studies()


def _armo_study(wildcards):
    key = (wildcards.model, wildcards.dataset)
    if key not in ARMO_RUNS:
        raise WorkflowError(
            f"armo: no `task: armo` grid trains model {key[0]!r} on data set {key[1]!r}"
        )
    return ARMO_RUNS[key]


def armo_inputs(wildcards):
    base, _, data_files = _armo_study(wildcards)
    return {"config": str(REPO / base), **data_files, **PLAN.hub_inputs()}


def armo_overrides(wildcards):
    return wf.quoted(wf.overrides_list(_armo_study(wildcards)[1]))


def armo_resources(stage, name):
    def value(wildcards, attempt):
        r = ARMO["resources"][stage]
        return wf.job_resources(r, attempt, config["retry_growth"])[name]

    return value


def armo_shards(wildcards):
    return [
        f"{ARMO_DIR}/{wildcards.model}/{wildcards.dataset}/embeddings/shards/"
        f"shard-{i:05d}-of-{ARMO_SHARDS:05d}.safetensors"
        for i in range(ARMO_SHARDS)
    ]

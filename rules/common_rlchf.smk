# Settings and input/param functions of rules/rlchf.smk (kept apart from the rules, as snakemake --lint
# asks).

RLCHF = config.get("rlchf") or {}
RLCHF_DIR = f"{RESULTS}/rlchf"
RLCHF_EVAL = "rlchf_eval"


def rlchf_runs():
    """Runs of the grids trained on a data set that the RLCHF rules make."""
    prefix = f"{RLCHF_DIR}/"
    out = []
    for run in PLAN.runs.values():
        train = str(config["datasets"][run.dataset].get("train", ""))
        if train.replace("{results}", RESULTS).startswith(prefix):
            out.append(run)
    return sorted(out, key=lambda r: r.dir)


def rlchf_resources(part, name):
    def value(wildcards, attempt):
        r = RLCHF[part]["resources"]
        return wf.job_resources(r, attempt, config["retry_growth"])[name]

    return value


def rlchf_candidates_args(wildcards):
    c = RLCHF["candidates"]
    split = wildcards.split
    seed = c["seed"] + (0 if split == "train" else 1)
    common = ["--k", c["k"], "--seed", seed]
    if c.get("limit"):
        common += ["--limit", c["limit"]]
    if "policy" in c:
        args = ["--policy", c["policy"], "--temperature", c["temperature"]]
        args += [
            "--max-new-tokens",
            c["max_new_tokens"],
            "--batch-size",
            c["batch_size"],
        ]
        if "data" in c:
            args += ["--data", c["data"][split]]
    elif "columns" in c:
        args = ["--data", c["data"][split], "--columns", ",".join(c["columns"])]
    else:
        syn = {"train": 300, "eval": 100, **(c.get("synthetic") or {})}
        args = ["--synthetic", syn[split]]
    return wf.quoted(args + common)


def rlchf_rank_args(wildcards):
    j = RLCHF["judge"]
    args = ["--judge", j["model"], "--seed", j["seed"], "--group-by", RLCHF["group_by"]]
    if j["model"] == "synthetic":
        args += ["--noise", j["noise"]]
    else:
        args += [
            "--temperature",
            j["temperature"],
            "--max-new-tokens",
            j["max_new_tokens"],
        ]
        args += ["--batch-size", j["batch_size"]]
    return wf.quoted(args)


def rlchf_eval_inputs(wildcards):
    run = _run(wildcards)
    return {"summary": run.summary, "rankings": f"{RLCHF_DIR}/rankings_eval.jsonl"}

# Settings and input/param functions of rules/online.smk (fairhpc/online/plan.py holds the logic and its
# unit tests; kept apart from the rules, as snakemake --lint asks).

from fairhpc.online.plan import OnlinePlan

try:
    ONLINE = OnlinePlan(config, REPO, PLAN)
except wf.WorkflowConfigError as e:
    raise WorkflowError(str(e)) from None

ONLINE_ITER = f"{RESULTS}/online/{{loop}}/{{point}}/iter{{iter}}"
ONLINE_INITIAL = f"{RESULTS}/online/{{loop}}/initial_eval"
ONLINE_REPORT = f"{RESULTS}/reports/online/{{loop}}"


def _online_it(wildcards) -> int:
    return int(wildcards.iter)


def online_resources(part, name):
    def value(wildcards, attempt):
        r = ONLINE.loop(wildcards.loop)["resources"][part]
        return wf.job_resources(r, attempt, config["retry_growth"])[name]

    return value


def online_threads(part):
    def threads(wildcards):
        return ONLINE.loop(wildcards.loop)["resources"][part]["cpus"]

    return threads


def online_generate_inputs(wildcards):
    return ONLINE.generate_inputs(wildcards.loop, wildcards.point, _online_it(wildcards))


def online_generate_args(wildcards):
    return wf.quoted(
        ONLINE.generate_args(wildcards.loop, wildcards.point, _online_it(wildcards))
    )


def online_score_args(wildcards):
    return wf.quoted(ONLINE.score_args(wildcards.loop))


def online_pairs_args(wildcards):
    return wf.quoted(ONLINE.pairs_args(wildcards.loop, wildcards.point))


def online_train_command(wildcards):
    return wf.quoted(
        ONLINE.train_command(wildcards.loop, wildcards.point, _online_it(wildcards))
    )


def online_launcher(wildcards):
    return wf.launcher(ONLINE.loop(wildcards.loop)["resources"]["train"])


def online_eval_args(wildcards):
    return wf.quoted(ONLINE.eval_args(wildcards.loop))


def online_model_inputs(wildcards):
    return ONLINE.model_inputs(wildcards.loop)


def online_eval_summaries(wildcards):
    return ONLINE.eval_summaries(wildcards.loop)


def online_point_dirs(wildcards):
    return wf.quoted(ONLINE.point_dirs(wildcards.loop))

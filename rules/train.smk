# Training: one DeepSpeed job per grid point, `fairhpc train-{task}` (task: rm = reward model, dpo = policy).
#
# The job always passes --resume: a retry after a time-limit kill, a preemption or a requeue continues from
# the checkpoint the trainer wrote on SLURM's SIGTERM (or its last periodic one); a first attempt starts
# fresh.  `exec` makes the trainer (or srun, which forwards signals to the ranks) the process that receives
# the signal, so nothing between SLURM and the trainer dies first.  Only the run's summary, written last, is
# the declared output: Snakemake deletes the outputs of a failed job, and the checkpoints must survive.  The
# job log is a link to the run's train.log, which keeps every attempt (Snakemake removes a log before each
# attempt).  --on-mismatch restart: when Snakemake reruns a job because its parameters (or base config,
# or data) changed, the trainer finds a run of another configuration in RUN/, moves it aside to
# RUN.superseded-<time>/ and trains afresh (fairhpc/runstate.py); a retry of the same job resumes.


rule train:
    input:
        unpack(train_inputs),
        ops=OPS_MARKER,
    output:
        f"{RUN}/{layout.SUMMARY}",
    log:
        f"{RESULTS}/logs/train/{RUN_LOG}",
    wildcard_constraints:
        task=TASKS,
    conda:
        "../envs/fairhpc.yaml"
    threads: threads_of("train")
    resources:
        runtime=resource("train", "runtime"),
        mem_mb=resource("train", "mem_mb"),
        nodes=resource("train", "nodes"),
        gres=resource("train", "gres"),
        mpi=resource("train", "mpi"),
        tasks_per_node=resource("train", "tasks_per_node"),
        slurm_extra=resource("train", "slurm_extra"),
        attempt=resource("train", "attempt"),
    params:
        run=run_attr("dir"),
        train_log=f"{RUN}/{layout.TRAIN_LOG}",
        overrides=train_overrides,
        then_eval=train_eval_args,
        launch=launcher("train"),
        hub_env=HUB_ENV,
    shell:
        'mkdir -p {params.run} && ln -sfn "$(cd "$(dirname {params.train_log})" && pwd)/$(basename {params.train_log})" '
        "{log}; "
        'echo "== attempt {resources.attempt} on $(hostname) at $(date -Is) ==" >> {log}; '
        "export OMP_NUM_THREADS={threads} TOKENIZERS_PARALLELISM=false; {params.hub_env}"
        "{params.launch} fairhpc train-{wildcards.task} --config {input.config} --resume --on-mismatch restart "
        "{params.then_eval} {params.overrides} >> {log} 2>&1"


# Reward models: the same job also scores the model it holds on the held-out pairs (`--then-eval`, the
# command that rule evaluate would run), writing RUN/eval/ as `fairhpc eval-rm` does.
use rule train as train_and_evaluate with:
    output:
        summary=f"{RUN}/{layout.SUMMARY}",
        eval_summary=f"{RUN}/{layout.EVAL}/{layout.SUMMARY}",
        per_example=f"{RUN}/{layout.EVAL}/{layout.PER_EXAMPLE}",
    wildcard_constraints:
        task=TASKS_EVAL_IN_TRAINING,
        point=POINTS_EVAL_IN_TRAINING,


# a reward model with evaluation on is trained by train_and_evaluate; with eval.enabled: false by train
ruleorder: train_and_evaluate > train

# Scoring every trained model, read by `fairhpc report`.  The command of each job comes from
# fairhpc/workflow.py (Plan.eval_command, Plan.bias_benchmark_command), where it is unit-tested:
#   evaluate              into RUN/eval/: `fairhpc eval-rm` of a reward model on the data set's held-out
#                         pairs (accuracy, fairness indices, rewards per category, length bias), or
#                         `fairhpc eval-policy` of a policy: generations on the held-out prompts judged by the
#                         grid's eval.reward_model against eval.reference (win rate, reward, length).
#                         Tasks in registry.EVAL_IN_TRAINING (reward models) have no evaluation job: the
#                         training job runs the same command in-process (rule train_and_evaluate)
#   eval_bias_benchmark   into RUN/bench_<name>/: `fairhpc eval-benchmark` of a reward model for each
#                         eval.benchmarks entry of its grid (RewardBench, CrowS-Pairs, HH-RLHF); the config
#                         check refuses bias benchmarks in DPO grids


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        summary=f"{RUN}/{layout.EVAL}/{layout.SUMMARY}",
        per_example=f"{RUN}/{layout.EVAL}/{layout.PER_EXAMPLE}",
    log:
        f"{RESULTS}/logs/evaluate/{RUN_LOG}",
    wildcard_constraints:
        task=TASKS_EVAL_JOB,
    # short jobs: on a cluster, profile `group-components: evaluation=N` runs N of them in one allocation
    group:
        "evaluation"
    conda:
        "../envs/fairhpc.yaml"
    threads: threads_of("eval")
    resources:
        runtime=resource("eval", "runtime"),
        mem_mb=resource("eval", "mem_mb"),
        gres=resource("eval", "gres"),
    params:
        command=eval_command,
        hub_env=HUB_ENV,
    shell:
        "{params.hub_env}OMP_NUM_THREADS={threads} fairhpc {params.command} > {log} 2>&1"


use rule evaluate as eval_bias_benchmark with:
    input:
        summary=f"{RUN}/{layout.SUMMARY}",
    output:
        summary=f"{RUN}/{BIAS_BENCHMARK}/{layout.SUMMARY}",
        per_example=f"{RUN}/{BIAS_BENCHMARK}/{layout.PER_EXAMPLE}",
    log:
        f"{RESULTS}/logs/eval_bias_benchmark/{{task}}/{{model}}/{{dataset}}/{{point}}/{{benchmark}}.log",
    wildcard_constraints:
        task="rm",
    params:
        command=bias_benchmark_command,

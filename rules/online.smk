# Online iterative DPO / RAFT (docs/online.md): for every loop of the workflow config's `online:` section and
# every point of it, iterations i = 1..N, each stage a job writing {results}/online/<loop>/<point>/iter<i>/:
#   online_generate  samples.jsonl        K samples per prompt of shard i from policy i-1   `online-generate`
#   online_score     scores.jsonl         rewards, or a pair-pm's tournament                 `online-score`
#   online_pairs     pairs.jsonl sft.jsonl  best vs worst (margin filter), pairs_stats.json  `online-pairs`
#   online_train     train/summary.json   DPO from policy i-1 (or SFT on the best: raft)     `train-dpo|sft`
#   online_eval      eval/summary.json    held-out reward, win rate vs the initial policy    `online-eval`
# plus the initial policy's evaluation once per loop and the report in {results}/reports/online/<loop>/.
# Iteration i's generate job waits for iteration i-1's training, so a killed loop restarts where it stopped
# (Snakemake reruns only what is missing or incomplete; the training job resumes from its checkpoint).

include: "common_online.smk"


rule online_initial_eval:
    input:
        online_model_inputs,
    output:
        summary=f"{ONLINE_INITIAL}/{layout.SUMMARY}",
        responses=f"{ONLINE_INITIAL}/responses.jsonl",
    log:
        f"{RESULTS}/logs/online/{{loop}}/initial_eval.log",
    conda:
        "../envs/fairhpc.yaml"
    threads: online_threads("eval")
    resources:
        runtime=online_resources("eval", "runtime"),
        mem_mb=online_resources("eval", "mem_mb"),
        gres=online_resources("eval", "gres"),
    params:
        policy=lambda wildcards: ONLINE.loop(wildcards.loop)["policy"],
        args=online_eval_args,
        out=ONLINE_INITIAL,
        hub_env=HUB_ENV,
    shell:
        "{params.hub_env}OMP_NUM_THREADS={threads} fairhpc online-eval --policy {params.policy} {params.args} "
        "--out {params.out} > {log} 2>&1"


rule online_generate:
    input:
        online_generate_inputs,
    output:
        samples=f"{ONLINE_ITER}/samples.jsonl",
        info=f"{ONLINE_ITER}/samples.jsonl.json",
    log:
        f"{RESULTS}/logs/online/{{loop}}/{{point}}/iter{{iter}}_generate.log",
    wildcard_constraints:
        iter=r"\d+",
    conda:
        "../envs/fairhpc.yaml"
    threads: online_threads("generate")
    resources:
        runtime=online_resources("generate", "runtime"),
        mem_mb=online_resources("generate", "mem_mb"),
        gres=online_resources("generate", "gres"),
    params:
        args=online_generate_args,
        hub_env=HUB_ENV,
    shell:
        "{params.hub_env}OMP_NUM_THREADS={threads} fairhpc online-generate {params.args} --out {output.samples} "
        "> {log} 2>&1"


rule online_score:
    input:
        samples=f"{ONLINE_ITER}/samples.jsonl",
        models=online_model_inputs,
    output:
        scores=f"{ONLINE_ITER}/scores.jsonl",
        info=f"{ONLINE_ITER}/scores.jsonl.json",
    log:
        f"{RESULTS}/logs/online/{{loop}}/{{point}}/iter{{iter}}_score.log",
    wildcard_constraints:
        iter=r"\d+",
    conda:
        "../envs/fairhpc.yaml"
    threads: online_threads("score")
    resources:
        runtime=online_resources("score", "runtime"),
        mem_mb=online_resources("score", "mem_mb"),
        gres=online_resources("score", "gres"),
    params:
        args=online_score_args,
        hub_env=HUB_ENV,
    shell:
        "{params.hub_env}OMP_NUM_THREADS={threads} fairhpc online-score --samples {input.samples} {params.args} "
        "--out {output.scores} > {log} 2>&1"


rule online_pairs:
    input:
        f"{ONLINE_ITER}/scores.jsonl",
    output:
        pairs=f"{ONLINE_ITER}/pairs.jsonl",
        sft=f"{ONLINE_ITER}/sft.jsonl",
        stats=f"{ONLINE_ITER}/pairs_stats.json",
    log:
        f"{RESULTS}/logs/online/{{loop}}/{{point}}/iter{{iter}}_pairs.log",
    wildcard_constraints:
        iter=r"\d+",
    conda:
        "../envs/fairhpc.yaml"
    params:
        args=online_pairs_args,
        out=lambda wildcards, output: os.path.dirname(output.pairs),
    shell:
        "fairhpc online-pairs --scores {input} {params.args} --out {params.out} > {log} 2>&1"


# Only the run's summary, written last, is the declared output (as in rule train): the checkpoints of a
# killed attempt must survive for --resume.
rule online_train:
    input:
        pairs=f"{ONLINE_ITER}/pairs.jsonl",
        sft=f"{ONLINE_ITER}/sft.jsonl",
        ops=OPS_MARKER,
    output:
        f"{ONLINE_ITER}/train/{layout.SUMMARY}",
    log:
        f"{RESULTS}/logs/online/{{loop}}/{{point}}/iter{{iter}}_train.log",
    wildcard_constraints:
        iter=r"\d+",
    conda:
        "../envs/fairhpc.yaml"
    threads: online_threads("train")
    resources:
        runtime=online_resources("train", "runtime"),
        mem_mb=online_resources("train", "mem_mb"),
        nodes=online_resources("train", "nodes"),
        gres=online_resources("train", "gres"),
        mpi=online_resources("train", "mpi"),
        tasks_per_node=online_resources("train", "tasks_per_node"),
        slurm_extra=online_resources("train", "slurm_extra"),
    params:
        command=online_train_command,
        launch=online_launcher,
        hub_env=HUB_ENV,
    shell:
        "export OMP_NUM_THREADS={threads} TOKENIZERS_PARALLELISM=false; {params.hub_env}"
        "{params.launch} fairhpc {params.command} > {log} 2>&1"


rule online_eval:
    input:
        train=f"{ONLINE_ITER}/train/{layout.SUMMARY}",
        initial=f"{ONLINE_INITIAL}/{layout.SUMMARY}",
    output:
        summary=f"{ONLINE_ITER}/eval/{layout.SUMMARY}",
        responses=f"{ONLINE_ITER}/eval/responses.jsonl",
    log:
        f"{RESULTS}/logs/online/{{loop}}/{{point}}/iter{{iter}}_eval.log",
    wildcard_constraints:
        iter=r"\d+",
    conda:
        "../envs/fairhpc.yaml"
    threads: online_threads("eval")
    resources:
        runtime=online_resources("eval", "runtime"),
        mem_mb=online_resources("eval", "mem_mb"),
        gres=online_resources("eval", "gres"),
    params:
        policy=f"{ONLINE_ITER}/train/{layout.FINAL}",
        baseline=lambda wildcards, input: os.path.dirname(input.initial),
        args=online_eval_args,
        out=f"{ONLINE_ITER}/eval",
        hub_env=HUB_ENV,
    shell:
        "{params.hub_env}OMP_NUM_THREADS={threads} fairhpc online-eval --policy {params.policy} "
        "--baseline {params.baseline} {params.args} --out {params.out} > {log} 2>&1"


rule online_report:
    input:
        evals=online_eval_summaries,
        initial=f"{ONLINE_INITIAL}/{layout.SUMMARY}",
    output:
        md=f"{ONLINE_REPORT}/online_results.md",
        csv=f"{ONLINE_REPORT}/online_results.csv",
        png=report(
            f"{ONLINE_REPORT}/online.png",
            caption="report/online.rst",
            category="online",
            subcategory="{loop}",
            labels={"figure": "reward and fairness per iteration"},
        ),
    log:
        f"{RESULTS}/logs/online/{{loop}}/report.log",
    conda:
        "../envs/fairhpc.yaml"
    params:
        points=online_point_dirs,
        initial=lambda wildcards, input: os.path.dirname(input.initial),
        out=ONLINE_REPORT,
    shell:
        "fairhpc online-report --points {params.points} --initial {params.initial} --out {params.out} > {log} 2>&1"


EXTRA_TARGETS.extend(ONLINE.targets())

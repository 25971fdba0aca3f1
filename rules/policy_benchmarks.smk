# The paper's policy benchmarks of the DPO grids (docs/policy_benchmarks.md), each run by its own tool, with
# the workflow config's `policy_benchmarks:` section (schemas/config.schema.yaml; absent = off):
#   policy_benchmarks_fetch  (submit host) AlpacaEval instructions and baseline outputs, the LC GLM's files,
#                            FastChat's MT-Bench files, the lm-eval tasks' data, a hub-named local judge
#   alpaca_eval_generate     RUN/alpaca_eval/model_outputs.json          (GPU: resources.generate)
#   alpaca_eval_judge        RUN/alpaca_eval/summary.json                (resources.judge)
#   mt_bench_generate        RUN/mt_bench/answers/<model>_<point>.jsonl  (GPU: resources.generate)
#   mt_bench_judge           RUN/mt_bench/summary.json                   (resources.judge)
#   lm_eval                  RUN/lm_eval/summary.json                    (GPU: resources.lm_eval)
#   policy_benchmarks_report reports/{grid}/{model}/{dataset}/policy_benchmarks.md, beside the paper's numbers
# Judge credentials (OPENAI_API_KEY, OPENAI_BASE_URL, ANTHROPIC_API_KEY) come from the environment that
# Snakemake passes to the jobs; they are refused in the config and never written to commands or logs.

include: "common_policy_benchmarks.smk"


if PB_RUNS:
    for (grid, model, dataset), runs in PLAN.studies().items():
        if any(r in PB_RUNS for r in runs):
            EXTRA_TARGETS.append(
                f"{PLAN.report_dir(grid, model, dataset)}/policy_benchmarks.md"
            )


rule policy_benchmarks_fetch:
    output:
        PB_FETCHED,
    log:
        f"{RESULTS}/logs/policy_benchmarks_fetch.log",
    conda:
        "../envs/fairhpc.yaml"
    params:
        settings=json.dumps(config.get("policy_benchmarks") or {}),
        env=PB_FETCH_ENV,
        out=lambda wildcards, output: os.path.dirname(output[0]),  # PB_DIR
        no_download="" if PLAN.hub["fetch"] else "--no-download",
    shell:
        "{params.env}fairhpc policy-bench-fetch --settings {params.settings:q} --out {params.out} "
        "{params.no_download} > {log} 2>&1"


rule alpaca_eval_generate:
    input:
        summary=f"{RUN}/{layout.SUMMARY}",
        fetched=PB_FETCHED,
    output:
        f"{RUN}/alpaca_eval/model_outputs.json",
    log:
        f"{RESULTS}/logs/alpaca_eval_generate/{RUN_LOG}",
    wildcard_constraints:
        task=PB_TASKS,
    conda:
        "../envs/fairhpc.yaml"
    threads: pb_threads("generate")
    resources:
        runtime=pb_resource("generate", "runtime"),
        mem_mb=pb_resource("generate", "mem_mb"),
        gres=pb_resource("generate", "gres"),
    params:
        final=run_attr("final"),
        out=lambda wc, output: str(Path(output[0]).parent),
        args=pb_alpaca_args,
        hub_env=HUB_ENV,
    shell:
        "{params.hub_env}OMP_NUM_THREADS={threads} fairhpc alpaca-eval generate --policy {params.final} "
        "--out {params.out} {params.args} > {log} 2>&1"


rule alpaca_eval_judge:
    input:
        outputs=f"{RUN}/alpaca_eval/model_outputs.json",
        fetched=PB_FETCHED,
        judge=pb_judge_inputs("alpaca_eval"),
    output:
        f"{RUN}/alpaca_eval/{layout.SUMMARY}",
    log:
        f"{RESULTS}/logs/alpaca_eval_judge/{RUN_LOG}",
    wildcard_constraints:
        task=PB_TASKS,
    conda:
        "../envs/fairhpc.yaml"
    threads: pb_threads("judge")
    resources:
        runtime=pb_resource("judge", "runtime"),
        mem_mb=pb_resource("judge", "mem_mb"),
        gres=pb_resource("judge", "gres"),
    params:
        out=lambda wc, output: str(Path(output[0]).parent),
        args=pb_alpaca_judge_args,
        hub_env=HUB_ENV,
    shell:
        "{params.hub_env}OMP_NUM_THREADS={threads} fairhpc alpaca-eval judge --outputs {input.outputs} "
        "--out {params.out} {params.args} > {log} 2>&1"


rule mt_bench_generate:
    input:
        summary=f"{RUN}/{layout.SUMMARY}",
        fetched=PB_FETCHED,
    output:
        f"{RUN}/mt_bench/answers/{{model}}_{{point}}.jsonl",
    log:
        f"{RESULTS}/logs/mt_bench_generate/{RUN_LOG}",
    wildcard_constraints:
        task=PB_TASKS,
    conda:
        "../envs/fairhpc.yaml"
    threads: pb_threads("generate")
    resources:
        runtime=pb_resource("generate", "runtime"),
        mem_mb=pb_resource("generate", "mem_mb"),
        gres=pb_resource("generate", "gres"),
    params:
        final=run_attr("final"),
        data=pb_mt_data(),
        args=pb_mt_args(),
        hub_env=HUB_ENV,
    shell:
        "{params.hub_env}OMP_NUM_THREADS={threads} fairhpc mt-bench generate --policy {params.final} "
        "--data-dir {params.data} --answers {output} {params.args} > {log} 2>&1"


rule mt_bench_judge:
    input:
        answers=f"{RUN}/mt_bench/answers/{{model}}_{{point}}.jsonl",
        fetched=PB_FETCHED,
        judge=pb_judge_inputs("mt_bench"),
    output:
        f"{RUN}/mt_bench/{layout.SUMMARY}",
    log:
        f"{RESULTS}/logs/mt_bench_judge/{RUN_LOG}",
    wildcard_constraints:
        task=PB_TASKS,
    conda:
        "../envs/fairhpc.yaml"
    threads: pb_threads("judge")
    resources:
        runtime=pb_resource("judge", "runtime"),
        mem_mb=pb_resource("judge", "mem_mb"),
        gres=pb_resource("judge", "gres"),
    params:
        data=pb_mt_data(),
        out=lambda wc, output: str(Path(output[0]).parent),
        args=pb_mt_judge_args(),
        hub_env=HUB_ENV,
    shell:
        "{params.hub_env}OMP_NUM_THREADS={threads} fairhpc mt-bench judge --data-dir {params.data} "
        "--answers {input.answers} --out {params.out} {params.args} > {log} 2>&1"


rule lm_eval:
    input:
        summary=f"{RUN}/{layout.SUMMARY}",
        fetched=PB_FETCHED,
    output:
        f"{RUN}/lm_eval/{layout.SUMMARY}",
    log:
        f"{RESULTS}/logs/lm_eval/{RUN_LOG}",
    wildcard_constraints:
        task=PB_TASKS,
    conda:
        "../envs/fairhpc.yaml"
    threads: pb_threads("lm_eval")
    resources:
        runtime=pb_resource("lm_eval", "runtime"),
        mem_mb=pb_resource("lm_eval", "mem_mb"),
        gres=pb_resource("lm_eval", "gres"),
    params:
        final=run_attr("final"),
        out=lambda wc, output: str(Path(output[0]).parent),
        args=pb_lm_args(),
        hub_env=HUB_ENV,
    shell:
        "{params.hub_env}OMP_NUM_THREADS={threads} fairhpc lm-eval --model {params.final} --out {params.out} "
        "{params.args} > {log} 2>&1"


rule policy_benchmarks_report:
    input:
        pb_report_inputs,
    output:
        md=f"{STUDY}/policy_benchmarks.md",
        json=f"{STUDY}/policy_benchmarks.json",
    log:
        f"{RESULTS}/logs/policy_benchmarks_report/{{grid}}/{{model}}/{{dataset}}.log",
    conda:
        "../envs/fairhpc.yaml"
    params:
        args=pb_report_args,
    shell:
        "fairhpc policy-bench-report {params.args} --out {output.md} > {log} 2>&1"


# seconds on the submitting host: the download (which needs the internet) and the table
localrules:
    policy_benchmarks_fetch,
    policy_benchmarks_report,

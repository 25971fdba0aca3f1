# RLCHF (docs/rlchf.md): the workflow config's `rlchf:` section makes, under {results}/rlchf/,
#   personas.jsonl                        rule rlchf_personas     `fairhpc personas`
#   candidates_{train,eval}.jsonl         rule rlchf_candidates   `fairhpc candidates` (a GPU job when sampled
#                                                                 from a policy: rlchf.candidates.resources)
#   rankings_{train,eval}.jsonl           rule rlchf_rank         `fairhpc rank` (the judge's own resources:
#                                                                 rlchf.judge.resources)
#   <method>/{pairs,sft,aggregated}.jsonl rule rlchf_aggregate    `fairhpc aggregate --swf <method>`
# Data sets of the grids name `train: "{results}/rlchf/<method>/pairs.jsonl"` (DPO) or `.../sft.jsonl` (SFT),
# so the generic rule `train` waits for the aggregate.  Every trained run on such a data set is scored per
# persona group on the held-out rankings (rule rlchf_eval_groups, into RUN/rlchf_eval/), and rule
# rlchf_report compares them all in {results}/reports/rlchf/ (part of the default target).

include: "common_rlchf.smk"


if RLCHF:
    n_personas = RLCHF["personas"]["n"]
    stratify = ",".join(RLCHF["personas"]["stratify"])

    rule rlchf_personas:
        output:
            f"{RLCHF_DIR}/personas.jsonl",
        log:
            f"{RESULTS}/logs/rlchf/personas.log",
        conda:
            "../envs/fairhpc.yaml"
        params:
            args=wf.quoted(
                [
                    "--source",
                    RLCHF["personas"]["source"],
                    "--seed",
                    RLCHF["personas"]["seed"],
                ]
                + (["--n", n_personas] if n_personas else [])
                + (["--stratify", stratify] if stratify else [])
            ),
        shell:
            "fairhpc personas {params.args} --out {output} > {log} 2>&1"

    rule rlchf_candidates:
        output:
            f"{RLCHF_DIR}/candidates_{{split}}.jsonl",
        log:
            f"{RESULTS}/logs/rlchf/candidates_{{split}}.log",
        wildcard_constraints:
            split="train|eval",
        conda:
            "../envs/fairhpc.yaml"
        threads: RLCHF["candidates"]["resources"]["cpus"]
        resources:
            runtime=rlchf_resources("candidates", "runtime"),
            mem_mb=rlchf_resources("candidates", "mem_mb"),
            gres=rlchf_resources("candidates", "gres"),
        params:
            args=rlchf_candidates_args,
            hub_env=HUB_ENV,
        shell:
            "{params.hub_env}OMP_NUM_THREADS={threads} fairhpc candidates {params.args} --out {output} > {log} 2>&1"

    rule rlchf_rank:
        input:
            candidates=f"{RLCHF_DIR}/candidates_{{split}}.jsonl",
            personas=f"{RLCHF_DIR}/personas.jsonl",
        output:
            rankings=f"{RLCHF_DIR}/rankings_{{split}}.jsonl",
            stats=f"{RLCHF_DIR}/rankings_{{split}}.jsonl.stats.json",
        log:
            f"{RESULTS}/logs/rlchf/rank_{{split}}.log",
        wildcard_constraints:
            split="train|eval",
        conda:
            "../envs/fairhpc.yaml"
        threads: RLCHF["judge"]["resources"]["cpus"]
        resources:
            runtime=rlchf_resources("judge", "runtime"),
            mem_mb=rlchf_resources("judge", "mem_mb"),
            gres=rlchf_resources("judge", "gres"),
        params:
            args=rlchf_rank_args,
            hub_env=HUB_ENV,
        shell:
            "{params.hub_env}OMP_NUM_THREADS={threads} fairhpc rank --candidates {input.candidates} "
            "--personas {input.personas} {params.args} --out {output.rankings} > {log} 2>&1"

    rule rlchf_aggregate:
        input:
            f"{RLCHF_DIR}/rankings_train.jsonl",
        output:
            pairs=f"{RLCHF_DIR}/{{method}}/pairs.jsonl",
            sft=f"{RLCHF_DIR}/{{method}}/sft.jsonl",
            aggregated=f"{RLCHF_DIR}/{{method}}/aggregated.jsonl",
            summary=f"{RLCHF_DIR}/{{method}}/summary.json",
        log:
            f"{RESULTS}/logs/rlchf/aggregate_{{method}}.log",
        wildcard_constraints:
            method="|".join(RLCHF["methods"]),
        conda:
            "../envs/fairhpc.yaml"
        params:
            out=f"{RLCHF_DIR}/{{method}}",
            args=wf.quoted(
                [
                    "--pairs",
                    RLCHF["pairs"],
                    "--group-by",
                    RLCHF["group_by"],
                    "--voter-weights",
                    RLCHF["voter_weights"],
                ]
            ),
        shell:
            "fairhpc aggregate --swf {wildcards.method} --rankings {input} --out {params.out} "
            "{params.args} > {log} 2>&1"

    rule rlchf_eval_groups:
        input:
            unpack(rlchf_eval_inputs),
        output:
            summary=f"{RUN}/{RLCHF_EVAL}/{layout.SUMMARY}",
            per_example=f"{RUN}/{RLCHF_EVAL}/{layout.PER_EXAMPLE}",
        log:
            f"{RESULTS}/logs/rlchf_eval/{RUN_LOG}",
        wildcard_constraints:
            task="dpo|sft",
        group:
            "evaluation"
        conda:
            "../envs/fairhpc.yaml"
        threads: RLCHF["eval"]["resources"]["cpus"]
        resources:
            runtime=rlchf_resources("eval", "runtime"),
            mem_mb=rlchf_resources("eval", "mem_mb"),
            gres=rlchf_resources("eval", "gres"),
        params:
            final=run_attr("final"),
            out=f"{RUN}/{RLCHF_EVAL}",
            args=RLCHF["eval"]["args"],
            group_by=RLCHF["group_by"],
            hub_env=HUB_ENV,
        shell:
            "{params.hub_env}OMP_NUM_THREADS={threads} fairhpc eval-groups --rankings {input.rankings} "
            "--policy {params.final} --group-by {params.group_by} --out {params.out} {params.args} > {log} 2>&1"

    rule rlchf_report:
        input:
            [f"{run.dir}/{RLCHF_EVAL}/{layout.SUMMARY}" for run in rlchf_runs()],
        output:
            md=f"{RESULTS}/reports/rlchf/comparison.md",
            csv=f"{RESULTS}/reports/rlchf/comparison.csv",
            png=report(
                f"{RESULTS}/reports/rlchf/comparison.png",
                caption="report/rlchf_comparison.rst",
                category="rlchf",
                labels={"figure": "mean vs worst-group agreement"},
            ),
        log:
            f"{RESULTS}/logs/rlchf/report.log",
        conda:
            "../envs/fairhpc.yaml"
        params:
            evals=wf.quoted(f"{run.dir}/{RLCHF_EVAL}" for run in rlchf_runs()),
            out=lambda wildcards, output: os.path.dirname(output.md),  # {results}/reports/rlchf
        shell:
            "fairhpc rlchf-report --evals {params.evals} --out {params.out} > {log} 2>&1"

    if rlchf_runs():
        EXTRA_TARGETS.append(f"{RESULTS}/reports/rlchf/comparison.md")

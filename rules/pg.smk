# Policy-gradient RLHF with reward dropout (docs/pg.md): the synthetic task's reward classifier
# (`fairhpc pg-classifier`, into {results}/pg/classifier, which `task: pg` grids name under
# `inputs: {pg.reward_model: ...}` so that it is made before their training jobs), and for every study of a
# `task: pg` grid the reward-vs-likelihood report with its Pareto front (`fairhpc pg-report`) in
# {results}/reports/{grid}/{model}/{dataset}/pg/.

PG_CONFIG = config.get("pg") or {}
PG_REPORT = f"{STUDY}/pg"


rule pg_classifier:
    output:
        directory(f"{RESULTS}/pg/classifier"),
    log:
        f"{RESULTS}/logs/pg_classifier.log",
    conda:
        "../envs/fairhpc.yaml"
    params:
        steps=PG_CONFIG.get("classifier_steps", 300),
        seed=PG_CONFIG.get("classifier_seed", 0),
    shell:
        "fairhpc pg-classifier --out {output} --steps {params.steps} --seed {params.seed} > {log} 2>&1"


rule pg_report:
    input:
        lambda wildcards: [run.summary for run in _study(wildcards)],
    output:
        pareto=report(
            f"{PG_REPORT}/pareto.png",
            caption="report/pg_pareto.rst",
            category="{grid}",
            subcategory="{model} / {dataset}",
            labels={"figure": "reward vs likelihood"},
        ),
        training=f"{PG_REPORT}/training.png",
        md=f"{PG_REPORT}/pg_results.md",
        csv=f"{PG_REPORT}/pg_results.csv",
    log:
        f"{RESULTS}/logs/pg_report/{{grid}}/{{model}}/{{dataset}}.log",
    conda:
        "../envs/fairhpc.yaml"
    params:
        runs=study_runs,
        out=PG_REPORT,
    shell:
        "fairhpc pg-report --runs {params.runs} --out {params.out} > {log} 2>&1"


EXTRA_TARGETS.extend(
    f"{PLAN.report_dir(*study)}/pg/pg_results.md"
    for study, runs in PLAN.studies().items()
    if runs[0].task == "pg"
)

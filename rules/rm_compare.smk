# The reward-model kinds side by side (docs/reward_models.md, "Comparing the kinds"): with a top-level
#     rm_comparison: {grids: [rm, rm-moe, pair-pm, armo]}
# in the workflow config, the runs of those grids are collected per (model, dataset) -- a run that two grids
# share counts once -- and `fairhpc report-rm-kinds` (fairhpc/rm_compare.py) puts their held-out evaluations
# (RUN/eval/summary.json, written in each training job) side by side in
#     {results}/reports/rm_comparison/{model}/{dataset}/comparison.md, comparison.csv, comparison.png
# Absent or without grids: no comparison.  The named grids must train reward models (rm, pair_pm, armo)
# with their evaluation on; anything else stops the DAG with a message naming the grid.

from fairhpc import rm_compare

RM_COMPARISON = config.get("rm_comparison") or {}
RM_COMPARISON_DIR = f"{RESULTS}/reports/rm_comparison"
RM_COMPARISON_OUT = f"{RM_COMPARISON_DIR}/{{model}}/{{dataset}}"

try:
    RM_COMPARISON_STUDIES = rm_compare.plan_studies(
        PLAN, RM_COMPARISON.get("grids") or []
    )
except wf.WorkflowConfigError as e:
    raise WorkflowError(str(e)) from None


# it reads a few JSON files and draws one figure: seconds, on the submitting host
localrules:
    rm_comparison,


rule rm_comparison:
    input:
        lambda wildcards: rm_compare.study_inputs(
            RM_COMPARISON_STUDIES, wildcards.model, wildcards.dataset
        ),
    output:
        md=f"{RM_COMPARISON_OUT}/comparison.md",
        csv=f"{RM_COMPARISON_OUT}/comparison.csv",
        png=report(
            f"{RM_COMPARISON_OUT}/comparison.png",
            category="rm_comparison",
            subcategory="{model} / {dataset}",
            labels={"figure": "reward-model kinds side by side"},
        ),
    log:
        f"{RESULTS}/logs/rm_comparison/{{model}}/{{dataset}}.log",
    conda:
        "../envs/fairhpc.yaml"
    params:
        runs=lambda wildcards: wf.quoted(
            run.dir
            for run in rm_compare.study_runs(
                RM_COMPARISON_STUDIES, wildcards.model, wildcards.dataset
            )
        ),
        out=lambda wildcards, output: Path(output.md).parent,
    shell:
        "fairhpc report-rm-kinds --runs {params.runs} --out {params.out} > {log} 2>&1"


EXTRA_TARGETS.extend(
    f"{RM_COMPARISON_DIR}/{model}/{dataset}/comparison.md"
    for model, dataset in RM_COMPARISON_STUDIES
)

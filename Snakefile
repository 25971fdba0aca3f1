# fairhpc workflow: a grid of fairness-aware reward models and DPO policies, locally or on SLURM.
#
#   snakemake --cores 2                  the embedded default (config.yaml): offline, tiny models, CPU
#   snakemake --profile slurm            the same on SLURM (partition/account: profiles/slurm/config.yaml)
#   snakemake --profile slurm --configfile configs/grids/rm.yaml      a paper grid
#   snakemake --report report.html       the HTML report of the tables and plots
#
# The grid, its checks, run names, resources and commands are fairhpc/workflow.py (unit-tested in
# tests/test_workflow_units.py); rules/common.smk hands them to the rules, one file per stage below.

import os

from snakemake.utils import min_version

min_version("8.20")


configfile: os.path.join(workflow.basedir, "config.yaml")


report: "rules/report/workflow.rst"


include: "rules/common.smk"
include: "rules/ops.smk"
include: "rules/hub.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/eval.smk"
include: "rules/report.smk"
include: "rules/bench.smk"
include: "rules/policy_benchmarks.smk"
include: "rules/rlchf.smk"
include: "rules/pg.smk"
include: "rules/armo.smk"
include: "rules/rm_compare.smk"
include: "rules/online.smk"


wildcard_constraints:
    model=r"[^/]+",
    dataset=r"[^/]+",
    point=r"[^/]+",
    grid=r"[^/]+",
    loop=r"[^/]+",
    benchmark=r"[^/]+",


# jobs that take seconds run on the submitting host, not as cluster jobs
localrules:
    all,
    fetch_hub,
    make_data,
    prepare_data,
    report_study,
    report_bias_benchmark,


rule all:
    default_target: True
    input:
        PLAN.targets(),
        EXTRA_TARGETS,

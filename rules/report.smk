# Reports: `fairhpc report` over every study -- one grid on one base model and one data set -- into
# reports/{grid}/{model}/{dataset}/: results.csv / results.md (one row per run; means and 95% intervals over
# seeds in results_by_point.csv, differences to the baseline in differences.csv/.png), accuracy vs fairness with
# each mode's Pareto front, fairness along training, rewards per category, reward vs length; and, for each
# bias benchmark of the grid, its table and plot in reports/{grid}/{model}/{dataset}/bench_<name>/.
# The study reports are the figures of `snakemake --report report.html`.  A study report reads every run's
# summaries itself, so there is no job per run.


rule report_study:
    input:
        study_inputs,
    output:
        csv=study_figure("results.csv", "results", "results table (CSV)"),
        by_point=study_figure(
            "results_by_point.csv",
            "results_by_point",
            "means and 95% intervals over seeds (CSV)",
        ),
        differences=study_figure(
            "differences.csv", "differences", "differences to the baseline (CSV)"
        ),
        differences_plot=study_figure(
            "differences.png", "differences", "differences to the baseline"
        ),
        md=f"{STUDY}/results.md",
        pareto=study_figure(
            "accuracy_vs_fairness.png", "accuracy_vs_fairness", "accuracy vs fairness"
        ),
        training=study_figure(
            "fairness_over_training.png",
            "fairness_over_training",
            "fairness along training",
        ),
        categories=study_figure(
            "reward_by_category.png", "reward_by_category", "rewards per category"
        ),
        length=study_figure(
            "reward_vs_length.png", "reward_vs_length", "reward vs length"
        ),
    log:
        f"{RESULTS}/logs/report_study/{{grid}}/{{model}}/{{dataset}}.log",
    conda:
        "../envs/fairhpc.yaml"
    params:
        runs=study_runs,
        out=STUDY,
    shell:
        "fairhpc report --runs {params.runs} --out {params.out} > {log} 2>&1"


rule report_bias_benchmark:
    input:
        bias_benchmark_inputs,
    output:
        csv=study_figure(
            f"{BIAS_BENCHMARK}/results.csv", "results", "bias benchmark table (CSV)"
        ),
        md=f"{STUDY}/{BIAS_BENCHMARK}/results.md",
        pareto=study_figure(
            f"{BIAS_BENCHMARK}/accuracy_vs_fairness.png",
            "accuracy_vs_fairness",
            "bias benchmark accuracy vs fairness",
        ),
    log:
        f"{RESULTS}/logs/report_bias_benchmark/{{grid}}/{{model}}/{{dataset}}/{{benchmark}}.log",
    conda:
        "../envs/fairhpc.yaml"
    params:
        runs=study_runs,
        subdir=BIAS_BENCHMARK,
        out=f"{STUDY}/{BIAS_BENCHMARK}",
    shell:
        "fairhpc report --runs {params.runs} --eval-subdir {params.subdir} --out {params.out} > {log} 2>&1"

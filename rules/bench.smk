# The kernel microbenchmark ("bench" in this workflow means only this): the fairness loss's torch reference
# (eager and torch.compile) against the fused Triton kernel, forward / backward / full step, batch sizes
# 8 ... 1,048,576 (benchmarks/bench_fair_loss.py).  On a GPU node: timings (p20/p50/p80), kernel launches
# and peak memory per point.  Without CUDA the script checks correctness only (Triton interpreter) and its
# CSV says that no timing was taken.  The default target asks for it when the config says `bench: true`.
# (The evaluation suites -- RewardBench, CrowS-Pairs, ... -- are "bias benchmarks": rules/eval.smk.)


rule bench_fair_loss:
    input:
        script=str(REPO / "benchmarks" / "bench_fair_loss.py"),
        kernel=str(REPO / "kernels" / "fair_loss.py"),
    output:
        csv=wf.KERNEL_BENCH["csv"],
        png=wf.KERNEL_BENCH["png"],
    log:
        "results/logs/bench_fair_loss.log",
    conda:
        "../envs/fairhpc.yaml"
    threads: 2
    resources:
        runtime=60,
        mem_mb=16000,
        gres="gpu:1",
    shell:
        "python {input.script} --csv {output.csv} --png {output.png} > {log} 2>&1"


# The memory of a fair-DPO step's log-prob head (benchmarks/bench_dpo_memory.py, docs/memory.md): full logits
# (eager) against the chunked path of fairhpc/logprobs.py and Liger-Kernel's fused linear DPO loss, peak memory
# and time per step as ratios to eager.  On a GPU node the full grid (V 32k/128k, T 512-2048, H 2048/4096,
# B 1-16); without CUDA the CPU sizes that fit.
rule bench_dpo_memory:
    input:
        script=str(REPO / "benchmarks" / "bench_dpo_memory.py"),
        op=str(REPO / "fairhpc" / "logprobs.py"),
        kernel=str(REPO / "kernels" / "seq_logprob.py"),
    output:
        csv="results/bench/dpo_memory.csv",
        png="results/bench/dpo_memory.png",
    log:
        "results/logs/bench_dpo_memory.log",
    conda:
        "../envs/fairhpc.yaml"
    threads: 2
    resources:
        runtime=240,
        mem_mb=64000,
        gres="gpu:1",
    shell:
        "python {input.script} --csv {output.csv} --png {output.png} > {log} 2>&1"

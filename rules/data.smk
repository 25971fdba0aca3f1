# Data sets that the workflow makes itself: the synthetic pairs of `datasets.<name>.make`, and pairs
# collected by `datasets.<name>.prepare`.  (A `datasets.<name>.train` file or hub dataset is read by the
# trainer directly.)


rule make_data:
    output:
        train=f"{RESULTS}/data/{{dataset}}/train.jsonl",
        eval=f"{RESULTS}/data/{{dataset}}/eval.jsonl",
    log:
        f"{RESULTS}/logs/make_data/{{dataset}}.log",
    wildcard_constraints:
        dataset=datasets_with("make"),
    conda:
        "../envs/fairhpc.yaml"
    params:
        out=f"{RESULTS}/data/{{dataset}}",
        overrides=make_data_overrides,
    shell:
        "fairhpc make-data --out {params.out} {params.overrides} > {log} 2>&1"


# Pairs collected from hub datasets or local files by `fairhpc prepare-data` (fairhpc/prepare.py), e.g.
# HH-RLHF helpful-base + harmless-base with their category, or UltraFeedback + SHP; each part of the split
# is one JSON argument, and the log gets the pairs kept and the rows skipped per part.  A local rule: the
# submit host usually has the network access that compute nodes lack.
rule prepare_data:
    output:
        f"{RESULTS}/data/{{dataset}}/{{split}}.jsonl",
    log:
        f"{RESULTS}/logs/prepare_data/{{dataset}}/{{split}}.log",
    wildcard_constraints:
        dataset=datasets_with("prepare"),
        split="train|eval",
    conda:
        "../envs/fairhpc.yaml"
    params:
        parts=prepare_parts,
    shell:
        "fairhpc prepare-data --out {output} {params.parts} > {log} 2>&1"

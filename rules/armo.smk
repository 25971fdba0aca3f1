# ArmoRM (docs/armo.md): for every (model, dataset) of a `task: armo` grid, under {results}/armo/{model}/{dataset}/
#   embeddings/shards/shard-I-of-N.safetensors   rule armo_embed    `fairhpc armo-embed --shard I` (one job per
#                                                                   shard, like a SLURM array; armo.resources.embed)
#   embeddings/embeddings.safetensors            rule armo_gather   `fairhpc armo-embed --gather`
#   regression/regression.safetensors            rule armo_regress  `fairhpc armo-regress` (armo.resources.regress)
# The grid names the last two under `inputs:` (armo.embeddings, armo.regression), so the generic rule `train`
# runs the gate (`fairhpc train-armo`) after them and scores it with `fairhpc eval-rm` in the same job.  The
# embed settings (backbone, data, armo.*) are the grid's base config with the model's, the data set's and the
# grid's overrides; a shard job finds its file done (same fingerprint) and exits at once, so a rerun after a
# failure computes only the missing shards.  `armo.make` writes the ArmoRM synthetic data into {results}/armo/data/
# (rule armo_make_data), which data sets name as `train: "{results}/armo/data/train.jsonl"`.

include: "common_armo.smk"


if ARMO.get("make"):

    rule armo_make_data:
        output:
            multiext(
                f"{ARMO_DIR}/data/",
                "train.jsonl",
                "eval.jsonl",
                "ratings_train.jsonl",
                "ratings_eval.jsonl",
            ),
        log:
            f"{RESULTS}/logs/armo/make_data.log",
        conda:
            "../envs/fairhpc.yaml"
        params:
            out=lambda wildcards, output: os.path.dirname(output[0]),  # {results}/armo/data
            overrides=wf.quoted(wf.overrides_list(ARMO["make"])),
        shell:
            "fairhpc make-data --armo --out {params.out} {params.overrides} > {log} 2>&1"


if ARMO_RUNS:

    rule armo_embed:
        input:
            unpack(armo_inputs),
        output:
            f"{ARMO_STUDY}/embeddings/shards/shard-{{shard}}-of-{ARMO_SHARDS:05d}.safetensors",
        log:
            f"{RESULTS}/logs/armo/{{model}}/{{dataset}}/embed_{{shard}}.log",
        wildcard_constraints:
            shard=r"\d{5}",
        conda:
            "../envs/fairhpc.yaml"
        threads: ARMO["resources"]["embed"]["cpus"]
        resources:
            runtime=armo_resources("embed", "runtime"),
            mem_mb=armo_resources("embed", "mem_mb"),
            gres=armo_resources("embed", "gres"),
            slurm_extra=armo_resources("embed", "slurm_extra"),
        params:
            out=f"{ARMO_STUDY}/embeddings",
            n=ARMO_SHARDS,
            shard=lambda wildcards: int(wildcards.shard),
            overrides=armo_overrides,
            hub_env=HUB_ENV,
        shell:
            "{params.hub_env}OMP_NUM_THREADS={threads} fairhpc armo-embed --config {input.config} "
            "--out {params.out} --shard {params.shard} --num-shards {params.n} {params.overrides} > {log} 2>&1"

    rule armo_gather:
        input:
            unpack(armo_inputs),
            shards=armo_shards,
        output:
            embeddings=f"{ARMO_STUDY}/embeddings/embeddings.safetensors",
            info=f"{ARMO_STUDY}/embeddings/embeddings.json",
        log:
            f"{RESULTS}/logs/armo/{{model}}/{{dataset}}/gather.log",
        conda:
            "../envs/fairhpc.yaml"
        threads: ARMO["resources"]["regress"]["cpus"]
        resources:
            runtime=armo_resources("regress", "runtime"),
            mem_mb=armo_resources("regress", "mem_mb"),
            slurm_extra=armo_resources("regress", "slurm_extra"),
        params:
            out=f"{ARMO_STUDY}/embeddings",
            n=ARMO_SHARDS,
            overrides=armo_overrides,
            hub_env=HUB_ENV,
        shell:
            "{params.hub_env}OMP_NUM_THREADS={threads} fairhpc armo-embed --config {input.config} "
            "--out {params.out} --gather --num-shards {params.n} {params.overrides} > {log} 2>&1"

    rule armo_regress:
        input:
            unpack(armo_inputs),
            embeddings=f"{ARMO_STUDY}/embeddings/embeddings.safetensors",
        output:
            regression=f"{ARMO_STUDY}/regression/regression.safetensors",
            metrics=f"{ARMO_STUDY}/regression/metrics.json",
            plot=f"{ARMO_STUDY}/regression/regression.png",
        log:
            f"{RESULTS}/logs/armo/{{model}}/{{dataset}}/regress.log",
        conda:
            "../envs/fairhpc.yaml"
        threads: ARMO["resources"]["regress"]["cpus"]
        resources:
            runtime=armo_resources("regress", "runtime"),
            mem_mb=armo_resources("regress", "mem_mb"),
            gres=armo_resources("regress", "gres"),
            slurm_extra=armo_resources("regress", "slurm_extra"),
        params:
            out=f"{ARMO_STUDY}/regression",
            overrides=armo_overrides,
        shell:
            "OMP_NUM_THREADS={threads} fairhpc armo-regress --config {input.config} "
            "--embeddings {input.embeddings} --out {params.out} {params.overrides} > {log} 2>&1"

    EXTRA_TARGETS.extend(
        f"{ARMO_DIR}/{model}/{dataset}/regression/metrics.json"
        for model, dataset in ARMO_RUNS
    )

# Compute nodes without internet (fairhpc/hub.py): with `hub.offline` (or a shared `hub.cache`) and
# `hub.fetch`, this local rule downloads every model and data set the grids name on the hub into the cache, on
# the submit host, before any job that reads them; training and evaluation jobs then run with HF_HOME=cache
# HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 (the prefix HUB_ENV of their commands).  With `hub.fetch: false` a
# missing item fails when the DAG is built, named.

from fairhpc.hub import job_env

HUB_ENV = job_env(PLAN.hub)


rule fetch_hub:
    output:
        PLAN.hub_marker,
    log:
        f"{RESULTS}/logs/fetch_hub.log",
    conda:
        "../envs/fairhpc.yaml"
    params:
        hub_items=json.dumps(PLAN.hub_items()) if PLAN.fetches_hub() else "[]",
        revisions=json.dumps(PLAN.hub["revisions"]),
        cache=f"--cache {PLAN.hub['cache']}" if PLAN.hub["cache"] else "",
    shell:
        "fairhpc fetch-hub --items {params.hub_items:q} --revisions {params.revisions:q} {params.cache} "
        "--out {output} > {log} 2>&1"

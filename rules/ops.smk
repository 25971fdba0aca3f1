# Compiled DeepSpeed ops, built once before any training job: `fairhpc build-ops` compiles the ops the
# grid's training runs would JIT-compile at start-up (on CPU the shared-memory comm op when a run has more
# than one process; fairhpc's own DeepSpeed configs need no GPU op) into the environment's ops folder
# (~/.cache/fairhpc/torch_extensions/<python-torch-deepspeed-env>, or $FAIRHPC_OPS_DIR), so that no job
# compiles under a build lock that a time limit could leave behind.  The marker records what was built where.
#
# A local rule: it runs on the submit host, which shares the home folder (and the environment) with the
# nodes.  Should a grid's DeepSpeed config ever need GPU ops (fused Adam, CPU Adam for offload), they must be
# compiled on a GPU node: remove `localrule` and give the rule a GPU (resources gres/runtime) instead.


rule build_ops:
    output:
        OPS_MARKER,
    log:
        f"{RESULTS}/logs/build_ops.log",
    localrule: True
    conda:
        "../envs/fairhpc.yaml"
    params:
        world=OPS_WORLD,
        device=OPS_DEVICE,
    shell:
        "fairhpc build-ops --world-size {params.world} --device {params.device} --marker {output} > {log} 2>&1"

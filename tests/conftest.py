"""Test session set-up: Triton kernels run in its CPU interpreter (no GPU needed); the longest test files
are collected first, so that with several workers (`make test`: pytest-xdist, a file per worker, and
`--no-loadscope-reorder` so that xdist keeps this order instead of sorting files by their number of tests)
they do not land at the end."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before anything imports triton

# the files that take minutes (Snakemake runs, a real SLURM, DeepSpeed op builds, many training runs), longest
# first as measured by `pytest --junitxml` (a file of three slow tests can outlast one of two hundred fast ones)
LONGEST_FIRST = (
    "test_workflow.py",
    "test_rm_compare.py",
    "test_slurm.py",
    "test_ops.py",
    "test_online.py",
    "test_gpu_kit.py",
    "test_run_integrity.py",
    "test_train.py",
    "test_pg_train.py",
    "test_dpo_memory.py",
    "test_gridplan.py",
    "test_rlchf.py",
    "test_pg_fair.py",
    "test_hub.py",
    "test_report.py",
    "test_scopes.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a file is kept

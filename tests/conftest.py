"""Test session set-up: Triton kernels run in its CPU interpreter (no GPU needed); the longest test files
are collected first, so that with two workers (`make test`: pytest-xdist, a file per worker) they do not
all land at the end."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before anything imports triton

# the files that take minutes (a real SLURM, DeepSpeed op builds, Snakemake runs, many training runs)
LONGEST_FIRST = ("test_slurm.py", "test_ops.py", "test_workflow.py", "test_run_integrity.py", "test_train.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a file is kept

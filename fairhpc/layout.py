"""The layout of a run directory and of an evaluation directory: every file name in one place.

A training run (``fairhpc train-<task>``, ``output_dir``) holds::

    RUN/config.yaml          the resolved run configuration (written at start)
    RUN/data_stats.json      rows read / kept / skipped per split
    RUN/metrics.jsonl        one JSON line per logged step (split "train" or "eval")
    RUN/checkpoints/         DeepSpeed checkpoints (global_step<N>/, latest)
    RUN/ref_logps_<split>.pt DPO: cached reference log-probs
    RUN/final/               the trained model, save_pretrained (safetensors) + tokenizer
    RUN/summary.json         written last: the run is complete
    RUN/train.log            the job log under the workflow (every attempt)
    RUN/eval/                held-out evaluation (an EvalDir)
    RUN/bench_<name>/        a bias-benchmark evaluation (an EvalDir)

An evaluation directory holds ``per_example.jsonl``, optional extra files, and ``summary.json`` last.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.yaml"
DATA_STATS = "data_stats.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
FINAL = "final"
SUMMARY = "summary.json"
TRAIN_LOG = "train.log"
EVAL = "eval"
PER_EXAMPLE = "per_example.jsonl"
BENCH_PREFIX = "bench_"
REPORT = "report"


def bench_subdir(name: str) -> str:
    """Name of the subdirectory of a run that holds the evaluation on bias benchmark `name`."""
    return f"{BENCH_PREFIX}{name}"


@dataclass(frozen=True)
class EvalDir:
    """An evaluation output directory: per_example.jsonl, extra files, summary.json (written last)."""

    root: Path

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def per_example(self) -> Path:
        return self.root / PER_EXAMPLE


@dataclass(frozen=True)
class RunDir:
    """A training run's output directory."""

    root: Path

    def __init__(self, root) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def data_stats(self) -> Path:
        return self.root / DATA_STATS

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def final(self) -> Path:
        return self.root / FINAL

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def train_log(self) -> Path:
        return self.root / TRAIN_LOG

    def ref_logps(self, split: str) -> Path:
        return self.root / f"ref_logps_{split}.pt"

    def eval_dir(self, subdir: str = EVAL) -> EvalDir:
        return EvalDir(self.root / subdir)

    def bench_dir(self, name: str) -> EvalDir:
        return EvalDir(self.root / bench_subdir(name))

"""What the training engine (fairhpc/engine.py) asks of a task.

The engine owns the loop; a task answers:
  build_datasets()            -> (train, eval or None, stats): its data, read and tokenized
  collate(rows)               -> a batch dict (with an ``index`` tensor: the rows' positions in the data set)
  build_model(engine)         -> the torch module to train
  loss(engine, model, batch)  -> (loss to backpropagate, {metric: float-like}) for one micro-batch
  evaluate(engine, model, ds) -> held-out metrics (a JSON-able dict)
and optional hooks: check_device, before_engine, setup, finish, summary_fields, summary_impl.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar


class Task:
    name: ClassVar[str]
    description: ClassVar[str]          # one line for `fairhpc train-<name> --help`
    metric_keys: ClassVar[tuple[str, ...]]   # the per-micro-batch metrics, averaged into metrics.jsonl
    progress_keys: ClassVar[tuple[str, ...]] = ("loss",)  # shown on the progress bar

    def __init__(self, cfg, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer

    @property
    def progress_label(self) -> str:
        return self.name

    # ---- required
    def build_datasets(self):
        raise NotImplementedError

    def collate(self, rows: list[dict]) -> dict:
        raise NotImplementedError

    def build_model(self, engine):
        raise NotImplementedError

    def loss(self, engine, model, batch: dict):
        raise NotImplementedError

    def evaluate(self, engine, model, dataset) -> dict | None:
        return None

    # ---- optional hooks
    def check_device(self, device) -> None:
        """Refuse settings that cannot run on `device`, before any model is built."""

    def before_engine(self, engine, model) -> None:
        """After the model is built, before DeepSpeed wraps it (e.g. copy a frozen reference)."""

    def setup(self, engine) -> None:
        """After the DeepSpeed engine exists (e.g. precompute reference outputs)."""

    def begin_step(self, engine, model, batches: list[dict]) -> None:
        """Before the micro-batches of one optimizer step run (all of them given, e.g. for statistics)."""

    def nonfinite_hint(self) -> str | None:
        """What to say when the loss became NaN or infinite (the engine stops the run)."""
        return None

    def parse_then_eval(self, argv: list[str], run):
        """Check `fairhpc train-<task> --then-eval "COMMAND ..."` before training: COMMAND must be the task's
        evaluation command (registry.EVAL_IN_TRAINING) and its --model the run's final model."""
        from fairhpc import registry
        from fairhpc.cli import build_parser
        from fairhpc.errors import ConfigError

        command = registry.EVAL_IN_TRAINING.get(self.name)
        if command is None:
            raise ConfigError(f"--then-eval: task {self.name} evaluates in a job of its own "
                              f"(in-training evaluation exists for: {', '.join(registry.EVAL_IN_TRAINING)})")
        if argv[0] != command:
            raise ConfigError(f"--then-eval: {argv[0]!r} is not the {self.name} evaluation command {command!r}")
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            raise ConfigError(f"--then-eval: cannot parse {' '.join(argv)!r} (see `fairhpc {command} --help`)") \
                from None
        if Path(args.model) != run.final:
            raise ConfigError(f"--then-eval: --model {args.model} is not this run's final model {run.final}")
        return args

    def finish(self, engine) -> None:
        """After the final model is saved: the in-process evaluation given by --then-eval, if any."""
        if engine.then_eval is not None:
            self.run_then_eval(engine, engine.then_eval)

    def run_then_eval(self, engine, args) -> None:
        raise NotImplementedError

    def summary_fields(self) -> dict:
        """Settings recorded near the top of summary.json."""
        return {}

    def summary_impl(self) -> dict:
        """Implementation choices recorded in summary.json."""
        return {}

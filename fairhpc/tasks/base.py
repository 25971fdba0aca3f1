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

    def finish(self, engine) -> None:
        """After the final model is saved (e.g. in-process evaluation into RUN/eval/)."""

    def summary_fields(self) -> dict:
        """Settings recorded near the top of summary.json."""
        return {}

    def summary_impl(self) -> dict:
        """Implementation choices recorded in summary.json."""
        return {}

"""Experiment tracking: ``train.report_to`` = none | tensorboard | wandb | mlflow | csv (several joined by
commas, e.g. ``tensorboard,csv``), the transformers / TRL names.

What is tracked, by rank 0 only (the other ranks get an empty :class:`Trackers`):

  * the run's resolved configuration, once at start;
  * every metrics line the engine writes to RUN/metrics.jsonl, as ``<split>/<key>`` at its optimizer step
    (``train/loss``, ``train/lr``, ``eval/accuracy``, ...) -- the same numbers, not a second computation;
  * at the end, the training summary (``summary/...``) and the summary.json of the evaluation command run
    inside the training job (``--then-eval``; ``heldout/...``: metrics and per-category values).

Each tracker is the library's own client, imported only when it is selected:

  tensorboard  ``torch.utils.tensorboard.SummaryWriter`` (package ``tensorboard``) into
               ``{tracking_dir}/tensorboard/{run_name}/``; a resumed run purges the events logged after its
               checkpoint (``purge_step``), as metrics.jsonl drops those lines
  wandb        ``wandb.init`` / ``wandb.log`` (package ``wandb``), project ``train.tracking_project``, files
               under ``{tracking_dir}``; a resumed run continues the same wandb run (its id is kept in
               RUN/trackers.json); offline use: ``WANDB_MODE=offline``
  mlflow       ``mlflow.MlflowClient`` (package ``mlflow``), experiment ``train.tracking_project``, server
               ``MLFLOW_TRACKING_URI`` or else the local store ``{tracking_dir}/mlruns``; a resumed run
               continues the same mlflow run
  csv          ``{tracking_dir}/csv/{run_name}/``: metrics.csv (split, step, name, value; one row per
               scalar), config.csv and summary.csv (name, value), written with the standard library

``tracking_dir`` defaults to ``<output_dir>/tracking`` and ``run_name`` to the last component of
``output_dir``; point several runs' ``train.tracking_dir`` at one folder to see them side by side
(``tensorboard --logdir DIR/tensorboard``).  DeepSpeed's own monitor (the ``tensorboard`` / ``wandb`` /
``csv_monitor`` sections of a DeepSpeed config) is not used: it would attach to every ``deepspeed.initialize``
of a run (also a frozen second model's), log DeepSpeed's per-sample loss rather than the run's metrics, and
keep the events of an interrupted attempt after a resume.

A selected tracker whose package is missing is refused by :func:`check_trackers`, which the engine calls
before any data is read, with a ConfigError naming ``train.report_to`` and the package to install.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import os
import re
from pathlib import Path

from fairhpc.errors import ConfigError
from fairhpc.io import atomic_write_json, atomic_write_text

KEY = "train.report_to"
# modules each tracker imports, and the pip package that provides them
REQUIRES = {"tensorboard": (("tensorboard", "torch.utils.tensorboard"), "tensorboard"),
            "wandb": (("wandb",), "wandb"),
            "mlflow": (("mlflow",), "mlflow"),
            "csv": ((), None)}
IDS_FILE = "trackers.json"  # RUN/trackers.json: ids of the wandb / mlflow runs, so that a resume continues them
SKIP_KEYS = ("split", "step")  # fields of a metrics line that are coordinates, not values


def tracker_names(report_to: str) -> list[str]:
    """``"tensorboard,csv"`` -> ``["tensorboard", "csv"]``; ``"none"`` -> ``[]``."""
    names = [p.strip() for p in str(report_to).split(",") if p.strip()]
    return [n for n in names if n != "none"]


def check_trackers(cfg) -> None:
    """Import what every selected tracker needs; a missing package is a ConfigError naming the key, the
    tracker and the package to install.  Also refuses a tracking_dir that is an existing file."""
    for name in tracker_names(cfg.train.report_to):
        if name not in REQUIRES:
            raise ConfigError(f"{KEY}: unknown tracker {name!r}; allowed: {', '.join(REQUIRES)} or none")
        modules, package = REQUIRES[name]
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise ConfigError(f"{KEY}: {name!r} needs the Python package {package!r}, which is not "
                                  f"installed here ({type(e).__name__}: {e}); install it (pip install "
                                  f"{package}) or set {KEY}=none") from None
    if tracker_names(cfg.train.report_to) and cfg.train.tracking_dir:
        p = Path(cfg.train.tracking_dir).expanduser()
        if p.exists() and not p.is_dir():
            raise ConfigError(f"train.tracking_dir: {cfg.train.tracking_dir!r} is a file, not a directory")


def tracking_dir(cfg) -> Path:
    return Path(cfg.train.tracking_dir).expanduser() if cfg.train.tracking_dir else Path(cfg.output_dir) / "tracking"


def run_name(cfg) -> str:
    return cfg.train.run_name or Path(cfg.output_dir).resolve().name


def scalars(d: dict, prefix: str = "") -> dict[str, float]:
    """The finite numeric leaves of a nested dict as ``{"a/b": value}`` (booleans and None left out)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(scalars(v, f"{key}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


def flat_config(d: dict, prefix: str = "") -> dict[str, object]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}`` (the dotted keys of a run config)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def eval_summary_scalars(summary: dict) -> dict[str, float]:
    """The scalars of an evaluation command's summary.json: ``metrics`` and ``by_category``."""
    out = scalars(summary.get("metrics") or {})
    out.update(scalars(summary.get("by_category") or {}, "by_category/"))
    return out


# --------------------------------------------------------------------------------------------- trackers
class Tracker:
    """One tracking backend.  ``step`` is the optimizer step the run starts from (> 0 on resume)."""

    name = ""

    def log_config(self, config: dict) -> None: ...

    def log_metrics(self, split: str, step: int, values: dict[str, float]) -> None: ...

    def log_summary(self, prefix: str, step: int, values: dict[str, float], raw: dict) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, cfg, run, step: int, ids: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = tracking_dir(cfg) / "tensorboard" / run_name(cfg)
        self.dir.mkdir(parents=True, exist_ok=True)
        # events of an interrupted attempt after the checkpoint step are hidden from readers
        self.writer = SummaryWriter(log_dir=str(self.dir), purge_step=step + 1 if step > 0 else None)

    def log_config(self, config):
        import yaml

        text = yaml.safe_dump(config, sort_keys=False)
        self.writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)  # indented: a code block
        self.writer.flush()

    def log_metrics(self, split, step, values):
        for k, v in values.items():
            self.writer.add_scalar(f"{split}/{k}", v, step)
        self.writer.flush()

    def log_summary(self, prefix, step, values, raw):
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}/{k}", v, step)
        self.writer.add_text(prefix, "    " + json.dumps(raw, indent=1, default=str).replace("\n", "\n    "),
                             step)
        self.writer.flush()

    def close(self):
        self.writer.close()


class CsvTracker(Tracker):
    """metrics.csv (split, step, name, value), config.csv and summary.csv (name, value)."""

    name = "csv"
    HEADER = ("split", "step", "name", "value")

    def __init__(self, cfg, run, step: int, ids: dict):
        self.dir = tracking_dir(cfg) / "csv" / run_name(cfg)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics = self.dir / "metrics.csv"
        if self.metrics.exists():  # a resume keeps the rows up to its checkpoint step, as metrics.jsonl does
            with open(self.metrics, newline="") as f:
                kept = [r for r in csv.reader(f)][1:]
            kept = [r for r in kept if len(r) == 4 and r[1].isdigit() and int(r[1]) <= step] if step > 0 else []
            self._write(self.metrics, [self.HEADER, *kept])
        else:
            self._write(self.metrics, [self.HEADER])

    @staticmethod
    def _write(path: Path, rows) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        atomic_write_text(path, buf.getvalue())

    def log_config(self, config):
        self._write(self.dir / "config.csv", [("name", "value"), *flat_config(config).items()])

    def log_metrics(self, split, step, values):
        with open(self.metrics, "a", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            for k, v in values.items():
                w.writerow((split, step, k, repr(v)))

    def log_summary(self, prefix, step, values, raw):
        path = self.dir / "summary.csv"
        rows = []
        if path.exists():
            with open(path, newline="") as f:
                rows = [r for r in list(csv.reader(f))[1:] if not r[0].startswith(f"{prefix}/")]
        rows += [(f"{prefix}/{k}", repr(v)) for k, v in values.items()]
        self._write(path, [("name", "value"), *rows])


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, cfg, run, step: int, ids: dict):
        import wandb

        self.wandb = wandb
        d = tracking_dir(cfg)
        d.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=cfg.train.tracking_project, name=run_name(cfg), dir=str(d),
                              id=ids.get("wandb"), resume="allow")
        ids["wandb"] = self.run.id

    def log_config(self, config):
        self.run.config.update(flat_config(config), allow_val_change=True)

    def log_metrics(self, split, step, values):
        self.run.log({f"{split}/{k}": v for k, v in values.items()}, step=step)

    def log_summary(self, prefix, step, values, raw):
        self.run.summary.update({f"{prefix}/{k}": v for k, v in values.items()})

    def close(self):
        self.run.finish()


_MLFLOW_BAD = re.compile(r"[^0-9A-Za-z_\-. /]")


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, cfg, run, step: int, ids: dict):
        import mlflow

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (tracking_dir(cfg) / "mlruns").resolve().as_uri()
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(cfg.train.tracking_project)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(cfg.train.tracking_project)
        if ids.get("mlflow"):
            self.run_id = ids["mlflow"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(exp_id, run_name=run_name(cfg)).info.run_id
        ids["mlflow"] = self.run_id

    @staticmethod
    def _key(k: str) -> str:
        return _MLFLOW_BAD.sub("_", k)

    def log_config(self, config):
        from mlflow.entities import Param

        params = [Param(self._key(k), str(v)[:6000]) for k, v in flat_config(config).items()]
        for i in range(0, len(params), 100):  # mlflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_dict(self.run_id, config, "config.json")

    def _metrics(self, prefix, step, values):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(self._key(f"{prefix}/{k}"), v, now, step) for k, v in values.items()]
        for i in range(0, len(ms), 1000):
            self.client.log_batch(self.run_id, metrics=ms[i:i + 1000])

    def log_metrics(self, split, step, values):
        self._metrics(split, step, values)

    def log_summary(self, prefix, step, values, raw):
        self._metrics(prefix, step, values)
        self.client.log_dict(self.run_id, raw, f"{prefix}.json")

    def close(self):
        self.client.set_terminated(self.run_id)


BACKENDS = {"tensorboard": TensorBoardTracker, "csv": CsvTracker, "wandb": WandbTracker,
            "mlflow": MlflowTracker}


class Trackers:
    """The selected trackers of one run (empty off rank 0 or with report_to=none); every call fans out."""

    def __init__(self, trackers: list[Tracker] | None = None):
        self.trackers = trackers or []
        self.closed = False

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log_config(self, config: dict) -> None:
        for t in self.trackers:
            t.log_config(config)

    def log_metrics(self, record: dict) -> None:
        """One metrics.jsonl line (``split``, ``step`` and values) to every tracker."""
        if not self.trackers:
            return
        values = scalars({k: v for k, v in record.items() if k not in SKIP_KEYS})
        split, step = str(record.get("split", "train")), int(record.get("step", 0))
        for t in self.trackers:
            t.log_metrics(split, step, values)

    def log_summary(self, prefix: str, step: int, summary: dict, values: dict[str, float] | None = None) -> None:
        if not self.trackers:
            return
        values = scalars(summary) if values is None else values
        for t in self.trackers:
            t.log_summary(prefix, step, values, summary)

    def log_eval_dir(self, out_dir, step: int) -> None:
        """The summary.json of an evaluation directory (``heldout/...``), when it exists."""
        path = Path(out_dir) / "summary.json"
        if self.trackers and path.is_file():
            data = json.loads(path.read_text())
            self.log_summary("heldout", step, data, eval_summary_scalars(data))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for t in self.trackers:
            t.close()


def open_trackers(cfg, run, step: int = 0, is_main: bool = True) -> Trackers:
    """Start the trackers of ``cfg.train.report_to`` for the run directory ``run`` (a RunDir) at optimizer step
    ``step`` and log the resolved config; on ranks other than 0, and for ``none``, an empty Trackers."""
    from fairhpc.config import to_dict

    names = tracker_names(cfg.train.report_to)
    if not is_main or not names:
        return Trackers()
    ids_path = Path(run.root) / IDS_FILE
    ids = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
    before = dict(ids)
    out = Trackers([BACKENDS[n](cfg, run, step, ids) for n in names])
    if ids != before:
        atomic_write_json(ids_path, ids)
    out.log_config(to_dict(cfg))
    return out

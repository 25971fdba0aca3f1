"""A run directory belongs to one configuration: its identity, the checks at start and on resume, and
complete-or-absent checkpoints.

Identity.  The settings that determine a run's results -- the resolved configuration minus the keys that
only say where and how often things are written (``NON_IDENTITY_KEYS``), the data fingerprint (content
hashes of local data files) and the data-parallel world size -- are written to RUN/identity.json at start.

  * A fresh run (no ``--resume``) into a directory that already holds a run is refused, unless
    ``--overwrite`` is given (then the old contents are moved aside first, see below).
  * ``--resume`` compares the stored identity with the new one.  A difference is refused with the keys that
    differ (``--on-mismatch error``, the default), or, with ``--on-mismatch restart`` (what the workflow
    passes: Snakemake reruns a job whose parameters changed), the old contents are moved aside into a
    sibling ``<run>.superseded-<UTC time>/`` and the run starts fresh.  Results of two configurations are
    never mixed in one directory.

Checkpoints.  Each DeepSpeed checkpoint is written under a temporary tag (``global_step<N>.partial``) and
renamed to ``global_step<N>`` when every rank has finished writing, then ``latest`` is rewritten atomically.
Resume takes the newest complete checkpoint whose files load, names it, and falls back past corrupt ones.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from fairhpc.errors import ConfigError
from fairhpc.io import atomic_write_json, atomic_write_text
from fairhpc.layout import RunDir

IDENTITY = "identity.json"
# keys that do not change what a run computes: where it writes, how often it logs / evaluates / saves
NON_IDENTITY_KEYS = ("output_dir", "train.save_steps", "train.keep_checkpoints", "train.log_steps",
                     "train.eval_steps", "train.num_workers", "train.report_to", "train.tracking_dir",
                     "train.run_name", "train.tracking_project")
CKPT_PREFIX = "global_step"
PARTIAL = ".partial"
SUPERSEDED = ".superseded-"
# files whose presence means the directory holds (part of) a run
RUN_MARKERS = ("identity.json", "config.yaml", "metrics.jsonl", "checkpoints", "final", "summary.json")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def data_fingerprint(cfg) -> dict:
    """sha256 of every local data file the run reads; hub names are part of the configuration already."""
    out = {}
    for key in ("train", "eval"):
        src = getattr(cfg.data, key, None)
        if src and Path(str(src)).is_file():
            out[f"data.{key}.sha256"] = file_digest(src)
    return out


def run_identity(cfg, world_size: int) -> dict:
    """The flat {key: value} that determines the results of a run."""
    from fairhpc.config import to_dict

    flat = {k: v for k, v in _flatten(to_dict(cfg)).items() if k not in NON_IDENTITY_KEYS}
    flat.update(data_fingerprint(cfg))
    flat["world_size"] = world_size
    return flat


def identity_diff(old: dict, new: dict) -> list[str]:
    """'key: old -> new' for every key whose value differs (missing keys shown as <unset>)."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in keys
            if old.get(k, "<unset>") != new.get(k, "<unset>")]


def holds_a_run(root: Path) -> bool:
    return root.is_dir() and any((root / m).exists() for m in RUN_MARKERS)


def move_aside(root: Path, keep: tuple[str, ...] = ("train.log",)) -> Path:
    """Move the run's contents (all but `keep`) into a sibling <root>.superseded-<UTC time>/; returns it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = root.with_name(f"{root.name}{SUPERSEDED}{stamp}")
    n = 0
    while dest.exists():
        n += 1
        dest = root.with_name(f"{root.name}{SUPERSEDED}{stamp}-{n}")
    dest.mkdir(parents=True)
    for entry in root.iterdir():
        if entry.name not in keep:
            os.replace(entry, dest / entry.name)
    return dest


def prepare_run_dir(run: RunDir, identity: dict, resume: bool, on_mismatch: str, overwrite: bool) -> str:
    """Decide, on rank 0, what happens to an existing directory.  Returns "fresh" or "resume".

    Raises ConfigError (before any model is built) for a fresh run into a used directory without
    --overwrite and for a resume whose identity differs under on_mismatch="error".
    """
    root = run.root
    if not holds_a_run(root):
        return "fresh"
    stored_path = root / IDENTITY
    stored = json.loads(stored_path.read_text()) if stored_path.exists() else None
    if not resume:
        if not overwrite:
            raise ConfigError(f"output_dir: {root} already holds a run; pass --resume to continue it, "
                              "--overwrite to move it aside and start fresh, or choose another output_dir")
        print(f"[fairhpc] --overwrite: previous run moved to {move_aside(root)}", flush=True)
        return "fresh"
    diff = ["(no identity.json: the directory was not written by this version of fairhpc)"] \
        if stored is None else identity_diff(stored, identity)
    if not diff:
        return "resume"
    if on_mismatch == "restart":
        dest = move_aside(root)
        print(f"[fairhpc] --resume: the configuration changed ({'; '.join(diff)}); the previous run was "
              f"moved to {dest} and this run starts fresh", flush=True)
        return "fresh"
    raise ConfigError(f"--resume: {root} holds a run of another configuration; differing keys: "
                      f"{'; '.join(diff)}. Use another output_dir, --overwrite to start fresh, or "
                      "--on-mismatch restart")


def write_identity(run: RunDir, identity: dict) -> None:
    atomic_write_json(run.root / IDENTITY, identity)


# -------------------------------------------------------------------------------------------- checkpoints
def step_of(path: Path) -> int:
    return int(path.name[len(CKPT_PREFIX):])


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoint folders, newest first (partial ones carry the .partial suffix)."""
    found = [p for p in ckpt_dir.glob(f"{CKPT_PREFIX}*") if p.is_dir() and p.name[len(CKPT_PREFIX):].isdigit()]
    return sorted(found, key=step_of, reverse=True)


def partial_name(step: int) -> str:
    return f"{CKPT_PREFIX}{step}{PARTIAL}"


def finish_checkpoint(ckpt_dir: Path, step: int, keep: int) -> None:
    """Rank 0, after every rank wrote into the partial folder: rename, point `latest` at it, prune."""
    final = ckpt_dir / f"{CKPT_PREFIX}{step}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(ckpt_dir / partial_name(step), final)
    atomic_write_text(ckpt_dir / "latest", final.name)
    for old in complete_checkpoints(ckpt_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def describe_write_error(exc: BaseException, path: Path) -> str:
    """A message for a failed checkpoint or model write that names the cause when it is a full disk."""
    text = str(exc)
    free = None
    try:
        free = shutil.disk_usage(path if path.exists() else path.parent).free
    except OSError:
        pass
    full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "unexpected pos" in text \
        or "No space left" in text or (free is not None and free < 1 << 20)
    cause = f"no space left on the device (free: {free} bytes)" if full else f"{type(exc).__name__}: {text}"
    return f"writing {path} failed: {cause}"

"""Small file helpers: every result file is written atomically (temp file + os.replace); output directories
are checked before any work is done."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one line and flush it, so a killed run loses at most the line being written."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSONL file (missing file -> []); a torn last line from a killed writer is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1}: invalid JSON") from None
    return out


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` as a Path, after checking that it can be (or is) a directory to write in: neither it nor a
    parent is a file, and its nearest existing parent is writable.  Raises ConfigError naming ``option``,
    the path and the offending parent, before any work is done."""
    from fairhpc.errors import ConfigError

    p = Path(path)
    for q in (p, *p.absolute().parents):
        if not q.exists():
            continue
        if not q.is_dir():
            where = "is a file" if q == p else f"lies under {q}, which is a file"
            raise ConfigError(f"{option} {path}: {where}, not a directory")
        if not os.access(q, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} {path}: cannot write in {q} (permission denied)")
        break
    return p

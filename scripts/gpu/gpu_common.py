"""Shared by the GPU kit's scripts: writing a CSV atomically."""

from __future__ import annotations

import csv
import os
from pathlib import Path


def write_rows(path, rows: list[dict], columns) -> Path:
    """rows as a CSV with ``columns`` (missing values empty), written to a temporary file then renamed."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in columns})
    os.replace(tmp, out)
    return out

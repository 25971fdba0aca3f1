"""The learning curve of a run directory as one line of text, for the message of a "learns" assertion: when a
run falls short of its threshold the failure shows how it got there (a plateau at log 2, a spike, a slow
start) next to the number it missed."""

import json
import math
from pathlib import Path


def _fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def curve(run_dir, train_keys=("loss", "grad_norm"), eval_keys=("loss", "accuracy"), points: int = 12) -> str:
    """``train loss: 10:0.692 20:0.691 ... | train grad_norm: ... | eval accuracy: 0:0.53 ...`` from
    RUN/metrics.jsonl, at most ``points`` evenly spaced entries per series (the last one always)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return f"(no {path})"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    parts = []
    for split, keys in (("train", train_keys), ("eval", eval_keys)):
        sel = [r for r in rows if r.get("split") == split]
        for k in keys:
            series = [(r["step"], r[k]) for r in sel if k in r]
            if not series:
                continue
            stride = max(1, math.ceil(len(series) / points))
            shown = series[::stride]
            if shown[-1] != series[-1]:
                shown.append(series[-1])
            parts.append(f"{split} {k}: " + " ".join(f"{s}:{_fmt(v)}" for s, v in shown))
    return " | ".join(parts) if parts else f"(no train/eval rows in {path})"

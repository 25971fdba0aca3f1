"""matplotlib without a display, atomic PNG writes, one colour per objective mode, grids of panels."""

from __future__ import annotations

import math
import os
from pathlib import Path

PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, dpi: int = 110) -> None:
    """Write a figure as PNG atomically (temporary file + os.replace): a failed write leaves no file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def mode_colors(modes) -> dict:
    """A mode has the same colour in every plot, whichever modes a plot shows."""
    from fairhpc.registry import ALL_MODES

    order = list(ALL_MODES) + sorted(set(modes) - set(ALL_MODES))
    return {m: PALETTE[order.index(m) % len(PALETTE)] for m in modes}


def panel_grid(plt, n: int, w: float = 4.0, h: float = 3.2):
    """(figure, n axes) in rows of up to 3 (4 beyond 9 panels); the unused axes are hidden."""
    cols = min(3 if n <= 9 else 4, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    flat = [a for row in axes for a in row]
    for a in flat[n:]:
        a.axis("off")
    return fig, flat

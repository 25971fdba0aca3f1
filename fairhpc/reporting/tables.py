"""Markdown tables and their number cells."""

from __future__ import annotations

import math

DASH = "—"  # a cell without a finite number


def escape(text) -> str:
    """A cell's text with the characters that would break a Markdown table row made harmless."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """``| a | b |`` header, ``|---|---|`` rule and one line per row (cells escaped); every row must have
    the header's width."""
    for i, r in enumerate(rows):
        if len(r) != len(header):
            raise ValueError(f"row {i} has {len(r)} cells, the header {len(header)}")
    lines = ["| " + " | ".join(escape(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(escape(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


FORMATS = {"f4": "{:.4f}", "f3": "{:.3f}", "f1": "{:.1f}", "int": "{:.0f}", "pct": "{:.2%}"}


def number_cell(v, fmt: str) -> str:
    """A number in one of :data:`FORMATS`; a dash for None, text or a non-finite value."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return DASH
    return FORMATS[fmt].format(v)


def interval_cell(ci: dict, digits: int = 4) -> str:
    """``mean ± half`` of a :func:`fairhpc.reporting.stats.t_interval`; the mean alone for one seed."""
    if not ci["n"] or not math.isfinite(ci["mean"]):
        return DASH
    if ci["n"] < 2 or not math.isfinite(ci["half"]):
        return f"{ci['mean']:.{digits}f}"
    return f"{ci['mean']:.{digits}f} ± {ci['half']:.{digits}f}"

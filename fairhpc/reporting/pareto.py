"""Pareto fronts of two maximised objectives (e.g. reward and likelihood, or mean and worst-group reward)."""

from __future__ import annotations


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (both coordinates maximised; ties are not dominance)."""
    out = []
    for i, (a, b) in enumerate(points):
        if not any((c >= a and d >= b) and (c > a or d > b) for j, (c, d) in enumerate(points) if j != i):
            out.append(i)
    return out


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` above ``ref`` (both maximised)."""
    front = sorted((points[i] for i in pareto_front(points)), key=lambda p: -p[0])
    area, best_y = 0.0, ref[1]
    for x, y in front:  # x decreasing, y increasing along the front
        if y > best_y and x > ref[0]:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area

"""What the robustness curves (``bench.metrics.curves``, ``--eps-grid``) of one or more runs hold:
their metrics per attack and radius, and the lines of their figure.  Plain data from results, for
``bench.outputs.all_tables.curve_tables``, the run's figure and ``bench table``'s figure of several runs."""

from __future__ import annotations

import re

from bench.core.results import Results

CURVE = re.compile(r"^curve_(.+)_([0-9][0-9.e+-]*)$")  # bench.metrics.curves names: curve_<attack>_<eps>


def curve_points(runs: list[Results]) -> dict[str, dict[float, str]]:
    """attack -> {eps: metric} of the robustness-curve metrics the runs hold, eps ascending (the
    radius recorded in the metric's details, else read from its name)."""
    out: dict[str, dict[float, str]] = {}
    for r in runs:
        for m, res in r.metrics.items():
            hit = CURVE.match(m)
            if hit:
                eps = ((res.details or {}).get("curve") or {}).get("eps", float(hit.group(2)))
                out.setdefault(hit.group(1), {})[float(eps)] = m
    return {a: dict(sorted(pts.items())) for a, pts in out.items()}


def curve_lines(runs: list[Results], names: list[str] | None = None) -> list[tuple[str, list, list, list]]:
    """(label, eps, accuracy, standard error) per run and attack of the robustness curves, for
    ``bench.engines.plots.robustness_curves``; labels ``run: attack`` when ``names`` are given."""
    lines = []
    for attack, pts in curve_points(runs).items():
        for i, r in enumerate(runs):
            got = [(e, r.metrics[m]) for e, m in pts.items() if m in r.metrics and r.metrics[m].value is not None]
            if got:
                lines.append((f"{names[i]}: {attack}" if names else attack, [e for e, _ in got],
                              [x.value for _, x in got], [x.std or 0.0 for _, x in got]))
    return lines

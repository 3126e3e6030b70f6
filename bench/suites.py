"""Suite names -> metric groups.  A suite is the set of registered groups that name it."""

from __future__ import annotations

from bench import metrics
from bench.errors import BenchError

SUITES = ("robust", "calibration", "generative", "score", "memorization", "landscape", "denoise")


def resolve(spec: str | list[str]) -> list[str]:
    """'all' or 'robust,calibration' -> ordered list of suite names; unknown names are an error."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise BenchError("no suite given; choose all or some of: " + ", ".join(SUITES))
    if "all" in names:
        return list(SUITES)
    unknown = [s for s in names if s not in SUITES]
    if unknown:
        raise BenchError(f"unknown suite {unknown[0]!r}; choose all or some of: {', '.join(SUITES)}")
    return [s for s in SUITES if s in names]


def groups_for(suites: list[str]) -> list[metrics.Group]:
    """The registered groups of the given suites, in suite order."""
    groups = metrics.load_all()
    return [g for s in suites for g in groups.values() if g.suite == s]


def metric_names(suites: list[str]) -> list[str]:
    return [m for g in groups_for(suites) for m in g.metrics]

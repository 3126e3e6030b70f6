"""Suite names -> metric groups.  A suite is the set of registered groups that name it: a group
registered with a new suite name makes that suite exist.  Suites come in the order of their metric
modules (``bench.metrics.registry.modules()``), then of registration."""

from __future__ import annotations

from bench.core.errors import BenchError
from bench.metrics import registry


def names() -> list[str]:
    """Every suite, in order: robust, calibration, generative, score, memorization, landscape,
    denoise, ood, shift, then any suite a group registered elsewhere names."""
    groups = {**registry.declared_groups()}  # the groups the runner may run (a test may narrow them) ...
    groups.update({k: g for k, g in registry.GROUPS.items() if k not in groups})  # ... and the registry
    ordered = sorted(groups.values(), key=registry.module_rank)  # stable: registration order within
    return list(dict.fromkeys(g.suite for g in ordered))


def resolve(spec: str | list[str]) -> list[str]:
    """'all' or 'robust,calibration' -> ordered list of suite names; unknown names are an error."""
    known = names()
    asked = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not asked:
        raise BenchError("no suite given; choose all or some of: " + ", ".join(known))
    if "all" in asked:
        return known
    unknown = [s for s in asked if s not in known]
    if unknown:
        raise BenchError(f"unknown suite {unknown[0]!r}; choose all or some of: {', '.join(known)}")
    return [s for s in known if s in asked]


def groups_for(suites: list[str], runnable: bool = True) -> list[registry.Group]:
    """The registered groups of the given suites, in suite order; ``runnable=False``: their
    declarations only (``registry.declared_groups``: no torch imported, for tables)."""
    groups = registry.load_all() if runnable else registry.declared_groups()
    return [g for s in suites for g in groups.values() if g.suite == s]


def metric_names(suites: list[str]) -> list[str]:
    return [m for g in groups_for(suites) for m in g.metrics]

"""Metric registry.

A metric *group* is a function ``fn(ctx) -> dict[name, Result]`` that computes one or more named
metrics together (``jfs`` and ``mfs`` share their gradients; ``is_mean``, ``is_std`` and ``fid``
share their features).  It declares the settings that change its numbers, so the runner can cache
each group keyed by the model's sha256 and exactly those settings: changing ``eps`` recomputes the
attacks and nothing else.  Every group runs on CPU and CUDA, batched, through ``ctx.model``
(an EnergyModel on images in [0, 1]).

The package's ``__init__`` holds no torch: it re-exports the registry's declarations (plain data,
``bench check`` and ``bench table`` read them) and gives ``Context`` (torch, in
``bench.metrics.context``) on first use.
"""

from __future__ import annotations

from bench.core.results import Result  # noqa: F401
from bench.core.stats import mean_se  # noqa: F401
from bench.metrics.registry import (  # noqa: F401
    DETERMINISTIC,
    DISPLAYS,
    DRIFTING,
    ECE,
    GENERATED,
    GROUPS,
    MEAN,
    NOT_CHECKABLE,
    PAIRS,
    POINTS,
    PROPORTION,
    STABLE,
    TOLERANCE_RULES,
    CheckFailed,
    Group,
    Metric,
    Portable,
    Tolerance,
    absolute,
    declared,
    load_all,
    module_rank,
    register,
    relative,
    spec,
    stable,
    standard_error,
)

_CONTEXT = ("Context", "Figure", "_seed_for")


def __getattr__(name: str):
    if name in _CONTEXT:  # torch: imported when a metric module (or the runner) asks for it
        from bench.metrics import context

        return getattr(context, name)
    raise AttributeError(f"module 'bench.metrics' has no attribute {name!r}")

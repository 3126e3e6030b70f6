"""The metric registry: each metric group's declaration (its metrics' facts, the settings that key
its cache, its suite) and the lookups that bench check, bench table and bench.suites derive from.

It holds declarations only, no metric code: ``load_all`` imports the metric modules (by name) so
they register themselves.  ``bench.check`` and ``bench.tables`` read facts through this module
and never import ``bench.metrics`` (docs/ARCHITECTURE.md, "Layers").
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from bench.energy import evaluates
from bench.settings import SPECS

# --------------------------------------------------------------------------------------------
# metric facts: each metric declares what bench check, bench table and the report need to know


TOLERANCE_RULES = ("proportion", "ece", "standard-error", "relative", "absolute", "none")


@dataclass(frozen=True)
class Tolerance:
    """How ``bench check`` bounds a metric in statistical mode (bench.check applies the rule; its
    module docstring gives the statistics):

    - ``proportion``: 3 standard errors of the difference of two proportions at the baseline's
      smoothed p and n, at least ``floor``;
    - ``ece``: 3 standard errors of the difference of two ECEs from the recorded bins, at least ``floor``;
    - ``standard-error``: 3 standard errors of the difference from the recorded ``std`` (already the
      standard error of the mean), at least ``floor_rel`` x |baseline|; without a recorded std,
      ``margin`` x |baseline| (``margin`` None: not checkable);
    - ``relative``: ``margin`` x |baseline|;
    - ``absolute``: ``margin``, widened to 3 standard errors where the recorded std makes that larger;
    - ``none``: not checkable statistically (exact mode and ``--tolerance`` still compare it)."""

    rule: str = "none"
    margin: float | None = None
    floor: float = 0.0
    floor_rel: float = 0.0

    def __post_init__(self):
        if self.rule not in TOLERANCE_RULES:
            raise ValueError(f"tolerance rule {self.rule!r}: expected one of {', '.join(TOLERANCE_RULES)}")
        if self.rule in ("relative", "absolute") and self.margin is None:
            raise ValueError(f"a {self.rule} tolerance needs a margin")


PROPORTION = Tolerance("proportion", floor=0.001)
ECE = Tolerance("ece", floor=0.002)
MEAN = Tolerance("standard-error")  # a mean over points whose std is its standard error (mean_se)
NOT_CHECKABLE = Tolerance("none")


def standard_error(floor_rel: float = 0.0, without_std: float | None = None) -> Tolerance:
    """``standard-error``, at least ``floor_rel`` x |baseline|; ``without_std`` x |baseline| when no std
    was recorded (None: not checkable then)."""
    return Tolerance("standard-error", without_std, floor_rel=floor_rel)


def relative(fraction: float) -> Tolerance:
    return Tolerance("relative", fraction)


def absolute(margin: float) -> Tolerance:
    return Tolerance("absolute", margin)


PORTABLE_UNITS = ("points", "pairs", "relative", "absolute")


@dataclass(frozen=True)
class Portable:
    """How ``bench check`` compares a rerun with its baseline on another platform (``--exact`` on a
    different fingerprint, and the default mode).  Both runs evaluate the same points with the same
    seeds, so the comparison is paired: what may differ is floating-point order and CPU kernels,
    which flip a few points next to a decision boundary (or an FGSM sign next to a zero gradient),
    move continuous metrics in their last digits and can make SGLD chains drift apart.  The
    margins are set from that noise, measured across simulated machines (docs/CHECKS.md):

    - ``points``: a share of points.  The points that flipped are counted, from the per-point
      bits both runs record (``bench.outcomes``), else from the values (|delta| x n); at most
      ``share`` x n may flip (rounded down: 0 below n = 200, 2 at n = 450, 5 at n = 1,000);
    - ``pairs``: a rank statistic over (in, out) pairs, AUROC: |delta| x n_in x n_out concordant
      pairs may change, at most ``share`` x n_in x n_out;
    - ``relative``: |delta| <= ``rel`` x |baseline| + ``abs``, widened by ``per_flip`` / n for every
      point of the metric's own per-point record that flipped (a flipped prediction moves ECE by at
      most 2 / n, Brier by 2 / n); ``per_flip`` None: a metric no per-point bound covers (MCE, NLL)
      fails once any of its points flipped beyond ``share`` x n (``share`` also caps the flips);
    - ``absolute``: |delta| <= ``abs``."""

    unit: str
    share: float = 0.005
    rel: float = 0.0
    abs: float = 0.0
    per_flip: float | None = 0.0

    def __post_init__(self):
        if self.unit not in PORTABLE_UNITS:
            raise ValueError(f"portable rule {self.unit!r}: expected one of {', '.join(PORTABLE_UNITS)}")


# the margins, from the noise measured across simulated machines (docs/CHECKS.md): kernels move a
# deterministic metric by at most a few 1e-5 relative, SGLD-generated sets by up to ~0.6 %
DETERMINISTIC = 1e-3
GENERATED = 0.01
POINTS = Portable("points")
PAIRS = Portable("pairs", share=0.001)
STABLE = Portable("relative", rel=DETERMINISTIC, abs=1e-9)
DRIFTING = Portable("relative", rel=GENERATED, abs=1e-6)


def stable(per_flip: float | None = 0.0, abs_: float = 1e-9) -> Portable:
    """A metric deterministic given its inputs: ``DETERMINISTIC`` relative."""
    return Portable("relative", rel=DETERMINISTIC, abs=abs_, per_flip=per_flip)


DISPLAYS = ("float", "percent")


@dataclass(frozen=True)
class Metric:
    """The facts of one metric, declared where its group is registered.  ``name`` is the metric's
    name, or for a group whose names depend on the settings (``names``) a prefix ending in ``*``
    (``ood_auroc_*``).  ``display``: ``percent`` (x 100, two decimals in tables) or ``float``;
    ``range``: the width of the metric's possible values where it is bounded (a tolerance of half
    of it or more bounds nothing); ``column``: its column label in its suite's table
    (``bench.paper_tables.suite_tables``; Tables 1-3 and the OOD tables have their own layouts)."""

    name: str
    unit: str = ""
    higher_is_better: bool | None = None
    display: str = "float"
    tolerance: Tolerance = NOT_CHECKABLE
    range: float | None = None
    column: str | None = None
    portable: Portable | None = None  # the paired rule of bench check (None: not checkable there)
    bounds: tuple[float | None, float | None] = (None, None)  # the values it can take (None: open)

    def admits(self, value) -> bool:
        """Whether ``value`` (None: a null) can be a value of this metric: finite and within bounds."""
        if value is None:
            return True
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        lo, hi = self.bounds
        slack = 1e-9 * max(1.0, abs(value))
        return (lo is None or value >= lo - slack) and (hi is None or value <= hi + slack)

    def __post_init__(self):
        if self.display not in DISPLAYS:
            raise ValueError(f"metric {self.name}: display {self.display!r}: expected one of {', '.join(DISPLAYS)}")
        if "*" in self.name[:-1]:
            raise ValueError(f"metric {self.name}: a pattern is a prefix ending in '*'")

    @property
    def is_pattern(self) -> bool:
        return self.name.endswith("*")

    def matches(self, name: str) -> bool:
        return name.startswith(self.name[:-1]) if self.is_pattern else name == self.name

    @classmethod
    def proportion(cls, name: str, higher_is_better: bool | None = True, display: str = "percent",
                   **kw) -> Metric:
        """A share of points in [0, 1] (accuracy, robust accuracy, diverged chains)."""
        kw.setdefault("portable", POINTS)
        return cls(name, "proportion", higher_is_better, display, PROPORTION, 1.0, bounds=(0.0, 1.0), **kw)


@dataclass
class Group:
    name: str
    suite: str
    metrics: tuple[str, ...]
    settings: tuple[str, ...]
    fn: Callable[..., dict]  # fn(ctx: bench.metrics.Context) -> {metric: bench.results.Result}
    sharded: bool = False  # under torchrun: every rank runs it on its share (else rank 0 alone)
    # a group whose metric names depend on the settings (the OOD group: one name per --ood set)
    # declares pattern specs (Metric("ood_auroc_*")) and names(settings) -> names; the runner fixes
    # the names per run (for_settings)
    names: Callable[[dict], tuple[str, ...]] | None = None
    specs: tuple[Metric, ...] = ()  # the declared facts of its metrics (names or patterns)
    needs: tuple[str, ...] = ()  # run-wide inputs beyond model and data (NEEDS), made before it runs

    def for_settings(self, settings: dict) -> Group:
        """This group with its metric names for a run's settings: itself unless it declares
        ``names``.  The runner calls it once, before the cache check, so the cache comparison
        (a cached file must hold exactly ``metrics``) and the computation see the run's names.
        A name that none of the group's patterns declares is refused (ValueError)."""
        if self.names is None:
            return self
        names = tuple(self.names(settings))
        undeclared = [m for m in names if not any(sp.matches(m) for sp in self.specs)]
        if self.specs and undeclared:
            raise ValueError(f"group {self.name}: names(settings) gave undeclared metric(s) {undeclared}")
        return replace(self, metrics=names)


GROUPS: dict[str, Group] = {}


# run-wide inputs a group may declare: "generated", the run's SGLD set (bench.generation.generated),
# made once before the group runs (under torchrun by every rank together) and shared by the groups
NEEDS = ("generated",)


def register(name: str, suite: str, metrics: tuple[Metric | str, ...], settings: tuple[str, ...],
             sharded: bool = False, names: Callable[[dict], tuple[str, ...]] | None = None,
             needs: tuple[str, ...] = ()):
    """Decorator: register ``fn(ctx) -> {metric: Result}`` as group ``name`` of ``suite`` (a new
    suite name makes a new suite: bench.suites).  ``metrics`` declares every metric the group
    returns, each a ``Metric`` (a bare name is a ``Metric`` with no facts: plain float, not
    checkable).  With ``names(settings)`` the names depend on the settings and ``metrics`` holds
    the ``*`` patterns that declare them (see ``Group.for_settings``).  A metric name (or pattern)
    another group already declares is refused (ValueError), as is a pattern without ``names``.
    A ``sharded`` group takes its points through ``ctx.batches`` and reassembles per-point results
    with ``ctx.collect``/``ctx.gather``, so under torchrun every rank works on its share.  ``needs``
    names the run-wide inputs it reads (``NEEDS``); every setting it reads is listed in ``settings``
    (declared in ``bench.settings.SETTINGS``), which keys its cache."""
    specs = tuple(m if isinstance(m, Metric) else Metric(m) for m in metrics or ())
    if not specs:
        raise ValueError(f"group {name}: declare its metrics")
    patterns = [sp.name for sp in specs if sp.is_pattern]
    if patterns and names is None:
        raise ValueError(f"group {name}: metric patterns {patterns} need names(settings)")
    if names is not None and len(patterns) != len(specs):
        raise ValueError(f"group {name}: with names(settings) declare patterns (ending in '*') only")
    _refuse_duplicates(name, specs)
    unknown = [k for k in needs if k not in NEEDS]
    if unknown:
        raise ValueError(f"group {name}: needs {unknown[0]!r}; a group may need {', '.join(NEEDS)}")
    undeclared = [k for k in settings if k not in SPECS]
    if undeclared:
        raise ValueError(f"group {name}: setting {undeclared[0]!r} is not declared in bench.settings.SETTINGS")

    def deco(fn):
        fn = evaluates(fn)  # ctx.model in eval mode while the group runs, its mode restored after
        exact = tuple(sp.name for sp in specs if not sp.is_pattern)
        GROUPS[name] = Group(name, suite, exact, tuple(settings), fn, sharded, names, specs, tuple(needs))
        return fn

    return deco


def _overlap(a: Metric, b: Metric) -> bool:
    """Could one metric name be declared by both?"""
    if a.is_pattern and b.is_pattern:
        return a.name[:-1].startswith(b.name[:-1]) or b.name[:-1].startswith(a.name[:-1])
    return a.matches(b.name) if a.is_pattern else b.matches(a.name)


def _refuse_duplicates(group: str, specs: tuple[Metric, ...]) -> None:
    """A metric name is declared once: within the group and across groups (a group registered
    again under its own name, as on a module reload, replaces itself)."""
    seen = [sp.name for sp in specs]
    dup = sorted({m for m in seen if seen.count(m) > 1})
    if dup:
        raise ValueError(f"group {group}: metric {dup[0]!r} declared twice")
    for other in GROUPS.values():
        if other.name == group:
            continue
        for sp in specs:
            for theirs in other.specs:
                if _overlap(sp, theirs):
                    raise ValueError(f"group {group}: metric {sp.name!r} is already declared by group "
                                     f"{other.name} ({theirs.name!r})")


def spec(name: str) -> Metric:
    """The declared facts of metric ``name``: its exact declaration, else the longest pattern that
    matches it; a name no registered group declares (an old results file's) gets ``Metric(name)``:
    plain float, no direction, not checkable."""
    _import_modules()
    found = [sp for g in GROUPS.values() for sp in g.specs if sp.matches(name)]
    exact = [sp for sp in found if not sp.is_pattern]
    if exact:
        return exact[0]
    return max(found, key=lambda sp: len(sp.name)) if found else Metric(name)


def declared() -> list[Metric]:
    """Every declared metric and pattern of the registered groups, in registration order."""
    _import_modules()
    return [sp for g in GROUPS.values() for sp in g.specs]


# the metric modules; their order is the suite order (bench.suites: --suite all runs robust,
# calibration, generative, score, memorization, landscape, denoise, ood in this order)
_MODULES = ("robustness", "calibration", "generative", "fisher", "ssim", "landscape", "denoise", "ood")


def _import_modules() -> None:
    """Import every metric module so it registers its groups (missing modules are skipped)."""
    for m in _MODULES:
        try:
            importlib.import_module(f"bench.metrics.{m}")
        except ModuleNotFoundError as e:
            if e.name != f"bench.metrics.{m}":
                raise


def load_all() -> dict[str, Group]:
    """Every registered group, by name (the groups the runner may run)."""
    _import_modules()
    return GROUPS


def module_rank(g: Group) -> int:
    """The place of a group's module in ``_MODULES`` (a module not listed, say a test's, comes after)."""
    mod = g.fn.__module__.rpartition(".")[2] if g.fn.__module__.startswith("bench.metrics.") else ""
    return _MODULES.index(mod) if mod in _MODULES else len(_MODULES)

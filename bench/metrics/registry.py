"""The metric registry: each metric group's declaration (its metrics' facts, the settings that key
its cache, its suite) and the lookups that bench check, bench table and bench.metrics.suites derive from.

It holds declarations, no metric code: ``load_all`` discovers the metric modules (every module of
the ``bench.metrics`` package, and those that the ``jeat_bench.metrics`` entry points name) and
imports them so they register themselves.  A metric module imports no torch at module level (its
group functions import their engines when called), so reading the facts this way imports no torch:
``bench.outputs.check`` and ``bench.outputs.table_files`` read them through this module
(``declared_groups``) and never run a metric group's code (docs/ARCHITECTURE.md, "Layers").
It also enforces the declarations: a group sees its settings through a ``SettingsView`` of what
it declared (plus the execution and identity keys), so reading an undeclared setting, which would
leave its cache stale, is an error at once.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

from bench.core.errors import BenchError, CheckFailed  # noqa: F401  (CheckFailed re-exported)
from bench.core.metric_facts import (  # noqa: F401  (the facts a registration declares, re-exported)
    DETERMINISTIC,
    DISPLAYS,
    DRIFTING,
    ECE,
    GENERATED,
    MEAN,
    NOT_CHECKABLE,
    PAIRS,
    POINTS,
    PORTABLE_UNITS,
    PROPORTION,
    STABLE,
    TOLERANCE_RULES,
    Metric,
    Portable,
    Tolerance,
    absolute,
    relative,
    stable,
    standard_error,
)
from bench.core.settings import FASTPATH_SETTINGS, GEN_SETTINGS, SPECS

# ---------------------------------------------------------------------------------------------
# what a group may read of the run's settings

# read by the execution of every group (ctx.batches, ctx.execution, ctx.generator); a group whose
# numbers depend on them (per-batch random streams, a seeded stream) declares them as well
EXECUTION_KEYS = ("batch_size", "seed")
# the identity of what is evaluated, added to the settings by the runner (bench.pipeline.runner.run) and
# keying every group's cache already: the checkpoint file's and the weights' (as loaded) sha256, the
# digests of both splits, and the generation code's digest (which keys samples.npz)
IDENTITY_KEYS = ("model_sha256", "weights_sha256", "data_sha256", "generation_code_sha256")


class UndeclaredSetting(RuntimeError):
    """A metric group read a setting it does not declare (its cache would not change with it)."""


class SettingsView(Mapping):
    """The run's settings as one group sees them, read-only: the settings it declares, the fast
    paths (which key every group), ``EXECUTION_KEYS`` and ``IDENTITY_KEYS``.  Reading any other
    name (``[k]``, ``.get(k)``, ``k in``) raises ``UndeclaredSetting`` naming the group and the
    setting.  It reads through to the run's dict (the out-of-memory retry lowers batch_size there)."""

    def __init__(self, full: Mapping, allowed: frozenset, group: str):
        self._full, self._allowed, self.group = full, allowed, group

    def _check(self, key) -> None:
        if key not in self._allowed:
            raise UndeclaredSetting(
                f"metric group {self.group} reads setting {key!r}, which it does not declare: list it in the "
                f"group's @register(settings=...) (the declared settings key its cache; without it a rerun "
                f"with another {key} would reuse stale results)")

    def __getitem__(self, key):
        self._check(key)
        return self._full[key]

    def __contains__(self, key) -> bool:
        self._check(key)
        return key in self._full

    def __iter__(self) -> Iterator:
        return (k for k in self._full if k in self._allowed)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"SettingsView({self.group}: {dict(self)!r})"

    @property
    def full(self) -> Mapping:
        return self._full


@dataclass
class Group:
    name: str
    suite: str
    metrics: tuple[str, ...]
    settings: tuple[str, ...]
    fn: Callable[..., dict]  # fn(ctx: bench.metrics.Context) -> {metric: bench.core.results.Result}
    sharded: bool = False  # under torchrun: every rank runs it on its share (else rank 0 alone)
    # a group whose metric names depend on the settings (the OOD group: one name per --ood set)
    # declares pattern specs (Metric("ood_auroc_*")) and names(settings) -> names; the runner fixes
    # the names per run (for_settings)
    names: Callable[[dict], tuple[str, ...]] | None = None
    specs: tuple[Metric, ...] = ()  # the declared facts of its metrics (names or patterns)
    needs: tuple[str, ...] = ()  # run-wide inputs beyond model and data (NEEDS), made before it runs
    # inputs(ctx) -> JSON-able digests of what the group reads beyond its settings, model and data
    # (the OOD images, the resolved feature extractor and reference files): they key its cache too
    inputs: Callable[..., dict] | None = None
    module: str = ""  # the module that registered it (its place in the suite order: module_rank)
    # cost(settings, sizes: bench.core.cost.Sizes) -> bench.core.cost.Work: its work under a run's
    # settings (bench run's plan, bench.pipeline.plan); None: the plan says "cost unknown"
    cost: Callable[..., object] | None = None

    def __post_init__(self):
        if "generated" in self.needs:  # the generated set depends on these: the group's numbers too
            self.settings = tuple(dict.fromkeys((*self.settings, *GEN_SETTINGS)))

    @property
    def keyed_settings(self) -> list[str]:
        """The settings that key this group's cache: those it declares and the fast paths (which
        may move any number)."""
        return sorted(set(self.settings) | set(FASTPATH_SETTINGS))

    @property
    def readable(self) -> frozenset:
        """The settings this group may read (``SettingsView``)."""
        return frozenset((*self.settings, *FASTPATH_SETTINGS, *EXECUTION_KEYS, *IDENTITY_KEYS))

    def view(self, settings: Mapping) -> SettingsView:
        full = settings.full if isinstance(settings, SettingsView) else settings
        return SettingsView(full, self.readable, self.name)

    def viewed(self, ctx):
        """``ctx`` as this group sees it: a new Context whose ``settings`` are this group's
        ``SettingsView`` (``ctx`` itself is not changed)."""
        return replace(ctx, settings=self.view(ctx.settings))

    def input_digests(self, ctx) -> dict | None:
        """``inputs(ctx)`` (None without one), computed through the group's view of the settings."""
        if self.inputs is None:
            return None
        return self.inputs(self.viewed(ctx))

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


# run-wide inputs a group may declare: "generated", the run's SGLD set (bench.engines.generation.generated),
# made once before the group runs (under torchrun by every rank together) and shared by the groups
NEEDS = ("generated",)


def register(name: str, suite: str, metrics: tuple[Metric | str, ...], settings: tuple[str, ...],
             sharded: bool = False, names: Callable[[dict], tuple[str, ...]] | None = None,
             needs: tuple[str, ...] = (), inputs: Callable[..., dict] | None = None,
             cost: Callable[..., object] | None = None):
    """Decorator: register ``fn(ctx) -> {metric: Result}`` as group ``name`` of ``suite`` (a new
    suite name makes a new suite: bench.metrics.suites).  ``metrics`` declares every metric the group
    returns, each a ``Metric`` (a bare name is a ``Metric`` with no facts: plain float, not
    checkable).  With ``names(settings)`` the names depend on the settings and ``metrics`` holds
    the ``*`` patterns that declare them (see ``Group.for_settings``).  A metric name (or pattern)
    another group already declares is refused (ValueError), as is a pattern without ``names``.
    A ``sharded`` group takes its points through ``ctx.batches`` and reassembles per-point results
    with ``ctx.collect``/``ctx.gather``, so under torchrun every rank works on its share.  ``needs``
    names the run-wide inputs it reads (``NEEDS``; ``generated`` declares the generation settings,
    ``GEN_SETTINGS``, for it); every setting it reads is listed in ``settings`` (declared in
    ``bench.core.settings.SETTINGS``), which keys its cache: the group sees ``ctx.settings`` as a
    ``SettingsView`` of those, and reading another is an ``UndeclaredSetting`` error.  ``inputs(ctx)``
    gives the digests of the files or data it reads beyond the settings, which key its cache too.
    ``cost(settings, sizes)`` gives its work (``bench.core.cost.Work``) for the run's plan."""
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
    check_settings(f"group {name}", settings)

    def deco(fn):
        @functools.wraps(fn)
        def guarded(ctx):  # called alone (a test) or by the runner: through the group's view
            ctx = group.viewed(ctx)
            if "generated" in group.needs:  # called alone: the run's generated set made here
                from bench.metrics.context import with_generated

                ctx = with_generated(ctx)
            from bench.core.energy import evaluates  # torch when the group runs, not when it registers

            return evaluates(fn)(ctx)  # ctx.model in eval mode while the group runs, its mode restored after

        exact = tuple(sp.name for sp in specs if not sp.is_pattern)
        group = Group(name, suite, exact, tuple(settings), guarded, sharded, names, specs, tuple(needs), inputs,
                      fn.__module__, cost)
        GROUPS[name] = group
        return guarded

    return deco


def check_settings(owner: str, settings: tuple[str, ...]) -> None:
    """Every name of ``settings`` is declared in ``bench.core.settings.SETTINGS`` (a ValueError naming
    ``owner`` and the first that is not): ``register``'s check, and ``curves.curve_attack``'s."""
    undeclared = [k for k in settings if k not in SPECS]
    if undeclared:
        raise ValueError(f"{owner}: setting {undeclared[0]!r} is not declared in bench.core.settings.SETTINGS")


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
    known, patterns = _spec_index()[:2]
    if name not in known:  # the longest pattern that matches, remembered
        known[name] = next((sp for sp in patterns if sp.matches(name)), None) or Metric(name)
    return known[name]


_SPEC_INDEX: dict = {}  # spec's answers by name, the patterns (longest first) and each one's group, of "of"


def group_of(name: str) -> Group | None:
    """The registered group that declares metric ``name`` (declarations do not overlap across
    groups: ``_refuse_duplicates``), or None."""
    return _spec_index()[2].get(id(spec(name)))


def _spec_index() -> tuple[dict[str, Metric], list[Metric], dict[int, Group]]:
    """``spec``'s tables: its answers so far by name (seeded with the exact declarations) and the
    patterns, longest first; rebuilt when the registered groups change.  A check of a results file
    asks for each metric's facts several times: scanning every declaration on each call made
    ``bench check`` of one --suite all run take a second."""
    groups = tuple(declared_groups().values())
    if _SPEC_INDEX.get("of") != groups:  # compared by identity first (tuple equality)
        specs = [sp for g in groups for sp in g.specs]
        known: dict[str, Metric] = {}
        for sp in specs:
            if not sp.is_pattern:
                known.setdefault(sp.name, sp)
        patterns = sorted((sp for sp in specs if sp.is_pattern), key=lambda sp: -len(sp.name))
        owner = {id(sp): g for g in groups for sp in g.specs}
        _SPEC_INDEX.update(of=groups, known=known, patterns=patterns, owner=owner)
    return _SPEC_INDEX["known"], _SPEC_INDEX["patterns"], _SPEC_INDEX["owner"]


def declared() -> list[Metric]:
    """Every declared metric and pattern of the registered groups, in registration order."""
    return [sp for g in declared_groups().values() for sp in g.specs]


# the metric modules of this package in suite order (--suite all runs robust, calibration,
# generative, score, memorization, landscape, denoise, ood, shift); any other module of bench.metrics is
# discovered and comes after them (by name), then the modules the entry points name
ORDER = ("robustness", "calibration", "generative", "fisher", "memorization", "landscape", "denoise", "ood", "shift")
# the package's own modules that hold no groups: the registry, the groups' Context, the suites
SUPPORT = ("registry", "context", "suites", "group_points")
ENTRY_POINTS = "jeat_bench.metrics"  # group of entry points naming metric modules outside this package
_LOADED: list[str] = []  # the metric modules imported, in suite order


def modules() -> list[str]:
    """The metric modules, in suite order: ``ORDER``, then the other modules of ``bench.metrics``
    (by name), then those the ``jeat_bench.metrics`` entry points name (their value: a module)."""
    from importlib.metadata import entry_points

    pkg = importlib.import_module("bench.metrics")  # the package above this module: no import cycle

    found = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                   if not m.name.startswith("_") and m.name not in SUPPORT)
    local = [m for m in ORDER if m in found] + [m for m in found if m not in ORDER]
    extra = [ep.value.split(":")[0].strip() for ep in entry_points(group=ENTRY_POINTS)]
    return list(dict.fromkeys([f"bench.metrics.{m}" for m in local] + extra))


def _import_modules() -> None:
    """Import every metric module (``modules``) so it registers its groups, once; a module that
    fails to import is a BenchError naming it."""
    if _LOADED:
        return
    names = modules()
    for m in names:
        try:
            importlib.import_module(m)
        except Exception as e:
            raise BenchError(f"metric module {m} failed to import: {type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else ''}") from e
    _LOADED[:] = names


def load_all() -> dict[str, Group]:
    """Every registered group, by name (the groups the runner may run)."""
    _import_modules()
    return GROUPS


_MODULES: dict = {}  # modules(), kept while what it reads is unchanged (_modules_now)


def _modules_now() -> tuple[str, ...]:
    """``modules()``, recomputed only when what it reads may have changed: the package's search path,
    ``sys.path`` or the entry-point lookup (a test replaces them); reading the entry points of every
    installed distribution on each lookup made a check of a few thousand metrics take minutes."""
    import importlib.metadata
    import sys

    pkg = importlib.import_module("bench.metrics")
    seen = (tuple(pkg.__path__), tuple(sys.path), id(importlib.metadata.entry_points))
    if _MODULES.get("seen") != seen:
        _MODULES.update(seen=seen, names=tuple(modules()))
    return _MODULES["names"]


def declared_groups() -> dict[str, Group]:
    """Every group's declaration, by name, for what reads facts only (``bench check``, ``bench
    table``, the suite order): ``load_all()``, which imports the metric modules; they hold no torch
    at module level, so neither does this."""
    return load_all()


def module_rank(g: Group) -> int:
    """The place of a group's module among the metric modules (``modules``; a module not among
    them, say a test's, comes after)."""
    order = _LOADED or _modules_now()
    return order.index(g.module) if g.module in order else len(order)

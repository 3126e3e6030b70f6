"""The facts of a metric, declared where its group is registered (``bench.metrics.registry.register``):
its unit, direction, display, value bounds, and the rules by which ``bench check`` compares it
(``Tolerance``: independent samples; ``Portable``: a paired rerun on another platform).  Plain data,
no torch: ``bench check`` and ``bench table`` read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# --------------------------------------------------------------------------------------------
# metric facts: each metric declares what bench check, bench table and the report need to know


TOLERANCE_RULES = ("proportion", "ece", "standard-error", "relative", "absolute", "none")


@dataclass(frozen=True)
class Tolerance:
    """How ``bench check`` bounds a metric in statistical mode (bench.outputs.check applies the rule; its
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
      bits both runs record (``bench.core.outcomes``), else from the values (|delta| x n); at most
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
    (``bench.outputs.paper_layout.suite_tables``; Tables 1-3 and the OOD tables have their own layouts)."""

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

    def refusal(self, doc, records: bool = True) -> str | None:
        """Why ``doc`` (this metric's record as results.json or a cache entry holds it: value, n,
        details) is not one of its values, in words; None: it is.  A value of the wrong type,
        non-finite or outside ``bounds``; an n that is no count; and with ``records`` its per-point
        record (``details.outcomes``): one that does not parse (not hex, too short), counts other
        points than n, or disagrees with a share-of-points value (edited by hand).  The one rule
        for what is read back: ``bench check``'s baseline, the per-group cache, the groups an
        earlier run in ``--out`` adds."""
        from bench.core import outcomes

        v = doc.get("value") if isinstance(doc, dict) else None
        n = doc.get("n", 0) if isinstance(doc, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return f"n {n!r} is not a count"
        if not self.admits(v):
            lo, hi = self.bounds
            return (f"value {v!r} is not a finite number in "
                    f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]")
        details = doc.get("details")
        record = details.get(outcomes.KEY) if isinstance(details, dict) else None
        if not records or record is None:
            return None
        bits = outcomes.unpack(record)
        if bits is None:
            return f"its per-point record does not parse (bits not hex, or not n = {record.get('n')!r} bits long)" \
                if isinstance(record, dict) else "its per-point record is not an object"
        if len(bits) != n:
            return f"n {n} disagrees with its per-point record of {len(bits)} points: edited by hand?"
        if v is not None and self.portable is not None and self.portable.unit == "points" and n \
                and abs(bits.mean() - v) > 0.5 / n:
            return (f"value {v!r} disagrees with its per-point record ({int(bits.sum())} of {n} points): "
                    "edited by hand?")
        return None

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

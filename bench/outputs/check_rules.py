"""The tolerances ``bench check`` applies, one function per mode; ``bench.outputs.check`` picks the mode
and the rows.  Each metric declares its rules where its group is registered (``Metric.portable``,
``Metric.tolerance``, ``Metric.bounds``: bench.metrics.registry); this module applies them.

- ``exact``: the rerun's fingerprint equals the baseline's (platform, versions, fast paths: the
  same kernels and summation order), so every metric must match to ``EXACT_REL`` (1e-6) relative,
  a per-point record must match bit for bit, and a rank metric to a quarter of a pair.
- ``portable`` (paired): same points, same seeds, another platform.  Counted in each metric's own
  unit, points that flipped, (in, out) pairs that changed, or a relative drift, within the margin
  the metric declares (``bench.metrics.registry.Portable``; the margins come from noise measured across
  simulated machines, docs/CHECKS.md).
- ``statistical``: the two runs as independent samples (other fast paths, where even the pairing
  breaks): K = 3 standard errors of the difference, sqrt(2) x one run's (see ``_rule``).

Each returns (tolerance in the metric's units, how it was derived, status or None); a status of
``REGRESSION`` is decided by the rule itself (too many flipped points), None leaves it to
|delta| <= tolerance, and a tolerance of None is "not checkable".
"""

from __future__ import annotations

import math

from bench.core import outcomes
from bench.core.results import Result
from bench.core.stats import proportion_se
from bench.metrics import registry

EXACT_REL = 1e-6
K = 3.0
DIFF = math.sqrt(2.0)  # standard error of a difference of two independent estimates, per unit SE
MIN_N = 30  # fewer points: a standard error (or a normal approximation) bounds nothing
REGRESSION = "REGRESSION"


# --------------------------------------------------------------------------------------------
# paired rules: exact and portable


def pair_count(r: Result) -> int | None:
    """n_in x n_out of a rank metric's record (None when it does not say)."""
    d = r.details or {}
    n_in, n_out = d.get("n_in"), d.get("n_out")
    return n_in * n_out if isinstance(n_in, int) and isinstance(n_out, int) and n_in > 0 and n_out > 0 else None


def flipped(b: Result, c: Result) -> int | None:
    """Points whose per-point outcome differs between the two runs (None: no record on both sides)."""
    return outcomes.flips(outcomes.of(b.details), outcomes.of(c.details))


def exact(name: str, b: Result, c: Result):
    """Bit for bit: 1e-6 relative, no flipped point, a rank metric within a quarter pair."""
    f = flipped(b, c)
    if f:
        return 0.0, f"exact: {f} of {b.n} points flipped", REGRESSION
    tol = EXACT_REL * abs(b.value)
    rule = registry.spec(name).portable
    pairs = pair_count(b)
    if rule is not None and rule.unit == "pairs" and pairs:
        tol = min(tol, 0.25 / pairs)
    return tol, f"exact ({EXACT_REL:g} relative)", None


def portable(name: str, b: Result, c: Result):
    """The metric's paired rule (``Metric.portable``) for a rerun on another platform."""
    rule = registry.spec(name).portable
    if rule is None:
        return None, "no paired rule is declared for this metric", None
    n = int(b.n or 0)
    delta = abs(c.value - b.value)
    if rule.unit == "points":
        if n <= 0:
            return None, "no point count recorded", None
        allowed = math.floor(rule.share * n)
        f = flipped(b, c)
        how = "paired, per-point record" if f is not None else "paired, from the values"
        f = max(f if f is not None else 0, round(delta * n))
        status = REGRESSION if f > allowed else None
        return allowed / n, f"{how}: {f} of {n} points flipped, at most {allowed}", status
    if rule.unit == "pairs":
        pairs = pair_count(b)
        if not pairs:
            return None, "no n_in, n_out recorded", None
        allowed = math.floor(rule.share * pairs)
        changed = round(delta * pairs)
        status = REGRESSION if changed > allowed else None
        return allowed / pairs, f"paired: {changed} of {pairs} pairs changed, at most {allowed}", status
    if rule.unit == "absolute":
        return rule.abs, f"paired: {rule.abs:g} absolute", None
    tol = rule.rel * abs(b.value) + rule.abs
    how = f"paired: {rule.rel:g} relative"
    f = flipped(b, c)
    if f:
        allowed = math.floor(rule.share * n)
        if f > allowed:
            return tol, f"paired: {f} of {n} points flipped, at most {allowed}", REGRESSION
        if rule.per_flip is None:
            return None, f"{f} of its points flipped and no per-point bound covers this metric", None
        tol += rule.per_flip * f / n
        how += f" + {rule.per_flip:g}/n for each of the {f} flipped points"
    return tol, how, None


# --------------------------------------------------------------------------------------------
# statistical rules (independent samples)


def known() -> set[str]:
    """Every declared metric with a rule (also valid in --tolerance when neither run has it)."""
    return {sp.name for sp in registry.declared()
            if not sp.is_pattern and (sp.tolerance.rule != "none" or sp.portable is not None)}


def _smoothed(p: float, n: int) -> float:
    return (p * n + 1) / (n + 2)


def _ece_se(r: Result) -> float:
    n = max(int(r.n or 0), 1)
    bins = (r.details or {}).get("bins") or {}
    counts, accs = bins.get("count"), bins.get("accuracy")
    if isinstance(counts, list) and isinstance(accs, list) and len(counts) == len(accs) and sum(counts) > 0:
        var = sum(c * _smoothed(a, c) * (1 - _smoothed(a, c)) for c, a in zip(counts, accs, strict=True)
                  if c and a is not None)
        return math.sqrt(var) / sum(counts)
    a = bins.get("avg_accuracy")
    a = 0.5 if not isinstance(a, int | float) else _smoothed(float(a), n)
    return proportion_se(a, n)


def _has_std(std) -> bool:
    return std is not None and math.isfinite(std)


def _rule(name: str, base: Result) -> tuple[float | None, str]:
    """The statistical tolerance of ``name`` by its declared rule (bench.metrics.Tolerance),
    before the checkability test."""
    v, n, std = base.value, int(base.n or 0), base.std
    t = registry.spec(name).tolerance
    if t.rule == "proportion" and n > 0 and 0 <= v <= 1:
        p = _smoothed(v, n)
        return max(K * DIFF * proportion_se(p, n), t.floor), f"3 SE of a proportion at n={n}"
    if t.rule == "ece" and n > 0:
        return max(K * DIFF * _ece_se(base), t.floor), f"3 SE of ECE at n={n}"
    if t.rule == "relative":
        return t.margin * abs(v) + 1e-9, f"{t.margin:.0%} relative"
    if t.rule == "standard-error":
        if _has_std(std):
            return max(K * DIFF * std, t.floor_rel * abs(v), 1e-9), "3 SE from the recorded std"
        if t.margin is not None:
            return t.margin * abs(v) + 1e-9, f"{t.margin:.0%} relative (no std recorded)"
        return None, "no standard error recorded"
    if t.rule == "absolute":
        if _has_std(std) and K * DIFF * std > t.margin:
            return K * DIFF * std, "3 SE from the recorded std"
        return t.margin, "absolute"
    if t.rule == "proportion":
        return None, f"not a proportion at n={n}"
    return None, "no statistical tolerance is defined for this metric (--exact compares it; or give --tolerance)"


def statistical(name: str, base: Result) -> tuple[float | None, str]:
    """(tolerance, how it was derived) for metric ``name`` in statistical mode, from the baseline's
    record; (None, why) for a metric that is not checkable (see the module docstring)."""
    if base.value is None:
        return None, "no baseline value"
    n = int(base.n or 0)
    tol, how = _rule(name, base)
    if tol is None:
        return None, how
    if n < MIN_N:
        return None, f"at n={n}: fewer than {MIN_N} points (tolerance would be {tol:.3g})"
    width = registry.spec(name).range
    if width is not None and tol >= width / 2:
        return None, f"at n={n}: the tolerance {tol:.3g} spans half the metric's range or more"
    return tol, how

"""Which cells of a table are bold: the best value of a column only where it is significantly best.

Rows are ranked only among our rows of the same data set and threat model (``Table.comparable``).
In such a group the row(s) with the best value of a column (by the metric's declared direction;
equal values share the mark) are bold when each is significantly better than every other row of
the group, at ``ALPHA`` two-sided per pair:

- two rows on the same points whose metric is a share of points (its value is the mean of the
  per-point outcomes it records, ``bench.core.outcomes``; accuracy, PGD-20, AutoAttack): the exact
  McNemar test on the discordant points (``bench.core.paired``), which uses the pairing;
- otherwise (other points, or a metric that is not a share): a z test on the two standard errors
  as independent samples, sqrt(se_a^2 + se_b^2); a row over seeds (``bench table --over-seeds``)
  has the standard deviation over its k seeds, so its standard error is sd / sqrt(k);
- a row without a standard error and without per-point outcomes is never significantly better:
  no mark rather than a mark the numbers do not support.

An AutoAttack of 65.00 % at n = 20 (standard error about 10 points) beside another model's 55.00 %
is therefore not bold, and neither is one of two equal 65.00.
"""

from __future__ import annotations

import math

import numpy as np

from bench.core import outcomes
from bench.core.paired import discordant, mcnemar_exact, z_test
from bench.core.results import Result

ALPHA = 0.05
RULE = ("Bold: the best of a column where it is significantly better (p < 0.05, two-sided) than every other "
        "row of the same data set and threat model (exact McNemar test on the per-point outcomes for shares of "
        "the same points, else the rows' independent standard errors); equal values share the mark.")


def _share_bits(res: Result) -> np.ndarray | None:
    """The per-point outcomes of a result whose value is their mean (a share of points), else None."""
    bits = outcomes.of(res.details)
    if bits is None or not bits.size or res.value is None:
        return None
    return bits if abs(float(bits.mean()) - res.value) < 1e-9 else None


def _standard_error(res: Result) -> float | None:
    if not isinstance(res.std, int | float) or not math.isfinite(res.std):
        return None
    seeds = (res.details or {}).get("seeds")
    return res.std / math.sqrt(len(seeds)) if isinstance(seeds, list) and len(seeds) > 1 else float(res.std)


def p_value(a: Result, b: Result) -> float | None:
    """Two-sided p of ``a`` and ``b`` differing (module docstring); None where nothing tests it."""
    bits_a, bits_b = _share_bits(a), _share_bits(b)
    if bits_a is not None and bits_b is not None and bits_a.shape == bits_b.shape:
        return mcnemar_exact(*discordant(bits_a, bits_b))
    se_a, se_b = _standard_error(a), _standard_error(b)
    if se_a is None or se_b is None:
        return None
    return z_test(a.value - b.value, math.hypot(se_a, se_b))  # independent: sqrt(se_a^2 + se_b^2)


def significantly_best(values: dict[int, float], results: dict[int, Result], how: str) -> set[int]:
    """Rows (keys of ``values``, one group) marked best in one column: the best value's rows, when
    each is significantly better than every row with another value; else none."""
    if len(values) < 2:
        return set()
    top = max(values.values()) if how == "max" else min(values.values())
    best = {i for i, v in values.items() if v == top}
    others = [j for j in values if j not in best]
    if not others:
        return set()
    for i in best:
        for j in others:
            p = p_value(results[i], results[j]) if i in results and j in results else None
            if p is None or p >= ALPHA:
                return set()
    return best

"""Bold only what is significantly best (issue 31): the exact McNemar test on the per-point bits of
rows on the same points, independent standard errors otherwise; p-values from scipy."""

import math

import numpy as np
import pytest
from scipy import stats

from bench.core import outcomes
from bench.outputs import table_files
from bench.outputs.table_bold import p_value, significantly_best
from tests.test_tables import make_run, metric


def shares(correct, n, of="correct under AutoAttack"):
    """A share metric whose per-point bits are ``correct`` (indices of the points that count)."""
    bits = np.zeros(n, dtype=bool)
    bits[list(correct)] = True
    p = bits.mean()
    return metric(float(p), math.sqrt(p * (1 - p) / n), n, outcomes=outcomes.pack(bits, of))


def _results(*metrics_):
    return [table_files.results.Result(m["value"], m["std"], m["n"], details=m.get("details") or {}) for m in metrics_]


def test_paired_rows_use_exact_mcnemar_on_the_discordant_points():
    """A 55/100, B 48/100 with B's points inside A's: 7 discordant points, all for A; McNemar's exact
    p = 2 * 0.5^7 (scipy binomtest), significant, where the independent standard errors (z = 0.99)
    would not be."""
    a, b = _results(shares(range(55), 100), shares(range(48), 100))
    assert p_value(a, b) == pytest.approx(stats.binomtest(7, 7, 0.5).pvalue) == pytest.approx(2 / 2**7)
    z = (0.55 - 0.48) / math.hypot(a.std, b.std)
    assert 2 * stats.norm.sf(z) > 0.3
    assert significantly_best({0: 55.0, 1: 48.0}, {0: a, 1: b}, "max") == {0}
    # the same shares on 20 points: 6 vs 5 discordant is no evidence (binomtest 6 of 11)
    c, d = _results(shares([*range(7), *range(12, 18)], 20), shares(range(13), 20))
    assert p_value(c, d) == pytest.approx(stats.binomtest(6, 11, 0.5).pvalue)


def test_equal_values_share_the_mark_and_a_small_n_gets_none(tmp_path):
    """The issue's AutoAttack of 65.00 at n = 20 beside another model's equal 65.00 and a third at
    55.00: nothing is bold (standard error about 10 points); at n = 1000 the two equal ones share it."""
    def table(n, low):
        dirs = [make_run(tmp_path / str(n), name, "jeat", {"autoattack": shares(pts, n)}, sha=name * 32)
                for name, pts in (("aa", range(int(0.65 * n))), ("bb", range(n - int(0.65 * n), n)),
                                  ("cc", range(int(low * n))))]
        t = next(t for t in table_files.build(dirs, tmp_path / f"o{n}", report=False).tables if t.name == "table3")
        return [("**" in line) for line in table_files.to_markdown(t).splitlines() if line.startswith("| ")][1:]
    assert table(20, 0.55) == [False, False, False]
    assert table(1000, 0.55) == [True, True, False]
    # the weaker pair at n = 1000: bb (points 350-999) against cc (0-549): 450 discordant for bb, 350 for cc
    assert stats.binomtest(450, 800, 0.5).pvalue < 0.05


def test_rows_on_other_points_are_tested_by_independent_standard_errors():
    """Different n: no pairing; z = |a - b| / sqrt(se_a^2 + se_b^2), two-sided normal p (scipy)."""
    a = table_files.results.Result(0.60, 0.02, 500, details={})
    b = table_files.results.Result(0.54, 0.015, 900, details={})
    z = 0.06 / math.hypot(0.02, 0.015)
    assert p_value(a, b) == pytest.approx(2 * stats.norm.sf(z))
    assert significantly_best({0: 60.0, 1: 54.0}, {0: a, 1: b}, "max") == {0}  # z = 2.4
    # over seeds the std is the spread of k seeds: its standard error is sd / sqrt(k)
    seeds = table_files.results.Result(0.60, 0.04, 500, details={"seeds": [0, 1, 2, 3]})
    assert p_value(seeds, b) == pytest.approx(2 * stats.norm.sf(0.06 / math.hypot(0.02, 0.015)))
    # no standard error (ECE) and no bits: never significant, so never bold
    ece = table_files.results.Result(0.01, None, 500, details={})
    assert p_value(ece, b) is None
    assert significantly_best({0: 1.0, 1: 30.0}, {0: ece, 1: ece}, "min") == set()

"""The paired tests of bench.core.paired against scipy and hand computations."""

import numpy as np
import pytest
from scipy.stats import binomtest

from bench.core import paired


@pytest.mark.parametrize("b,c", [(0, 0), (3, 0), (0, 7), (5, 5), (12, 4), (40, 61), (1, 200)])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_mcnemar_exact_equals_scipys_binomial_test(b, c, alternative):
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5, alternative=alternative).pvalue
    assert paired.mcnemar_exact(b, c, alternative) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_mcnemar_by_hand():
    # b=4, c=0: P(X <= 0) = 1/16 for X ~ Bin(4, 1/2), two-sided 2/16
    assert paired.mcnemar_exact(4, 0) == pytest.approx(0.125)
    assert paired.mcnemar_exact(4, 0, "greater") == pytest.approx(1 / 16)


def test_mcnemar_refuses_bad_counts():
    with pytest.raises(ValueError, match="non-negative integers"):
        paired.mcnemar_exact(-1, 3)
    with pytest.raises(ValueError, match="alternative"):
        paired.mcnemar_exact(1, 3, "both")


def test_discordant_counts():
    a = np.array([1, 1, 0, 0, 1], bool)
    b = np.array([1, 0, 1, 0, 0], bool)
    assert paired.discordant(a, b) == (2, 1)
    with pytest.raises(ValueError, match="different lengths"):
        paired.discordant(a, b[:3])


def test_holm_by_hand():
    # m = 3: sorted 0.01, 0.02, 0.04 -> 0.03, max(0.03, 0.04), max(0.04, 0.04)
    out = paired.holm({"a": 0.04, "b": 0.01, "c": 0.02, "d": None})
    assert out["b"] == pytest.approx(0.03)
    assert out["c"] == pytest.approx(0.04)
    assert out["a"] == pytest.approx(0.04)
    assert out["d"] is None

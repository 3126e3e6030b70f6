"""The paired means, the paired bootstrap and the gates' one-sided tests of bench.core.paired,
the per-point float records of bench.core.outcomes and settings compared as values, against
scipy and hand computations."""

import math

import numpy as np
import pytest
from scipy.stats import binomtest, norm, ttest_rel

from bench.core import outcomes, paired
from bench.core.values import same_value


def test_mean_difference_equals_scipys_paired_t_statistic():
    rng = np.random.default_rng(1)
    a = rng.normal(1.0, 0.5, 200)
    b = a + rng.normal(0.1, 0.2, 200)
    diff, se = paired.mean_difference(a, b)
    t = ttest_rel(b, a).statistic  # mean(b - a) / (sd(b - a) / sqrt(n))
    assert diff == pytest.approx(np.mean(b - a), rel=1e-12)
    assert diff / se == pytest.approx(t, rel=1e-10)
    with pytest.raises(ValueError, match="different lengths"):
        paired.mean_difference(a, b[:5])


def test_proportion_difference_by_hand():
    # b = 3 points for A only, c = 1 for B only, n = 10: d has three -1, one +1, six 0; mean -0.2,
    # sum d^2 = 4, sample variance (4 - 10 * 0.04) / 9 = 0.4, se sqrt(0.4 / 10) = 0.2
    diff, se = paired.proportion_difference(3, 1, 10)
    assert diff == pytest.approx(-0.2) and se == pytest.approx(0.2)
    d = np.array([-1, -1, -1, 1, 0, 0, 0, 0, 0, 0], float)
    assert paired.mean_difference(np.zeros(10), d) == pytest.approx((diff, se))


def test_paired_bootstrap_of_a_mean_has_the_known_standard_error():
    """The bootstrap distribution of a mean of n points has variance sigma^2 / n with sigma^2 the
    variance of the points with divisor n (the plug-in estimate); the bootstrap pairs the points,
    so a constant shift between the models has error 0 (an unpaired one would not)."""
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 400)
    b = a + rng.normal(0.3, 0.5, 400)
    diff, se = paired.bootstrap_difference(np.mean, (a,), (b,), n_boot=20000, seed=3)
    d = b - a
    assert diff == pytest.approx(d.mean(), rel=1e-12)
    assert se == pytest.approx(d.std(ddof=0) / math.sqrt(len(d)), rel=0.03)
    shifted = paired.bootstrap_difference(np.mean, (a,), (a + 1.0,), n_boot=500, seed=3)
    assert shifted[0] == pytest.approx(1.0) and shifted[1] == pytest.approx(0.0, abs=1e-12)
    # seeded: the same call gives the same error, another seed another
    assert paired.bootstrap_difference(np.mean, (a,), (b,), 300, seed=1) == \
        paired.bootstrap_difference(np.mean, (a,), (b,), 300, seed=1)
    assert paired.bootstrap_difference(np.mean, (a,), (b,), 300, seed=1)[1] != \
        paired.bootstrap_difference(np.mean, (a,), (b,), 300, seed=2)[1]


def test_paired_bootstrap_of_a_statistic_of_two_arrays():
    """A statistic of several per-point arrays (ECE takes confidence and correctness): the share of
    correct points, whose bootstrap error is that of the paired proportion difference."""
    rng = np.random.default_rng(2)
    ok_a = rng.random(500) < 0.7
    ok_b = np.where(rng.random(500) < 0.2, ~ok_a, ok_a)
    conf = rng.random(500)

    def share(c, ok):
        return ok.mean()
    diff, se = paired.bootstrap_difference(share, (conf, ok_a), (conf, ok_b), n_boot=20000, seed=0)
    b, c = paired.discordant(ok_a, ok_b)
    expect = math.sqrt((b + c) / 500 - ((c - b) / 500) ** 2) / math.sqrt(500)  # plug-in, divisor n
    assert diff == pytest.approx((c - b) / 500) and se == pytest.approx(expect, rel=0.03)


def test_z_test_against_scipys_normal():
    assert paired.z_test(0.1, 0.05) == pytest.approx(2 * norm.sf(2.0), rel=1e-12)
    assert paired.z_test(-0.05, 0.02, "less", margin=0.01) == pytest.approx(norm.cdf(-2.0), rel=1e-12)
    assert paired.z_test(0.0, 0.0) == 1.0 and paired.z_test(0.2, 0.0) == 0.0
    assert paired.z_test(-0.1, 0.0, "less") == 0.0 and paired.z_test(0.0, 0.0, "less") == 1.0


@pytest.mark.parametrize("b,c", [(0, 0), (10, 2), (2, 10), (161, 8), (30, 30)])
def test_worse_share_at_margin_zero_is_mcnemars_one_sided_test(b, c):
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5, alternative="greater").pvalue
    assert paired.worse_share_p(b, c, 1000) == pytest.approx(expected, rel=1e-12, abs=0)


def test_mcnemar_one_sided_tail_does_not_cancel_to_zero():
    """P(X >= 266) for X ~ Bin(276, 1/2) is about 1e-65: computed as 1 - P(X < 266) it was 0."""
    expected = binomtest(266, 276, 0.5, alternative="greater").pvalue
    assert 0 < expected < 1e-60
    assert paired.mcnemar_exact(266, 10, "greater") == pytest.approx(expected, rel=1e-9, abs=0)


def test_worse_share_above_a_margin_by_hand():
    # b = 40 worse, c = 10 better of n = 1000: diff -0.03, se sqrt((50 - 0.9) / 999 / 1000)
    se = math.sqrt((50 - 1000 * 0.03 ** 2) / 999 / 1000)
    assert paired.worse_share_p(40, 10, 1000, margin=0.01) == pytest.approx(norm.cdf((-0.03 + 0.01) / se), rel=1e-12)
    assert paired.worse_share_p(40, 10, 1000, margin=0.05) > 0.5  # worse, but within the margin


def test_per_point_float_records_round_trip():
    v = np.array([0.5, 1.25, -3.0, 1e-8, 7.0], np.float32)
    rec = outcomes.pack_values(v, "nll per test point in order")
    assert rec["n"] == 5 and rec["of"].startswith("nll")
    assert np.array_equal(outcomes.unpack_values(rec), v.astype(np.float64))
    assert np.array_equal(outcomes.values_of({outcomes.VALUES_KEY: rec}), v)
    assert len(outcomes.pack_values(np.zeros(450), "x")["f32le"]) == 2400  # 1800 bytes as base64
    for bad in (None, {}, {"f32le": "!!", "n": 5}, dict(rec, n=6), dict(rec, n=True), dict(rec, f32le=5)):
        assert outcomes.unpack_values(bad) is None
    assert outcomes.values_of({"outcomes": {}}) is None and outcomes.values_of(None) is None


@pytest.mark.parametrize("a,b,same", [
    ("0.286/0.353", "0.2860/0.3530", True),
    ("0.4914,0.4822,0.4465/0.2470,0.2435,0.2616", "0.4914, 0.4822, 0.4465/0.247,0.2435,0.2616", True),
    ("0.286/0.353", "0.287/0.353", False),
    ("0.286/0.353", "0.286,0.353", False),
    ("cifar10", "cifar10", True), ("cifar10", "cifar100", False),
    (0.1, 0.1 + 1e-17, True), (0.1, 0.1000001, False), (1, 1.0, True),
    (True, 1, False), (False, False, True),
    ([0.5, 2], [0.5, 2.0], True), ([0.5], [0.5, 0.5], False),
    ({"a": 1}, {"a": 1.0}, True), ({"a": 1}, {"b": 1}, False),
    (None, None, True), (None, 0, False), ("0.1", 0.1, False),
])
def test_settings_compared_as_values(a, b, same):
    assert same_value(a, b) is same and same_value(b, a) is same


def test_paired_delong_against_a_brute_force_computation():
    """DeLong's paired test of two AUROCs on the same points, against placement values computed
    pair by pair (psi = 1, 1/2, 0) and scikit-learn's AUROCs; ties included."""
    from sklearn.metrics import roc_auc_score

    from bench.core import roc

    rng = np.random.default_rng(5)
    in_a, out_a = rng.normal(1.0, 1, 60).round(1), rng.normal(0, 1, 50).round(1)
    in_b, out_b = in_a + rng.normal(0, 0.5, 60).round(1), out_a + rng.normal(0.3, 0.5, 50).round(1)

    def brute(a, b):
        psi = (a[:, None] > b[None, :]) + 0.5 * (a[:, None] == b[None, :])
        return psi.mean(1), psi.mean(0)

    (v10a, v01a), (v10b, v01b) = brute(in_a, out_a), brute(in_b, out_b)
    labels = np.r_[np.ones(60), np.zeros(50)]
    auc_a, auc_b = roc_auc_score(labels, np.r_[in_a, out_a]), roc_auc_score(labels, np.r_[in_b, out_b])
    s10 = np.cov(np.c_[v10a, v10b].T)  # DeLong's covariance of the structural components
    s01 = np.cov(np.c_[v01a, v01b].T)
    w = np.array([-1.0, 1.0])
    se = math.sqrt(w @ s10 @ w / 60 + w @ s01 @ w / 50)
    diff, got = roc.paired_difference(in_a, out_a, in_b, out_b)
    assert diff == pytest.approx(auc_b - auc_a, rel=1e-12) and got == pytest.approx(se, rel=1e-12)
    assert roc.auroc(in_a, out_a)[0] == pytest.approx(auc_a, rel=1e-12)

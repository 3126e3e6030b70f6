"""``bench compare`` on the shift suite's pooled metrics: the test point is the unit (its images
under every corruption and severity together, ``details.per_point_of``), not the image.  Against
scipy's paired t statistic over hand-grouped points, scipy's binomial test for the unpooled
accuracies, and constructed ECE and AUROC cases whose point bootstrap has a closed form."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from bench.cli import main
from bench.core import outcomes
from bench.core.errors import BenchError
from bench.core.results import Result
from bench.outputs import compare

N, SETS = 20, 6  # test points, image sets (corruption x severity) per pooled record


def _pooled(bits, values=None, points=N, **details) -> Result:
    d = {**({} if bits is None else {outcomes.KEY: outcomes.pack(bits, "correct")}), **details}
    if values is not None:
        d[outcomes.VALUES_KEY] = outcomes.pack_values(values, "values")
    if points is not None:
        d[outcomes.CLUSTER_KEY] = points
    record = bits if values is None else values
    return Result(float(np.mean(record)), None, len(record), details=d)


def _hand_point_means(record, points):
    """Each point's mean over its images, image i being of point i % points (a plain loop)."""
    sums, counts = [0.0] * points, [0] * points
    for i, v in enumerate(record):
        sums[i % points] += float(v)
        counts[i % points] += 1
    return np.array(sums) / np.array(counts)


@pytest.fixture
def concentrated():
    """A's bits random; B's = A's but every image of points 3 and 7 wrong, and two other flips."""
    rng = np.random.default_rng(1)
    a = rng.random(N * SETS) < 0.8
    b = a.copy()
    b[[3 + N * s for s in range(SETS)] + [7 + N * s for s in range(SETS)]] = False
    b[[N * 2 + 11, N * 4 + 12]] = True
    return a, b


def test_a_pooled_accuracy_is_the_paired_test_of_per_point_means_not_mcnemar(concentrated):
    a, b = concentrated
    t = compare.paired_test("shift_acc_mean", _pooled(a), _pooled(b))
    ma, mb = _hand_point_means(a, N), _hand_point_means(b, N)
    z = stats.ttest_rel(mb, ma).statistic  # the paired t statistic: mean(d) / (sd(d) / sqrt(n))
    assert t.test == compare.POINT_MEAN and t.n == N
    assert t.diff == pytest.approx(mb.mean() - ma.mean())
    assert t.se == pytest.approx(np.std(mb - ma, ddof=1) / math.sqrt(N))
    assert t.p == pytest.approx(2 * stats.norm.sf(abs(z)))
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    mcnemar = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert mcnemar < 0.01 < 0.05 < t.p  # the images of two points are not a dozen independent flips
    grouped_wrong = np.asarray(b, float).reshape(N, SETS).mean(1) - np.asarray(a, float).reshape(N, SETS).mean(1)
    assert t.se != pytest.approx(grouped_wrong.std(ddof=1) / math.sqrt(N))  # the layout matters


def test_the_unpooled_accuracy_keeps_mcnemar(concentrated):
    a, b = (x[:N] for x in concentrated)  # one image per point: no per_point_of
    t = compare.paired_test("shift_acc_fog_3", _pooled(a, points=None), _pooled(b, points=None))
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    assert t.test == compare.MCNEMAR and (t.only_a, t.only_b) == (only_a, only_b)
    assert t.p == pytest.approx(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def test_a_pooled_nll_is_the_paired_test_of_per_point_means():
    rng = np.random.default_rng(2)
    a = rng.gamma(2.0, 0.3, N * SETS)
    b = a + rng.normal(0.05, 0.2, N * SETS)
    ok = rng.random(N * SETS) < 0.7
    t = compare.paired_test("shift_nll_s2", _pooled(ok, a), _pooled(ok, b))
    ma, mb = _hand_point_means(np.float32(a), N), _hand_point_means(np.float32(b), N)
    assert t.test == compare.POINT_MEAN
    assert t.p == pytest.approx(2 * stats.norm.sf(abs(stats.ttest_rel(mb, ma).statistic)), rel=1e-6)


def _one_bin_ece(delta_at_point0: float):
    """Every confidence 0.91 (one 20-bin bin) and every prediction wrong, so ECE = mean confidence:
    linear in the images.  B adds ``delta`` to the confidences of point 0's images."""
    ok = np.zeros(N * SETS, dtype=bool)
    conf_a = np.full(N * SETS, 0.91)
    conf_b = conf_a.copy()
    conf_b[0::N] += delta_at_point0
    return (_pooled(ok, conf_a, n_bins=20), _pooled(ok, conf_b, n_bins=20))


def test_the_ece_bootstrap_resamples_points_with_all_their_images():
    """B - A = delta K / N where K ~ Binomial(N, 1/N) counts point 0 in a resample of the points:
    sd delta sqrt(1 - 1/N) / N, z about 1 (an image bootstrap would give sd about delta / (N sqrt(SETS)))."""
    delta = 0.03
    ra, rb = _one_bin_ece(delta)
    t = compare.paired_test("shift_ece_s3", ra, rb, seed=5)
    assert t.test == compare.POINT_BOOTSTRAP
    assert t.diff == pytest.approx(delta / N, rel=1e-5)
    assert t.se == pytest.approx(delta * math.sqrt(1 - 1 / N) / N, rel=0.1)
    assert t.p > 0.2  # a shift of one point's images is not significant
    again, other = compare.paired_test("shift_ece_s3", ra, rb, seed=5), compare.paired_test("shift_ece_s3", ra, rb, seed=6)
    assert again.se == t.se and other.se != t.se
    same = compare.paired_test("shift_ece_s3", ra, ra, seed=5)
    assert (same.diff, same.se, same.p) == (0.0, 0.0, 1.0)


def _auroc_records(b_point0_corrupted: float):
    """Clean scores 1, corrupted 0 (AUROC 1, clean positive); B puts point 0's corrupted images at
    ``b_point0_corrupted``: above every clean score at 2, so B's AUROC is 1 - (its share of images)."""
    clean = np.ones(N)
    out_a = np.zeros(N * SETS)
    out_b = out_a.copy()
    out_b[0::N] = b_point0_corrupted

    def rec(out):
        return _pooled(None, out, **{compare.IN_SCORES: outcomes.pack_values(clean, "clean")})
    return rec(out_a), rec(out_b)


def test_the_auroc_bootstrap_resamples_points_with_their_clean_score():
    ra, rb = _auroc_records(2.0)
    t = compare.paired_test("shift_auroc_energy_s4", ra, rb, seed=3)
    assert t.test == compare.POINT_BOOTSTRAP and t.n == N
    assert t.diff == pytest.approx(-1 / N)
    assert t.se == pytest.approx(math.sqrt(1 - 1 / N) / N, rel=0.1)
    assert t.p > 0.2
    assert compare.paired_test("shift_auroc_energy_s4", ra, rb, seed=3).se == t.se
    same = compare.paired_test("shift_auroc_energy_s4", ra, ra, seed=3)
    assert (same.diff, same.p) == (0.0, 1.0)


def test_records_that_are_not_image_sets_of_the_points_are_refused():
    ok = np.ones(N * SETS + 1, dtype=bool)
    with pytest.raises(BenchError, match="not image sets of 20 test points"):
        compare.paired_test("shift_acc_mean", _pooled(ok), _pooled(ok))
    with pytest.raises(BenchError, match="over 19 and 20 test points"):
        compare.paired_test("shift_acc_mean", _pooled(ok[:-1], points=19), _pooled(ok[:-1]))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("shiftcmp") / "run"
    assert main(["run", "--model", "digits-jeat", "--suite", "shift", "--n-eval", "12", "--shift-corruptions",
                 "fog,contrast", "--device", "cpu", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())["metrics"]


def test_a_run_records_the_points_of_its_pooled_metrics_in_image_order(tiny_run):
    _, m = tiny_run
    assert outcomes.CLUSTER_KEY not in m["shift_acc_fog_3"]["details"]
    pooled = [n for n in m if n.startswith(("shift_acc_", "shift_ece_", "shift_nll_", "shift_auroc_"))
              and not n[-2:-1] == "_"]
    assert {m[n]["details"][outcomes.CLUSTER_KEY] for n in pooled} == {12}
    rows = outcomes.by_point(outcomes.unpack(m["shift_acc_fog"]["details"][outcomes.KEY]), 12)
    for k in range(1, 6):  # column k - 1 of the per-point rows is severity k's own record
        assert (rows[:, k - 1] == outcomes.unpack(m[f"shift_acc_fog_{k}"]["details"][outcomes.KEY])).all()


def test_compare_of_a_run_with_itself_tests_per_point(tiny_run, capsys):
    out, _ = tiny_run
    assert main(["compare", str(out), str(out), "--metrics", "shift_acc_mean,shift_acc_fog_2,shift_ece_s1,"
                 "shift_nll_s1,shift_auroc_energy_s2"]) == 0
    text = capsys.readouterr().out
    for name, test in (("shift_acc_mean", compare.POINT_MEAN), ("shift_acc_fog_2", compare.MCNEMAR),
                       ("shift_ece_s1", compare.POINT_BOOTSTRAP), ("shift_nll_s1", compare.POINT_MEAN),
                       ("shift_auroc_energy_s2", compare.POINT_BOOTSTRAP)):
        assert test in next(line for line in text.splitlines() if line.startswith(name + " "))


def test_a_run_written_before_the_key_is_paired_with_one_that_records_it(concentrated):
    """The same evaluation lays its images out alike: one run's per_point_of serves both."""
    a, b = concentrated
    t = compare.paired_test("shift_acc_mean", _pooled(a, points=None), _pooled(b))
    assert t.test == compare.POINT_MEAN and t.n == N
    old = compare.paired_test("shift_acc_mean", _pooled(a, points=None), _pooled(b, points=None))
    assert old.test == compare.MCNEMAR  # neither records it: over images, as before


def test_the_weighted_auroc_bootstrap_equals_resampling_the_points_by_index():
    """roc.point_bootstrap_difference (the points' counts as weights, sorted once) against the plain
    bootstrap that indexes the resampled points and recomputes DeLong's AUROC, on scores with ties."""
    from bench.core import paired, roc

    rng = np.random.default_rng(0)
    ia, ib = np.round(rng.normal(size=N), 1), np.round(rng.normal(size=N), 1)
    ra = np.round(rng.normal(0.3, 1, (N, SETS)), 1)
    rb = ra + np.round(rng.normal(0, 0.5, (N, SETS)), 1)
    fast = roc.point_bootstrap_difference(ia, ra, ib, rb, 300, 4)
    plain = paired.bootstrap_difference(lambda i, o: roc.auroc(i, o.ravel())[0], (ia, ra), (ib, rb), 300, 4)
    assert fast == pytest.approx(plain, rel=1e-12)


def test_the_run_and_compare_read_a_pooled_record_in_the_same_layout():
    """A pooled record is image set by image set, the test points in order in each: the run's
    standard error (``shift._per_point_mean``, torch) and ``bench compare``'s rows
    (``outcomes.by_point``, numpy) must both read it so; the standard error over the points, by hand."""
    import torch

    from bench.metrics import shift

    points, sets = 7, 5
    rng = np.random.default_rng(3)
    per_point = rng.normal(size=points)  # each point its own level, so a wrong layout shows
    v = np.concatenate([per_point + 0.1 * rng.normal(size=points) for _ in range(sets)])
    rows = outcomes.by_point(v, points)
    assert rows.shape == (points, sets) and np.allclose(rows[:, 2], v[2 * points:3 * points])
    means = v.reshape(sets, points).mean(0)
    np.testing.assert_allclose(rows.mean(1), means)
    mean, se = shift._per_point_mean(torch.tensor(v), points)
    assert mean == pytest.approx(v.mean())
    assert se == pytest.approx(np.std(means, ddof=1) / math.sqrt(points))
    assert se == pytest.approx(np.std(rows.mean(1), ddof=1) / math.sqrt(points))

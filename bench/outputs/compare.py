"""``bench compare A B [C ...]``: models evaluated on the same points with the same settings,
metric by metric, each against the first (A): the difference B - A, its standard error and a
p-value, paired point by point wherever both runs record their points (docs/COMPARE.md).

How each metric is tested, in this order (``paired_test``):

- a share of points (accuracy, PGD-20, AutoAttack, a robustness curve; ``Metric.portable.unit``
  ``points``) whose per-point outcomes both runs record (``details.outcomes``): the discordant
  counts (points counted for A only, for B only) and McNemar's exact test;
- an AUROC (``ood_auroc_*``, ``ood_adv_auroc_*``) whose in-distribution and OOD scores both runs
  record: DeLong's paired test (DeLong, DeLong and Clarke-Pearson 1988), the difference of the
  placement values point by point, a normal p;
- a binned calibration error (ECE, MCE, adaptive ECE, their ``_ts`` and ``_fgsm`` forms) whose
  per-point confidences and correctness both record: a paired bootstrap over points (the same
  resampled points for both models), its standard deviation as the standard error, a normal p;
- a mean over points (NLL, Brier, PSNR, Fisher scores and terms) whose per-point values both record
  (``details.per_point``): the paired standard error of the per-point differences, a normal p;
- a metric pooled over several images of each test point (the shift suite's accuracies, ECE, NLL
  and AUROCs over corruptions and severities; ``details.per_point_of``: the number of test points,
  ``bench.core.outcomes``) is tested with the test point as the unit, its images together
  (``per_point_test``): a share or a mean by the paired standard error of the per-point means, a
  binned calibration error or an AUROC by the paired bootstrap of the test points (a resampled point
  brings all its images, and for an AUROC its clean score); a normal p;
- anything else (FID, KID, AUPR, FPR95, a run without per-point records): independent standard errors
  sqrt(se_A^2 + se_B^2) from the recorded ``std`` (or the binomial error of a share), a normal p,
  and the output says so; no recorded error, no test.

Holm's step-down correction runs over every test of the comparison (metrics x runs).  The runs
must be the same evaluation except for the model (``check.evaluation_differences``), else exit 2.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

from bench.core import binned_calibration, outcomes, paired, roc
from bench.core.errors import BenchError
from bench.core.results import Result, Results
from bench.core.stats import proportion_se
from bench.metrics import registry
from bench.outputs import check

MCNEMAR, BOOTSTRAP, PAIRED_MEAN, INDEPENDENT = "McNemar exact", "paired bootstrap", "paired mean", "independent"
DELONG = "paired DeLong"
POINT_MEAN, POINT_BOOTSTRAP = "paired mean per point", "paired bootstrap of points"  # pooled images (per_point_of)
IN_SCORES = "per_point_in"  # an AUROC's in-distribution scores (bench.metrics.ood.IN_SCORES)
N_BOOT = 2000

# binned calibration errors recomputed on resampled points: base name -> statistic(conf, correct, bins)
BINNED = {
    "ece": lambda conf, ok, bins: binned_calibration.expected_calibration_error(conf, ok, bins)[0],
    "ece_ts": lambda conf, ok, bins: binned_calibration.expected_calibration_error(conf, ok, bins)[0],
    "mce": binned_calibration.max_calibration_error,
    "ece_adaptive": lambda conf, ok, bins: binned_calibration.adaptive_calibration_error(conf, ok, bins)[0],
}


@dataclass
class Test:
    """One metric of one run (B) against the reference run (A)."""

    metric: str
    a: float | None
    b: float | None
    diff: float | None = None  # B - A
    se: float | None = None
    test: str = ""  # MCNEMAR, DELONG, BOOTSTRAP, PAIRED_MEAN, INDEPENDENT, or "" (not tested)
    only_a: int | None = None  # points counted for A and not for B (a share of points)
    only_b: int | None = None
    p: float | None = None  # two-sided
    p_holm: float | None = None
    note: str = ""
    n: int = 0


def _shares(name: str) -> bool:
    sp = registry.spec(name)
    return sp.portable is not None and sp.portable.unit == "points"


def _binned(name: str):
    base = name.removesuffix("_fgsm")
    return BINNED.get("ece" if base.startswith("shift_ece_s") else base)  # the shift suite's ECE per severity


def paired_test(name: str, ra: Result, rb: Result, seed: int = 0, n_boot: int = N_BOOT) -> Test:
    """The test of ``name`` between A's and B's results (see the module docstring)."""
    t = Test(name, ra.value, rb.value, n=rb.n)
    if ra.value is None or rb.value is None:
        t.note = "null in " + ("both" if ra.value is None and rb.value is None else "A" if ra.value is None else "B")
        return t
    t.diff = rb.value - ra.value
    points = {p for p in (outcomes.points_of(ra.details), outcomes.points_of(rb.details)) if p is not None}
    if len(points) > 1:
        raise BenchError(f"{name}: the two runs pool their images over {' and '.join(map(str, sorted(points)))} "
                         f"test points (details.{outcomes.CLUSTER_KEY})")
    if points:  # one run written before the key was recorded has the same layout (the same evaluation)
        return per_point_test(name, ra, rb, t, points.pop(), seed, n_boot)
    bits_a, bits_b = outcomes.of(ra.details), outcomes.of(rb.details)
    vals_a, vals_b = outcomes.values_of(ra.details), outcomes.values_of(rb.details)
    same_bits = bits_a is not None and bits_b is not None and bits_a.shape == bits_b.shape
    same_vals = vals_a is not None and vals_b is not None and vals_a.shape == vals_b.shape
    if _shares(name) and same_bits:
        t.only_a, t.only_b = paired.discordant(bits_a, bits_b)
        t.n = len(bits_a)
        t.diff, t.se = paired.proportion_difference(t.only_a, t.only_b, len(bits_a))
        t.test, t.p = MCNEMAR, paired.mcnemar_exact(t.only_a, t.only_b)
        return t
    ins_a, ins_b = (outcomes.unpack_values((r.details or {}).get(IN_SCORES)) for r in (ra, rb))
    if same_vals and ins_a is not None and ins_b is not None and ins_a.shape == ins_b.shape:
        t.diff, t.se = roc.paired_difference(ins_a, vals_a, ins_b, vals_b)
        t.test, t.p = DELONG, paired.z_test(t.diff, t.se)
        return t
    if (stat := _binned(name)) and same_vals and same_bits and len(vals_a) == len(bits_a):
        bins = int((rb.details or {}).get("n_bins") or 20)
        t.diff, t.se = paired.bootstrap_difference(lambda c, ok: stat(c, ok, bins), (vals_a, bits_a),
                                                   (vals_b, bits_b), n_boot, seed)
        t.test, t.p = BOOTSTRAP, paired.z_test(t.diff, t.se)
        t.note = f"{n_boot} resamples of the points, seed {seed}"
        return t
    if same_vals and not _binned(name):
        _, t.se = paired.mean_difference(vals_a, vals_b)
        t.test, t.p = PAIRED_MEAN, paired.z_test(t.diff, t.se)
        return t
    return _independent(name, ra, rb, t)


def per_point_test(name: str, ra: Result, rb: Result, t: Test, points: int, seed: int, n_boot: int) -> Test:
    """The test of a metric pooled over several images of each of ``points`` test points (image i of
    point i % points, ``outcomes.by_point``), the point as the unit: a share of images or a mean (NLL)
    by the paired standard error of the points' means over their images; a binned calibration error
    by the paired bootstrap of the points, all images of a resampled point together; an AUROC by the
    same bootstrap, a resampled point bringing its clean score (``per_point_in``) and its corrupted
    images' scores.  Without the records: the standard errors the metrics recorded (over the points)."""
    rows = {}
    for key, read in (("bits", outcomes.of), ("values", outcomes.values_of)):
        a, b = read(ra.details), read(rb.details)
        if a is not None and b is not None:
            try:
                rows[key] = outcomes.by_point(a, points), outcomes.by_point(b, points)
            except ValueError as e:
                raise BenchError(f"{name}: {e} (details.{outcomes.CLUSTER_KEY})") from None
            if rows[key][0].shape != rows[key][1].shape:
                raise BenchError(f"{name}: the two runs record {a.size} and {b.size} images")
    t.n = points
    ins = [outcomes.unpack_values((r.details or {}).get(IN_SCORES)) for r in (ra, rb)]
    if "values" in rows and all(x is not None and x.shape == (points,) for x in ins):
        t.diff, t.se = roc.point_bootstrap_difference(ins[0], rows["values"][0], ins[1], rows["values"][1],
                                                      n_boot, seed)
        t.test = POINT_BOOTSTRAP
    elif (stat := _binned(name)) and "values" in rows and "bits" in rows:
        bins = int((rb.details or {}).get("n_bins") or 20)
        t.diff, t.se = paired.bootstrap_difference(lambda c, ok: stat(c.ravel(), ok.ravel(), bins),
                                                   (rows["values"][0], rows["bits"][0]),
                                                   (rows["values"][1], rows["bits"][1]), n_boot, seed)
        t.test = POINT_BOOTSTRAP
    elif not _binned(name) and (key := "bits" if _shares(name) else "values") in rows:
        a, b = rows[key]
        t.diff, t.se = paired.mean_difference(a.mean(1), b.mean(1))
        t.test = POINT_MEAN
    else:
        t = _independent(name, ra, rb, t)
        if t.test:
            t.note = "no per-image record: independent standard errors, each over the test points"
        return t
    t.p = paired.z_test(t.diff, t.se)
    images = rows[next(iter(rows))][0].shape[1] if rows else 0
    t.note = f"{points} test points, {images} images each" + (
        f"; {n_boot} resamples of the points, seed {seed}" if t.test == POINT_BOOTSTRAP else "")
    return t


def _independent(name: str, ra: Result, rb: Result, t: Test) -> Test:
    se_a, se_b = _se(name, ra), _se(name, rb)
    if se_a is None or se_b is None:
        t.note = "no per-point record and no standard error recorded: not tested"
        return t
    t.se = math.sqrt(se_a ** 2 + se_b ** 2)
    t.test, t.p = INDEPENDENT, paired.z_test(t.diff, t.se)
    t.note = "no per-point record in both runs: independent standard errors (wider than paired)"
    return t


def _se(name: str, r: Result) -> float | None:
    if r.std is not None and math.isfinite(r.std):
        return float(r.std)
    if _shares(name) and r.n and r.value is not None and 0 <= r.value <= 1:
        return proportion_se(r.value, r.n)
    return None


def worse_p(name: str, t: Test, margin: float = 0.0) -> float | None:
    """One-sided p of 'B is worse than A by more than ``margin``' in the metric's declared direction
    (``Metric.higher_is_better``); None for a metric with no direction or no test.  A share of
    points with outcomes: McNemar's exact one-sided test at margin 0, the paired z-test above it."""
    better = registry.spec(name).higher_is_better
    if better is None or not t.test:
        return None
    if t.test == MCNEMAR:
        worse, gain = (t.only_a, t.only_b) if better else (t.only_b, t.only_a)
        return paired.worse_share_p(worse, gain, t.n, margin)
    return paired.z_test(t.diff if better else -t.diff, t.se, "less", margin)


@dataclass
class Comparison:
    """Every run (B, C, ...) against the first (A), metric by metric."""

    labels: list[str]  # A first
    tests: dict[str, list[Test]]  # label of B -> its tests against A
    alpha: float = 0.05


def select(names, patterns) -> list[str]:
    """``names`` matching any of the comma-separated wildcard ``patterns`` (all without)."""
    if not patterns:
        return list(names)
    pats = [p.strip() for p in ",".join(patterns).split(",") if p.strip()]
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats)]
    if not chosen:
        raise BenchError(f"--metrics {','.join(pats)}: matches no metric the runs share")
    return chosen


def compare_runs(run_dirs, metrics=(), alpha: float = 0.05, seed: int = 0, n_boot: int = N_BOOT) -> Comparison:
    """``bench compare``: read the runs, refuse those that are not the same evaluation as the first
    (everything but the model), test every metric all of them hold, correct by Holm."""
    if len(run_dirs) < 2:
        raise BenchError("bench compare needs at least two runs")
    if not 0 < alpha < 1:
        raise BenchError(f"--alpha {alpha}: expected a level between 0 and 1")
    runs: list[Results] = [check._read(d, "run") for d in run_dirs]
    labels = [check.run_label(d, r) for d, r in zip(run_dirs, runs, strict=True)]
    if len(set(labels)) < len(labels):
        labels = [f"{chr(65 + i) if i < 26 else i}: {lab}" for i, lab in enumerate(labels)]
    ref = runs[0]
    for lab, r in zip(labels[1:], runs[1:], strict=True):
        if diffs := check.evaluation_differences(ref, r):
            raise BenchError(f"not compared: {lab} is another evaluation than {labels[0]}, not only another "
                             f"model: " + "; ".join(d.replace("baseline", "A").replace("current", "B") for d in diffs))
    common = [n for n in ref.metrics if all(n in r.metrics for r in runs[1:])]
    if not common:
        raise BenchError("not compared: the runs have no metric in common")
    names = select(common, metrics)
    tests = {lab: [paired_test(n, ref.metrics[n], r.metrics[n], seed, n_boot) for n in names]
             for lab, r in zip(labels[1:], runs[1:], strict=True)}
    flat = {(lab, i): t.p for lab, ts in tests.items() for i, t in enumerate(ts)}
    for (lab, i), p in paired.holm(flat).items():
        tests[lab][i].p_holm = p
    return Comparison(labels, tests, alpha)

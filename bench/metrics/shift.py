"""Distribution shift (suite ``shift``): the classifier, read as an energy model, on the 15 common
corruptions of CIFAR-10-C (Hendrycks & Dietterich 2019; ``bench.engines.corruptions``) at
severities 1 to 5, applied to the first ``n_eval`` test points (the points of ``accuracy``) with
the run's seed.  c: each corruption of ``--shift-corruptions`` (default: all defined at the data's
image size), k: each severity.  docs/CORRUPTIONS.md, "The shift suite", gives the definitions.

    shift_acc_<c>_<k>         accuracy on the corrupted points
    shift_acc_<c>, _s<k>,     accuracy pooled over the severities, over the corruptions, over
    shift_acc_mean            both: with the same n per (c, k), the mean of the shift_acc_<c>_<k>
    shift_ece_s<k>, _nll_s<k> 20-bin ECE (``ece_bins``) and NLL (nats) over every corruption's
                              points at severity k; shift_ece_mean, shift_nll_mean their means
    shift_auroc_energy_s<k>   AUROC telling the corrupted points at severity k (all corruptions)
    shift_auroc_msp_s<k>      from the clean ones by E(x) = -logsumexp f(x) / by -max softmax
    shift_ce_<c>              sum_k err_{c,k} / sum_k err^ref_{c,k}
    shift_mce, shift_rmce     mean over c of CE_c; of sum_k (err_{c,k} - err_clean) /
                              sum_k (err^ref_{c,k} - err^ref_clean)

The reference model (AlexNet's role) is ``bench.engines.shift_reference``'s.  This module holds the
declarations; the groups import their engines (``shift_stats``, ``shift_reference``,
``shift_plot``) when they run, so reading the declarations imports no torch.
"""

from __future__ import annotations

from bench.core import cost, outcomes
from bench.core.stats import proportion_se
from bench.metrics import ECE, MEAN, PAIRS, POINTS, PROPORTION, Metric, Result, register, stable

SCORES = {"energy": ("px", "E(x) = -logsumexp f(x), higher = shifted (ranked as logsumexp f, clean positive)"),
          "msp": ("py", "-max softmax, higher = shifted (ranked as max softmax, clean positive)")}
IN_SCORES = "per_point_in"  # the clean points' scores of an AUROC (as bench.metrics.ood records them)
SHIFT_SETTINGS = ("seed", "n_eval", "shift_corruptions", "ece_bins")
CE_SETTINGS = ("seed", "n_eval", "shift_corruptions", "shift_reference")
ECE_STD = "null: no closed-form standard error of a binned ECE"

# bench check's rules: every accuracy is a share of (point, corruption, severity) images with its
# bits recorded (paired: flipped images); ECE moves by at most 2 / n per flipped image; NLL and the
# corruption errors are checked at 1e-3 relative while no recorded outcome flipped; AUROC in pairs
SHIFT_SPECS = (
    Metric("shift_acc_*", "proportion", True, "percent", PROPORTION, 1.0, portable=POINTS, bounds=(0.0, 1.0)),
    Metric("shift_ece_*", "ECE", False, "percent", ECE, 1.0, portable=stable(2.0), bounds=(0.0, 1.0)),
    Metric("shift_nll_*", "nats", False, tolerance=MEAN, portable=stable(None), bounds=(0.0, None)),
    Metric("shift_auroc_*", "proportion", True, portable=PAIRS, bounds=(0.0, 1.0)),
)
CE_SPECS = (
    Metric("shift_ce_*", "ratio", False, "percent", portable=stable(None), bounds=(0.0, None)),
    Metric("shift_mce*", "ratio", False, "percent", portable=stable(None), bounds=(0.0, None)),
    Metric("shift_rmce*", "ratio", False, "percent", portable=stable(None)),
)


# --------------------------------------------------------------------------------------------
# settings -> metric names


def corruption_list(s, shape=None) -> tuple[str, ...]:
    """The run's corruptions (``bench.engines.shift_stats.chosen``; the runner resolves the setting
    at the data's size, so a run's names follow it; outside a run ``shape`` or 32x32 decides)."""
    from bench.engines.shift_stats import chosen

    return chosen(s.get("shift_corruptions"), shape or (3, 32, 32))


def _severities() -> tuple[int, ...]:
    from bench.engines.shift_stats import SEVERITIES

    return SEVERITIES


def accuracy_names(s, shape=None) -> tuple[str, ...]:
    cs, ks = corruption_list(s, shape), _severities()
    return (*(f"shift_acc_{c}_{k}" for c in cs for k in ks), *(f"shift_acc_{c}" for c in cs),
            *(f"shift_acc_s{k}" for k in ks), "shift_acc_mean")


def shift_names(s, shape=None) -> tuple[str, ...]:
    ks = _severities()
    return (*accuracy_names(s, shape), *(f"shift_ece_s{k}" for k in ks), "shift_ece_mean",
            *(f"shift_nll_s{k}" for k in ks), "shift_nll_mean",
            *(f"shift_auroc_{sc}_s{k}" for sc in SCORES for k in ks))


def ce_names(s, shape=None) -> tuple[str, ...]:
    return (*(f"shift_ce_{c}" for c in corruption_list(s, shape)), "shift_mce", "shift_rmce")


# --------------------------------------------------------------------------------------------
# what the groups share


def _here(ctx) -> tuple[str, ...]:
    return corruption_list(ctx.settings, ctx.data.input_shape)


def _logits(ctx, reference=None):
    """({clean or (c, k): logits} of the model on the first n_eval test points, their labels, and
    the same of ``reference`` or None), the model's made once per run for both groups; made again
    when non-finite, so the runner's watch on the model sees them.  A ``reference`` model is given
    the same corrupted batches as the model when both are made here (each image corrupted once)."""
    import torch

    from bench.engines import shift_stats

    s = ctx.settings
    split = ctx.data.test.subset(s["n_eval"])
    made = {}

    def make(models):
        made["all"] = shift_stats.shifted_logits(models, split.x, _here(ctx), int(s["seed"]), ctx.execution,
                                                 ctx.data.num_classes)
        return made["all"][0]

    both = [ctx.model] + ([reference] if reference is not None else [])
    z = ctx.once(("shift_logits", s["n_eval"], int(s["seed"]), int(s["batch_size"]), _here(ctx)),
                 lambda: make(both))
    if not made and not all(bool(torch.isfinite(v).all()) for v in z.values()):
        z = make(both)
    if reference is None:
        return z, split.y, None
    z_ref = made["all"][1] if made else make([reference])
    return z, split.y, z_ref


def _reference(ctx):
    """The reference of the corruption errors (``bench.engines.shift_reference``), once per run."""
    from bench.engines import shift_reference

    s = ctx.settings

    def make():
        if s.get("shift_reference"):
            n = len(ctx.data.test.subset(s["n_eval"]))
            return shift_reference.from_run(s["shift_reference"], _here(ctx), n, s["seed"], s.get("data_sha256"))
        return shift_reference.released(s.get("model_sha256"), ctx.device)

    return ctx.once(("shift_reference", s.get("shift_reference"), s.get("model_sha256"), _here(ctx)), make)


def reference_digest(ctx) -> dict:
    """What keys the corruption errors' cache beyond the settings: the reference's record (the
    earlier run's results.json sha256, or the released reference's weights sha256)."""
    ref = _reference(ctx)
    return {"shift_reference": None if ref is None else ref.record()}


# --------------------------------------------------------------------------------------------
# the groups


def _per_point_mean(v, points: int):
    """(mean, standard error) of values laid out image set by image set, ``points`` test points
    each: the standard error is over the test points (each the mean of its corrupted versions), not
    over the images, which are not independent (the same point under several corruptions)."""
    from bench.metrics import mean_se

    _, se, _ = mean_se(v.double().view(-1, points).mean(0))
    return float(v.double().mean()), se


def _share(bits, of: str, points: int) -> Result:
    """A share of images with its per-image bits (``value`` = their mean: the POINTS rule pairs them);
    ``std``: that of a proportion for one image set, else over the test points (``_per_point_mean``)."""
    if len(bits) == points:
        p = float(bits.double().mean())
        se = proportion_se(p, points)
    else:
        p, se = _per_point_mean(bits, points)
    return Result(p, se, len(bits), details={outcomes.KEY: outcomes.pack(bits, of)})


def _cat(stats, keys, what: str):
    import torch

    return torch.cat([stats[k][what] for k in keys])


def shift_cost(s, z: cost.Sizes) -> cost.Work:
    """The figure: the model's logits of the clean and corrupted points are made once per run by
    group ``shift_ce``, which runs first (``ce_cost``)."""
    return cost.charts(1, 3)


def _passes(s, z: cost.Sizes) -> cost.Work:
    n = cost.count(s, "n_eval", z.n_test)
    images = n * (1 + len(_severities()) * len(corruption_list(s, z.image_shape)))
    return cost.passes("forward", images, cost.batch(s), note="corrupting the images is not counted")


def ce_cost(s, z: cost.Sizes) -> cost.Work:
    """A forward pass of each clean and each corrupted point (the corruptions' own work not counted),
    made here for group ``shift`` too, and the released reference's when no --shift-reference is
    given (an upper bound: a model that is not released has none, and group ``shift`` then makes
    the logits instead)."""
    return _passes(s, z) + (cost.Work() if s.get("shift_reference") else _passes(s, z))


# registered first: a --shift-reference that does not match fails before any image is corrupted
@register("shift_ce", "shift", metrics=CE_SPECS, settings=CE_SETTINGS, sharded=True, names=ce_names, cost=ce_cost,
          inputs=reference_digest)
def shift_ce_group(ctx) -> dict[str, Result]:
    """Corruption errors against the reference model: CE per corruption, mCE and relative mCE."""
    import torch

    from bench.engines import shift_reference, shift_stats

    cs, ks = _here(ctx), shift_stats.SEVERITIES
    names = ce_names(ctx.settings, ctx.data.input_shape)
    ref = _reference(ctx)
    if ref is None:
        return {m: Result.missing(shift_reference.NO_REFERENCE) for m in names}
    logits, y, z_ref = _logits(ctx, ref.model)
    ok = {key: shift_stats.point_stats(z, y)["correct"] for key, z in logits.items()}
    err = {key: 1.0 - float(v.double().mean()) for key, v in ok.items()}
    ref_ok = {key: torch.zeros(0, dtype=torch.bool) for key in ok}  # a reference run records no points here
    if ref.kind == "released":
        ref_ok = {key: shift_stats.point_stats(v, y)["correct"] for key, v in z_ref.items()}
        ref_err = {key: 1.0 - float(v.double().mean()) for key, v in ref_ok.items()}
        ref_clean = ref_err[shift_stats.CLEAN]
    else:
        ref_err, ref_clean = ref.err, ref.clean_err
    found = shift_stats.corruption_errors(err, err[shift_stats.CLEAN], ref_err, ref_clean, cs)
    of = ("correct per (corruption, severity, test point) (shift_rmce: the clean points first) of the model, "
          "then of the reference where it is evaluated here" +
          ("" if ref.kind == "released" else " (a reference run: the model's alone)"))

    def bits(keys):
        return torch.cat([ok[k] for k in keys] + [ref_ok[k] for k in keys])

    def result(value, keys, why, **details):
        b = bits(keys)
        return Result(value, None, len(b), why,
                      details={"reference": ref.record(), outcomes.KEY: outcomes.pack(b, of), **details})

    out = {}
    for c in cs:
        keys = [(c, k) for k in ks]
        out[f"shift_ce_{c}"] = result(found["ce"][c], keys, found["why"].get(c) if found["ce"][c] is None else None,
                                      errors={"model": [err[k] for k in keys], "reference": [ref_err[k] for k in keys]})
    every = [(c, k) for c in cs for k in ks]
    for name, part in (("shift_mce", "ce"), ("shift_rmce", "relative")):
        vals = found[part]
        missing = [c for c in cs if vals[c] is None]
        why = f"undefined for {', '.join(missing)}: {found['why'][missing[0]]}" if missing else None
        keys = every if part == "ce" else [shift_stats.CLEAN, *every]
        out[name] = result(None if missing else sum(vals[c] for c in cs) / len(cs), keys, why,
                           clean_error={"model": err[shift_stats.CLEAN], "reference": ref_clean},
                           per_corruption={c: vals[c] for c in cs})
    return out


@register("shift", "shift", metrics=SHIFT_SPECS, settings=SHIFT_SETTINGS, sharded=True, names=shift_names,
          cost=shift_cost)
def shift_group(ctx) -> dict[str, Result]:
    """Accuracy, ECE, NLL and the shift-detection AUROCs on the corrupted points, and the figure."""
    from bench.core.binned_calibration import expected_calibration_error
    from bench.core.roc import auroc
    from bench.engines import shift_plot, shift_stats

    logits, y, _ = _logits(ctx)
    cs, ks, bins = _here(ctx), shift_stats.SEVERITIES, int(ctx.settings.get("ece_bins") or 20)
    stats = {key: shift_stats.point_stats(z, y) for key, z in logits.items()}
    at = {k: [(c, k) for c in cs] for k in ks}
    order = "per (corruption, severity, test point), corruption by corruption, severity by severity"
    n = len(y)
    out = {f"shift_acc_{c}_{k}": _share(stats[(c, k)]["correct"], "correct per test point in order", n)
           for c in cs for k in ks}
    out.update({f"shift_acc_{c}": _share(_cat(stats, [(c, k) for k in ks], "correct"), f"correct {order}", n)
                for c in cs})
    out.update({f"shift_acc_s{k}": _share(_cat(stats, at[k], "correct"), f"correct {order}", n) for k in ks})
    out["shift_acc_mean"] = _share(_cat(stats, [(c, k) for c in cs for k in ks], "correct"), f"correct {order}", n)
    eces, bin_stats = [], []
    for k in ks:
        ok, conf, nll = (_cat(stats, at[k], w) for w in ("correct", "conf", "nll"))
        e, b = expected_calibration_error(conf, ok, bins)
        eces.append(e)
        bin_stats.append(b)
        bits = outcomes.pack(ok, f"correct {order}")
        out[f"shift_ece_s{k}"] = Result(e, None, len(ok), details={
            "bins": b, "n_bins": bins, "std": ECE_STD, outcomes.KEY: bits,
            outcomes.VALUES_KEY: outcomes.pack_values(conf, f"top-class confidence {order}")})
        mean, se = _per_point_mean(nll, n)
        out[f"shift_nll_s{k}"] = Result(mean, se, len(nll), details={
            outcomes.KEY: bits, outcomes.VALUES_KEY: outcomes.pack_values(nll, f"NLL {order}")})
    every = [(c, k) for c in cs for k in ks]
    ok_all = _cat(stats, every, "correct")
    out["shift_ece_mean"] = Result(sum(eces) / len(eces), None, len(ok_all), details={
        "n_bins": bins, "std": ECE_STD, "of": "mean of shift_ece_s1..s5",
        "bins": {"count": [c for b in bin_stats for c in b["count"]],
                 "accuracy": [a for b in bin_stats for a in b["accuracy"]],
                 "layout": "the five severities' bins one after another (the standard error of their mean ECE)"},
        outcomes.KEY: outcomes.pack(ok_all, f"correct {order}")})
    mean, se = _per_point_mean(_cat(stats, every, "nll"), n)
    out["shift_nll_mean"] = Result(mean, se, len(ok_all), details={
        "of": "mean over every corrupted point (= the mean of shift_nll_s1..s5)",
        outcomes.KEY: outcomes.pack(ok_all, f"correct {order}")})
    for sc, (score, meaning) in SCORES.items():
        s_in = stats[shift_stats.CLEAN][score]
        for k in ks:
            s_out = _cat(stats, at[k], score)
            v, se = auroc(s_in, s_out)
            out[f"shift_auroc_{sc}_s{k}"] = Result(v, se, len(s_out), details={
                "score": meaning, "n_in": len(s_in), "n_out": len(s_out), "positive": "clean test points",
                outcomes.VALUES_KEY: outcomes.pack_values(s_out, f"{score} per corrupted point, {order}"),
                IN_SCORES: outcomes.pack_values(s_in, f"{score} per clean test point in order")})
    clean = stats[shift_stats.CLEAN]
    fig = ctx.figure("shift_severity.png")
    shift_plot.severity_curves(
        [float(clean["correct"].double().mean()), *(out[f"shift_acc_s{k}"].value for k in ks)],
        [expected_calibration_error(clean["conf"], clean["correct"], bins)[0], *eces],
        [out[f"shift_auroc_energy_s{k}"].value for k in ks], fig.path,
        title=f"{len(cs)} corruptions, n = {len(y)} points each", model=fig.model)
    for name, r in out.items():
        r.details["corruptions"] = list(cs)
        if r.n > n or name.startswith("shift_auroc_"):  # several images per point, or clean and corrupted paired
            r.details[outcomes.CLUSTER_KEY] = n  # image i is of test point i % n (bench compare tests per point)
        if not name.startswith("shift_acc_") or name[len("shift_acc_"):] in {f"s{k}" for k in ks} | {"mean"}:
            r.details["figure"] = fig.rel
    return out

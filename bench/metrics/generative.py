"""Inception Score and FID of SGLD-generated images (paper Sec. 4.2, Table 1), through torch-fidelity.

Metrics (group ``is_fid``, suite ``generative``):

    is_mean   Inception Score of the generated images (torch-fidelity ``isc``: 10 splits, its
              default shuffling seed); ``std`` is the spread over the splits
    is_std    that spread, as its own number (the paper reports IS as mean and std)
    fid       Frechet Inception Distance between the generated images and the training split
    fid_inf   its bias-corrected limit FID-infinity (Chong and Forsyth 2020): FID of random subsets
              of 20 % to 100 % of the set, fitted as slope / N + value, extrapolated to 1/N = 0
              (``bench.engines.frechet.fd_infinity``; the fit in details). Comparable across n

    diverged_fraction   the share of the SGLD chains that diverged (NaN or inf), of ``n_gen``;
              ``std`` is the standard error of the proportion, sqrt(p (1 - p) / n)
    kid_mean, kid_std   Kernel Inception Distance (torch-fidelity's ``kid_features_to_metric`` on the
              FID's features: 100 subsets of size min(1000, n_generated, n_reference), seed 2020)
    precision, recall   torch-fidelity's ``prc_features_to_metric`` on the same features (k = 3)
    diversity_ssim      mean pairwise SSIM within each class (over the whole set without labels);
              lower is more diverse, 1 for one image repeated; the training set's value in details

FID, KID and precision/recall share one reference (``bench.engines.refstats.reference_features``): a
``--ref-stats`` file (setting ``ref_stats``), else the statistics shipped for the bundled training
split when they match the images and the extractor, else the disk cache, else computed.  Below
10,000 generated images the FID's details note its upward small-sample bias.

The generated set is ``ctx.generation`` (balanced over classes, SGLD by the run's
``gen_*`` settings); diverged chains (NaN images) are left out and counted in ``details``.  IS and
FID of the surviving chains alone flatter a sampler that loses many chains (the hardest classes,
the wildest chains go first), so above ``max_diverged`` (default 0.1) diverged chains IS and FID
are null with that reason; ``diverged_fraction`` is always reported (Table 2 shows it beside them).

The engines: ``bench.engines.features`` (the feature extractors, the images' uint8 preprocessing),
``bench.engines.refstats`` (the reference: a ``--ref-stats`` file, the shipped statistics, the disk cache)
and ``bench.engines.sample_quality`` (FID, IS, KID, precision/recall and diversity from features, as
Results); this module is the registered group and its handling of diverged chains.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from bench.core import cost
from bench.core.settings import GEN_SETTINGS
from bench.core.stats import proportion_se
from bench.metrics import DRIFTING, Metric, Result, register, relative

if TYPE_CHECKING:
    import torch

    from bench.engines import features
    from bench.metrics.context import Context
    from bench.runtime.execution import Execution

GRID = "samples/grid.png"  # the generated set's grid (bench.engines.generation.generated), relative to the run's folder

# --------------------------------------------------------------------------------------------
# the metric group


def max_diverged(settings: dict) -> float:
    """The ``max_diverged`` setting (a fraction in [0, 1]: bench.core.settings.validate checked it)."""
    from bench.core.settings import DEFAULTS

    v = settings.get("max_diverged")
    return float(DEFAULTS["max_diverged"] if v is None else v)


def diverged_result(n_gen: int, n_div: int, limit: float) -> tuple[Result, str | None]:
    """(``diverged_fraction``, the reason to null sample-quality metrics or None): a metric of
    the surviving chains is null when more than ``limit`` of the ``n_gen`` chains diverged."""
    frac = n_div / n_gen if n_gen else 0.0
    reason = None
    if frac > limit:
        reason = (f"{n_div} of {n_gen} SGLD chains diverged ({frac:.1%} > max_diverged {limit:g}); "
                  "a score of the surviving chains alone would flatter the sampler")
    se = proportion_se(frac, n_gen) if n_gen else None
    details = {"n_generated": n_gen, "n_diverged": n_div, "max_diverged": limit, "sample_metrics_null": bool(reason),
               "std": "standard error of the proportion, sqrt(p(1-p)/n)"}
    return Result(frac, se, n_gen, details=details), reason


def _refuse_train_is_test(x_gen: torch.Tensor, ext: features.Extractor, ctx: Context, run: Execution,
                          details: dict) -> dict[str, Result]:
    """FID null with the reason (the data set's training and test sets are the same images,
    ``Dataset.train_is_test``); the Inception Score, which needs no reference, as usual."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    from bench.engines import features
    from bench.engines.features import ISC_LAYER
    from bench.engines.sample_quality import ISC_SPLITS, NO_LOGITS
    from bench.inputs.data import TRAIN_IS_TEST
    from bench.metrics import GROUPS

    n = len(x_gen)
    refused = Result.missing(f"refused: {TRAIN_IS_TEST}", n=n, **details)  # FID and any other comparison
    out = {m: refused for m in GROUPS["is_fid"].metrics if m not in ("is_mean", "is_std", "diverged_fraction")}
    if not ext.has_logits or n < ISC_SPLITS:
        reason = (ext.no_logits or NO_LOGITS) if not ext.has_logits else f"Inception Score needs {ISC_SPLITS} images (splits); got {n}"
        return out | {m: Result.missing(reason, n=n, **details) for m in ("is_mean", "is_std")}
    feats = features.extract_features(features.to_uint8_rgb(x_gen), ext, run)
    isc = isc_features_to_metric(feats[ISC_LAYER], ISC_SPLITS, True, 2020)
    isd = dict(details, isc_splits=ISC_SPLITS, std="standard deviation of the IS over the splits")
    return out | {"is_mean": Result(isc["inception_score_mean"], isc["inception_score_std"], n, details=isd),
                  "is_std": Result(isc["inception_score_std"], None, n, details=isd)}


def resolve(s) -> features.Extractor:
    """The run's feature extractor from its settings (``fid_extractor`` and the weights files)."""
    from bench.engines import features

    return features.resolve_extractor(s.get("fid_extractor") or "auto", s.get("inception_weights"),
                                      s.get("extractor_weights"))


def reference_digests(ctx: Context) -> dict:
    """What ``is_fid``'s cache is keyed by beyond its settings: the identity of the feature extractor
    the run resolves to (``auto`` is torch-fidelity's Inception when its weights are at hand, else
    fid-helper's network: the setting alone does not say which) and the sha256 of the files its
    numbers come from: ``--ref-stats``, ``--inception-weights`` and the shipped ``models/refstats/*.npz``."""
    from bench.engines import features, refstats

    s = ctx.settings
    try:
        extractor = resolve(s).identity
    except features.ExtractorUnavailable as e:
        extractor = f"unavailable: {e}"
    files = {k: features.file_digests(s[k])["sha256"] if s.get(k) else None
             for k in ("ref_stats", "inception_weights", "extractor_weights")}
    folder = refstats.shipped_dir()
    shipped = {p.name: features.file_digests(p)["sha256"] for p in sorted(folder.glob("*.npz"))} if folder.is_dir() else {}
    return {"extractor": extractor, **files, "shipped_refstats": shipped}


def is_fid_cost(s, z: cost.Sizes) -> cost.Work:
    """The generated images through the extractor, the reference too unless its features are at
    hand (shipped, --ref-stats or the disk cache), diversity_ssim's pairs (both sets, capped), and
    the statistics on the 2048-d features: FD-infinity's distances and KID's kernels."""
    from bench.engines.frechet import fd_infinity_cost
    from bench.engines.inception_nets import FID_LAYER
    from bench.engines.sample_quality import DIVERSITY_MAX, kid_cost

    n_gen = int(s.get("n_gen") or 0)
    n_ref = cost.count(s, "n_ref", z.n_train)
    ref = 0 if z.reference_cached or s.get("ref_stats") else n_ref
    pairs = min(n_gen, DIVERSITY_MAX) ** 2 + min(n_ref, DIVERSITY_MAX) ** 2
    note = f"FID reference: {ref} training images through the extractor, once (then cached)" if ref else ""
    dims = int(FID_LAYER)
    return (cost.Work(extractor=n_gen + ref, ssim=pairs, calls={"extractor": 1 + (ref > 0)}, note=note)
            + fd_infinity_cost(n_gen, dims) + kid_cost(n_gen, n_ref, dims))


@register("is_fid", "generative", cost=is_fid_cost,
          metrics=(Metric("is_mean", "score", True, column="IS", tolerance=relative(0.10), portable=DRIFTING, bounds=(1.0, None)),
                   Metric("is_std", "score", tolerance=relative(0.25), portable=DRIFTING, bounds=(0.0, None)),
                   Metric("fid", "fid", False, column="FID", tolerance=relative(0.10), portable=DRIFTING, bounds=(0.0, None)),
                   Metric("fid_inf", "fid", False, column="FID-inf", tolerance=relative(0.10), portable=DRIFTING),
                   Metric.proportion("diverged_fraction", higher_is_better=False, column="Diverged (%)"),
                   Metric("kid_mean", "kid", False, column="KID", portable=DRIFTING),
                   Metric("kid_std", "kid", portable=DRIFTING, bounds=(0.0, None)),
                   Metric("precision", "proportion", True, column="Precision", portable=DRIFTING, bounds=(0.0, 1.0)),
                   Metric("recall", "proportion", True, column="Recall", portable=DRIFTING, bounds=(0.0, 1.0)),
                   Metric("diversity_ssim", "ssim", column="Diversity SSIM", portable=DRIFTING, bounds=(-1.0, 1.0))),
          settings=(*GEN_SETTINGS, "inception_weights", "fid_extractor", "extractor_weights", "max_diverged",
                    "ref_stats", "n_ref", "batch_size"), sharded=True,
          needs=("generated",), inputs=reference_digests)
def generative_group(ctx: Context) -> dict[str, Result]:
    """IS and FID of the run's generated images against the training split (Sec. 4.2), and the
    share of diverged chains (IS/FID null above ``max_diverged``)."""
    import torch

    from bench.core import progress
    from bench.engines import features
    from bench.engines.features import FEATURE_BATCH
    from bench.engines.sample_quality import FEATURE_METRICS, diversity_result, fid_is, fid_is_results

    s = ctx.settings
    names = ("is_mean", "is_std", "fid", "fid_inf", *FEATURE_METRICS, "diversity_ssim")
    limit = max_diverged(s)
    gen = ctx.generation
    gx, gy = gen.x, gen.y
    finite = torch.isfinite(gx.flatten(1)).all(1)
    n_gen, n_ok = len(gx), int(finite.sum())
    n_div = gen.n_diverged
    div, too_many = diverged_result(n_gen, n_div, limit)
    div.details["grid"] = GRID  # the generated set's grid: the report finds it here
    div = {"diverged_fraction": div}
    if ctx.data.input_shape[0] not in (1, 3):
        return {m: Result.missing(f"IS/FID need grey or RGB images; {ctx.data.name} has "
                                  f"{ctx.data.input_shape[0]} channels") for m in names} | div
    if too_many:
        return {m: Result.missing(too_many, n=n_ok, n_generated=n_gen, n_diverged=n_div, max_diverged=limit)
                for m in names} | div
    ref = ctx.data.train.subset(s.get("n_ref"))  # the reference: the first n_ref training images
    diversity = {"diversity_ssim": diversity_result(gx[finite], gy[finite], ref.x, ref.y, ctx.device)}
    names = names[:-1]
    div = div | diversity
    try:
        ext = resolve(s)
    except features.ExtractorUnavailable as e:
        return {m: Result.missing(str(e)) for m in names} | div
    gen_info = gen.info
    details = {"extractor": ext.name, "extractor_identity": ext.identity, "extractor_source": ext.source,
               "weights": ext.weights, "feature_layer": ext.fid_layer, "n_generated": n_gen, "n_finite": n_ok,
               "n_diverged": n_div, "max_diverged": limit, "reference": f"{ctx.data.name}:train",
               "n_reference": len(ref), "n_train": len(ctx.data.train),
               "samples": "samples/samples.npz", "grid": GRID,
               "samples_reused": bool(gen_info.get("reused", False)),
               "preprocessing": ext.preprocessing}
    if n_ok < 2:
        return {m: Result.missing(f"{n_ok} finite generated images ({n_div} chains diverged); FID needs 2",
                                  n=n_ok, **details) for m in names} | div
    # the run's device and sharding, batches of at most 64 images (299 x 299 activations)
    run = replace(ctx.execution, batch_size=min(int(s.get("batch_size") or FEATURE_BATCH), FEATURE_BATCH))
    if ctx.data.train_is_test:  # FID would compare with the evaluated images themselves: refused
        return _refuse_train_is_test(gx[finite], ext, ctx, run, details) | div
    r = fid_is(gx[finite], ref.x, ext, ctx.data.name, "train", run,
               verbose=progress.interactive() and ctx.progress is not None, ref_stats=s.get("ref_stats"))
    return fid_is_results(r, ext, n_ok, details, ctx.device) | div

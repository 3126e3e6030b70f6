"""Sample quality from extracted features: FID and the Inception Score (``fid_is``), KID and
precision/recall (``kid_prc``) through torch-fidelity, and the diversity of a set (mean pairwise SSIM,
``diversity_result``); with their ``Result`` records (``fid_is_results``), shared by the
``is_fid`` group (``bench.metrics.generative``) and ``bench samples`` (``bench.pipeline.samples_command``).

FID, KID and precision/recall share one reference (``bench.engines.refstats.reference_features``): a
``--ref-stats`` file, else the statistics shipped for the bundled training split when they match the
images and the extractor, else the disk cache, else computed.  Below 10,000 generated images the
FID's details note its upward small-sample bias.
"""

from __future__ import annotations

import time

import torch

from bench.core.errors import BenchError
from bench.core.results import Result
from bench.core.stats import proportion_se
from bench.engines import features, refstats
from bench.engines.features import FEATURES, ISC_LAYER
from bench.engines.frechet import fd_infinity
from bench.engines.precision_recall import precision_recall
from bench.runtime.execution import Execution

ISC_SPLITS = 10
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torch-fidelity's defaults; the size never exceeds either set's n
PRC_NEIGHBORHOOD, PRC_BATCH = 3, 10000  # torch-fidelity's defaults (k of the k-NN balls; cdist block)
TF_SEED = 2020  # torch-fidelity's default rng_seed (KID subsets, IS split shuffling)
FID_UNBIASED_N = 10000  # below this many generated images the FID's details note its upward bias
DIVERSITY_MAX = 2000  # images per set in the pairwise SSIM of diversity_ssim (evenly spread)
FEATURE_METRICS = ("kid_mean", "kid_std", "precision", "recall")
NO_LOGITS = ("no Inception logits offline: the fid-helper FID Inception ends at pool3 (no classifier head); "
             "pass --inception-weights weights-inception-2015-12-05-6726825d.pth for the Inception Score")


# --------------------------------------------------------------------------------------------
# FID, IS, KID, precision/recall


def fid_is(x_gen: torch.Tensor, x_ref: torch.Tensor, ext: features.Extractor, ref_name: str,
           ref_split: str = "train", run: Execution = FEATURES, cache: bool = True, verbose: bool = False,
           ref_stats: str | None = None) -> dict:
    """FID of x_gen against x_ref and, when the extractor has logits, the Inception Score of
    x_gen (torch-fidelity's ``isc_features_to_metric``, ``fid_statistics_to_metric``).  Images are
    [0, 1] floats (N, 1 or 3, H, W).  -> {'fid', 'is_mean', 'is_std' (None without logits),
    'reference': info of ``refstats.reference_features``,
    'seconds_reference', 'seconds_generated',
    'features_generated', 'features_reference' (None when a mu/sigma-only ``ref_stats`` file is used),
    'reference_statistics' ({mu, sigma})}.
    ``ref_stats``: a reference statistics file instead of x_ref (``bench.engines.refstats``).
    ``run`` (``bench.runtime.execution.Execution``): device and batch size of the feature extraction;
    ``run.sharded`` (torchrun): the Inception features are extracted batch-sharded over the ranks."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    if len(x_gen) < 2:
        raise ValueError(f"FID needs at least 2 generated images, got {len(x_gen)}")
    t0 = time.perf_counter()
    ref, ref_feats, info = refstats.reference_features(x_ref, ext, ref_name, ref_split, run, cache, verbose,
                                                       ref_stats)
    t1 = time.perf_counter()
    feats = features.extract_features(features.to_uint8_rgb(x_gen), ext, run, verbose)
    gen_feats = feats[ext.fid_layer].to(torch.float32)
    if gen_feats.shape[1] != len(ref["mu"]):
        raise BenchError(f"reference statistics have dimension {len(ref['mu'])}, the extractor's {ext.fid_layer} "
                         f"features {gen_feats.shape[1]}")
    out = {"fid": frechet_distance(gen_feats, ref), "is_mean": None, "is_std": None, "reference": info,
           "seconds_reference": t1 - t0, "seconds_generated": time.perf_counter() - t1,
           "features_generated": gen_feats, "features_reference": ref_feats, "reference_statistics": ref}
    if ext.has_logits and len(x_gen) >= ISC_SPLITS:
        isc = isc_features_to_metric(feats[ISC_LAYER], ISC_SPLITS, True, 2020)
        out["is_mean"], out["is_std"] = isc["inception_score_mean"], isc["inception_score_std"]
    return out


def frechet_distance(gen_feats: torch.Tensor, ref: dict) -> float:
    """FID of features (N, D) against reference statistics {mu, sigma} (``refstats.statistics``):
    torch-fidelity's statistics of the features and its ``fid_statistics_to_metric``."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    gen = refstats.statistics(gen_feats)
    ref = {"mu": ref["mu"].astype(gen["mu"].dtype), "sigma": ref["sigma"].astype(gen["sigma"].dtype)}
    return float(fid_statistics_to_metric(gen, ref, False)["frechet_inception_distance"])


def fd_infinity_result(feats: torch.Tensor, ref: dict, n: int, details: dict,
                       device: torch.device | str = "cpu") -> Result:
    """The bias-corrected Frechet distance of ``feats`` to the reference statistics {mu, sigma}
    (``bench.engines.frechet.fd_infinity``, subsets seeded by ``TF_SEED``), with its fit in the details.
    Its distances are computed in torch float64 on ``device`` when that is not the CPU (equal to the
    CPU's numpy distances to 1e-6 relative); on the CPU by numpy, as before."""
    on = None if torch.device(device).type == "cpu" else device
    inf = fd_infinity(feats, ref["mu"], ref["sigma"], seed=TF_SEED, device=on)
    if inf["value"] is None:
        return Result.missing(inf["reason"], n=n, **details)
    fit = {k: inf[k] for k in ("slope", "sizes", "fd", "draws", "seed", "fit")}
    return Result(inf["value"], None, n, details=dict(details, fd_infinity=fit))


def fid_bias_note(n: int) -> str | None:
    """The FID's small-sample note: FID is biased upward at small n (Binkowski et al. 2018;
    Chong and Forsyth 2020), so FIDs are comparable only at equal n; None from 10,000 on."""
    if n >= FID_UNBIASED_N:
        return None
    return (f"FID is biased upward at n = {n} generated images (the bias falls roughly as 1/n; "
            f"the usual n is {FID_UNBIASED_N}+): compare FIDs only at equal n")


def kid_cost(n: int, n_ref: int, dims: int):
    """``kid``'s work as ``bench.core.cost`` counts it: three m x m kernel matrices of d-dimensional
    features per subset (float32 multiply-adds), m = min(1000, n, n_ref)."""
    from bench.core import cost

    m = min(KID_SUBSET_SIZE, n, n_ref)
    return cost.images("stats", KID_SUBSETS * 3 * m * m * dims) if m >= 2 else cost.Work()


def kid(gen: torch.Tensor, ref: torch.Tensor) -> dict:
    """KID of the features gen against ref (torch-fidelity's ``kid_features_to_metric``, see
    ``kid_prc``) -> {'kid_mean', 'kid_std' (None with 'reason_kid' below 2 per side),
    'kid_subset_size', 'kid_subsets', 'n_generated', 'n_reference'}."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    gen, ref = gen.detach().cpu().float(), ref.detach().cpu().float()
    m = min(KID_SUBSET_SIZE, len(gen), len(ref))
    out = {"kid_subset_size": m, "kid_subsets": KID_SUBSETS, "n_generated": len(gen), "n_reference": len(ref)}
    if m >= 2:
        k = kid_features_to_metric(gen, ref, kid_subsets=KID_SUBSETS, kid_subset_size=m, rng_seed=TF_SEED,
                                   kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                   kid_kernel_poly_coef0=1, verbose=False)
        out["kid_mean"], out["kid_std"] = k["kernel_inception_distance_mean"], k["kernel_inception_distance_std"]
    else:
        out["kid_mean"] = out["kid_std"] = None
        out["reason_kid"] = f"KID needs 2 images on each side; got {len(gen)} generated, {len(ref)} reference"
    return out


def kid_prc(gen: torch.Tensor, ref: torch.Tensor, device: torch.device | str = "cpu") -> dict:
    """KID (torch-fidelity's ``kid_features_to_metric``: unbiased MMD^2 with the cubic polynomial
    kernel, mean and std over ``KID_SUBSETS`` random subsets of size m = min(1000, n_gen, n_ref),
    seed 2020) and precision/recall (its ``prc_features_to_metric``: Kynkaanniemi et al. 2019,
    k = 3 nearest-neighbour balls; precision: share of generated features inside a real ball,
    recall: share of real features inside a generated ball) of the features gen (generated) and
    ref (real).  PR runs wholly on ``device`` (``bench.engines.precision_recall``, equal to
    torch-fidelity's); values are None (with 'reason_kid'/'reason_prc') when a set is too small."""
    gen, ref = gen.detach().cpu().float(), ref.detach().cpu().float()
    out = kid(gen, ref) | {"prc_neighborhood": PRC_NEIGHBORHOOD}
    if min(len(gen), len(ref)) > PRC_NEIGHBORHOOD:
        dev = torch.device(device)
        out["precision"], out["recall"] = precision_recall(gen.to(dev), ref.to(dev), PRC_NEIGHBORHOOD, PRC_BATCH)
    else:
        out["precision"] = out["recall"] = None
        out["reason_prc"] = (f"precision/recall need more than {PRC_NEIGHBORHOOD} images on each side (k-NN balls); "
                             f"got {len(gen)} generated, {len(ref)} reference")
    return out


def feature_results(r: dict, details: dict, device: torch.device | str = "cpu") -> dict[str, Result]:
    """``kid_mean``, ``kid_std``, ``precision``, ``recall`` from ``fid_is``'s output ``r`` (its
    features), with ``details`` (the FID's) plus their own."""
    names = ("kid_mean", "kid_std", "precision", "recall")
    n_gen = len(r["features_generated"])
    if r["features_reference"] is None:
        reason = (f"the reference statistics file {r['reference'].get('file')} holds mu/sigma only; KID and "
                  "precision/recall need the reference features (write the file with `bench ref-stats`, "
                  "which stores them)")
        return {m: Result.missing(reason, n=n_gen, **details) for m in names}
    k = kid_prc(r["features_generated"], r["features_reference"], device)
    kd = dict(details, **{a: k[a] for a in ("kid_subset_size", "kid_subsets", "n_reference")},
              kid="torch-fidelity kid_features_to_metric: unbiased MMD^2, polynomial kernel (x.y/d + 1)^3, "
                  f"seed {TF_SEED}", std="standard deviation of the MMD^2 over the subsets")
    pd_ = dict(details, prc_neighborhood=k["prc_neighborhood"], n_reference=k["n_reference"],
               prc="Kynkaanniemi et al. 2019 k-NN balls, torch-fidelity's prc_features_to_metric computed on the "
                   "run's device (bench.engines.precision_recall), generated = input1",
               std="standard error of the proportion, sqrt(p(1-p)/n)")
    out = {}
    if k["kid_mean"] is None:
        out["kid_mean"] = Result.missing(k["reason_kid"], n=n_gen, **kd)
        out["kid_std"] = Result.missing(k["reason_kid"], n=n_gen, **kd)
    else:
        out["kid_mean"] = Result(k["kid_mean"], k["kid_std"], k["kid_subset_size"], details=kd)
        out["kid_std"] = Result(k["kid_std"], None, k["kid_subset_size"], details=kd)
    for m, n in (("precision", n_gen), ("recall", k["n_reference"])):
        v = k[m]
        out[m] = (Result.missing(k["reason_prc"], n=n, **pd_) if v is None
                  else Result(v, proportion_se(v, n), n, details=pd_))
    return out


# --------------------------------------------------------------------------------------------
# diversity: mean pairwise SSIM


def _spread(n: int, cap: int) -> torch.Tensor:
    """``cap`` indices evenly spread over range(n) (all of them when n <= cap)."""
    if n <= cap:
        return torch.arange(n)
    return torch.linspace(0, n - 1, cap).round().long()


def pairwise_ssim(x: torch.Tensor, y: torch.Tensor | None, device: torch.device | str = "cpu",
                  cap: int = DIVERSITY_MAX) -> dict:
    """Mean SSIM over the distinct pairs of images x (N, C, H, W) in [0, 1] (the project's batched
    SSIM, ``bench.engines.ssim``), overall and, with labels y, within each class.  At most ``cap``
    images, evenly spread over x, are used.  -> {'overall', 'per_class' {label: mean} (classes with
    2+ images), 'within_class' (mean of the per-class means) or None without labels, 'n'}."""
    from bench.engines.ssim import ssim_matrix

    idx = _spread(len(x), cap)
    x = x[idx]
    n = len(x)
    s = ssim_matrix(x, x, device=device).double().cpu()
    off = ~torch.eye(n, dtype=torch.bool)
    out = {"overall": (s[off].mean().item() if n > 1 else None), "per_class": {}, "within_class": None, "n": n}
    if y is not None:
        y = y[idx].cpu().long()
        same = (y[:, None] == y[None, :]) & off
        sums = torch.zeros(int(y.max()) + 1, dtype=torch.float64).index_add_(0, y, (s * same).sum(1))
        counts = torch.bincount(y).double()
        pairs = counts * (counts - 1)
        ok = pairs > 0
        per = sums[ok] / pairs[ok]
        out["per_class"] = {int(c): v for c, v in zip(ok.nonzero().flatten().tolist(), per.tolist(), strict=True)}
        out["within_class"] = per.mean().item() if len(per) else None
    return out


def diversity_result(x: torch.Tensor, y: torch.Tensor | None, ref_x: torch.Tensor, ref_y: torch.Tensor | None,
                     device: torch.device | str = "cpu") -> Result:
    """``diversity_ssim``: the mean pairwise SSIM within each class averaged over classes when
    labels are known, else over the whole set (lower: more diverse; one image repeated gives 1);
    details hold both, the per-class values and the training set's values computed the same way
    (for scale)."""
    from bench.engines.ssim import WIN

    if min(x.shape[-2:]) < WIN:
        return Result.missing(f"SSIM needs images of at least {WIN}x{WIN}; these are {tuple(x.shape[-2:])}", n=len(x))
    if len(x) < 2:
        return Result.missing(f"diversity needs 2 images; got {len(x)}", n=len(x))
    g = pairwise_ssim(x, y, device)
    t = pairwise_ssim(ref_x, ref_y if y is not None else None, device)
    by_class = y is not None and g["within_class"] is not None
    value = g["within_class"] if by_class else g["overall"]
    details = {"definition": ("mean over classes of the mean SSIM over distinct same-class pairs" if by_class
                              else "mean SSIM over distinct pairs of the whole set") + "; lower is more diverse",
               "overall": g["overall"], "within_class": g["within_class"],
               "per_class": {str(c): v for c, v in g["per_class"].items()}, "n_used": g["n"],
               "train": t["within_class"] if by_class else t["overall"], "train_overall": t["overall"],
               "train_within_class": t["within_class"], "n_train_used": t["n"], "max_images": DIVERSITY_MAX,
               "subset": f"at most {DIVERSITY_MAX} images, evenly spread over the set",
               "std": "none: pairs are not independent"}
    return Result(value, None, g["n"], details=details)


def fid_is_results(r: dict, ext: features.Extractor, n: int, details: dict,
                   device: torch.device | str = "cpu") -> dict[str, Result]:
    """``fid``, ``fid_inf``, ``is_mean``, ``is_std``, ``kid_mean``, ``kid_std``, ``precision``, ``recall`` as
    Results from ``fid_is``'s output ``r`` on n images; ``details`` gain the reference's source
    (cache, shipped file or ``--ref-stats`` file), timings and the FID's small-n note."""
    ref = r["reference"]
    details = dict(details, reference_cache=ref["cache"], reference_cache_file=ref["file"],
                   seconds_reference=round(r["seconds_reference"], 3),
                   seconds_generated_features=round(r["seconds_generated"], 3))
    if ref["cache"] == "file":
        details.update(reference=f"file:{ref['file']}", reference_sha256=ref["sha256"], n_reference=ref["n"])
        if ref.get("note"):
            details["reference_note"] = ref["note"]
    fid_details = dict(details)
    if fid_bias_note(n):
        fid_details["bias"] = fid_bias_note(n)
    out = {"fid": Result(r["fid"], None, n, details=fid_details),
           "fid_inf": fd_infinity_result(r["features_generated"], r["reference_statistics"], n, details, device)}
    if r["is_mean"] is None:
        reason = (ext.no_logits or NO_LOGITS) if not ext.has_logits else f"Inception Score needs {ISC_SPLITS} images (splits); got {n}"
        out["is_mean"] = Result.missing(reason, n=n, **details)
        out["is_std"] = Result.missing(reason, n=n, **details)
    else:
        isd = dict(details, isc_splits=ISC_SPLITS, std="standard deviation of the IS over the splits")
        out["is_mean"] = Result(r["is_mean"], r["is_std"], n, details=isd)
        out["is_std"] = Result(r["is_std"], None, n, details=isd)
    return out | feature_results(r, details, device)

"""The judge metrics from an in-domain judge's outputs (``bench.engines.judges``): its Inception-style
score and class agreement on the generated images, and the Frechet distance (and FD-inf), KID,
density and coverage of their features against the reference's.  ``bench.metrics.judged`` (which
documents them) calls ``judge_scores``."""

from __future__ import annotations

import torch

from bench.core.results import Result
from bench.engines.density_coverage import NEAREST_K, density_coverage
from bench.engines.frechet import frechet
from bench.engines.sample_quality import ISC_SPLITS, TF_SEED, fd_infinity_result, fid_bias_note, kid


def judge_scores(logits: torch.Tensor, feats: torch.Tensor, y: torch.Tensor, ref_feats: torch.Tensor,
                 details: dict, device: torch.device | str = "cpu") -> dict[str, Result]:
    """The eight metrics from the judge's logits and features of the generated images (labels y:
    the classes drawn) and its features of the reference images."""
    from torch_fidelity.metric_fid import fid_features_to_statistics
    from torch_fidelity.metric_isc import isc_features_to_metric

    n, n_ref = len(feats), len(ref_feats)
    out = {}
    if n >= ISC_SPLITS:
        isc = isc_features_to_metric(logits, ISC_SPLITS, True, TF_SEED)
        out["is_judge"] = Result(isc["inception_score_mean"], isc["inception_score_std"], n,
                                 details=dict(details, isc_splits=ISC_SPLITS, std="standard deviation over the splits"))
    else:
        out["is_judge"] = Result.missing(f"the score needs {ISC_SPLITS} images (splits); got {n}", n=n, **details)
    pred = logits.argmax(1)
    agree = (pred == y).double()
    p = float(agree.mean())
    per_class = {str(int(c)): float(agree[y == c].mean()) for c in torch.unique(y)}
    out["class_agreement"] = Result(p, (p * (1 - p) / n) ** 0.5, n, details=dict(
        details, per_class=per_class, std="standard error of the proportion, sqrt(p(1-p)/n)"))
    ref = fid_features_to_statistics(ref_feats.double())
    fd = frechet(feats, ref["mu"], ref["sigma"])
    fdd = dict(details, feature_dim=int(feats.shape[1]), distance="torch-fidelity fid_statistics_to_metric")
    if fid_bias_note(n):
        fdd["bias"] = fid_bias_note(n)
    out["fd_judge"] = Result(fd, None, n, details=fdd)
    out["fd_judge_inf"] = fd_infinity_result(feats, ref, n, dict(details, feature_dim=int(feats.shape[1])), device)
    k = kid(feats, ref_feats)
    if k["kid_mean"] is None:
        out["kid_judge"] = Result.missing(k["reason_kid"], n=n, **details)
    else:
        out["kid_judge"] = Result(k["kid_mean"], k["kid_std"], k["kid_subset_size"], details=dict(
            details, kid_subsets=k["kid_subsets"], kid_subset_size=k["kid_subset_size"],
            std="standard deviation of the MMD^2 over the subsets"))
    m = min(n, n_ref)
    if m <= NEAREST_K:
        why = f"density/coverage need more than k = {NEAREST_K} images per side; got {n} generated, {n_ref} reference"
        return out | {k_: Result.missing(why, n=n, **details) for k_ in ("density", "coverage")}
    idx = torch.linspace(0, n_ref - 1, m).round().long()  # as many reference images, evenly spread
    dc = density_coverage(ref_feats[idx], feats, device=device)
    dcd = dict(details, k=dc["k"], n_reference_dc=dc["n_real"],
               reference_dc=f"{dc['n_real']} of the {n_ref} reference images, evenly spread (equal sizes, as Naeem et al.)")
    out["density"] = Result(dc["density"], None, n, details=dcd)
    c = dc["coverage"]
    out["coverage"] = Result(c, (c * (1 - c) / dc["n_real"]) ** 0.5, dc["n_real"], details=dcd)
    return out

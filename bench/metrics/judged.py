"""Sample quality in the data set's own terms: the generated images read by an in-domain judge,
a plain classifier of the data set (``bench.engines.judges``; docs/JUDGES.md).

Metrics (group ``judged``, suite ``generative``), on the same generated set as the Inception
metrics (``bench.engines.generation.generated``; every finite image, diverged chains left out, all null
above ``max_diverged`` as IS/FID are):

    is_judge         the Inception-Score formula on the judge's softmax, exp E_x KL(p(y|x) || p(y)),
                     over 10 splits after torch-fidelity's seeded shuffle (the convention of
                     ``is_mean``); std: the spread over the splits.  At most K (the classes)
    fd_judge         Frechet distance between the generated and the reference images in the judge's
                     penultimate features (the input of its last Linear layer); torch-fidelity's
                     statistics and distance, as the FID
    fd_judge_inf     its bias-corrected limit FD-infinity (as ``fid_inf``: random subsets of 20 % to
                     100 % of the set, slope / N + value extrapolated to 1/N = 0), comparable across n
    kid_judge        KID in the same features (``bench.engines.sample_quality.kid``); std: over its subsets
    class_agreement  share of the generated images the judge classifies as the class their chain
                     was drawn for (generation draws labels 0..K-1 in turn, starts each chain from
                     that class's Gaussian and descends E(x, y) of that label)
    density, coverage  Naeem et al. 2020 in the judge's features (``bench.engines.density_coverage``, k = 5),
                     against as many reference images as there are generated ones (their setting)

The reference is the first ``n_judge_ref`` training images (default all; 10,000 of
Fashion-MNIST's 60,000, five times the Inception reference: a judge pass costs far less).
"""

from __future__ import annotations

import torch

from bench.core import cost
from bench.core.settings import GEN_SETTINGS
from bench.engines import judges
from bench.engines.density_coverage import NEAREST_K, density_coverage
from bench.engines.frechet import frechet
from bench.engines.sample_quality import ISC_SPLITS, TF_SEED, fd_infinity_result, fid_bias_note, kid
from bench.inputs.data import TRAIN_IS_TEST
from bench.metrics import DRIFTING, Context, Metric, Result, register
from bench.metrics.generative import diverged_result, max_diverged
from bench.runtime.execution import Execution

COMPARED = ("fd_judge", "fd_judge_inf", "kid_judge", "density", "coverage")  # against the training split
NAMES = ("is_judge", "fd_judge", "fd_judge_inf", "kid_judge", "class_agreement", "density", "coverage")


def judge_digests(ctx: Context) -> dict:
    """The judge's file and weights digests (its cache key beyond the settings)."""
    from bench.engines import features

    path, source = judges.judge_path(ctx.data.name, ctx.settings.get("judge"))
    if path is None:
        return {"judge": None}
    return {"judge": source, "judge_sha256": features.file_digests(path)["sha256"]}


def _judge(ctx: Context) -> judges.Judge | str:
    s = ctx.settings
    path, source = judges.judge_path(ctx.data.name, s.get("judge"))
    if path is None:
        return judges.no_judge_reason(ctx.data.name)
    return judges.load_judge(path, source, int(ctx.data.num_classes), tuple(ctx.data.input_shape),
                             s.get("judge_arch"))


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


def judged_cost(s, z: cost.Sizes) -> cost.Work:
    """The generated images and the judge's reference through the judge network, counted as
    forwards of the evaluated model (the released judges share its architecture)."""
    n = int(s.get("n_gen") or 0) + cost.count(s, "n_judge_ref", z.n_train)
    return cost.passes("forward", n, cost.batch(s), note="judge timed as the evaluated model")


@register("judged", "generative", cost=judged_cost,
          metrics=(Metric("is_judge", "score", True, column="IS (judge)", portable=DRIFTING, bounds=(1.0, None)),
                   Metric("fd_judge", "fd", False, column="FD (judge)", portable=DRIFTING, bounds=(0.0, None)),
                   Metric("fd_judge_inf", "fd", False, column="FD-inf (judge)", portable=DRIFTING),
                   Metric("kid_judge", "kid", False, column="KID (judge)", portable=DRIFTING),
                   Metric("class_agreement", "proportion", True, "percent", column="Class agreement (%)",
                          portable=DRIFTING, range=1.0, bounds=(0.0, 1.0)),
                   Metric("density", "density", None, column="Density", portable=DRIFTING, bounds=(0.0, None)),
                   Metric("coverage", "proportion", True, column="Coverage", portable=DRIFTING, range=1.0,
                          bounds=(0.0, 1.0))),
          settings=(*GEN_SETTINGS, "judge", "judge_arch", "n_judge_ref", "max_diverged", "batch_size"),
          needs=("generated",), inputs=judge_digests)
def judged_group(ctx: Context) -> dict[str, Result]:
    """The judge metrics of the run's generated images (module docstring)."""

    s = ctx.settings
    judge = _judge(ctx)
    if isinstance(judge, str):
        return {m: Result.missing(judge) for m in NAMES}
    gen = ctx.generation
    finite = torch.isfinite(gen.x.flatten(1)).all(1)
    n_gen, n_ok = len(gen.x), int(finite.sum())
    _, too_many = diverged_result(n_gen, gen.n_diverged, max_diverged(s))
    details = {**judge.describe(), "n_generated": n_gen, "n_finite": n_ok, "n_diverged": gen.n_diverged}
    if too_many:
        return {m: Result.missing(too_many, n=n_ok, **details) for m in NAMES}
    if n_ok < 2:
        return {m: Result.missing(f"{n_ok} finite generated images; the judge metrics need 2", n=n_ok, **details)
                for m in NAMES}
    run = Execution(ctx.device, int(s.get("batch_size") or 250))
    ref = ctx.data.train.subset(s.get("n_judge_ref"))
    _, ref_feats = ctx.once(("judge_reference", judge.sha256, judge.weights_sha256, len(ref)),
                            lambda: judges.judge_outputs(judge, ref.x, run))
    logits, feats = judges.judge_outputs(judge, gen.x[finite], run)
    details.update(reference=f"{ctx.data.name}:train", n_reference=len(ref), n_train=len(ctx.data.train),
                   train_is_test=bool(ctx.data.train_is_test))
    out = judge_scores(logits, feats, gen.y[finite], ref_feats, details, ctx.device)
    if ctx.data.train_is_test:  # no distance is read against the evaluated images themselves (as FID)
        out |= {m: Result.missing(f"refused: {TRAIN_IS_TEST}", n=n_ok, **details) for m in COMPARED}
    return out

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

from typing import TYPE_CHECKING

from bench.core import cost
from bench.core.settings import GEN_SETTINGS
from bench.metrics import DRIFTING, Metric, Result, register
from bench.metrics.generative import diverged_result, max_diverged

if TYPE_CHECKING:
    from bench.engines import judges
    from bench.metrics.context import Context

COMPARED = ("fd_judge", "fd_judge_inf", "kid_judge", "density", "coverage")  # against the training split
NAMES = ("is_judge", "fd_judge", "fd_judge_inf", "kid_judge", "class_agreement", "density", "coverage")


def judge_digests(ctx: Context) -> dict:
    """The judge's file and weights digests (its cache key beyond the settings)."""
    from bench.engines import features, judges

    path, source = judges.judge_path(ctx.data.name, ctx.settings.get("judge"))
    if path is None:
        return {"judge": None}
    return {"judge": source, "judge_sha256": features.file_digests(path)["sha256"]}


def _judge(ctx: Context) -> judges.Judge | str:
    from bench.engines import judges

    s = ctx.settings
    path, source = judges.judge_path(ctx.data.name, s.get("judge"))
    if path is None:
        return judges.no_judge_reason(ctx.data.name)
    return judges.load_judge(path, source, int(ctx.data.num_classes), tuple(ctx.data.input_shape),
                             s.get("judge_arch"))


ASSUMED_JUDGE_FEATURES = 128  # a --judge's penultimate width, unknown before it is loaded


def judged_cost(s, z: cost.Sizes) -> cost.Work:
    """The generated images and the judge's reference through the judge network, counted as
    forwards of the evaluated model (the released judges share its architecture), and the
    statistics on the judge's features: FD-infinity's distances and KID's kernels (the shipped
    judge's feature width from its manifest; a --judge's taken as ``ASSUMED_JUDGE_FEATURES``)."""
    from bench.engines import judges
    from bench.engines.frechet import fd_infinity_cost
    from bench.engines.sample_quality import kid_cost

    n_gen, n_ref = int(s.get("n_gen") or 0), cost.count(s, "n_judge_ref", z.n_train)
    shipped = judges.shipped_name(z.dataset or "") if not s.get("judge") else None
    entry = (judges.manifest().get("judges") or {}).get((shipped or "").removesuffix(".safetensors"), {})
    dims = int(entry.get("penultimate_features") or ASSUMED_JUDGE_FEATURES)
    note = "judge timed as the evaluated model" + ("" if entry else f"; its features taken as {dims}-d")
    return (cost.passes("forward", n_gen + n_ref, cost.batch(s), note=note)
            + fd_infinity_cost(n_gen, dims) + kid_cost(n_gen, n_ref, dims))


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
    import torch

    from bench.engines import judges
    from bench.engines.judge_scores import judge_scores
    from bench.inputs.data import TRAIN_IS_TEST
    from bench.runtime.execution import Execution

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

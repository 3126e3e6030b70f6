"""OOD detection (suite ``ood``): does the classifier, read as an energy model, tell its test data
from out-of-distribution data?  (JEM, Grathwohl et al. 2020, Table 3 and Fig. 5.)

Scores, higher meaning "in-distribution", from the logits f(x) of images in [0, 1]:

    px      log p(x) up to a constant: logsumexp_y f(x)[y] = -E(x)
    py      max_y softmax(f(x))_y, the classifier's confidence
    pxgrad  -|| d log p(x) / dx ||_2, minus the L2 norm of the input gradient of logsumexp f(x)
            (JEM's sign; the gradient is taken in [0, 1] pixel space, so it is twice JEM's on
            [-1, 1] inputs, x = (z + 1) / 2 giving d/dx = 2 d/dz: a constant factor that leaves
            every ranking measure unchanged)

In-distribution points: the first ``n_eval`` test points.  OOD sets (``--ood``, see
``bench.inputs.ood_data``): each its first ``n_ood`` points (default ``n_eval``).  Per (score, set),
with the in-distribution points as the positive class:

    auroc     area under the ROC curve, P(s_in > s_out) + P(s_in = s_out) / 2; ``std``: DeLong's
              standard error (DeLong et al. 1988, from the placement values)
    aupr_in   average precision (scikit-learn's step-wise sum, no interpolation), in-distribution
              positive; ``std`` null (no closed form)
    aupr_out  the same with the OOD points positive and the scores negated; ``std`` null
    fpr95     the false-positive rate (share of OOD points accepted) at the first threshold, from
              the highest down, where the true-positive rate reaches 95 %; ``std``: that of a
              proportion over the OOD points (the threshold taken as fixed)

Ties count as in scikit-learn (``roc_auc_score``, ``average_precision_score``, ``roc_curve`` with
``drop_intermediate=False``); the tests check all four against it.  Metric names:
``ood_<measure>_<score>_<set>``, e.g. ``ood_auroc_py_uniform``.

Robust OOD detection (group ``ood_adv``, names ``ood_adv_<measure>_<score>_<set>``): each OOD
point is pushed, inside the L-inf ball of radius ``eps`` and [0, 1], by PGD (``pgd_steps`` steps of
``pgd_step_size``, default 20 of eps / 4, uniform random start, the update and projection of
``bench.engines.attacks.pgd``) to *raise* the score under test, so it looks in-distribution; the
in-distribution points stay clean.  Both sides are scored one score at a time, through the same
call (``scores(model, x, [score])``), so under ``--amp bf16`` they share one precision.  Attacking ``pxgrad`` needs the gradient of a gradient norm
(a double backward, always on the plain float32 network).  Random starts are drawn per (score,
set, batch), so the numbers do not depend on the number of torchrun processes.

Figures: ``figures/ood_<score>.png`` (and ``ood_adv_<score>.png``), histograms of the score on the
in-distribution points against each set, in the style of JEM's Fig. 5.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.core import cost, outcomes, settings
from bench.core.settings import DEFENSE_SETTINGS
from bench.metrics import PAIRS, POINTS, Metric, Portable, Result, register

if TYPE_CHECKING:
    import torch

    from bench.inputs import ood_data
    from bench.metrics.context import Context

SCORES = tuple(c.value for c in settings.OodScore)
MEASURES = ("auroc", "aupr_in", "aupr_out", "fpr95")
# bench check's paired rules, each in the measure's own unit: AUROC in (in, out) pairs, FPR95 in
# OOD points accepted, average precision (no count behind it) at 0.2 points absolute
PORTABLE = {"auroc": PAIRS, "aupr_in": Portable("absolute", abs=0.002), "aupr_out": Portable("absolute", abs=0.002),
            "fpr95": POINTS}
IN_SCORES = "per_point_in"  # details key of an AUROC's in-distribution scores (its OOD ones: outcomes.VALUES_KEY)
SCORE_MEANING = {"px": "logsumexp f(x) = -E(x) (log p(x) up to a constant)",
                 "py": "max softmax probability",
                 "pxgrad": "-||d log p(x) / dx||_2 (pixel space)"}
OOD_SETTINGS = ("seed", "n_eval", "ood", "n_ood", "ood_scores", *DEFENSE_SETTINGS)
ADV_SETTINGS = OOD_SETTINGS + ("norm", "eps", "pgd_steps", "pgd_step_size", "batch_size")


# --------------------------------------------------------------------------------------------
# settings -> metric names


def score_list(s: dict) -> list[str]:
    """The asked scores in ``SCORES`` order (``bench.core.settings.validate`` checked the list)."""
    items = {p.strip() for p in str(s.get("ood_scores") or ",".join(SCORES)).split(",")}
    return [p for p in SCORES if p in items]


def ood_sets(s: dict) -> list[ood_data.OODSpec]:
    from bench.inputs import ood_data

    return ood_data.parse(s.get("ood"))


def metric_names(s: dict, adversarial: bool = False) -> tuple[str, ...]:
    prefix = "ood_adv" if adversarial else "ood"
    return tuple(f"{prefix}_{m}_{sc}_{o.name}" for o in ood_sets(s) for sc in score_list(s) for m in MEASURES)


def specs(prefix: str) -> tuple[Metric, ...]:
    """The facts of ``{prefix}_{measure}_{score}_{set}``, one pattern per measure: higher AUROC and
    AUPR are better, a lower FPR95 is better; none has a statistical tolerance in bench check."""
    return tuple(Metric(f"{prefix}_{m}_*", "proportion", m != "fpr95", portable=PORTABLE[m], bounds=(0.0, 1.0))
                 for m in MEASURES)


# --------------------------------------------------------------------------------------------
# the groups


def _n_ood(ctx: Context) -> int:
    s = ctx.settings
    n = s.get("n_ood") or s.get("n_eval") or len(ctx.data.test)
    return int(n)


def _sets(ctx: Context) -> list[tuple[ood_data.OODSpec, torch.Tensor, dict]]:
    """The OOD sets of the run (memoised per run: the clean and the adversarial group share them)."""
    import torch

    from bench.inputs import ood_data
    from bench.metrics import _seed_for

    s = ctx.settings

    def load() -> list[tuple[ood_data.OODSpec, torch.Tensor, dict]]:
        out = []
        for spec in ood_sets(s):
            g = torch.Generator().manual_seed(_seed_for(s["seed"], f"ood/{spec.name}"))  # CPU: same on any device
            x, info = ood_data.load(spec, ctx.data, _n_ood(ctx), g, ctx.data_root)
            out.append((spec, x, info))
        return out

    return ctx.once(("ood_sets", s.get("ood"), _n_ood(ctx), s["seed"]), load)


def set_digests(ctx: Context) -> dict:
    """What the OOD groups' caches are keyed by beyond their settings: the sha256 of each OOD set's
    images as used (float32, their shape), so a changed ``npz:``/``folder:`` file or another
    ``--data-root`` for a named set recomputes instead of serving the old numbers."""
    import hashlib

    out = {}
    for spec, x, _ in _sets(ctx):
        h = hashlib.sha256(f"{tuple(x.shape)}|{x.dtype}|".encode())
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
        out[spec.name] = h.hexdigest()
    return {"ood_sets": out}


def _score_points(ctx: Context, x: torch.Tensor, which: list[str], desc: str) -> dict[str, torch.Tensor]:
    from bench.engines.ood_scores import scores

    parts = {k: [] for k in which}
    for (xb,) in ctx.batches(x, desc=desc):
        for k, v in scores(ctx.model, xb, which).items():
            parts[k].append(v.cpu())
    return {k: ctx.collect(v) for k, v in parts.items()}


def _results(prefix: str, s_in: dict, s_out: dict, specs, infos, extra: dict) -> dict[str, Result]:
    from bench.engines.ood_scores import ood_measures

    out = {}
    for spec, info in zip(specs, infos, strict=True):
        for sc, a in s_in.items():
            b = s_out[spec.name][sc]
            for m, (v, se) in ood_measures(a, b).items():
                details = {"score": sc, "score_meaning": SCORE_MEANING[sc], "set": info, "n_in": len(a),
                           "n_out": len(b), "positive": "in-distribution", **extra}
                if se is None:
                    details["std"] = "null: no closed-form standard error (not bootstrapped)"
                if m == "auroc":  # the scores bench compare pairs (DeLong's paired test)
                    details[outcomes.VALUES_KEY] = outcomes.pack_values(b, f"{sc} score per OOD point in order")
                    details[IN_SCORES] = outcomes.pack_values(a, f"{sc} score per test point in order")
                out[f"{prefix}_{m}_{sc}_{spec.name}"] = Result(v, se, len(b), details=details)
    return out


def _histograms(ctx: Context, prefix: str, s_in: dict, s_out: dict, specs, title: str, out: dict) -> None:
    """One figure per score (``ctx.figure``), each set's AUROC (from ``out``) in its legend; records
    the figure in the details of that score's metrics."""
    from bench.engines import plots  # matplotlib only when a figure is drawn

    for sc, a in s_in.items():
        fig = ctx.figure(f"{prefix}_{sc}.png")
        auroc = {spec.name: out[f"{prefix}_auroc_{sc}_{spec.name}"].value for spec in specs}
        plots.ood_histograms(a, {spec.name: s_out[spec.name][sc] for spec in specs}, fig.path,
                             score=f"{sc}: {SCORE_MEANING[sc]}", title=title, auroc=auroc, model=fig.model)
        for r in out.values():
            if r.details["score"] == sc:
                r.details["figure"] = fig.rel


def _ood_sizes(s, z: cost.Sizes) -> tuple[int, int, list[str]]:
    """(in-distribution points, OOD points over all sets, scores)."""
    n_in = cost.count(s, "n_eval", z.n_test)
    n_out = int(s.get("n_ood") or n_in) * len(ood_sets(s))
    return n_in, n_out, score_list(s)


def ood_cost(s, z: cost.Sizes) -> cost.Work:
    """Every point scored once: one forward for px and py, a forward+backward for pxgrad."""
    n_in, n_out, which = _ood_sizes(s, z)
    w = cost.passes("forward", n_in + n_out, cost.batch(s)) if {"px", "py"} & set(which) else cost.Work()
    w += cost.charts(len(which), len(ood_sets(s)))  # a histogram figure per score, a panel per set
    return w + (cost.passes("backward", n_in + n_out, cost.batch(s)) if "pxgrad" in which else cost.Work())


def ood_adv_cost(s, z: cost.Sizes) -> cost.Work:
    """Per score: the test points scored, and PGD (pgd_steps) on the OOD points raising it: a
    forward+backward per step for px and py, a second-order pass per step for pxgrad."""
    n_in, n_out, which = _ood_sizes(s, z)
    b, steps, w = cost.batch(s), int(s["pgd_steps"]), cost.charts(len(which), len(ood_sets(s)))
    for sc in which:
        kind = "backward" if sc == "pxgrad" else "forward"
        w += cost.passes(kind, n_in + n_out, b) + cost.passes("second" if sc == "pxgrad" else "backward", n_out, b, steps)
    return w


@register("ood", "ood", metrics=specs("ood"), cost=ood_cost, settings=OOD_SETTINGS, sharded=True, names=metric_names,
          inputs=set_digests)
def ood_group(ctx: Context) -> dict[str, Result]:
    """AUROC, AUPR-in, AUPR-out and FPR95 of every score against every OOD set."""
    which = score_list(ctx.settings)
    split = ctx.data.test.subset(ctx.settings["n_eval"])
    sets = _sets(ctx)
    s_in = _score_points(ctx, split.x, which, "ood in-distribution")
    s_out = {spec.name: _score_points(ctx, x, which, f"ood {spec.name}") for spec, x, _ in sets}
    specs, infos = [s for s, _, _ in sets], [i for _, _, i in sets]
    out = _results("ood", s_in, s_out, specs, infos, {})
    _histograms(ctx, "ood", s_in, s_out, specs, f"{ctx.data.name} test (n = {len(split)}) vs OOD sets", out)
    return out


@register("ood_adv", "ood", metrics=specs("ood_adv"), cost=ood_adv_cost, settings=ADV_SETTINGS, sharded=True,
          names=lambda s: metric_names(s, adversarial=True), inputs=set_digests)
def ood_adv_group(ctx: Context) -> dict[str, Result]:
    """The same measures after PGD has pushed every OOD point to raise the score under test."""
    from bench.engines.attacks import check_in_ball
    from bench.engines.ood_scores import raise_score, scores

    s = ctx.settings
    names = metric_names(s, adversarial=True)
    if s.get("norm", "Linf") != "Linf":
        return {k: Result.missing(f"the OOD attack is L-inf; norm {s['norm']!r} was asked for") for k in names}
    eps = float(s["eps"])
    steps = int(s["pgd_steps"])
    step = float(settings.value(s, "pgd_step_size"))
    which = score_list(s)
    split = ctx.data.test.subset(s["n_eval"])
    sets = _sets(ctx)
    # each score on its own, as the attacked points are scored below: one path for both sides (under
    # --amp bf16, px/py computed beside pxgrad's gradient would be float32 here and bf16 there)
    s_in = {sc: _score_points(ctx, split.x, [sc], f"ood_adv in-distribution {sc}")[sc] for sc in which}
    s_out, max_dist = {}, 0.0
    for spec, x, _ in sets:
        s_out[spec.name] = {}
        for sc in which:
            parts = []
            for i, xb in ctx.batches(x, desc=f"ood_adv {sc} {spec.name}", indexed=True):
                gen = ctx.generator(f"ood_adv/{sc}/{spec.name}/batch{i}")
                if sc == "pxgrad":  # a double backward: never through a compiled or autocast network
                    with ctx.model.plain():
                        adv = raise_score(ctx.model, xb, sc, eps, steps, step, gen)
                else:
                    adv = raise_score(ctx.model, xb, sc, eps, steps, step, gen)
                check_in_ball(xb, adv, eps)  # checked, not assumed
                max_dist = max(max_dist, (adv - xb).abs().amax().item())
                parts.append(scores(ctx.model, adv, [sc])[sc].cpu())
            s_out[spec.name][sc] = ctx.collect(parts)
    max_dist = ctx.gather_max(max_dist)
    specs, infos = [s for s, _, _ in sets], [i for _, _, i in sets]
    threat = {"attack": "PGD raising the score on the OOD points", "norm": "Linf", "eps": eps, "steps": steps,
              "step_size": step, "random_start": True, "max_linf": max_dist}
    out = _results("ood_adv", s_in, s_out, specs, infos, {"threat_model": threat})
    _histograms(ctx, "ood_adv", s_in, s_out, specs,
                f"{ctx.data.name} test vs OOD sets after PGD (L-inf eps = {eps:.4g}) raising the score", out)
    return out

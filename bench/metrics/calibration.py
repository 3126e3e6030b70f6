"""Calibration (paper App. G.2, Fig. 16): expected calibration error on clean and FGSM inputs.

The top-class confidence c = max_k softmax(f(x))_k of each evaluation point falls into one of B
equal-width bins of [0, 1]; with n_b points, accuracy acc_b and mean confidence conf_b in bin b,

    ECE = sum_b (n_b / N) |acc_b - conf_b|          (Guo et al. 2017, the paper's ref. [12])

Bins are (lo, hi], as in Guo et al.'s reference code, with a confidence of exactly 0 in the first
bin; a confidence of exactly 1 (a saturated float32 softmax) belongs to the last bin.
torchmetrics' ``MulticlassCalibrationError`` uses [lo, hi) bins and gives confidences of exactly 1
a bin of their own, so the two agree except for confidences lying exactly on an edge.

``ece`` uses the first ``n_eval`` test points as they are; ``ece_fgsm`` the same points after
one FGSM step of size eps on the cross-entropy (Eq. 2), the adversarial data of Fig. 16.  Values
are fractions (0.05 = 5 %); ``std`` is null: ECE has no closed-form standard error.  Each group
writes its reliability diagram (``figures/reliability_clean.png``, ``figures/reliability_fgsm.png``)
and records the per-bin counts, accuracies and confidences, and each point's confidence
(``details.per_point``, from which ``bench compare`` bootstraps the difference of two models' ECE).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bench.core import cost, outcomes
from bench.core.binned_calibration import (
    TEMPERATURE_BOUNDS,
    adaptive_calibration_error,
    expected_calibration_error,
    max_calibration_error,
)
from bench.core.settings import DEFENSE_SETTINGS
from bench.core.stats import mean_se
from bench.metrics import ECE, MEAN, Metric, Result, register, stable

if TYPE_CHECKING:
    import torch

    from bench.metrics.context import Context

STD_NOTE = "null: ECE has no closed-form standard error (not bootstrapped)"


def _collect(ctx: Context, adversarial: bool, tag: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Top-class confidence and correctness of the first n_eval test points, clean or after FGSM."""
    import torch

    from bench.metrics.group_points import eval_logits

    z, y, max_dist = eval_logits(ctx, adversarial, tag)
    conf, pred = torch.softmax(z, dim=1).max(dim=1)
    return conf, pred == y, ({"max_dist": max_dist} if adversarial else {})


def _conf_of(adversarial: bool, scaled: bool = False) -> str:  # the record bench compare bootstraps ECE from
    return f"{'temperature-scaled ' if scaled else ''}top-class confidence per {_POINT[adversarial]} in order"


_POINT = {False: "test point", True: "FGSM input"}


def _fgsm_threat(s: dict, max_dist: float) -> dict:
    """results.json's record of the FGSM (FGM under L2) inputs: norm, eps and the largest distance."""
    norm = s.get("norm", "Linf")
    return {"attack": "FGSM" if norm == "Linf" else "FGM", "norm": norm, "eps": float(s["eps"]), "loss": "ce",
            f"max_{norm.lower()}": max_dist}


def _ece_result(ctx: Context, adversarial: bool) -> Result:
    s = ctx.settings
    tag = "ece_fgsm" if adversarial else "ece"
    from bench.engines import plots  # matplotlib only when a diagram is drawn

    conf, ok, info = _collect(ctx, adversarial, tag)
    bins = int(s.get("ece_bins") or 20)
    ece, stats = expected_calibration_error(conf, ok, bins)
    name = "reliability_fgsm.png" if adversarial else "reliability_clean.png"
    fig = ctx.figure(name)
    title = (f"FGSM data ({s.get('norm', 'Linf')} eps = {float(s['eps']):.4g})" if adversarial else "Clean data") + \
        f", {ctx.data.name}, n = {len(ok)}"
    plots.reliability_diagram(stats, fig.path, title, model=fig.model)
    details = {"bins": stats, "figure": fig.rel, "n_bins": bins,
               "binning": "equal-width (lo, hi] bins on the top-class softmax confidence", "std": STD_NOTE,
               outcomes.KEY: outcomes.pack(ok, "correct under FGSM" if adversarial else "correct clean"),
               outcomes.VALUES_KEY: outcomes.pack_values(conf, _conf_of(adversarial))}
    if adversarial:
        details["threat_model"] = _fgsm_threat(s, info["max_dist"])
    return Result(ece, None, len(ok), details=details)


def clean_cost(s, z: cost.Sizes) -> cost.Work:
    """The clean forward, and a reliability diagram (two panels)."""
    return cost.passes("forward", cost.count(s, "n_eval", z.n_test), cost.batch(s)) + cost.charts(1, 2)


def fgsm_cost(s, z: cost.Sizes) -> cost.Work:
    """FGSM: one forward+backward per point, then the attacked forward (``_logits_of``)."""
    n = cost.count(s, "n_eval", z.n_test)
    return (cost.passes("backward", n, cost.batch(s)) + cost.passes("forward", n, cost.batch(s))
            + cost.charts(1, 2))


def extra_cost(s, z: cost.Sizes) -> cost.Work:
    """The clean logits are ece's (``_eval_logits``, made once per run); the temperature's held-out
    training tail (``CALIBRATION_FRACTION`` of the training split) through the forward, counted
    whether or not the checkpoint leaves it unseen (else the cross-fit reuses the clean logits);
    the scaled reliability diagram."""
    n = max(1, int(round(CALIBRATION_FRACTION * z.n_train)))
    return (cost.passes("forward", n, cost.batch(s), note="temperature: upper bound, the held-out training tail")
            + cost.charts(1, 2))


def extra_fgsm_cost(s, z: cost.Sizes) -> cost.Work:
    """The FGSM inputs and their logits are ece_fgsm's (made once per run); the scaled diagram."""
    return cost.charts(1, 2)


@register("ece", "calibration", cost=clean_cost, metrics=(Metric("ece", "ECE", False, "percent", ECE, 1.0, column="ECE (%)",
                                                portable=stable(2.0), bounds=(0.0, 1.0)),),
          settings=("n_eval", "ece_bins", *DEFENSE_SETTINGS), sharded=True)
def ece_group(ctx: Context) -> dict[str, Result]:
    """ECE of the clean evaluation points (20 bins by default) and their reliability diagram."""
    return {"ece": _ece_result(ctx, adversarial=False)}


@register("ece_fgsm", "calibration", cost=fgsm_cost, metrics=(Metric("ece_fgsm", "ECE", False, "percent", ECE, 1.0, column="ECE FGSM (%)",
                                                    portable=stable(2.0), bounds=(0.0, 1.0)),),
          settings=("n_eval", "ece_bins", "norm", "eps", *DEFENSE_SETTINGS), sharded=True)
def ece_fgsm_group(ctx: Context) -> dict[str, Result]:
    """ECE of the evaluation points after FGSM (eps, cross-entropy) and their reliability diagram."""
    return {"ece_fgsm": _ece_result(ctx, adversarial=True)}


# --------------------------------------------------------------------------------------------
# beyond ECE: NLL, Brier, MCE, adaptive ECE and temperature scaling (Guo et al. 2017)
#
# nll           mean -log softmax(f(x))_y
# brier         mean over points of sum_k (softmax(f(x))_k - [k = y])^2 (multi-class, in [0, 2])
# mce           max over non-empty bins of |acc_b - conf_b|, the ECE's equal-width (lo, hi] bins
# ece_adaptive  ECE over ``ece_bins`` equal-mass bins: the points sorted by confidence (ties by
#               index) cut into contiguous groups whose sizes differ by at most one
#               (``numpy.array_split``), sum_b (n_b / N) |acc_b - conf_b|
# temperature   T > 0 minimising the mean NLL of softmax(f(x) / T) on points the model never
#               trained on (``temperature_split``):
#               - ``held-out training tail``: the last 10 % of the training split, when the
#                 checkpoint records that it trained on the first ``train_n`` points only and
#                 the tail lies beyond them (``Context.train_used``);
#               - otherwise ``two-fold cross-fit`` on the evaluation points: T_1 fitted on the
#                 first half scales the second half, T_2 fitted on the second half scales the
#                 first, so no point is scaled by a T fitted on itself; ``temperature`` is then
#                 sqrt(T_1 T_2) and details give both.  (A tail the model trained on biases T
#                 low: on digits-normal T = 0.37 raised the NLL of half the test set from 0.075
#                 to 0.138, where a T fitted on the other half, 0.72, gives 0.083.)
#               Refused (null with the reason) when train and test are the same images, or
#               fewer than 2 evaluation points leave no second fold.
# *_ts          ece, nll and brier of softmax(f(x) / T) on the test points
# *_fgsm        the same on the FGSM inputs of ``ece_fgsm`` (T is fitted on clean points as
#               above, each FGSM point scaled by the T its clean fold gets, as a deployed model
#               would be)
#
# ``std``: the standard error of the mean for nll and brier (and their _ts forms); null for the
# binned errors and the temperature.  Reliability diagrams: ``figures/reliability_*_ts.png``.

CALIBRATION_FRACTION = 0.1  # the last 10 % of the training split fits the temperature
EXTRA = ("nll", "brier", "mce", "ece_adaptive", "temperature", "ece_ts", "nll_ts", "brier_ts")
EXTRA_FGSM = tuple(f"{m}_fgsm" for m in EXTRA if m != "temperature")
COLUMNS = dict(zip(EXTRA, ("NLL", "Brier", "MCE", "Adaptive ECE", "Temperature", "ECE (TS)", "NLL (TS)", "Brier (TS)"),
                   strict=True))  # their columns in the calibration table; a _fgsm one adds " FGSM"


def extra_spec(name: str) -> Metric:
    """The facts of an ``EXTRA`` or ``EXTRA_FGSM`` metric: NLL and Brier (and their scaled and
    FGSM variants) are means over points whose std is their standard error; Brier lies in [0, 2];
    MCE, adaptive ECE, the scaled ECE and the temperature have no statistical tolerance."""
    base, col = name.removesuffix("_fgsm").removesuffix("_ts"), COLUMNS[name.removesuffix("_fgsm")]
    col += " FGSM" if name.endswith("_fgsm") else ""
    if base == "nll":
        return Metric(name, "nats", False, tolerance=MEAN, portable=stable(None), bounds=(0.0, None), column=col)
    if base == "brier":
        return Metric(name, "brier", False, tolerance=MEAN, range=2.0, column=col, portable=stable(2.0),
                      bounds=(0.0, 2.0))
    if base == "temperature":
        return Metric(name, "temperature", portable=stable(None), bounds=TEMPERATURE_BOUNDS, column=col)
    if base == "mce":  # the largest bin gap: one flipped point moves it by up to 2 / (its bin's count)
        return Metric(name, "ECE", False, portable=stable(None), bounds=(0.0, 1.0), column=col)
    return Metric(name, "ECE", False, portable=stable(2.0), bounds=(0.0, 1.0), column=col)  # ece_adaptive, ece_ts


def _temperature(ctx: Context) -> tuple[torch.Tensor, dict]:
    """Per evaluation point, the temperature that scales it (memoised per run), and the record of
    the fit: from the held-out training tail when the checkpoint left it unseen, else a two-fold
    cross-fit on the clean evaluation points (see above).  Raises ``_NoSplit`` when neither exists."""
    import torch

    from bench.engines.calibration_fit import fit_temperature
    from bench.metrics.group_points import eval_logits, logits_of

    def fit() -> tuple[torch.Tensor, dict]:
        if ctx.data.train_is_test:
            from bench.inputs.data import TRAIN_IS_TEST

            raise _NoSplit(f"refused: {TRAIN_IS_TEST}; the model trained on the evaluated points, so none is "
                           "held out to fit the temperature")
        train, n_eval = ctx.data.train, len(ctx.data.test.subset(ctx.settings["n_eval"]))
        n = max(1, int(round(CALIBRATION_FRACTION * len(train))))
        used = ctx.train_used
        if used is not None and used <= len(train) - n:
            z, y, _ = logits_of(ctx, train.x[-n:], train.y[-n:], False, "temperature")
            t = fit_temperature(z, y)
            info = {"split": "held-out training tail",
                    "points": f"the last {n} of the {len(train)} training points; the model trained on the "
                              f"first {used}", "n": n, **_fit_record(z, y, t)}
            return torch.full((n_eval,), t, dtype=torch.float64), info
        if n_eval < 2:
            raise _NoSplit(f"refused: {n_eval} evaluation point(s) leave no second fold for the cross-fit, and the "
                           "checkpoint records no held-out training points (train_n)")
        z, y, _ = eval_logits(ctx, False, "temperature")
        half = (n_eval + 1) // 2
        folds = (slice(0, half), slice(half, n_eval))
        ts = [fit_temperature(z[f], y[f]) for f in folds]
        per_point = torch.empty(n_eval, dtype=torch.float64)
        per_point[folds[1]], per_point[folds[0]] = ts[0], ts[1]  # each fold scaled by the other's fit
        why = ("the checkpoint records no held-out training points (train_n)" if used is None else
               f"the model trained on the first {used} of {len(train)} training points, so the last {n} are not "
               "held out")
        info = {"split": "two-fold cross-fit",
                "points": f"the {n_eval} evaluation points in two halves ({half} and {n_eval - half}): each half is "
                          f"scaled by the temperature fitted on the other; {why}",
                "n": n_eval, "folds": [{"points": [f.start, f.stop], **_fit_record(z[f], y[f], t)}
                                       for f, t in zip(folds, ts, strict=True)],
                "bounds": list(TEMPERATURE_BOUNDS)}
        return per_point, info

    return ctx.once("temperature", fit)


class _NoSplit(Exception):
    """No data the model never saw to fit the temperature on (the reason is the message)."""


def _fit_record(z: torch.Tensor, y: torch.Tensor, t: float) -> dict:
    from bench.engines.calibration_fit import nll_per_point

    return {"temperature": t, "bounds": list(TEMPERATURE_BOUNDS), "nll_before": float(nll_per_point(z, y).mean()),
            "nll_after": float(nll_per_point(z / t, y).mean()), "accuracy": float((z.argmax(1) == y).double().mean()),
            "at_bound": bool(min(abs(math.log(t / b)) for b in TEMPERATURE_BOUNDS) < 1e-3)}


def _temperature_value(t: torch.Tensor, info: dict) -> float:
    """The one number ``temperature`` reports: the held-out fit, or the folds' geometric mean."""
    if "folds" in info:
        return math.sqrt(math.prod(f["temperature"] for f in info["folds"]))
    return float(t[0]) if len(t) else float("nan")


def _extra_results(ctx: Context, adversarial: bool) -> dict[str, Result]:
    import torch

    from bench.engines import plots
    from bench.engines.calibration_fit import brier_per_point, nll_per_point
    from bench.metrics.group_points import eval_logits

    s = ctx.settings
    suffix = "_fgsm" if adversarial else ""
    bins = int(s.get("ece_bins") or 20)
    z, y, max_dist = eval_logits(ctx, adversarial, "calibration" + suffix)
    n = len(y)
    try:
        t_points, t_info = _temperature(ctx)
        t = _temperature_value(t_points, t_info)
        base = {"temperature": t, "temperature_split": t_info["split"], "temperature_fit": t_info}
        refused = None
    except _NoSplit as e:
        t_points, t_info, t, base, refused = torch.ones(n, dtype=torch.float64), {}, None, {}, str(e)
    base[outcomes.KEY] = outcomes.pack(z.argmax(1) == y, "correct under FGSM" if adversarial else "correct clean")
    if adversarial:
        base["threat_model"] = _fgsm_threat(s, max_dist)
        base["temperature_note"] = "fitted on clean points, applied to the FGSM inputs"
    out = {}
    for scaled in (False, True):
        zs = z / t_points.view(-1, 1) if scaled else z
        p = torch.softmax(zs, dim=1)
        conf, pred = p.max(1)
        ok = pred == y
        tag = "_ts" if scaled else ""
        for name, per_point in (("nll", nll_per_point(zs, y)), ("brier", brier_per_point(p, y))):
            mean, se, _ = mean_se(per_point)
            record = outcomes.pack_values(per_point, f"{name}{tag} per {_POINT[adversarial]} in order")
            out[f"{name}{tag}{suffix}"] = Result(mean, se, n, details={**base, outcomes.VALUES_KEY: record})
        if scaled:
            ece, stats = expected_calibration_error(conf, ok, bins)
            if refused is None:
                fig = ctx.figure(f"reliability_{'fgsm' if adversarial else 'clean'}_ts.png")
                title = (f"FGSM data (eps = {float(s['eps']):.4g})" if adversarial else "Clean data") + \
                    f", temperature {t:.3g} ({t_info['split']}), n = {n}"
                plots.reliability_diagram(stats, fig.path, title, model=fig.model)
                base_ts = {**base, "bins": stats, "n_bins": bins, "figure": fig.rel, "std": STD_NOTE,
                           outcomes.VALUES_KEY: outcomes.pack_values(conf, _conf_of(adversarial, scaled=True))}
                out[f"ece_ts{suffix}"] = Result(ece, None, n, details=base_ts)
        else:
            with_conf = {**base, outcomes.VALUES_KEY: outcomes.pack_values(conf, _conf_of(adversarial))}
            mce = max_calibration_error(conf, ok, bins)
            out[f"mce{suffix}"] = Result(mce, None, n, details={**with_conf, "n_bins": bins, "std": STD_NOTE,
                                                              "binning": "equal-width (lo, hi] bins"})
            ace, ace_bins = adaptive_calibration_error(conf, ok, bins)
            out[f"ece_adaptive{suffix}"] = Result(ace, None, n, details={**with_conf, "bins": ace_bins, "std": STD_NOTE,
                                                                         "binning": "equal-mass bins"})
    if not adversarial and refused is None:
        out["temperature"] = Result(t, None, t_info["n"], details={**t_info, "std": "null: a fitted parameter"})
    if refused is not None:
        names = EXTRA_FGSM if adversarial else EXTRA
        out.update({m: Result.missing(refused, n) for m in names if m == "temperature" or "_ts" in m})
    return out


@register("calibration_extra", "calibration", cost=extra_cost, metrics=tuple(map(extra_spec, EXTRA)), settings=("n_eval", "ece_bins", *DEFENSE_SETTINGS), sharded=True)
def calibration_extra_group(ctx: Context) -> dict[str, Result]:
    """NLL, Brier, MCE, adaptive ECE, the fitted temperature and the scaled ECE, NLL and Brier."""
    return _extra_results(ctx, adversarial=False)


@register("calibration_extra_fgsm", "calibration", cost=extra_fgsm_cost, metrics=tuple(map(extra_spec, EXTRA_FGSM)),
          settings=("n_eval", "ece_bins", "norm", "eps", *DEFENSE_SETTINGS), sharded=True)
def calibration_extra_fgsm_group(ctx: Context) -> dict[str, Result]:
    """The same on the FGSM inputs (temperature from the clean held-out points)."""
    return _extra_results(ctx, adversarial=True)

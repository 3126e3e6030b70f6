"""Robustness (suite ``robust``): clean accuracy, PGD on cross-entropy and on energy, AutoAttack.

All groups evaluate the first ``n_eval`` test points (AutoAttack the first ``n_aa``, default
``n_eval``) and report fractions (0.5 = 50 %); numbers compared with AutoAttack must come from its
points, so its group also reports the clean and PGD-20 accuracies of those points.  ``std`` is the
standard error of the proportion, sqrt(p (1 - p) / n): the sampling error of the evaluation set,
not of the attack's randomness.

``accuracy``      clean top-1 accuracy.
``pgd20``         PGD (``pgd_steps`` steps, step ``pgd_step_size`` = eps/4 by default, uniform random
                  start in the ball, ``pgd_restarts`` restarts) ascending the cross-entropy (Eq. 3,
                  14), in the ``norm`` ball: L-inf (sign steps, the paper's) or L2 (normalised
                  gradient steps, the perturbation rescaled into the ball, then clamped to [0, 1]).
``pgd20_energy``  the same attack ascending the joint energy E(x, y) only (Eq. 18; Table 1).
``autoattack``    AutoAttack (``aa_version``, default ``standard``) through the reference
                  implementation, pyautoattack; its own warnings (randomised or dynamic defence,
                  zero gradients, probability outputs, Square stronger than the gradient attacks)
                  are recorded in ``details['warnings']``.  It runs in float32 throughout, whatever
                  ``amp`` says.  ``details['same_points']``: AutoAttack <= PGD-20 on its points?
``accuracy_aa``   clean accuracy on AutoAttack's points (the first ``n_aa``).
``pgd20_aa``      ``pgd20``'s attack on AutoAttack's points, its random starts drawn from the same
                  per-batch streams (``pgd20/batch<i>``).  They are exactly ``pgd20``'s starts under
                  L-inf with one restart on the CPU (a CPU generator's uniform draws for a prefix of
                  a batch's points are a prefix of its draws for the whole batch).  Under L2 (Gaussian
                  directions, then radii), with ``pgd_restarts`` > 1 or on CUDA, the last batch of
                  AutoAttack's points, a prefix of an evaluation batch, draws other starts: there
                  ``pgd20_aa`` may differ from ``pgd20`` on the same points by the luck of the starts.

A point counts as robust when the model still classifies its adversarial example correctly.  As
in AutoAttack, only correctly classified points are attacked: a misclassified point is its own
adversarial example (zero perturbation is inside the threat model).  Checked at run time, never
assumed: every adversarial example lies in the eps ball and in [0, 1], and no point is robust
that is misclassified clean, so robust accuracy never exceeds clean accuracy on the same points;
a violation raises ``RobustnessCheckError`` (a non-deterministic model or a broken attack gives
no number).

AutoAttack runs in blocks of ``batch_size`` consecutive points, one pyautoattack call per block
(so that its per-batch reseeding, and the numbers, do not depend on how blocks are spread over
torchrun ranks; up to ``batch_size`` points it is one call, exactly pyautoattack's evaluation).
The calls, their resumable state files, warnings, RNG and float32 guards: ``bench.engines.aa_adapter``;
the per-point flags and checks: ``bench.engines.robust_flags`` and ``bench.engines.aa_eval``.  This
module declares the groups and imports no torch (their functions import the engines when called).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.core import cost, outcomes
from bench.core.settings import DEFENSE_SETTINGS
from bench.metrics import Metric, Result, register

if TYPE_CHECKING:
    from bench.metrics.context import Context


@register("accuracy", "robust", metrics=(Metric.proportion("accuracy"),), settings=("n_eval", *DEFENSE_SETTINGS),
          sharded=True, cost=lambda s, z: cost.passes("forward", cost.count(s, "n_eval", z.n_test), cost.batch(s)))
def accuracy_group(ctx: Context) -> dict[str, Result]:
    from bench.engines.robust_flags import STD_NOTE, proportion
    from bench.metrics.group_points import clean_flags

    flags = clean_flags(ctx)
    p, se, n = proportion(flags)
    return {"accuracy": Result(p, se, n, details={"correct": int(flags.sum()), "std": STD_NOTE,
                                                  outcomes.KEY: outcomes.pack(flags, "correct clean")})}


PGD_SETTINGS = ("n_eval", "norm", "eps", "pgd_steps", "pgd_step_size", "pgd_restarts", "seed", "batch_size",
                *DEFENSE_SETTINGS)


def pgd_cost(s, z: cost.Sizes, n: int | None = None) -> cost.Work:
    """PGD on n points (n_eval): steps x restarts forward+backward passes, a forward per restart and the clean one."""
    n = cost.count(s, "n_eval", z.n_test) if n is None else n
    steps, restarts = int(s["pgd_steps"]), int(s.get("pgd_restarts") or 1)
    return (cost.passes("backward", n, cost.batch(s), steps * restarts)
            + cost.passes("forward", n, cost.batch(s), restarts + 1))


@register("pgd20", "robust", metrics=(Metric.proportion("pgd20"),), settings=PGD_SETTINGS, sharded=True, cost=pgd_cost)
def pgd20_group(ctx: Context) -> dict[str, Result]:
    from bench.metrics.group_points import pgd_robustness

    return {"pgd20": pgd_robustness(ctx, "ce", "pgd20")}


@register("pgd20_energy", "robust", metrics=(Metric.proportion("pgd20_energy"),), settings=PGD_SETTINGS, sharded=True,
          cost=pgd_cost)
def pgd20_energy_group(ctx: Context) -> dict[str, Result]:
    from bench.metrics.group_points import pgd_robustness

    return {"pgd20_energy": pgd_robustness(ctx, "energy", "pgd20_energy")}


AA_METRICS = ("autoattack", "accuracy_aa", "pgd20_aa")


def autoattack_cost(s, z: cost.Sizes) -> cost.Work | None:
    """AutoAttack on n_aa points (``aa_adapter.autoattack_work``; survivors bounded by the probe's
    clean accuracy) and PGD-20 on the same points; None (unknown) but for the standard version."""
    from bench.engines import aa_adapter

    n = cost.count(s, "n_aa", cost.count(s, "n_eval", z.n_test))
    aa = aa_adapter.autoattack_work(n, z.accuracy, cost.batch(s), z.num_classes, s.get("aa_version"), s.get("norm"))
    return None if aa is None else aa + pgd_cost(s, z, n)


@register("autoattack", "robust", metrics=tuple(map(Metric.proportion, AA_METRICS)), cost=autoattack_cost,
          settings=("n_eval", "n_aa", "norm", "eps", "aa_version", "seed", "batch_size",
                    "pgd_steps", "pgd_step_size", "pgd_restarts", *DEFENSE_SETTINGS), sharded=True)
def autoattack_group(ctx: Context) -> dict[str, Result]:
    """AutoAttack on the first ``n_aa`` points, and on exactly those points the clean accuracy
    (``accuracy_aa``) and PGD-20 on cross-entropy (``pgd20_aa``, the ``pgd20`` attack from the same
    per-batch random streams: ``pgd20``'s very starts under L-inf, one restart, CPU; see the module
    docstring), so that every robustness number compared with AutoAttack comes from the same points.  ``details['same_points']`` of ``autoattack`` records whether AutoAttack was at
    least as strong as PGD-20 there (it should be: it is the stronger attack)."""
    from bench.engines import aa_eval
    from bench.engines.aa_adapter import AAConfig
    from bench.engines.robust_flags import STD_NOTE, proportion
    from bench.metrics.group_points import pgd_flags, split_points

    s = ctx.settings
    norm, version = s.get("norm", "Linf"), s.get("aa_version", "standard")
    why = None
    if norm not in ("Linf", "L2", "L1"):
        why = f"AutoAttack supports Linf, L2 and L1, not {norm!r}"
    elif version not in ("standard", "plus", "rand"):
        why = (f"aa_version {version!r}: expected standard, plus or rand "
               "(custom needs an attack list, which no setting gives)")
    if why:
        return {m: Result.missing(why) for m in AA_METRICS}
    split = split_points(ctx, "n_aa")
    aa, flags = aa_eval.autoattack_flags(ctx.model, split.x, split.y,
                                 AAConfig(float(s["eps"]), norm, version, s.get("seed", 0)), ctx.execution,
                                 state_dir=ctx.out / "cache" / "autoattack-state",
                                 model_id=s.get("weights_sha256"))  # as loaded: another --normalize is another model
    clean = flags["clean"]
    p, se, n = proportion(clean)
    acc = Result(p, se, n, details={"correct": int(clean.sum()), "std": STD_NOTE,
                                    "points": f"the first {n} test points, AutoAttack's",
                                    outcomes.KEY: outcomes.pack(clean, "correct clean")})
    pgd, pgd_robust = pgd_flags(ctx, "ce", "pgd20", points="n_aa", desc="pgd20 (AutoAttack points)")
    if pgd.value is not None:
        pgd.details["points"] = f"the first {n} test points, AutoAttack's"
    aa.details["same_points"] = same = aa_eval.same_points(flags["robust"], pgd_robust, n)
    if same["autoattack_le_pgd20"] is False:
        aa.details["warnings"].append(f"AutoAttack left {same['autoattack_robust']} of {n} points robust, PGD-20 "
                                      f"{same['pgd20_robust']}: the reference attack was weaker on the same points")
    return {"autoattack": aa, "accuracy_aa": acc, "pgd20_aa": pgd}

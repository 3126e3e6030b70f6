"""Adaptive attacks against a random or refined defence (suite ``robust``; README, "Evaluating a
stochastic or refined defence"), and the opt-in sanity passes (``bench.runtime.sanity``).

Group ``adaptive`` runs only when ``--defense`` is set or ``--eot`` is given (else it has no
metrics and is skipped), on the first ``n_aa`` test points (``--n-aa``; give ``--n-aa`` equal to
``--n-eval`` for ``pgd20``'s very points).  Every attack ascends the cross-entropy in the ``norm``
ball of ``eps`` with ``pgd_steps`` steps of ``pgd_step_size`` from a uniform random start; a point
counts as robust only if the defended model classifies it correctly clean AND its adversarial
example correctly in every one of ``defense_repeats`` (R) fresh draws of the defence:

``defended_accuracy``  clean accuracy, a point correct in all R draws.
``pgd20_defended``     PGD-20, one draw per gradient (the plain attack), evaluated over R draws.
``eot_pgd``            EOT-PGD: each step's gradient summed over ``eot`` (N, default 8) draws; the
                       gradient is the model's own, i.e. for ``sgld-refine`` the full gradient
                       through the K refinement steps (checkpointed, ``bench.engines.defense``).
``bpda_eot``           BPDA+EOT (``--defense`` only): the refinement as the identity in the backward
                       pass, N attack draws per gradient, R defence draws to evaluate (the
                       ebm-defense protocol's separate attack and defence repeat counts).
``aa_rand``            AutoAttack ``version='rand'`` (APGD-CE and APGD-DLR with EOT 20) through
                       ``bench.engines.aa_adapter`` (``--defense`` only), evaluated over R draws.
``adaptive_worst``     per point, robust under every attack above (the worst case).

Portable rule: ``Portable("points", share=0.05)``.  A random defence's outcome per point is a draw:
on another platform the kernels move every chain's state in its last digits, the K Langevin steps
and the attack amplify that, and the point lands on another draw of its survival probability, so
far more points flip than the 0.5 % of a deterministic model.  5 % of the points is a bound set
from that reasoning, not yet measured across simulated machines (docs/CHECKS.md, "Adaptive
attacks on a random defence").

Group ``sanity`` (``--sanity-checks``; two extra attacks) gives ``pgd_stronger`` (PGD with twice
``pgd_steps`` and two restarts) and ``pgd_large_eps`` (PGD at ``bench.runtime.sanity.large_eps``), each
with its flag in ``details['flags']`` when raised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.core import outcomes, settings
from bench.core.settings import DEFENSE_SETTINGS, DefenseKind
from bench.metrics import PROPORTION, Metric, Portable, Result, register

if TYPE_CHECKING:
    import torch

    from bench.metrics.context import Context

DEFAULT_EOT = 8
RANDOM_POINTS = Portable("points", share=0.05)
ADAPTIVE = ("defended_accuracy", "pgd20_defended", "eot_pgd", "bpda_eot", "aa_rand", "adaptive_worst")
SANITY = ("pgd_stronger", "pgd_large_eps")
ATTACK_SETTINGS = ("n_eval", "n_aa", "norm", "eps", "pgd_steps", "pgd_step_size", "pgd_restarts", "seed",
                   "batch_size", *DEFENSE_SETTINGS)


COLUMNS = {"defended_accuracy": "Defended acc.", "pgd20_defended": "PGD-20 (R draws)", "eot_pgd": "EOT-PGD",
           "bpda_eot": "BPDA+EOT", "aa_rand": "AA rand", "adaptive_worst": "Worst case",
           "pgd_stronger": "PGD 2x steps/restarts", "pgd_large_eps": "PGD large eps"}


def _spec(name: str) -> Metric:
    """A proportion under a random defence (the module docstring's portable rule); a pattern that
    names the one metric, as the group's names depend on the settings."""
    return Metric(name + "*", "proportion", True, "percent", PROPORTION, 1.0, column=COLUMNS[name],
                  portable=RANDOM_POINTS, bounds=(0.0, 1.0))


def adaptive_names(s: dict) -> tuple[str, ...]:
    defended = s.get("defense") not in (None, DefenseKind.NONE)
    if not defended and s.get("eot") is None:
        return ()
    return tuple(m for m in ADAPTIVE if defended or m not in ("bpda_eot", "aa_rand"))


def _result(flags: torch.Tensor, meaning: str, details: dict) -> Result:
    from bench.engines.robust_flags import STD_NOTE, proportion

    p, se, n = proportion(flags)
    return Result(p, se, n, details={**details, "n": n, "robust_correct": int(flags.sum()), "std": STD_NOTE,
                                     outcomes.KEY: outcomes.pack(flags, meaning)})


def _pgd_kwargs(s) -> dict:
    return {"steps": int(s["pgd_steps"]), "step_size": float(settings.value(s, "pgd_step_size")),
            "restarts": max(1, int(s.get("pgd_restarts") or 1))}


def _aa(ctx: Context):
    from bench.engines.aa_adapter import run_autoattack

    s = ctx.settings

    def attack(model, x, y, eps, norm, generator=None):
        out = run_autoattack(model, x, y, eps=eps, norm=norm, version="rand", seed=s.get("seed", 0),
                             batch_size=len(y), device=ctx.device)
        return out.x_adv

    return attack


@register("adaptive", "robust", metrics=tuple(map(_spec, ADAPTIVE)),
          settings=(*ATTACK_SETTINGS, "eot", "defense_repeats"), sharded=True, names=adaptive_names)
def adaptive_group(ctx: Context) -> dict[str, Result]:
    from bench.engines import defense
    from bench.engines.attacks import bpda_eot_pgd, eot_pgd, pgd_restarts
    from bench.metrics.group_points import robust_points, split_points
    from bench.runtime import sanity

    s = ctx.settings
    names = adaptive_names(s)
    eps, norm, repeats = float(s["eps"]), s.get("norm", "Linf"), int(s["defense_repeats"])
    n_eot = int(s.get("eot") or DEFAULT_EOT)
    kw = _pgd_kwargs(s)
    split = split_points(ctx, "n_aa")

    def eot(model, x, y, e, nm, generator=None):
        return eot_pgd(model, x, y, e, nm, eot=n_eot, generator=generator, **kw)

    def bpda(model, x, y, e, nm, generator=None):
        return bpda_eot_pgd(model, x, y, e, nm, eot=n_eot, generator=generator, **kw)

    def plain(model, x, y, e, nm, generator=None):
        return pgd_restarts(model, x, y, e, kw["steps"], kw["step_size"], "ce", kw["restarts"], generator, norm=nm)

    attacks = {"pgd20_defended": (plain, "PGD, one draw per gradient"),
               "eot_pgd": (eot, f"EOT-PGD, {n_eot} draws per gradient, the model's own (full) gradient"),
               "bpda_eot": (bpda, f"BPDA+EOT, refinement as identity backward, {n_eot} draws per gradient"),
               "aa_rand": (_aa(ctx), "AutoAttack version='rand' (APGD-CE, APGD-DLR, EOT 20), pyautoattack")}
    threat = {"norm": norm, "eps": eps, **kw, "loss": "ce", "defense_repeats": repeats,
              "robust": f"correct clean and under attack in all {repeats} draws of the defence"}
    if isinstance(ctx.model, defense.RefinedModel):
        threat["defense"] = ctx.model.cfg.describe()
    out, worst, clean = {}, None, None
    for name, (attack, what) in attacks.items():
        if name not in names:
            continue
        rec = robust_points(ctx, split, attack, name, repeats, eps)
        clean = rec["clean"]
        worst = rec["robust"] if worst is None else worst & rec["robust"]
        details = {"threat_model": {**threat, "attack": what}, f"max_{norm.lower()}": rec["max_dist"]}
        eot_used = n_eot if name in ("eot_pgd", "bpda_eot") else (20 if name == "aa_rand" else None)
        flags = sanity.collect([sanity.randomness_flag(ctx.model, split.x[:sanity.N_IMAGES].to(ctx.device),
                                                       eot_used, name)])
        if flags:
            details["flags"] = flags
        out[name] = _result(rec["robust"], f"robust under {name} in all {repeats} draws", details)
    out["defended_accuracy"] = _result(clean, f"correct clean in all {repeats} draws", {"repeats": repeats})
    out["adaptive_worst"] = _result(worst, "robust under every adaptive attack", {
        "attacks": [m for m in attacks if m in names], "threat_model": threat})
    return out


def sanity_names(s: dict) -> tuple[str, ...]:
    return SANITY if s.get("sanity_checks") else ()


@register("sanity", "robust", metrics=tuple(map(_spec, SANITY)),
          settings=(*ATTACK_SETTINGS, "sanity_checks"), sharded=True, names=sanity_names)
def sanity_group(ctx: Context) -> dict[str, Result]:
    """The opt-in sanity passes on the first ``n_eval`` points: PGD against PGD with twice the steps
    and two restarts (``more_steps_stronger``), and PGD at a large eps (``large_eps_not_zero``)."""
    from bench.engines.attacks import pgd_restarts
    from bench.metrics.group_points import robust_points, split_points
    from bench.runtime import sanity

    s = ctx.settings
    eps, norm, kw = float(s["eps"]), s.get("norm", "Linf"), _pgd_kwargs(s)
    split = split_points(ctx)
    big = sanity.large_eps(norm, tuple(split.x.shape[1:]))

    def attack(steps, restarts, step_size):
        def run(model, x, y, e, nm, generator=None):
            return pgd_restarts(model, x, y, e, steps, step_size, "ce", restarts, generator, norm=nm)
        return run

    base = robust_points(ctx, split, attack(kw["steps"], kw["restarts"], kw["step_size"]), "pgd20", 1, eps)
    strong = robust_points(ctx, split, attack(2 * kw["steps"], 2 * kw["restarts"], kw["step_size"]),
                           "pgd_stronger", 1, eps)
    large = robust_points(ctx, split, attack(kw["steps"], kw["restarts"], big / 4), "pgd_large_eps", 1, big)
    rise = sanity.rise_flag(base["robust"], strong["robust"], "pgd_stronger")
    far = sanity.large_eps_flag(large["robust"], big, norm)
    return {
        "pgd_stronger": _result(strong["robust"], "robust under PGD with 2x steps and 2x restarts", {
            "steps": 2 * kw["steps"], "restarts": 2 * kw["restarts"], "pgd_robust": int(base["robust"].sum()),
            "flags": sanity.collect([rise])}),
        "pgd_large_eps": _result(large["robust"], f"robust under PGD at {norm} eps {big:g}", {
            "eps": big, "step_size": big / 4, "flags": sanity.collect([far])}),
    }

"""Robustness curves (suite ``robust``, with ``--eps-grid``): robust accuracy against the attack
radius, for every registered attack, in the run's ``norm`` (L-inf or L2).

``--eps`` stays the single threat model of ``pgd20``, ``autoattack``, the calibration and OOD
attacks and Tables 1-3; ``--eps-grid 0.05,0.1,0.2`` adds the curve: each attack of
``--curve-attacks`` (default: every registered attack that supports the norm) runs at every radius
of the grid, eps 0 included always (there the attack is the identity, so the point is the clean
accuracy of the attack's points and no attack runs).  Without a grid the group has no metrics and
does not run, so no existing number moves.

Metrics: ``curve_<attack>_<eps>`` (``eps`` as ``%.6g``, e.g. ``curve_pgd20_0.05``,
``curve_autoattack_0.0313725``), one proportion per attack and radius, with the standard error
of the proportion as ``std`` (the bands of the figure) and the per-point robust bits, so ``bench
check`` compares each point of the curve by the rules of ``pgd20`` (flipped points, 3 standard
errors).  Each radius is a separate attack on the same points: a point robust at a larger eps and
fooled at a smaller one is recorded as measured (``details['curve']['monotone']`` and
``nested_violations`` say whether accuracy fell with eps and how many points broke the nesting;
None where a radius gave no per-point flags),
never forced.  The figure ``figures/robustness_curve.png`` (accuracy against eps, one line per
attack, +-1 standard error bands) is recorded in every curve metric's ``details['figure']``;
``bench table`` draws several runs' curves on one plot and writes one table per attack
(``bench.outputs.all_tables.curve_tables``).

The attacks (``ATTACKS``) plug in by registration, the loop never names them:

    @curve_attack("eot_pgd", settings=("eot",), points="n_eval")
    def eot_pgd_at(ctx, eps) -> tuple[Result, torch.Tensor | None]:
        ...  # robust accuracy at radius eps on the points, with the per-point robust flags

``ctx.settings`` is then the curve group's view of the run's settings at the radius
(``bench.core.settings.at_radius``: ``eps`` replaced by it, and every setting derived from eps, such
as ``pgd_step_size`` (eps / 4), derived again from it unless the user set it), so an engine that
reads ``eps`` from the settings needs no change.  Registering declares the attack's settings and its
``points`` setting for the group (they key its cache; a name not declared in
``bench.core.settings.SETTINGS`` is refused, as ``register`` refuses it), and the source of the
attack's module keys it too (``inputs``).  An attack's per-point flags cover the same points at every
radius (flags of another length fail the group's check, ``CheckFailed``).
PGD at every radius draws its starts from ``pgd20``'s (``pgd20_energy``'s) streams: at the run's eps the
curve's PGD points are ``pgd20`` and ``pgd20_energy`` themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bench.core import code_digest, outcomes
from bench.core.errors import BenchError, CheckFailed
from bench.core.settings import Norm, at_radius
from bench.metrics import GROUPS, Metric, Result, register
from bench.metrics.registry import check_settings

if TYPE_CHECKING:
    import torch

    from bench.metrics.context import Context

GROUP = "robust_curve"
PREFIX = "curve_"
FIGURE = "robustness_curve.png"


@dataclass(frozen=True)
class CurveAttack:
    """One attack of the curve: ``run(ctx, eps) -> (Result, per-point robust flags or None)`` on the
    first ``points`` test points (``n_eval`` or AutoAttack's ``n_aa``); ``supports(settings)``: why
    it cannot run under these settings (None: it can)."""

    name: str
    run: Callable[[Context, float], tuple[Result, torch.Tensor | None]]
    settings: tuple[str, ...]
    points: str = "n_eval"
    supports: Callable[[Mapping], str | None] = lambda s: None
    label: str = ""


ATTACKS: dict[str, CurveAttack] = {}
BASE_SETTINGS = ("n_eval", "norm", "eps", "eps_grid", "curve_attacks", "pgd_step_size", "seed", "batch_size")


def curve_attack(name: str, settings: tuple[str, ...] = (), points: str = "n_eval",
                 supports: Callable[[Mapping], str | None] | None = None, label: str = ""):
    """Decorator: register ``fn(ctx, eps)`` as the curve attack ``name`` (see the module docstring);
    its ``settings`` join the curve group's."""
    if not name or "*" in name or name != name.strip():
        raise ValueError(f"curve attack {name!r}: give a plain name")
    check_settings(f"curve attack {name}", (*settings, points))

    def deco(fn):
        ATTACKS[name] = CurveAttack(name, fn, tuple(settings), points, supports or (lambda s: None), label or name)
        group = GROUPS.get(GROUP)
        if group is not None:  # the group reads (and is keyed by) what its attacks read
            group.settings = tuple(dict.fromkeys((*group.settings, *settings, points)))
        return fn

    return deco


def grid(s: Mapping) -> list[float]:
    """The curve's radii: ``eps_grid`` sorted, with 0 (clean accuracy); [] without a grid."""
    values = s.get("eps_grid")
    return sorted({0.0, *map(float, values)}) if values else []


def metric_name(attack: str, eps: float) -> str:
    return f"{PREFIX}{attack}_{eps:.6g}"


def selected(s: Mapping) -> list[CurveAttack]:
    """The attacks of the curve: ``curve_attacks`` (a name not registered is a BenchError), else
    every registered attack that supports the settings."""
    asked = [a.strip() for a in (s.get("curve_attacks") or "").split(",") if a.strip()]
    unknown = [a for a in asked if a not in ATTACKS]
    if unknown:
        raise BenchError(f"unknown curve attack {unknown[0]!r}; registered: {', '.join(ATTACKS)}")
    if asked:
        return [ATTACKS[a] for a in dict.fromkeys(asked)]
    return [a for a in ATTACKS.values() if a.supports(s) is None]


def names(s: Mapping) -> tuple[str, ...]:
    eps = grid(s)
    shown = [f"{e:.6g}" for e in eps]
    clash = [e for e, t in zip(eps, shown, strict=True) if shown.count(t) > 1]
    if clash:
        raise BenchError(f"eps-grid values {clash[0]:g} and {clash[1]:g} agree to 6 digits; give distinct radii")
    return tuple(metric_name(a.name, e) for a in (selected(s) if eps else ()) for e in eps)


def attack_code(ctx: Context) -> dict:
    """The source digests of the selected attacks' modules (an attack registered elsewhere is not
    imported by this module, so its code would not key the cache otherwise)."""
    memo: dict = {}
    return {a.name: code_digest.code_sha256(a.run.__module__, memo) for a in selected(ctx.settings)}


@register(GROUP, "robust", metrics=(Metric.proportion(PREFIX + "*"),), settings=BASE_SETTINGS, sharded=True,
          names=names, inputs=attack_code)
def curve_group(ctx: Context) -> dict[str, Result]:
    s = ctx.settings
    out: dict[str, Result] = {}
    fig = ctx.figure(FIGURE)
    for attack in selected(s):
        why = attack.supports(s)
        points = {}
        for eps in grid(s):
            if why is not None:
                res, flags = Result.missing(f"{attack.name}: {why}"), None
            elif eps == 0:
                res, flags = _clean(ctx, attack)
            else:
                res, flags = attack.run(_at(ctx, eps), eps)
            res.details = dict(res.details or {}, figure=fig.rel)
            out[metric_name(attack.name, eps)] = res
            points[eps] = flags
        _record(attack, {e: out[metric_name(attack.name, e)] for e in points}, points)
    _draw(out, s, fig.path, fig.model)
    return out


def _clean(ctx: Context, attack: CurveAttack) -> tuple[Result, torch.Tensor]:
    from bench.engines.robust_flags import STD_NOTE, proportion
    from bench.metrics.group_points import clean_flags

    flags = clean_flags(ctx, attack.points, desc=f"curve {attack.name} eps 0")
    p, se, n = proportion(flags)
    return Result(p, se, n, details={"eps": 0.0, "clean_correct": int(flags.sum()), "std": STD_NOTE,
                                     "attacked": "no attack: eps 0 is the identity, the clean accuracy",
                                     outcomes.KEY: outcomes.pack(flags, "correct clean")}), flags


def _at(ctx: Context, eps: float) -> Context:
    """``ctx`` whose settings view is the run's at radius ``eps`` (``settings.at_radius``: what derives
    from eps, such as ``pgd_step_size``, derived again from it unless the user set it)."""
    full = at_radius(dict(ctx.settings.full), float(eps))
    return replace(ctx, settings=GROUPS[GROUP].view(full))


def _record(attack: CurveAttack, results: dict[float, Result], flags: dict[float, torch.Tensor | None]) -> None:
    """Each metric's ``details['curve']``: the attack, its radius, and whether the measured curve
    fell with eps (values) and nested (no point robust at a radius and fooled at a smaller one)."""
    eps = sorted(results)
    values = [results[e].value for e in eps]
    known = [v for v in values if v is not None]
    nested = 0
    for lo, hi in zip(eps, eps[1:], strict=False):
        a, b = flags.get(lo), flags.get(hi)
        if a is None or b is None:  # a radius without per-point flags: the nesting is not known
            nested = None
            break
        if a.shape != b.shape:
            raise CheckFailed(f"curve attack {attack.name}: per-point flags of {b.numel()} points at eps {hi:g} and of "
                              f"{a.numel()} at eps {lo:g}: the attack must flag the same {attack.points} points "
                              "at every radius")
        nested += int((b.bool() & ~a.bool()).sum())
    summary = {"attack": attack.name, "label": attack.label, "points": attack.points,
               "monotone": all(x >= y for x, y in zip(known, known[1:], strict=False)), "nested_violations": nested,
               "eps_grid": eps}
    for e in eps:
        results[e].details["curve"] = dict(summary, eps=e)


def _draw(out: dict[str, Result], s: Mapping, fig, model: str = "") -> None:
    from bench.core import curve_data
    from bench.core.results import Results
    from bench.engines import plots

    lines = curve_data.curve_lines([Results({}, {}, out)])
    if lines:
        norm = s.get("norm", "Linf")
        plots.robustness_curves(lines, fig, title=f"Robust accuracy against eps ({norm})", xlabel=f"eps ({norm})",
                                model=model)


# --------------------------------------------------------------------------------------------
# the robust suite's attacks


def _pgd(loss: str, tag: str):
    """PGD on ``loss`` from the random streams of the group ``tag`` (``pgd20``, ``pgd20_energy``)."""
    def run(ctx: Context, eps: float):
        from bench.metrics.group_points import pgd_flags

        return pgd_flags(ctx, loss, tag, desc=f"curve {tag} eps {eps:.4g}")
    return run


curve_attack("pgd20", ("pgd_steps", "pgd_restarts"), label="PGD-20 (CE)")(_pgd("ce", "pgd20"))
curve_attack("pgd20_energy", ("pgd_steps", "pgd_restarts"), label="PGD-20 (energy)")(_pgd("energy", "pgd20_energy"))


def _aa_supports(s: Mapping) -> str | None:
    norms = tuple(Norm)  # bench.engines.attacks.NORMS
    return None if s.get("norm", "Linf") in norms else f"AutoAttack here supports {', '.join(norms)}"


@curve_attack("autoattack", ("n_aa", "aa_version"), points="n_aa", supports=_aa_supports, label="AutoAttack")
def autoattack_at(ctx: Context, eps: float) -> tuple[Result, torch.Tensor]:
    """AutoAttack (``aa_version``) at radius ``eps`` on the first ``n_aa`` points."""
    from bench.engines.aa_adapter import AAConfig
    from bench.engines.aa_eval import autoattack_flags
    from bench.metrics.group_points import split_points

    s = ctx.settings
    split = split_points(ctx, "n_aa")
    res, flags = autoattack_flags(ctx.model, split.x, split.y,
                                  AAConfig(float(eps), s.get("norm", "Linf"), s.get("aa_version", "standard"),
                                           s.get("seed", 0)), ctx.execution,
                                  state_dir=ctx.out / "cache" / "autoattack-state", model_id=s.get("weights_sha256"))
    return res, flags["robust"]

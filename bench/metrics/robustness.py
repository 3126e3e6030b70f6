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
The calls, their resumable state files, warnings, RNG and float32 guards: ``bench.engines.aa_adapter``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from bench.core import cost, outcomes, settings
from bench.core.energy import EnergyModel, evaluates
from bench.core.stats import proportion_se
from bench.engines import aa_adapter, defense
from bench.engines.aa_adapter import AAConfig, float32_input_grads, run_autoattack, run_blocks, summarise
from bench.engines.attacks import NORMS, check_in_ball, pgd_restarts
from bench.metrics import CheckFailed, Context, Metric, Result, register
from bench.runtime import sanity
from bench.runtime.execution import Execution

STD_NOTE = "standard error of the proportion, sqrt(p(1-p)/n)"


class RobustnessCheckError(CheckFailed):
    """A run-time check of an attack failed: robust accuracy above clean accuracy, or an
    adversarial example outside the threat model.  The evaluation gives no number: its metrics are
    nulls with this message as their reason (``bench.pipeline.compute``)."""


# --------------------------------------------------------------------------------------------
# shared helpers


def proportion(flags: torch.Tensor) -> tuple[float, float, int]:
    """(p, standard error sqrt(p(1-p)/n), n) of a boolean vector."""
    n = int(flags.numel())
    if n == 0:
        raise ValueError("proportion of an empty set")
    p = flags.double().mean().item()
    return p, proportion_se(p, n), n


@torch.no_grad()
@evaluates
def predict(model: EnergyModel, x: torch.Tensor, batch_size: int = 250,
            device: torch.device | str | None = None) -> torch.Tensor:
    """Top-1 predictions of ``x`` (any device), batched, returned on x's device."""
    device = torch.device(device) if device is not None else x.device
    out = [model.logits(x[i:i + batch_size].to(device)).argmax(1).to(x.device)
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=x.device)


def check_robust_le_clean(clean_correct: torch.Tensor, robust_correct: torch.Tensor, what: str = "attack") -> None:
    """Raise ``RobustnessCheckError`` unless every robust point is also correct clean (which
    implies robust accuracy <= clean accuracy on the same points)."""
    clean = torch.as_tensor(clean_correct).bool().cpu().flatten()
    robust = torch.as_tensor(robust_correct).bool().cpu().flatten()
    if clean.shape != robust.shape:
        raise ValueError(f"{what}: clean and robust flags differ in length ({len(clean)} vs {len(robust)})")
    bad = int((robust & ~clean).sum())
    n_clean, n_robust = int(clean.sum()), int(robust.sum())
    if bad or n_robust > n_clean:
        raise RobustnessCheckError(
            f"{what}: robust accuracy {n_robust}/{len(robust)} exceeds clean accuracy {n_clean}/{len(clean)} "
            f"on the same points ({bad} points correct under attack but wrong clean); the model is not "
            "deterministic (dropout or batch norm in training mode, a randomised defence?) or the attack is broken")


def check_in_norm_ball(x: torch.Tensor, adv: torch.Tensor, eps: float, norm: str = "Linf") -> float:
    """``bench.runtime.sanity.check_in_ball`` raising ``RobustnessCheckError``: the largest perturbation norm."""
    try:
        return check_in_ball(x, adv, eps, norm)
    except RuntimeError as e:
        raise RobustnessCheckError(str(e)) from None


def _split(ctx: Context, key: str = "n_eval"):
    n = ctx.settings.get(key)
    if key == "n_aa":  # AutoAttack runs on the first n_aa of the evaluation points
        n_eval = ctx.settings.get("n_eval")
        n = n_eval if n is None else (n if n_eval is None else min(n, n_eval))
    return ctx.data.test.subset(n)


# --------------------------------------------------------------------------------------------
# clean accuracy and PGD


def clean_flags(ctx: Context, points: str = "n_eval", desc: str = "accuracy") -> torch.Tensor:
    """Per point of the first ``n_eval`` (``points="n_aa"``: AutoAttack's), whether the model
    classifies it correctly (on the CPU, gathered over torchrun ranks)."""
    split = _split(ctx, points)
    flags = []
    with torch.no_grad():
        for x, y in ctx.batches(split.x, split.y, desc=desc):
            flags.append((ctx.model.logits(x).argmax(1) == y).cpu())
    return ctx.collect(flags, torch.bool)


@register("accuracy", "robust", metrics=(Metric.proportion("accuracy"),), settings=("n_eval", *defense.SETTINGS),
          sharded=True, cost=lambda s, z: cost.passes("forward", cost.count(s, "n_eval", z.n_test), cost.batch(s)))
def accuracy_group(ctx: Context) -> dict[str, Result]:
    flags = clean_flags(ctx)
    p, se, n = proportion(flags)
    return {"accuracy": Result(p, se, n, details={"correct": int(flags.sum()), "std": STD_NOTE,
                                                  outcomes.KEY: outcomes.pack(flags, "correct clean")})}


PGD_SETTINGS = ("n_eval", "norm", "eps", "pgd_steps", "pgd_step_size", "pgd_restarts", "seed", "batch_size",
                *defense.SETTINGS)
LOSS_NAMES = {"ce": "cross-entropy E(x,y) - E(x) (Eq. 3, 14)", "energy": "joint energy E(x,y) (Eq. 18)"}


def pgd_robustness(ctx: Context, loss: str, tag: str) -> Result:
    """Robust accuracy under PGD (L-inf or L2, the ``norm`` setting) on ``loss`` (``ce`` or
    ``energy``) with the context's settings, on the first ``n_eval`` points."""
    return pgd_flags(ctx, loss, tag)[0]


def pgd_flags(ctx: Context, loss: str, tag: str, points: str = "n_eval",
              desc: str | None = None) -> tuple[Result, torch.Tensor | None]:
    """``pgd_robustness`` on the first ``n_eval`` points (``points="n_aa"``: AutoAttack's points),
    with the per-point robust flags (None where the attack gives no number).  The random starts of
    batch i come from the stream ``tag/batch<i>``, so AutoAttack's points, a prefix of the
    evaluation points, start where the full run starts them."""
    s = ctx.settings
    norm = s.get("norm", "Linf")
    if norm not in NORMS:
        return Result.missing(f"PGD supports the norms {', '.join(NORMS)}; norm {norm!r} was asked for"), None
    eps = float(s["eps"])
    steps = int(s["pgd_steps"])
    step = float(settings.value(s, "pgd_step_size"))
    restarts = max(1, int(s.get("pgd_restarts") or 1))
    split = _split(ctx, points)
    clean_all, robust_all = [], []
    max_dist = 0.0
    for i, x, y in ctx.batches(split.x, split.y, desc=desc or tag, indexed=True):
        gen = ctx.generator(f"{tag}/batch{i}")  # random starts per batch: the same under torchrun
        clean, robust, adv = attack_points(ctx.model, x, y, eps, steps, step, loss, restarts, gen, norm)
        max_dist = max(max_dist, check_in_norm_ball(x, adv, eps, norm))
        clean_all.append(clean.cpu())
        robust_all.append(robust.cpu())
    clean, robust = ctx.collect(clean_all, torch.bool), ctx.collect(robust_all, torch.bool)
    max_dist = ctx.gather_max(max_dist)
    check_robust_le_clean(clean, robust, tag)
    p, se, n = proportion(robust)
    details = {
        "threat_model": {"norm": norm, "eps": eps, "steps": steps, "step_size": step, "restarts": restarts,
                         "random_start": True, "loss": loss, "loss_meaning": LOSS_NAMES[loss]},
        "n": n, "clean_correct": int(clean.sum()), "robust_correct": int(robust.sum()),
        "clean_accuracy": clean.double().mean().item(), f"max_{norm.lower()}": max_dist,
        "attacked": "clean-correct points; misclassified points count as not robust", "std": STD_NOTE,
        outcomes.KEY: outcomes.pack(robust, f"robust under {tag} ({loss})"),
    }
    flags = attack_flags(ctx, split, tag)
    if flags:
        details["flags"] = flags
    return Result(p, se, n, details=details), robust


def attack_flags(ctx: Context, split, tag: str, eot: int | None = None) -> list[dict]:
    """The cheap sanity flags of an attack (``bench.runtime.sanity``) on the first batch of its points: the
    model random while the attack drew one gradient, input gradients zero or non-finite."""
    x, y = split.x[:ctx.settings["batch_size"]].to(ctx.device), split.y[:ctx.settings["batch_size"]].to(ctx.device)
    return sanity.collect([sanity.randomness_flag(ctx.model, x, eot, tag),
                           sanity.gradient_flag(sanity.masked_share(ctx.model, x, y), len(x), tag)])


def attack_points(model: EnergyModel, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step: float | None,
                  loss: str, restarts: int, generator: torch.Generator | None, norm: str = "Linf"):
    """PGD on the clean-correct points of one batch -> (clean flags, robust flags, adversarial
    images; a misclassified point is left as it is and counts as not robust)."""
    with torch.no_grad():
        clean = model.logits(x).argmax(1) == y
    adv = x.clone()
    idx = clean.nonzero().squeeze(1)
    if idx.numel():
        adv[idx] = pgd_restarts(model, x[idx], y[idx], eps, steps, step, loss, restarts, generator, norm=norm)
    with torch.no_grad():
        robust = model.logits(adv).argmax(1) == y
    return clean, robust, adv


def pgd_cost(s, z: cost.Sizes, n: int | None = None) -> cost.Work:
    """PGD on n points (n_eval): steps x restarts forward+backward passes, a forward per restart and the clean one."""
    n = cost.count(s, "n_eval", z.n_test) if n is None else n
    steps, restarts = int(s["pgd_steps"]), int(s.get("pgd_restarts") or 1)
    return (cost.passes("backward", n, cost.batch(s), steps * restarts)
            + cost.passes("forward", n, cost.batch(s), restarts + 1))


@register("pgd20", "robust", metrics=(Metric.proportion("pgd20"),), settings=PGD_SETTINGS, sharded=True, cost=pgd_cost)
def pgd20_group(ctx: Context) -> dict[str, Result]:
    return {"pgd20": pgd_robustness(ctx, "ce", "pgd20")}


@register("pgd20_energy", "robust", metrics=(Metric.proportion("pgd20_energy"),), settings=PGD_SETTINGS, sharded=True,
          cost=pgd_cost)
def pgd20_energy_group(ctx: Context) -> dict[str, Result]:
    return {"pgd20_energy": pgd_robustness(ctx, "energy", "pgd20_energy")}


# --------------------------------------------------------------------------------------------
# AutoAttack through pyautoattack


def evaluate_autoattack(model: EnergyModel, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 250,
                        device: torch.device | str | None = None, state_dir: str | Path | None = None,
                        model_id: str | None = None, **aa) -> Result:
    """Robust accuracy under AutoAttack on its own (``autoattack_flags`` without the per-point
    flags); ``aa``: the fields of ``AAConfig`` (eps, norm, version, seed, attacks)."""
    return autoattack_flags(model, x, y, AAConfig(**aa), Execution(device, batch_size), state_dir, model_id)[0]


@evaluates
def autoattack_flags(model: EnergyModel, x: torch.Tensor, y: torch.Tensor, aa: AAConfig,
                     run: Execution = Execution(), state_dir: str | Path | None = None,
                     model_id: str | None = None) -> tuple[Result, dict[str, torch.Tensor]]:
    """Robust accuracy under AutoAttack, checked: the fraction of points whose adversarial example
    the model still classifies correctly (recomputed here, batched, in float32 like the attack),
    every example inside the ``norm`` ball and [0, 1], and no point robust that is wrong clean.
    Returns the Result and the per-point flags ``clean``, ``robust`` (recomputed) and
    ``pyautoattack`` (on the CPU).

    The points go to pyautoattack in blocks of ``run.batch_size`` consecutive points, one call (and
    one resumable state file) per block: pyautoattack reseeds before every batch it attacks, so its
    result depends on which points share a batch, and fixed blocks make that independent of how
    the blocks are spread over torchrun ranks (``run.sharded``: this rank runs its share of the
    blocks and the per-point results are gathered).  With at most ``batch_size`` points this is
    exactly one pyautoattack call.  An interrupted run keeps the finished blocks' states until all
    are done."""
    with float32_input_grads(model):
        return _autoattack_flags(model, x, y, aa, replace(run, device=run.on(x)), state_dir, model_id)


def _autoattack_flags(model, x, y, aa: AAConfig, run: Execution, state_dir, model_id
                      ) -> tuple[Result, dict[str, torch.Tensor]]:
    batch_size, norm, eps = run.batch_size, aa.norm, aa.eps
    n_blocks = -(-len(y) // batch_size)

    def attack(xb, yb, state_path):
        return _autoattack_block(model, xb, yb, state_path=state_path, device=run.device, batch_size=batch_size,
                                 **aa.kwargs())

    blocks = run_blocks(attack, model, x, y, aa, run, state_dir, model_id)
    flags = {k: run.collect([bl[k] for bl in blocks], torch.bool) for k in ("clean", "robust", "pyautoattack")}
    infos = run.gather_objects([bl["info"] for bl in blocks])
    clean, robust = flags["clean"], flags["robust"]
    check_robust_le_clean(clean, robust, "autoattack")
    p, se, n = proportion(robust)
    attacks_run = infos[0]["attacks"] if infos else list(aa.attacks or [])
    details = {
        "threat_model": {"norm": norm, "eps": float(eps), "version": aa.version, "attacks": attacks_run,
                         "seed": aa.seed, "batch_size": int(batch_size)},
        "n": n, "clean_correct": int(clean.sum()), "robust_correct": int(robust.sum()),
        "clean_accuracy": clean.double().mean().item(),
        "pyautoattack_robust_accuracy": flags["pyautoattack"].double().mean().item(),
        "recomputed_disagreements": int((robust != flags["pyautoattack"]).sum()),
        f"max_{norm.lower()}": max((i["dist"] for i in infos), default=0.0),
        "warnings": summarise([w for i in infos for w in i["warnings"]]), "std": STD_NOTE,
        "implementation": "pyautoattack (reference AutoAttack)",
        outcomes.KEY: outcomes.pack(robust, "robust under AutoAttack (recomputed)"),
    }
    if n_blocks > 1:
        details["blocks"] = f"{n_blocks} pyautoattack calls of up to {batch_size} points"
    notes = sorted({m for i in infos for m in i["notes"]})
    if notes:
        details["notes"] = notes
    square = sanity.square_flag(details["warnings"])
    if square:
        details["flags"] = [square]
    resumed = [dict(i["resumed"], state_key=i["state_key"]) for i in infos if i["resumed"]]
    if resumed:
        details["resumed"] = resumed
    keys = [i["state_key"] for i in infos if i["state_key"]]
    if keys:
        details["state_key"] = keys[0] if n_blocks == 1 else keys
    details["precision"] = "float32 throughout (bf16 autocast off), gradients w.r.t. the input only"
    return Result(p, se, n, details=details), flags


def _autoattack_block(model, x, y, *, state_path, device, **kw) -> dict:
    """One pyautoattack call on one block: per-point clean, robust (recomputed) and pyautoattack
    flags, and what the summary needs (picklable, to gather across ranks)."""
    out = run_autoattack(model, x, y, device=device, state_path=state_path, keep_state=True, **kw)
    xd, yd = x.to(device), y.to(device)
    bs = kw["batch_size"]
    dist = check_in_norm_ball(xd, out.x_adv, kw["eps"], kw["norm"])
    clean = predict(model, xd, bs) == yd
    robust = predict(model, out.x_adv, bs) == yd
    if out.resumed:
        robust &= out.robust  # examples fooled before an interruption are gone; they stay fooled
    check_robust_le_clean(clean, robust, "autoattack")
    info = {"attacks": out.attacks, "dist": dist, "warnings": out.warnings, "notes": out.notes,
            "resumed": out.resumed, "state_key": state_path.stem if state_path is not None else None}
    return {"clean": clean.cpu(), "robust": robust.cpu(), "pyautoattack": out.robust.cpu(), "info": info}


AA_METRICS = ("autoattack", "accuracy_aa", "pgd20_aa")


def autoattack_cost(s, z: cost.Sizes) -> cost.Work | None:
    """AutoAttack on n_aa points (``aa_adapter.autoattack_work``; survivors bounded by the probe's
    clean accuracy) and PGD-20 on the same points; None (unknown) but for the standard version."""
    n = cost.count(s, "n_aa", cost.count(s, "n_eval", z.n_test))
    aa = aa_adapter.autoattack_work(n, z.accuracy, cost.batch(s), z.num_classes, s.get("aa_version"), s.get("norm"))
    return None if aa is None else aa + pgd_cost(s, z, n)


@register("autoattack", "robust", metrics=tuple(map(Metric.proportion, AA_METRICS)), cost=autoattack_cost,
          settings=("n_eval", "n_aa", "norm", "eps", "aa_version", "seed", "batch_size",
                    "pgd_steps", "pgd_step_size", "pgd_restarts", *defense.SETTINGS), sharded=True)
def autoattack_group(ctx: Context) -> dict[str, Result]:
    """AutoAttack on the first ``n_aa`` points, and on exactly those points the clean accuracy
    (``accuracy_aa``) and PGD-20 on cross-entropy (``pgd20_aa``, the ``pgd20`` attack from the same
    per-batch random streams: ``pgd20``'s very starts under L-inf, one restart, CPU; see the module
    docstring), so that every robustness number compared with AutoAttack comes from the same points.  ``details['same_points']`` of ``autoattack`` records whether AutoAttack was at
    least as strong as PGD-20 there (it should be: it is the stronger attack)."""
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
    split = _split(ctx, "n_aa")
    aa, flags = autoattack_flags(ctx.model, split.x, split.y,
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
    aa.details["same_points"] = same = _same_points(flags["robust"], pgd_robust, n)
    if same["autoattack_le_pgd20"] is False:
        aa.details["warnings"].append(f"AutoAttack left {same['autoattack_robust']} of {n} points robust, PGD-20 "
                                      f"{same['pgd20_robust']}: the reference attack was weaker on the same points")
    return {"autoattack": aa, "accuracy_aa": acc, "pgd20_aa": pgd}


def _same_points(aa_robust: torch.Tensor, pgd_robust: torch.Tensor | None, n: int) -> dict:
    """AutoAttack against PGD-20 on the same points: did AutoAttack <= PGD-20 hold, and per point,
    how many each attack fooled that the other did not."""
    if pgd_robust is None:
        return {"n": n, "autoattack_le_pgd20": None, "reason": "PGD-20 gives no number under this threat model"}
    aa_robust, pgd_robust = aa_robust.bool().cpu(), pgd_robust.bool().cpu()
    return {"n": n, "autoattack_robust": int(aa_robust.sum()), "pgd20_robust": int(pgd_robust.sum()),
            "autoattack_le_pgd20": bool(aa_robust.sum() <= pgd_robust.sum()),
            "fooled_by_autoattack_only": int((~aa_robust & pgd_robust).sum()),
            "fooled_by_pgd20_only": int((aa_robust & ~pgd_robust).sum())}

"""What the metric groups share that reads a group's ``Context``: its evaluation points, the clean
and PGD flags of them with the attack's sanity flags, the points robust to a given attack, the
logits of the evaluation points clean or after FGSM (made once per run for the calibration groups)
and the Langevin chains of the denoising group.  Each batches, shards and gathers through the
context (``ctx.batches``, ``ctx.collect``, ``ctx.once``, ``ctx.generator``) and calls the engines
for the computation on tensors (``bench.engines.robust_flags``, ``attacks``, ``calibration_fit``,
``denoising``), which take plain arguments, never a context.  Imported by the group functions when
they run (a support module of this package, not a metric module: it registers nothing)."""

from __future__ import annotations

import torch

from bench.core import outcomes, settings
from bench.core.results import Result
from bench.core.settings import DefenseKind
from bench.engines.attacks import NORMS, check_in_ball, fgsm
from bench.engines.denoising import langevin_denoise
from bench.engines.robust_flags import (
    LOSS_NAMES,
    STD_NOTE,
    attack_points,
    check_in_norm_ball,
    check_robust_le_clean,
    proportion,
    survives,
)
from bench.runtime import sanity


def split_points(ctx, key: str = "n_eval"):
    """The first ``n_eval`` test points of ``ctx`` (``key="n_aa"``: AutoAttack's, the first ``n_aa`` of them)."""
    n = ctx.settings.get(key)
    if key == "n_aa":  # AutoAttack runs on the first n_aa of the evaluation points
        n_eval = ctx.settings.get("n_eval")
        n = n_eval if n is None else (n if n_eval is None else min(n, n_eval))
    return ctx.data.test.subset(n)


def clean_flags(ctx, points: str = "n_eval", desc: str = "accuracy") -> torch.Tensor:
    """Per point of the first ``n_eval`` (``points="n_aa"``: AutoAttack's), whether the model
    classifies it correctly (on the CPU, gathered over torchrun ranks)."""
    split = split_points(ctx, points)
    flags = []
    with torch.no_grad():
        for x, y in ctx.batches(split.x, split.y, desc=desc):
            flags.append((ctx.model.logits(x).argmax(1) == y).cpu())
    return ctx.collect(flags, torch.bool)


def pgd_robustness(ctx, loss: str, tag: str) -> Result:
    """Robust accuracy under PGD (L-inf or L2, the ``norm`` setting) on ``loss`` (``ce`` or
    ``energy``) with the context's settings, on the first ``n_eval`` points."""
    return pgd_flags(ctx, loss, tag)[0]


def pgd_flags(ctx, loss: str, tag: str, points: str = "n_eval",
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
    split = split_points(ctx, points)
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


def attack_flags(ctx, split, tag: str, eot: int | None = None) -> list[dict]:
    """The cheap sanity flags of an attack (``bench.runtime.sanity``) on the first batch of its points: the
    model random while the attack drew one gradient, input gradients zero or non-finite."""
    x, y = split.x[:ctx.settings["batch_size"]].to(ctx.device), split.y[:ctx.settings["batch_size"]].to(ctx.device)
    return sanity.collect([sanity.randomness_flag(ctx.model, x, eot, tag),
                           sanity.gradient_flag(sanity.masked_share(ctx.model, x, y), len(x), tag)])


def robust_points(ctx, split, attack, tag: str, repeats: int, eps: float) -> dict:
    """Per-point flags of ``attack(model, x, y, eps, norm, generator=...)`` on ``split``: clean (all
    ``repeats`` draws correct) and robust (clean, and the adversarial example correct in all draws).
    Only clean points are attacked; every example is checked to lie in the ball."""
    norm = ctx.settings.get("norm", "Linf")
    clean_all, robust_all, dist = [], [], 0.0
    for i, x, y in ctx.batches(split.x, split.y, desc=tag, indexed=True):
        gen = ctx.generator(f"{tag}/batch{i}")
        clean = survives(ctx.model, x, y, repeats)
        adv = x.clone()
        idx = clean.nonzero().squeeze(1)
        if idx.numel():
            adv[idx] = attack(ctx.model, x[idx], y[idx], eps, norm, generator=gen)
        dist = max(dist, check_in_norm_ball(x, adv, eps, norm))
        robust = clean & survives(ctx.model, adv, y, repeats)
        clean_all.append(clean.cpu())
        robust_all.append(robust.cpu())
    clean, robust = ctx.collect(clean_all, torch.bool), ctx.collect(robust_all, torch.bool)
    check_robust_le_clean(clean, robust, tag)
    return {"clean": clean, "robust": robust, "max_dist": ctx.gather_max(dist)}


def logits_of(ctx, x_all: torch.Tensor, y_all: torch.Tensor, adversarial: bool, tag: str):
    """(logits float64, labels, largest perturbation in the run's norm) of the points, clean or after
    FGSM (the fast gradient method x + eps g / ||g||_2 under ``--norm L2``)."""
    # the threat model only under attack: the clean groups do not declare it (bench.metrics.registry.SettingsView)
    eps, norm = (float(ctx.settings["eps"]), ctx.settings.get("norm", "Linf")) if adversarial else (0.0, None)
    k = ctx.data.num_classes
    out, labels, max_dist = [], [], 0.0
    for x, y in ctx.batches(x_all, y_all, desc=tag):
        if adversarial:
            adv = fgsm(ctx.model, x, y, eps, loss="ce", norm=norm)
            max_dist = max(max_dist, check_in_ball(x, adv, eps, norm=norm))  # checked, not assumed
            x = adv
        with torch.no_grad():
            out.append(ctx.model.logits(x).double().cpu())
        labels.append(y.cpu())
    return (ctx.collect(out, torch.zeros(0, k, dtype=torch.float64)), ctx.collect(labels, torch.long),
            ctx.gather_max(max_dist))


def eval_logits(ctx, adversarial: bool, tag: str):
    """``logits_of`` the first n_eval test points, clean or after FGSM, made once per run for the groups
    that use them (ece, calibration_extra and its cross-fit; ece_fgsm, calibration_extra_fgsm), keyed by
    what they depend on: n_eval, the batch size, and eps and norm under attack.  FGSM is deterministic,
    so the values are each group's own, whichever makes them.  Not shared under a defence (its noise
    is per group), nor when non-finite (made again, so the runner's watch on the model sees them)."""
    s = ctx.settings
    split = ctx.data.test.subset(s["n_eval"])
    made = []

    def make():
        made.append(True)
        return logits_of(ctx, split.x, split.y, adversarial, tag)

    if s.get("defense", DefenseKind.NONE) not in (None, DefenseKind.NONE):
        return make()
    threat = (float(s["eps"]), s.get("norm", "Linf")) if adversarial else None  # clean groups do not declare it
    key = ("calibration_eval_logits", s["n_eval"], int(s["batch_size"]), threat)
    z, y, max_dist = ctx.once(key, make)
    if not made and not bool(torch.isfinite(z).all()):
        return make()
    return z, y, max_dist


def langevin_chains(ctx, noisy: torch.Tensor, labels: torch.Tensor, counts: list[int], label: str):
    """The Langevin chains from the noisy images, batched (sharded under torchrun): the images
    after each count of steps, which chains stayed finite, and the labels y the energy used."""
    s = ctx.settings
    den_all, finite_all, used_all = {c: [] for c in counts}, [], []
    for i, xn, y in ctx.batches(noisy, labels, desc="denoise", indexed=True):
        if label == "predicted":
            with torch.no_grad():
                y = ctx.model.logits(xn).argmax(1)
        used_all.append(y.cpu())
        snaps, finite = langevin_denoise(ctx.model, xn, y, counts, float(s["denoise_step_size"]),
                                         float(s["denoise_noise"] or 0.0), ctx.generator(f"denoise/langevin{i}"))
        finite_all.append(finite.cpu())
        for c in counts:
            den_all[c].append(snaps[c].cpu())
    den = {c: ctx.collect(v, noisy[:0]) for c, v in den_all.items()}
    return den, ctx.collect(finite_all, torch.bool), ctx.collect(used_all, torch.long)

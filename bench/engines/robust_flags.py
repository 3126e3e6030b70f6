"""The robustness numbers as flags per point, on tensors: clean and PGD flags of a group's points,
their proportion and its standard error, and the run-time checks of an attack (robust <= clean, every
example inside the threat model).  The robust suite's groups (``bench.metrics.robustness``), the
curves (``bench.metrics.curves``), the adaptive attacks (``bench.metrics.adaptive``) and
``bench.functional`` call them; ``ctx`` is a group's ``bench.metrics.Context``."""

from __future__ import annotations

import torch

from bench.core import outcomes, settings
from bench.core.energy import EnergyModel, evaluates
from bench.core.errors import CheckFailed
from bench.core.results import Result
from bench.core.stats import proportion_se
from bench.engines.attacks import NORMS, check_in_ball, pgd_restarts
from bench.runtime import sanity

STD_NOTE = "standard error of the proportion, sqrt(p(1-p)/n)"
LOSS_NAMES = {"ce": "cross-entropy E(x,y) - E(x) (Eq. 3, 14)", "energy": "joint energy E(x,y) (Eq. 18)"}


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


def survives(model, x: torch.Tensor, y: torch.Tensor, repeats: int) -> torch.Tensor:
    """Per point: classified correctly in every one of ``repeats`` fresh forward passes."""
    ok = torch.ones(len(y), dtype=torch.bool, device=y.device)
    with torch.no_grad():
        for _ in range(max(1, repeats)):
            ok &= model.logits(x).argmax(1) == y
    return ok


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

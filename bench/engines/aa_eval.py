"""AutoAttack's robust accuracy, checked, per point (``autoattack_flags``): pyautoattack through
``bench.engines.aa_adapter`` in fixed blocks, the examples recomputed and checked
(``bench.engines.robust_flags``); and AutoAttack against PGD-20 on the same points (``same_points``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from bench.core import outcomes
from bench.core.energy import EnergyModel, evaluates
from bench.core.results import Result
from bench.engines.aa_adapter import AAConfig, float32_input_grads, run_autoattack, run_blocks, summarise
from bench.engines.robust_flags import (
    STD_NOTE,
    check_in_norm_ball,
    check_robust_le_clean,
    predict,
    proportion,
)
from bench.runtime import sanity
from bench.runtime.execution import Execution


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


def same_points(aa_robust: torch.Tensor, pgd_robust: torch.Tensor | None, n: int) -> dict:
    """AutoAttack against PGD-20 on the same points: did AutoAttack <= PGD-20 hold, and per point,
    how many each attack fooled that the other did not."""
    if pgd_robust is None:
        return {"n": n, "autoattack_le_pgd20": None, "reason": "PGD-20 gives no number under this threat model"}
    aa_robust, pgd_robust = aa_robust.bool().cpu(), pgd_robust.bool().cpu()
    return {"n": n, "autoattack_robust": int(aa_robust.sum()), "pgd20_robust": int(pgd_robust.sum()),
            "autoattack_le_pgd20": bool(aa_robust.sum() <= pgd_robust.sum()),
            "fooled_by_autoattack_only": int((~aa_robust & pgd_robust).sum()),
            "fooled_by_pgd20_only": int((aa_robust & ~pgd_robust).sum())}

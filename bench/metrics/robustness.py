"""Robustness (suite ``robust``): clean accuracy, PGD on cross-entropy and on energy, AutoAttack.

All groups evaluate the first ``n_eval`` test points (AutoAttack the first ``n_aa``, default
``n_eval``) and report fractions (0.5 = 50 %).  ``std`` is the standard error of the proportion,
sqrt(p (1 - p) / n): the sampling error of the evaluation set, not of the attack's randomness.

``accuracy``      clean top-1 accuracy.
``pgd20``         L-inf PGD (``pgd_steps`` steps, step ``pgd_step_size`` = eps/4 by default, uniform
                  random start, ``pgd_restarts`` restarts) ascending the cross-entropy (Eq. 3, 14).
``pgd20_energy``  the same attack ascending the joint energy E(x, y) only (Eq. 18; Table 1).
``autoattack``    AutoAttack (``aa_version``, default ``standard``) through the reference
                  implementation, pyautoattack; its own warnings (randomised or dynamic defence,
                  zero gradients, probability outputs, Square stronger than the gradient attacks)
                  are recorded in ``details['warnings']``.

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

AutoAttack resumes, block by block: pyautoattack records its progress (per-point robust flags, finished attacks)
in ``state_path``.  We key that file by the model's sha256 (or a digest of its weights), the
threat model, the seed, the points and the batch size
(``OUT/cache/autoattack-state/state-<key>[.L<level>].json``), so a resumed run never mixes two
settings.  pyautoattack 0.2.0 cannot restore its own state file (it writes the attack set as a
Python repr string that never compares equal on reading, and its restore path leaves ``y_adv``
unbound), so a resumed run reads the recorded flags itself and runs the attacks not yet recorded
as finished, through pyautoattack, on the points still robust, under a fresh state file of the
next level.  A finished block's state is kept until every block is done, so an interrupted run
repeats no finished block; the state files are removed once the evaluation completes (the runner
caches the result).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench import distributed
from bench.attacks import check_in_ball, pgd_restarts
from bench.energy import EnergyModel
from bench.metrics import Context, Result, register

STD_NOTE = "standard error of the proportion, sqrt(p(1-p)/n)"
AA_LOGGER = "auto-attack"


class RobustnessCheckError(RuntimeError):
    """A run-time check of an attack failed: robust accuracy above clean accuracy, or an
    adversarial example outside the threat model.  The evaluation gives no number."""


# --------------------------------------------------------------------------------------------
# shared helpers


def proportion(flags: torch.Tensor) -> tuple[float, float, int]:
    """(p, standard error sqrt(p(1-p)/n), n) of a boolean vector."""
    n = int(flags.numel())
    if n == 0:
        raise ValueError("proportion of an empty set")
    p = flags.double().mean().item()
    return p, math.sqrt(p * (1 - p) / n), n


@torch.no_grad()
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


def check_in_norm_ball(x: torch.Tensor, adv: torch.Tensor, eps: float, norm: str = "Linf", tol: float = 1e-5) -> float:
    """Raise ``RobustnessCheckError`` if any example leaves the ``norm`` ball of radius eps or
    [0, 1]; return the largest perturbation norm."""
    if norm == "Linf":
        try:
            check_in_ball(x, adv, eps, tol=1e-6)
        except RuntimeError as e:
            raise RobustnessCheckError(str(e)) from None
        return (adv - x).abs().amax().item() if len(x) else 0.0
    d = (adv - x).flatten(1)
    dist = d.norm(p=2 if norm == "L2" else 1, dim=1) if len(x) else d.new_zeros(0)
    biggest = dist.max().item() if len(x) else 0.0
    if biggest > eps * (1 + tol) + tol or (len(x) and (adv.min().item() < -1e-6 or adv.max().item() > 1 + 1e-6)):
        raise RobustnessCheckError(f"adversarial example outside the threat model: {norm} {biggest:.6g} > eps "
                                   f"{eps:.6g} or outside [0, 1]")
    return biggest


def _split(ctx: Context, key: str = "n_eval"):
    n = ctx.settings.get(key)
    if key == "n_aa":  # AutoAttack runs on the first n_aa of the evaluation points
        n_eval = ctx.settings.get("n_eval")
        n = n_eval if n is None else (n if n_eval is None else min(n, n_eval))
    return ctx.data.test.subset(n)


# --------------------------------------------------------------------------------------------
# clean accuracy and PGD


@register("accuracy", "robust", metrics=("accuracy",), settings=("n_eval",), sharded=True)
def accuracy_group(ctx: Context) -> dict[str, Result]:
    split = _split(ctx)
    flags = [torch.zeros(0, dtype=torch.bool)]
    with torch.no_grad():
        for x, y in ctx.batches(split.x, split.y, desc="accuracy"):
            flags.append((ctx.model.logits(x).argmax(1) == y).cpu())
    flags = ctx.gather(torch.cat(flags))
    p, se, n = proportion(flags)
    return {"accuracy": Result(p, se, n, details={"correct": int(flags.sum()), "std": STD_NOTE})}


PGD_SETTINGS = ("n_eval", "norm", "eps", "pgd_steps", "pgd_step_size", "pgd_restarts", "seed", "batch_size")
LOSS_NAMES = {"ce": "cross-entropy E(x,y) - E(x) (Eq. 3, 14)", "energy": "joint energy E(x,y) (Eq. 18)"}


def pgd_robustness(ctx: Context, loss: str, tag: str) -> Result:
    """Robust accuracy under L-inf PGD on ``loss`` (``ce`` or ``energy``) with the context's settings."""
    s = ctx.settings
    norm = s.get("norm", "Linf")
    if norm != "Linf":
        return Result.missing(f"PGD here is the L-inf attack of the paper; norm {norm!r} was asked for")
    eps = float(s["eps"])
    steps = int(s["pgd_steps"])
    step = float(s["pgd_step_size"]) if s.get("pgd_step_size") is not None else eps / 4
    restarts = max(1, int(s.get("pgd_restarts") or 1))
    split = _split(ctx)
    clean_all, robust_all = [torch.zeros(0, dtype=torch.bool)], [torch.zeros(0, dtype=torch.bool)]
    max_dist = 0.0
    for i, x, y in ctx.batches(split.x, split.y, desc=tag, indexed=True):
        gen = ctx.generator(f"{tag}/batch{i}")  # random starts per batch: the same under torchrun
        with torch.no_grad():
            clean = ctx.model.logits(x).argmax(1) == y
        adv = x.clone()
        idx = clean.nonzero().squeeze(1)
        if idx.numel():
            adv[idx] = pgd_restarts(ctx.model, x[idx], y[idx], eps, steps, step, loss, restarts, gen)
        max_dist = max(max_dist, check_in_norm_ball(x, adv, eps, "Linf"))
        with torch.no_grad():
            robust = ctx.model.logits(adv).argmax(1) == y
        clean_all.append(clean.cpu())
        robust_all.append(robust.cpu())
    clean, robust = ctx.gather(torch.cat(clean_all)), ctx.gather(torch.cat(robust_all))
    max_dist = float(ctx.gather(torch.tensor([max_dist], dtype=torch.float64)).max())
    check_robust_le_clean(clean, robust, tag)
    p, se, n = proportion(robust)
    details = {
        "threat_model": {"norm": "Linf", "eps": eps, "steps": steps, "step_size": step, "restarts": restarts,
                         "random_start": True, "loss": loss, "loss_meaning": LOSS_NAMES[loss]},
        "n": n, "clean_correct": int(clean.sum()), "robust_correct": int(robust.sum()),
        "clean_accuracy": clean.double().mean().item(), "max_linf": max_dist,
        "attacked": "clean-correct points; misclassified points count as not robust", "std": STD_NOTE,
    }
    return Result(p, se, n, details=details)


@register("pgd20", "robust", metrics=("pgd20",), settings=PGD_SETTINGS, sharded=True)
def pgd20_group(ctx: Context) -> dict[str, Result]:
    return {"pgd20": pgd_robustness(ctx, "ce", "pgd20")}


@register("pgd20_energy", "robust", metrics=("pgd20_energy",), settings=PGD_SETTINGS, sharded=True)
def pgd20_energy_group(ctx: Context) -> dict[str, Result]:
    return {"pgd20_energy": pgd_robustness(ctx, "energy", "pgd20_energy")}


# --------------------------------------------------------------------------------------------
# AutoAttack through pyautoattack


@dataclass
class AutoAttackOutcome:
    x_adv: torch.Tensor  # adversarial examples; x itself where no attack succeeded in this session
    y_adv: torch.Tensor  # pyautoattack's labels of x_adv (-1: fooled in an earlier, interrupted session)
    robust: torch.Tensor  # pyautoattack's per-point flags: correct clean and after every attack
    attacks: list[str]
    warnings: list[str] = field(default_factory=list)
    resumed: dict = field(default_factory=dict)  # empty unless a state from an interrupted run was used
    notes: list[str] = field(default_factory=list)


def run_autoattack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
                   version: str = "standard", seed: int | None = 0, batch_size: int = 250,
                   device: torch.device | str | None = None, state_path: str | Path | None = None,
                   attacks: list[str] | None = None, keep_state: bool = False) -> AutoAttackOutcome:
    """``pyautoattack.AutoAttack(model, norm=, eps=, version=, seed=, device=)
    .run_standard_evaluation(x, y, batch_size=, state_path=)``, with its warnings captured, the
    global RNG left as it was, and resumption from ``state_path`` made to work (module docstring).

    Without a state left by an interrupted run the adversarial examples and labels are exactly
    pyautoattack's.  ``state_path`` names level 0; later levels add ``.L<k>`` before the suffix.
    The state files are removed at the end unless ``keep_state`` (the caller removes them).
    """
    from pyautoattack import AutoAttack

    device = torch.device(device) if device is not None else x.device
    x, y = x.to(device), y.to(device)
    aa = AutoAttack(model, norm=norm, eps=eps, version=version, seed=seed, device=device,
                    attacks=list(attacks) if attacks else None)
    order = list(aa.attacks_to_run or [])
    if not order:
        raise ValueError("AutoAttack version 'custom' needs a list of attacks")
    notes = []
    with torch.no_grad():
        n_cls = model(x[:1]).shape[1] if len(x) else 0
    if version in ("standard", "plus") and 1 < n_cls <= aa.apgd_targeted.n_target_classes:
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = n_cls - 1
        notes.append(f"target classes of APGD-T and FAB-T reduced from 9 to {n_cls - 1} ({n_cls} classes)")

    robust, done, used = _resume(state_path, len(y), device)
    with _captured_messages() as messages, _rng_kept(device):
        if robust is None:  # fresh run: exactly pyautoattack
            x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=batch_size,
                                                      state_path=_level_path(state_path, 0))
            robust = y_adv == y
            resumed = {}
        else:
            remaining = [a for a in order if a not in done]
            idx = robust.nonzero().squeeze(1)
            x_adv = x.clone()
            y_adv = torch.where(robust, y, torch.full_like(y, -1))
            resumed = {"levels_read": used, "finished_before": sorted(done), "run_now": remaining,
                       "not_robust_before": int(len(y) - len(idx)),
                       "note": "points fooled before the interruption stay fooled; their examples were not kept"}
            if remaining and len(idx):
                aa.attacks_to_run = remaining
                xs, ys = aa.run_standard_evaluation(x[idx], y[idx], batch_size=batch_size,
                                                    state_path=_level_path(state_path, used))
                x_adv[idx], y_adv[idx] = xs, ys
                robust[idx] = ys == y[idx]
    if not keep_state:
        remove_state(state_path)
    return AutoAttackOutcome(x_adv, y_adv, robust, order, _summarise(messages), resumed, notes)


def remove_state(state_path) -> None:
    """Remove every level of a finished evaluation's state: a later run starts afresh."""
    for p in _existing_levels(state_path):
        p.unlink(missing_ok=True)


def _level_path(state_path: str | Path | None, level: int) -> Path | None:
    if state_path is None:
        return None
    p = Path(state_path)
    return p if level == 0 else p.with_name(f"{p.stem}.L{level}{p.suffix}")


def _existing_levels(state_path) -> list[Path]:
    out, k = [], 0
    while state_path is not None and (p := _level_path(state_path, k)).exists():
        out.append(p)
        k += 1
    return out


def _read_state(path: Path) -> tuple[torch.Tensor, set[str]] | None:
    """(robust flags, finished attacks) from a pyautoattack state file; None if unusable."""
    try:
        d = json.loads(path.read_text())
        flags = d.get("_robust_flags")
        if flags is None:
            return None
        run = d.get("_run_attacks") or []
        if isinstance(run, str):  # written with default=str
            run = ast.literal_eval(run)
        return torch.tensor(flags, dtype=torch.bool), set(run)
    except Exception:
        return None  # half-written or foreign: not trusted


def _resume(state_path, n: int, device) -> tuple[torch.Tensor | None, set[str], int]:
    """Merge the state files an interrupted run left: level k holds the flags of the points still
    robust after levels < k.  Returns (flags or None, finished attacks, levels used); unusable
    levels (half-written, foreign) are removed and recomputed."""
    robust, done = None, set()
    paths = _existing_levels(state_path)
    for k, path in enumerate(paths):
        st = _read_state(path)
        idx = torch.arange(n, device=device) if robust is None else robust.nonzero().squeeze(1)
        if st is None or len(st[0]) != len(idx):
            for p in paths[k:]:
                p.unlink(missing_ok=True)
            return robust, done, k
        flags = st[0].to(device)
        if robust is None:
            robust = flags.clone()
        else:
            robust[idx] = flags
        done |= st[1]
    return robust, done, len(paths)


@contextlib.contextmanager
def _captured_messages():
    """Collect pyautoattack's warnings: its ``checks`` log to the 'auto-attack' logger (warnings
    module where no logger is given)."""
    messages: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = logging.getLogger(AA_LOGGER)
    handler, level = _Keep(logging.WARNING), logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(f"{w.category.__name__}: {w.message}" for w in caught)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def _rng_kept(device: torch.device):
    """pyautoattack reseeds the global RNGs before every attack; keep other groups' streams."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def _summarise(messages: list[str]) -> list[str]:
    return [m if c == 1 else f"{m} (x{c})" for m, c in Counter(messages).items()]


def tensor_digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def model_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's parameters and buffers (normalisation included), for models without
    a checkpoint sha256."""
    h = hashlib.sha256()
    for k, v in sorted([*model.named_parameters(), *model.named_buffers()], key=lambda kv: kv[0]):
        h.update(k.encode())
        h.update(tensor_digest(v).encode())
    return h.hexdigest()


def autoattack_key(model_id: str, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, version: str,
                   seed, batch_size: int, attacks=None) -> str:
    """The state file's key: model, threat model, seed, points and batch size."""
    import pyautoattack

    keyed = {"model": model_id, "norm": norm, "eps": float(eps), "version": version, "attacks": attacks,
             "seed": seed, "batch_size": int(batch_size), "n": len(y), "points": tensor_digest(x, y),
             "pyautoattack": getattr(pyautoattack, "__version__", None)}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:24]


def evaluate_autoattack(model: EnergyModel, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
                        version: str = "standard", seed: int | None = 0, batch_size: int = 250,
                        device: torch.device | str | None = None, state_dir: str | Path | None = None,
                        model_id: str | None = None, attacks: list[str] | None = None,
                        sharded: bool = False, progress=None) -> Result:
    """Robust accuracy under AutoAttack, checked: the fraction of points whose adversarial example
    the model still classifies correctly (recomputed here, batched), every example inside the
    ``norm`` ball and [0, 1], and no point robust that is wrong clean.

    The points go to pyautoattack in blocks of ``batch_size`` consecutive points, one call (and one
    resumable state file) per block: pyautoattack reseeds before every batch it attacks, so its
    result depends on which points share a batch, and fixed blocks make that independent of how
    the blocks are spread over torchrun ranks (``sharded``: this rank runs its share of the blocks
    and the per-point results are gathered).  With at most ``batch_size`` points this is exactly one
    pyautoattack call.  An interrupted run keeps the finished blocks' states until all are done."""
    device = torch.device(device) if device is not None else x.device
    mine = distributed.batch_share(len(y), batch_size, sharded)
    n_blocks = -(-len(y) // batch_size)
    blocks, states = [], []
    for b in (progress(mine, desc="autoattack", total=len(mine)) if progress else mine):
        xb, yb = x[b * batch_size:(b + 1) * batch_size], y[b * batch_size:(b + 1) * batch_size]
        state_path = None
        if state_dir is not None:
            key = autoattack_key(model_id or model_digest(model), xb, yb, eps=eps, norm=norm, version=version,
                                 seed=seed, batch_size=batch_size, attacks=attacks)
            Path(state_dir).mkdir(parents=True, exist_ok=True)
            state_path = Path(state_dir) / f"state-{key}.json"
            states.append(state_path)
        blocks.append(_autoattack_block(model, xb, yb, eps=eps, norm=norm, version=version, seed=seed,
                                        batch_size=batch_size, device=device, state_path=state_path,
                                        attacks=attacks))
    for p in states:
        remove_state(p)
    flags = {k: torch.cat([bl[k] for bl in blocks]) if blocks else torch.zeros(0, dtype=torch.bool)
             for k in ("clean", "robust", "pyautoattack")}
    infos = [bl["info"] for bl in blocks]
    if sharded:
        flags = {k: distributed.gather(v) for k, v in flags.items()}
        infos = [i for part in distributed.gather_objects(infos) for i in part]
    clean, robust = flags["clean"], flags["robust"]
    check_robust_le_clean(clean, robust, "autoattack")
    p, se, n = proportion(robust)
    attacks_run = infos[0]["attacks"] if infos else list(attacks or [])
    details = {
        "threat_model": {"norm": norm, "eps": float(eps), "version": version, "attacks": attacks_run,
                         "seed": seed, "batch_size": int(batch_size)},
        "n": n, "clean_correct": int(clean.sum()), "robust_correct": int(robust.sum()),
        "clean_accuracy": clean.double().mean().item(),
        "pyautoattack_robust_accuracy": flags["pyautoattack"].double().mean().item(),
        "recomputed_disagreements": int((robust != flags["pyautoattack"]).sum()),
        f"max_{norm.lower()}": max((i["dist"] for i in infos), default=0.0),
        "warnings": _summarise([w for i in infos for w in i["warnings"]]), "std": STD_NOTE,
        "implementation": "pyautoattack (reference AutoAttack)",
    }
    if n_blocks > 1:
        details["blocks"] = f"{n_blocks} pyautoattack calls of up to {batch_size} points"
    notes = sorted({m for i in infos for m in i["notes"]})
    if notes:
        details["notes"] = notes
    resumed = [dict(i["resumed"], state_key=i["state_key"]) for i in infos if i["resumed"]]
    if resumed:
        details["resumed"] = resumed
    keys = [i["state_key"] for i in infos if i["state_key"]]
    if keys:
        details["state_key"] = keys[0] if n_blocks == 1 else keys
    return Result(p, se, n, details=details)


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


@register("autoattack", "robust", metrics=("autoattack",),
          settings=("n_eval", "n_aa", "norm", "eps", "aa_version", "seed", "batch_size"), sharded=True)
def autoattack_group(ctx: Context) -> dict[str, Result]:
    s = ctx.settings
    norm, version = s.get("norm", "Linf"), s.get("aa_version", "standard")
    if norm not in ("Linf", "L2", "L1"):
        return {"autoattack": Result.missing(f"AutoAttack supports Linf, L2 and L1, not {norm!r}")}
    if version not in ("standard", "plus", "rand"):
        return {"autoattack": Result.missing(f"aa_version {version!r}: expected standard, plus or rand "
                                             "(custom needs an attack list, which no setting gives)")}
    split = _split(ctx, "n_aa")
    res = evaluate_autoattack(ctx.model, split.x, split.y, eps=float(s["eps"]), norm=norm, version=version,
                              seed=s.get("seed", 0),
                              batch_size=int(s["batch_size"]), device=ctx.device,
                              state_dir=ctx.out / "cache" / "autoattack-state",
                              model_id=s.get("model_sha256"), sharded=ctx.sharded,
                              progress=lambda it, desc, total: ctx.iterate(it, desc, total))
    return {"autoattack": res}

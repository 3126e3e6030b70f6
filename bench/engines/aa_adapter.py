"""The adapter to pyautoattack, the reference AutoAttack (``bench.metrics.robustness`` reports
its numbers).

``run_autoattack`` is one ``pyautoattack.AutoAttack(...).run_standard_evaluation`` call with its
warnings captured (the 'auto-attack' logger and the warnings module), the global RNG left as it
was (pyautoattack reseeds before every attack), float32 throughout and no weight gradients
(``float32_input_grads``), and resumption made to work.  ``run_blocks`` runs it block-wise, one
call per block of ``batch_size`` consecutive points, each with its own state file.

AutoAttack resumes, block by block: pyautoattack records its progress (per-point robust flags,
finished attacks) in ``state_path``.  We key that file by the weights as loaded (the runner's
``weights_sha256``, else a digest of the parameters and buffers) and the model's normalisation, the
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
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.core import cost, progress
from bench.core.energy import evaluates
from bench.runtime import distributed
from bench.runtime.execution import Execution
from bench.runtime.fastpath import without_amp

AA_LOGGER = "auto-attack"


@dataclass
class AutoAttackOutcome:
    x_adv: torch.Tensor  # adversarial examples; x itself where no attack succeeded in this session
    y_adv: torch.Tensor  # pyautoattack's labels of x_adv (-1: fooled in an earlier, interrupted session)
    robust: torch.Tensor  # pyautoattack's per-point flags: correct clean and after every attack
    attacks: list[str]
    warnings: list[str] = field(default_factory=list)
    resumed: dict = field(default_factory=dict)  # empty unless a state from an interrupted run was used
    notes: list[str] = field(default_factory=list)


@evaluates
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
    with _captured_messages() as messages, _rng_kept(device), float32_input_grads(model):
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
    return AutoAttackOutcome(x_adv, y_adv, robust, order, summarise(messages), resumed, notes)


@contextlib.contextmanager
def float32_input_grads(model: torch.nn.Module):
    """AutoAttack as its reference runs it: float32 throughout, gradients w.r.t. the input only.

    - bf16 autocast (``--amp bf16``, ``bench.runtime.fastpath``) off: the fast path autocasts forward
      passes without gradient, and pyautoattack runs Square, its checks, its accuracy passes and
      FAB's predictions under ``no_grad``; the other fast paths stay on.
    - the parameters' ``requires_grad`` off for the duration (restored after): FAB calls
      ``backward()``, which otherwise also computes every weight gradient and accumulates it into
      the model's ``.grad`` (about a quarter of FAB's time on the digits CNN); the input
      gradients, and so the attack, are unchanged."""
    params = [q for q in model.parameters() if q.requires_grad]
    fast = getattr(model, "fast_path", None) is not None
    with without_amp(model) if fast else contextlib.nullcontext():
        for q in params:
            q.requires_grad_(False)
        try:
            yield model
        finally:
            for q in params:
                q.requires_grad_(True)


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


def summarise(messages: list[str]) -> list[str]:
    """Each distinct message once, with its count when repeated."""
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


@dataclass(frozen=True)
class AAConfig:
    """What AutoAttack runs: the threat model, the version (or a custom attack list) and the seed."""

    eps: float
    norm: str = "Linf"
    version: str = "standard"
    seed: int | None = 0
    attacks: list[str] | None = None

    def kwargs(self) -> dict:
        return {"eps": float(self.eps), "norm": self.norm, "version": self.version, "seed": self.seed,
                "attacks": self.attacks}


def normalisation(model: torch.nn.Module) -> dict | None:
    """The model's input normalisation (an EnergyModel's per-channel mean and std), None without one."""
    mean, std = getattr(model, "mean", None), getattr(model, "std", None)
    if not isinstance(mean, torch.Tensor) or not isinstance(std, torch.Tensor):
        return None
    return {"mean": mean.detach().flatten().cpu().tolist(), "std": std.detach().flatten().cpu().tolist()}


def autoattack_key(model_id: str, x: torch.Tensor, y: torch.Tensor, aa: AAConfig, batch_size: int,
                   normalised: dict | None = None) -> str:
    """The state file's key: model (the weights as loaded) and its normalisation, threat model,
    seed, points and batch size."""
    import pyautoattack

    keyed = {"model": model_id, "normalisation": normalised, "norm": aa.norm, "eps": float(aa.eps), "version": aa.version, "attacks": aa.attacks,
             "seed": aa.seed, "batch_size": int(batch_size), "n": len(y), "points": tensor_digest(x, y),
             "pyautoattack": getattr(pyautoattack, "__version__", None)}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:24]


def run_blocks(attack: Callable, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, aa: AAConfig,
               run: Execution = Execution(), state_dir: str | Path | None = None, model_id: str | None = None) -> list:
    """``attack(xb, yb, state_path)`` on each of this process's blocks of ``run.batch_size``
    consecutive points (all blocks, or when sharded this torchrun rank's share), in order; returns its
    results.  ``state_path``: ``state_dir/state-<autoattack_key>.json`` (the model's ``model_id``,
    else a digest of its weights), None without ``state_dir``.  Every block's state files are kept
    until all blocks are done, then removed: an interrupted run repeats no finished block."""
    batch_size = run.batch_size
    mine = run.my_batches(len(y))
    out, states = [], []
    say = progress.say if distributed.is_main() else (lambda m: None)
    points = sum(len(y[b * batch_size:(b + 1) * batch_size]) for b in mine)
    with progress.Heartbeat("autoattack", points, say=say, block=batch_size) as beat:  # a line every N s, a bar or not
        for b in run.iterate(mine, "autoattack", len(mine)):
            xb, yb = x[b * batch_size:(b + 1) * batch_size], y[b * batch_size:(b + 1) * batch_size]
            state_path = None
            if state_dir is not None:
                key = autoattack_key(model_id or model_digest(model), xb, yb, aa, batch_size, normalisation(model))
                Path(state_dir).mkdir(parents=True, exist_ok=True)
                state_path = Path(state_dir) / f"state-{key}.json"
                states.append(state_path)
                if _existing_levels(state_path):
                    say(f"[autoattack] resuming points {b * batch_size}-{b * batch_size + len(yb) - 1} "
                        f"from an interrupted run ({state_path.name}): the attacks it finished are not rerun")
            out.append(attack(xb, yb, state_path))
            beat.advance(len(yb))
    for p in states:
        remove_state(p)
    return out


def autoattack_work(n: int, accuracy: float | None, batch: int, num_classes: int, version: str | None = "standard",
                    norm: str | None = "Linf") -> cost.Work | None:
    """pyautoattack's standard version (L-inf, L2) on n points, as work (``bench.core.cost``):
    APGD-CE (100 steps) on all, then APGD-T and FAB-T (100 steps per target class, up to 9) and
    Square (5,000 forward queries) on the points still robust, bounded above by the share
    ``accuracy`` classified correctly; None (unknown) for another version or norm."""
    if (version or "standard") != "standard" or (norm or "Linf") not in ("Linf", "L2"):
        return None
    acc = 1.0 if accuracy is None else accuracy
    robust, targets = n * acc, min(9, max(1, num_classes - 1))
    return (cost.passes("forward", n, batch, 2) + cost.passes("backward", robust, batch, 100)
            + cost.passes("backward", robust, batch, 2 * 100 * targets) + cost.passes("forward", robust, batch, 5000)
            + cost.Work(note="AutoAttack upper bound: " + (f"the {acc:.0%} of points classified correctly all survive"
                                                           if accuracy is not None else "every point survives")))

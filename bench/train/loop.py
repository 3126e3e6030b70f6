"""The shared training loop: every method runs through ``train``.

Determinism and resume: the initial weights come from ``seed``; batches are shuffled by a CPU
generator and every attack, noise draw and SGLD chain draws from one generator on the device.
After every epoch the checkpoint (``OUT``, safetensors with metadata) and a resume file
(``OUT.resume.pt``: weights, optimiser, both generator states, replay buffer, history; loaded with
``weights_only=True``) are written atomically, so ``--resume`` after a kill continues with the
same random streams and reaches the same weights as an uninterrupted run.  The resume file is
removed once training finishes, after the final evaluation: a kill during that evaluation leaves
it, and ``--resume`` then runs the evaluation alone.

Under torchrun (``torchrun --nproc_per_node=N -m bench train ...``) the same loop trains
data-parallel: each rank takes its share of every global batch and the gradients are summed over
ranks (``bench.train.parallel``: batches, random streams, the shared replay buffer, batch norm).
Only rank 0 evaluates, writes files and prints; a resume must use the same number of processes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.core import progress
from bench.core.energy import EnergyModel
from bench.core.errors import BenchError
from bench.core.settings import SPECS
from bench.engines.attacks import pgd
from bench.engines.sampling import ReplayBuffer
from bench.inputs import checkpoints, nets
from bench.inputs.data import load as load_data
from bench.runtime import distributed
from bench.train import parallel
from bench.train import resume as resume_state
from bench.train.augment import augment
from bench.train.methods import METHODS, TrainState
from bench.train.monitor import energy_changes
from bench.train.recipe import Recipe, load_recipe
from bench.train.resume import resume_path


def make_optimizer_factory(r: Recipe):
    def make(params):
        if r.optimizer == "adam":
            return torch.optim.Adam(params, lr=r.lr, betas=tuple(r.betas), weight_decay=r.weight_decay)
        return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)

    return make


def learning_rate(r: Recipe, epoch: int, iteration: int) -> float:
    """Multi-step decay by ``gamma`` at each milestone epoch, after a linear warm-up of
    ``warmup_iters`` iterations (counted over the whole run)."""
    lr = r.lr * r.gamma ** sum(epoch >= m for m in r.milestones)
    if r.warmup_iters and iteration < r.warmup_iters:
        lr *= (iteration + 1) / r.warmup_iters
    return lr


@torch.no_grad()
def accuracy(model: EnergyModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    dev = model.mean.device
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += int((model.logits(x[i:i + batch_size].to(dev)).argmax(1).cpu() == y[i:i + batch_size]).sum())
    return correct / max(1, len(y))


def robust_accuracy(model: EnergyModel, x, y, eps: float, seed: int, batch_size: int = 500) -> float:
    """PGD-20 accuracy (cross-entropy, random start, step eps/4: ``bench run``'s attack), with one
    random stream for the whole set; ``bench run`` draws its starts per batch, so the two numbers
    agree within sampling error, not digit for digit."""
    model.eval()
    dev = model.mean.device
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    correct = 0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        adv = pgd(model, xb, yb, eps, steps=20, loss="ce", random_start=True, generator=gen)
        with torch.no_grad():
            correct += int((model.logits(adv).argmax(1) == yb).sum())
    return correct / max(1, len(y))


def _check_out(out: Path) -> None:
    if out.suffix != ".safetensors":
        raise BenchError(f"--out must end in .safetensors, got {out}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise BenchError(f"output directory does not exist: {parent}")
    probe = parent / f".{out.name}.probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise BenchError(f"cannot write to {parent}: {e.strerror}") from None


def train(recipe: str | Path | Recipe, out: str | Path, epochs: int | None = None, device: str = "cpu",
          seed: int | None = None, resume: bool = False, data_root=None, download: bool = False,
          show_progress: bool = True, on_epoch=None) -> dict:
    """Train ``recipe`` into the checkpoint ``out``; returns a summary (accuracies, seconds, sha256).
    ``on_epoch(entry)`` is called after each epoch's checkpoint and resume state are on disk.
    Under torchrun every rank trains its share, calls ``on_epoch`` and returns rank 0's summary;
    the process group is left at the end, and on an error without waiting for the other ranks."""
    dev = distributed.init(torch.device(device))
    try:
        summary = _train(recipe, out, epochs, dev, seed, resume, data_root, download, show_progress, on_epoch)
    except BaseException:
        distributed.abandon()
        raise
    distributed.close()
    return summary


@dataclass
class _Run:
    """What one training run holds between epochs (built by ``_build``, restored by ``_restore``)."""

    r: Recipe
    data: object
    method: object
    model: EnergyModel
    opt: torch.optim.Optimizer
    make_opt: object
    g_data: torch.Generator
    g_train: torch.Generator
    shared: torch.Generator | None
    buffer: ReplayBuffer | None
    state: TrainState
    ddp: bool
    start: int = 0
    history: list = field(default_factory=list)
    seconds: float = 0.0


def _recipe(recipe, epochs, seed) -> Recipe:
    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if epochs is not None:
        if epochs <= 0:
            raise BenchError("--epochs must be a positive integer")
        r.epochs = int(epochs)
    if seed is not None:
        r.seed = int(seed)
    why = SPECS["seed"].check(r.seed)  # the range bench run takes: torch.manual_seed overflows beyond it
    if why:
        raise BenchError(why)
    return r


def _build(r: Recipe, data, dev, ddp: bool, rank: int) -> _Run:
    """The network, optimiser, generators and replay buffer of a fresh run, from the recipe's seed."""
    method = METHODS[r.method]
    torch.manual_seed(r.seed)  # initial weights
    net = nets.build(r.arch, data.num_classes, data.input_shape[0], **r.arch_kwargs)
    if ddp:
        net = parallel.sync_batchnorm(net, dev)
        torch.manual_seed(parallel.rank_seed(r.seed, rank))  # dropout masks (the global stream) per rank
    model = EnergyModel(net, r.mean, r.std, data.input_shape, data.num_classes).to(dev)
    make_opt = make_optimizer_factory(r)
    opt = make_opt(model.parameters())
    g_data = torch.Generator().manual_seed(r.seed)
    g_train = torch.Generator(device=dev).manual_seed(parallel.rank_seed(r.seed, rank))
    shared = torch.Generator(device=dev).manual_seed(parallel.shared_seed(r.seed)) if ddp else None
    buffer = (ReplayBuffer(r.buffer_size, data.input_shape, r.reinit, dev, shared or g_train)
              if method.sgld else None)
    state = TrainState(model, r, g_train, buffer, shared=shared)
    return _Run(r, data, method, model, opt, make_opt, g_data, g_train, shared, buffer, state, ddp)


def _restore(run: _Run, rpath: Path, dev) -> None:
    """Continue ``run`` from its resume file: weights, optimiser, generators, buffer, history."""
    r = run.r
    s = resume_state.load(rpath, r)
    run.model.net.load_state_dict(s["model"])
    run.opt.load_state_dict(s["optimizer"])
    run.g_data.set_state(s["g_data"])
    parallel.restore_generators(s, run.g_train, run.shared)
    if run.buffer is not None:
        run.buffer.data = s["buffer"].to(dev)
    run.start, run.history, run.seconds = int(s["epoch"]), json.loads(s["history"]), float(s["seconds"])
    if run.start > r.epochs:
        raise BenchError(f"--resume: {rpath} already holds {run.start} epochs (recipe asks for {r.epochs}); "
                         "give more --epochs")
    # start == r.epochs: killed in the final evaluation; no epoch left, the evaluation runs now


def _epoch(run: _Run, epoch: int, xtr, ytr, dev, out: Path, show_progress: bool) -> tuple[float, int, int]:
    """One epoch's optimiser steps; returns the summed loss, correct predictions and points seen."""
    r, model, opt = run.r, run.model, run.opt
    n = len(ytr)
    per_epoch = math.ceil(n / r.batch_size)
    perm = torch.randperm(n, generator=run.g_data)
    loss_sum, correct, seen = 0.0, 0, 0
    batches = range(per_epoch)
    it = progress.bar(batches, desc=f"{r.name} epoch {epoch + 1}/{r.epochs}") if show_progress else batches
    for b in it:
        idx = perm[b * r.batch_size:(b + 1) * r.batch_size]
        mine = parallel.share(idx)  # the whole batch in one process
        x, y = xtr[mine].to(dev), ytr[mine].to(dev)
        x = augment(x, r.augment_shift, r.augment_hflip, run.g_train)
        for g in opt.param_groups:
            g["lr"] = learning_rate(r, epoch, epoch * per_epoch + b)
        x_in = run.method.inputs(run.state, x, y)
        model.train()
        loss, f = run.method.loss(run.state, x_in, x, y)
        opt.zero_grad(set_to_none=True)
        value = parallel.backward(model, loss, len(y), len(idx)) if run.ddp else _backward(loss)
        if not math.isfinite(value):
            raise BenchError(f"training diverged: loss {value} at epoch {epoch + 1}, batch {b + 1} "
                             f"(lower the learning rate in the recipe; the last good epoch is in {out})")
        opt.step()
        loss_sum += float(loss.detach()) * len(y) if len(y) else 0.0  # an empty share's mean is NaN
        correct += int((f.detach().argmax(1) == y).sum())
        seen += len(y)
    return loss_sum, correct, seen


def _train(recipe, out, epochs, dev, seed, resume, data_root, download, show_progress, on_epoch) -> dict:
    r = _recipe(recipe, epochs, seed)
    out = Path(out)
    distributed.on_main(lambda: _check_out(out))
    ddp, main, rank = distributed.active(), distributed.is_main(), distributed.rank()
    show_progress = show_progress and main
    if download and ddp:  # one rank downloads, the others then read its files
        distributed.on_main(lambda: _download(r, data_root))
    data = load_data(r.dataset, data_root, download and not ddp)
    run = _build(r, data, dev, ddp, rank)
    model, opt, method, buffer, state = run.model, run.opt, run.method, run.buffer, run.state
    rpath = resume_path(out)
    if resume:
        _restore(run, rpath, dev)

    train_split = data.train.subset(r.train_n)
    xtr, ytr = train_split.x, train_split.y
    xmon, ymon = xtr[: r.monitor_size].to(dev), ytr[: r.monitor_size].to(dev)
    for epoch in range(run.start, r.epochs):
        t0 = time.perf_counter()
        loss_sum, correct, seen = _epoch(run, epoch, xtr, ytr, dev, out, show_progress)
        loss_sum, correct, seen, diverged = parallel.sum_over_ranks([loss_sum, correct, seen, state.diverged])
        if ddp:
            parallel.average_batchnorm_stats(model)
            parallel.check_in_sync(model, epoch + 1)
        entry = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "loss": loss_sum / seen,
                 "train_accuracy": correct / seen,
                 "test_accuracy": accuracy(model, data.test.x, data.test.y) if main else None}
        if method.sgld:
            entry["sgld_diverged"] = int(diverged)
        if method.adversarial:  # on every rank: its optimiser step is a collective under SyncBatchNorm
            entry["energy_changes"] = energy_changes(state, method, run.make_opt, opt.state_dict(), xmon, ymon,
                                                     seed=(r.seed * 1000 + epoch) % 2**64)
        run.seconds += time.perf_counter() - t0
        entry["seconds"] = run.seconds
        entry = distributed.broadcast(entry)  # rank 0's numbers everywhere
        run.history.append(entry)
        extra = parallel.generator_states(run.g_train, run.shared) if ddp else {}  # gathered from every rank
        if main:
            meta = _meta(r, data, epoch + 1, run.history, run.seconds)
            checkpoints.save(out, model, meta, buffer.data if buffer is not None else None)
            resume_state.save(rpath, model, opt, run.g_data, run.g_train, buffer, epoch + 1, run.history, run.seconds,
                         r, extra)
            if show_progress:
                progress.say(_line(r, entry))
        distributed.barrier()  # the files are on disk before any rank's on_epoch
        if on_epoch is not None:
            on_epoch(entry)

    summary = _finish(r, model, data, run.history, run.seconds, buffer, out, rpath) if main else None
    return distributed.broadcast(summary)


def _download(r: Recipe, data_root) -> None:
    load_data(r.dataset, data_root, True)


def _backward(loss: torch.Tensor) -> float:
    loss.backward()
    return float(loss.detach())


def _finish(r: Recipe, model, data, history, seconds, buffer, out: Path, rpath: Path) -> dict:
    """The final evaluation (recorded in the checkpoint), the last save and the summary (rank 0)."""
    n_final = r.final_eval_n or len(data.test)
    xt, yt = data.test.x[:n_final], data.test.y[:n_final]
    final = {"test_accuracy": accuracy(model, xt, yt), "n": len(yt)}
    final["test_pgd20"] = robust_accuracy(model, xt, yt, r.eps, seed=r.seed)
    final["pgd20_eps"] = r.eps
    meta = _meta(r, data, r.epochs, history, seconds, final)
    sha = checkpoints.save(out, model, meta, buffer.data if buffer is not None else None)
    rpath.unlink(missing_ok=True)
    summary = {"recipe": r.name, "method": r.method, "epochs": r.epochs, "seed": r.seed, "out": str(out),
               "sha256": sha, "training_seconds": round(seconds, 2), "test_accuracy": final["test_accuracy"],
               "test_pgd20": final["test_pgd20"]}
    if distributed.world() > 1:
        summary["processes"] = distributed.world()
    return summary


def _meta(r: Recipe, data, epochs_done: int, history: list, seconds: float, final: dict | None = None) -> dict:
    meta = {"arch": r.arch, "arch_kwargs": r.arch_kwargs, "num_classes": data.num_classes,
            "dataset": data.name, "input_shape": list(data.input_shape), "method": r.method,
            "recipe": r.name, "recipe_config": r.to_dict(), "epochs": epochs_done, "seed": r.seed,
            "training_seconds": round(seconds, 3), "history": history, "final_metrics": final or {}}
    if distributed.world() > 1:  # absent in one process: those checkpoints stay as they were
        meta["processes"] = distributed.world()
    if METHODS[r.method].adversarial:
        meta["threat_model"] = {"norm": "Linf", "eps": r.eps, "attack": "energy" if r.method != "at" else "ce",
                                "steps": r.attack_steps, "step_size": r.step_size}
    return meta


def _line(r: Recipe, e: dict) -> str:
    s = (f"{r.name} epoch {e['epoch']}/{r.epochs}: loss {e['loss']:.4f} train acc {e['train_accuracy']:.4f} "
         f"test acc {e['test_accuracy']:.4f}")
    ec = e.get("energy_changes")
    if ec:
        s += (f" | dxE(x,y) {ec['dx_joint']['mean']:+.3f} dthE(x,y) {ec['dtheta_joint']['mean']:+.3f} "
              f"dthE(x) {ec['dtheta_marginal']['mean']:+.3f}")
    return s + f" ({e['seconds']:.1f} s)"

"""The resume state of a training run (``OUT.resume.pt``, beside the checkpoint ``OUT``): weights,
optimiser, both generator states, replay buffer, history and the recipe, written atomically after
every epoch and loaded with ``weights_only=True``; a state of another recipe or seed, or of another
number of torchrun processes, is refused (``bench.train.loop``'s module docstring)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from bench.core import fileio
from bench.core.errors import BenchError
from bench.train import parallel
from bench.train.recipe import Recipe

RESUME_FORMAT = 1


def resume_path(out: Path) -> Path:
    return out.with_name(out.name + ".resume.pt")


def save(path: Path, model, opt, g_data, g_train, buffer, epoch, history, seconds, r: Recipe,
                 extra: dict) -> None:
    """``extra``: what a torchrun run adds (``parallel.generator_states``); empty in one process."""
    state = {"format": RESUME_FORMAT, "model": model.net.state_dict(), "optimizer": opt.state_dict(),
             "g_data": g_data.get_state(), "g_train": g_train.get_state(),
             "buffer": buffer.data if buffer is not None else None, "epoch": epoch,
             "history": json.dumps(history), "seconds": seconds, "recipe": json.dumps(_identity(r)), **extra}
    bio = io.BytesIO()
    torch.save(state, bio)
    fileio.atomic_write_bytes(path, bio.getvalue())


def _identity(r: Recipe) -> dict:
    """The recipe fields a resumed run must share with the run it continues (not ``epochs``)."""
    d = r.to_dict()
    d.pop("epochs")
    return d


def load(path: Path, r: Recipe) -> dict:
    if not path.is_file():
        raise BenchError(f"--resume: no resume state at {path} (nothing to continue; train without --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BenchError(f"{path}: unreadable resume state ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise BenchError(f"{path}: not a bench resume state")
    if json.loads(state["recipe"]) != _identity(r):
        raise BenchError(f"{path}: was written by another recipe or seed; refusing to mix two runs")
    parallel.check_processes(state, path)
    return state

"""How a computation runs, as one small object instead of four parameters: the device, the batch
size, the progress display and, under torchrun, whether this rank works on its share only (its
per-point results then gathered).  A metric group's ``ctx.execution`` is the run's; an engine
called on its own takes the default (the inputs' device, batches of 250, no progress, one process)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from bench.core.errors import BenchError
from bench.runtime import distributed


def resolve_device(device: str) -> torch.device:
    """``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) as a torch device, for ``bench run``,
    ``bench train``, ``bench samples`` and ``bench reference``: ``auto`` is CUDA where there is one;
    CUDA asked for without one, or another name, is a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda asked for, but no CUDA device is available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise BenchError(f"unknown device {device!r}; expected auto, cpu or cuda")
    return torch.device(device)


@dataclass(frozen=True)
class Execution:
    device: torch.device | str | None = None  # None: the inputs' device
    batch_size: int = 250
    progress: Callable | None = None  # progress(iterable, desc=..., total=...) -> iterable
    sharded: bool = False  # this torchrun rank computes its contiguous share of the batches

    def on(self, x: torch.Tensor) -> torch.device:
        """The device to compute on: the declared one, else the input's."""
        return torch.device(self.device) if self.device is not None else x.device

    def iterate(self, iterable: Iterable, desc: str, total: int | None = None) -> Iterable:
        return self.progress(iterable, desc=desc, total=total) if self.progress else iterable

    def my_batches(self, n: int) -> range:
        """Indices of the batches of n points this process computes (all, or its share when sharded)."""
        return distributed.batch_share(n, self.batch_size, self.sharded)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Per-point results of this rank's batches -> those of all batches, in order."""
        return distributed.gather(t) if self.sharded else t

    def collect(self, parts: list[torch.Tensor], empty: torch.Tensor | torch.dtype = torch.float64) -> torch.Tensor:
        """The per-point results of this rank's batches (``parts``, one tensor per batch)
        concatenated, then gathered over ranks: those of all points, in order.  A rank with no
        batch contributes ``empty`` (a dtype, or a tensor of shape (0, ...) for per-point rows)."""
        if not parts:
            parts = [empty if isinstance(empty, torch.Tensor) else torch.zeros(0, dtype=empty)]
        return self.gather(torch.cat(parts))

    def gather_max(self, value: float) -> float:
        """The largest of one number per rank (e.g. the largest perturbation any rank measured)."""
        return float(self.gather(torch.tensor([value], dtype=torch.float64)).max())

    def gather_objects(self, items: list) -> list:
        """Per-batch Python objects of this rank -> those of all ranks, in batch order."""
        return [i for part in distributed.gather_objects(items) for i in part] if self.sharded else items

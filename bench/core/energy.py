"""EnergyModel: any classifier read as an energy-based model (paper Eq. 12).

Inputs always live in [0, 1]; the model owns its normalisation, so attacks, samplers and
metrics never need to know it.  With logits f(x):

    E(x, y) = -f(x)[y]                 (joint energy)
    E(x)    = -logsumexp_y f(x)[y]     (marginal energy)
    CE(x,y) = E(x, y) - E(x)           (Eq. 13)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from bench.core.compat import StrEnum


class Energy(StrEnum):
    """The energies a classifier's logits f(x) define (docs/CONVENTIONS.md)."""

    JOINT = "joint"  # E(x, y) = -f(x)[y]
    MARGINAL = "marginal"  # E(x) = -logsumexp_y f(x)[y]
    CE = "ce"  # E(x, y) - E(x) = cross-entropy


class EnergyModel(nn.Module):
    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float] | float = 0.0,
        std: Sequence[float] | float = 1.0,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.net = net
        channels = input_shape[0] if input_shape else None
        self.register_buffer("mean", _per_channel(mean, channels), persistent=False)
        self.register_buffer("std", _per_channel(std, channels), persistent=False)
        self.input_shape = tuple(input_shape) if input_shape else None
        self.num_classes = num_classes
        self._fast = None  # bench.runtime.fastpath.Forward, or None: the plain network

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits f(x) of images x in [0, 1], shape (N, C, H, W) -> (N, num_classes)."""
        z = (x - self.mean) / self.std
        return self.net(z) if self._fast is None else self._fast(z)

    forward = logits

    @property
    def fast_path(self):
        return self._fast

    def set_fast_path(self, forward) -> None:
        """Route ``logits`` through ``forward`` (see ``bench.runtime.fastpath``), or the plain network (None)."""
        self._fast = forward

    @contextmanager
    def plain(self):
        """The plain float32 eager network inside the block, whatever fast path is set (for
        computations a fast path cannot take, e.g. the double backward of Fisher scores)."""
        fast, self._fast = self._fast, None
        try:
            yield self
        finally:
            self._fast = fast

    def energy_joint(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E(x, y) = -f(x)[y], one value per image."""
        return -self.logits(x).gather(1, y.view(-1, 1)).squeeze(1)

    def energy_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """E(x) = -logsumexp_y f(x)[y], one value per image."""
        return -torch.logsumexp(self.logits(x), dim=1)

    def energy(self, x: torch.Tensor, y: torch.Tensor | None = None, kind: str = "joint") -> torch.Tensor:
        """Energy by name (``Energy``): ``joint`` E(x,y), ``marginal`` E(x), ``ce`` E(x,y) - E(x) (Eq. 13, 16)."""
        if kind not in tuple(Energy):
            raise ValueError(f"unknown energy {kind!r}; expected one of {', '.join(Energy)}")
        if kind == Energy.MARGINAL:
            return self.energy_marginal(x)
        if y is None:
            raise ValueError(f"energy {kind!r} needs labels y")
        if kind == Energy.JOINT:
            return self.energy_joint(x, y)
        f = self.logits(x)  # Energy.CE
        return torch.logsumexp(f, dim=1) - f.gather(1, y.view(-1, 1)).squeeze(1)

    def grad_energy(self, x: torch.Tensor, y: torch.Tensor | None = None, kind: str = "joint",
                    create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(energies, d energy / dx) for a batch; energies of different images are independent,
        so the gradient of their sum is the per-image input gradient."""
        with torch.enable_grad():
            x = x if x.requires_grad else x.detach().requires_grad_(True)
            e = self.energy(x, y, kind)
            (g,) = torch.autograd.grad(e.sum(), x, create_graph=create_graph)
        return e, g


@contextmanager
def eval_mode(model: nn.Module):
    """``model`` (every submodule) in eval mode inside the block, each submodule's own mode restored
    after: a metric, attack or sampler never updates batch-norm statistics or draws dropout masks,
    whatever mode its caller left the model in."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def evaluates(fn):
    """Decorator: run ``fn(model_or_ctx, ...)`` under ``eval_mode`` of its first argument (an
    nn.Module, or a metric Context whose ``model`` it is)."""

    @functools.wraps(fn)
    def wrapper(first, *args, **kwargs):
        with eval_mode(first if isinstance(first, nn.Module) else first.model):
            return fn(first, *args, **kwargs)

    return wrapper


def _per_channel(value: Sequence[float] | float, channels: int | None) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 1 and channels:
        t = t.expand(channels).clone()
    return t.view(1, -1, 1, 1)

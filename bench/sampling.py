"""SGLD / Langevin dynamics on an EnergyModel (paper Eq. 10, 16, 17; Alg. 1).

    x_{t+1} = x_t - (step_size / 2) * grad_x E(x_t) + noise * N(0, I)

The paper's form takes noise = sqrt(step_size); JEM's practice sets the two apart (JEM's
``sgld_lr = 1, sgld_std = 0.01`` is ``step_size = 2, noise = 0.01`` here).  The energy is
``joint`` E(x,y) (Eq. 17, default for generation), ``ce`` E(x,y) - E(x) (Eq. 16) or ``marginal``
E(x) (the JEM/JEAT training term).  A chain that turns NaN or inf is frozen at its last finite
state and reported in the returned mask, never silently written as an image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.energy import EnergyModel


@dataclass
class SGLDConfig:
    steps: int = 20
    step_size: float = 2.0
    noise: float | None = 0.01  # None: sqrt(step_size), the paper's Eq. 10
    energy: str = "joint"
    clamp: bool = True

    @property
    def noise_std(self) -> float:
        return math.sqrt(self.step_size) if self.noise is None else self.noise


def sgld(model: EnergyModel, x0: torch.Tensor, y: torch.Tensor | None, cfg: SGLDConfig,
         generator: torch.Generator | None = None, callback=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``cfg.steps`` Langevin steps from x0; returns (x, finite) where ``finite`` is a bool mask
    of the chains that stayed finite throughout (diverged chains keep their last finite state)."""
    x = x0.detach().clone()
    finite = torch.isfinite(x.flatten(1)).all(1)
    sigma = cfg.noise_std
    for t in range(cfg.steps):
        e, g = model.grad_energy(x, y, cfg.energy)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        nxt = x - 0.5 * cfg.step_size * g + sigma * noise
        if cfg.clamp:
            nxt = nxt.clamp(0, 1)
        ok = torch.isfinite(nxt.flatten(1)).all(1) & torch.isfinite(e) & finite
        finite = ok
        x = torch.where(ok.view(-1, *[1] * (x.dim() - 1)), nxt, x).detach()
        if callback is not None:
            callback(t, x, e, g)
    return x, finite


class ReplayBuffer:
    """JEM's replay buffer: chains start from stored samples, or with probability ``reinit`` from
    fresh noise U(0, 1); finished samples go back where they came from."""

    def __init__(self, size: int, shape: tuple, reinit: float = 0.05, device="cpu",
                 generator: torch.Generator | None = None, data: torch.Tensor | None = None):
        self.reinit = reinit
        self.shape = tuple(shape)
        self.data = data.to(device) if data is not None else torch.rand((size, *shape), generator=generator, device=device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.data.device
        idx = torch.randint(0, len(self.data), (n,), generator=generator, device=dev)
        fresh = torch.rand((n, *self.shape), generator=generator, device=dev)
        re = torch.rand(n, generator=generator, device=dev) < self.reinit
        x = torch.where(re.view(-1, *[1] * len(self.shape)), fresh, self.data[idx])
        return x, idx

    def push(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        self.data[idx] = x.detach().to(self.data.device)

"""The six training methods, each a small pair of functions on an EnergyModel:

``inputs(state, x, y)`` makes the points the classifier is trained on (clean, noisy or
adversarial) and ``loss(state, x_in, x, y)`` returns (loss, logits of x_in).

- ``normal``: cross-entropy E(x,y) - E(x) on clean data.
- ``noise``: cross-entropy on x + N(0, sigma^2), kept in [0, 1] (Sec. 3.2).
- ``at``: PGD adversarial training on cross-entropy (Madry; Eq. 1, 3, 14).
- ``prejeat``: Alg. 2: the energy attack of Eq. 18 (uniform start, then steps on E(x,y)),
  cross-entropy on x_adv.
- ``jeat``: Alg. 1: the energy attack, SGLD on E(x) from a replay buffer, and the loss
  CE(x_adv) + E(x_adv) - E(x~_K).
- ``jem``: JEM: CE(x) + E(x) - E(x~_K) with the same SGLD and buffer.

All randomness comes from ``state.generator`` (on the model's device), so a resumed run that
restores it continues exactly.  Under torchrun (``state.shared`` set) ``state.generator`` is this
rank's own stream and the replay buffer's draws come from ``state.shared``; see
``bench.train.parallel``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.core.energy import EnergyModel
from bench.engines.attacks import pgd
from bench.engines.sampling import ReplayBuffer, SGLDConfig, sgld
from bench.train import parallel
from bench.train.recipe import Recipe


@dataclass
class TrainState:
    model: EnergyModel
    recipe: Recipe
    generator: torch.Generator
    buffer: ReplayBuffer | None = None
    diverged: int = 0  # SGLD chains that turned non-finite (dropped from the loss, not buffered)
    shared: torch.Generator | None = None  # torchrun: the buffer's generator, the same on every rank

    @property
    def sgld_config(self) -> SGLDConfig:
        r = self.recipe
        return SGLDConfig(steps=r.sgld_steps, step_size=r.sgld_step_size, noise=r.sgld_noise,
                          energy="marginal", clamp=True)


@dataclass(frozen=True)
class Method:
    inputs: Callable[[TrainState, torch.Tensor, torch.Tensor], torch.Tensor]
    loss: Callable[[TrainState, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    adversarial: bool = False
    sgld: bool = False


def clean(state: TrainState, x, y):
    return x


def gaussian_noise(state: TrainState, x, y):
    n = torch.randn(x.shape, generator=state.generator, device=x.device, dtype=x.dtype)
    return (x + state.recipe.noise_sigma * n).clamp(0, 1)


def _attack(state: TrainState, x, y, loss: str):
    r = state.recipe
    was_training = state.model.training
    state.model.eval()  # batch-norm statistics are not updated by the attack's forward passes
    try:
        return pgd(state.model, x, y, r.eps, steps=r.attack_steps, step_size=r.step_size, loss=loss,
                   random_start=True, generator=state.generator)
    finally:
        state.model.train(was_training)


def ce_attack(state: TrainState, x, y):
    return _attack(state, x, y, "ce")


def energy_attack(state: TrainState, x, y):
    return _attack(state, x, y, "energy")


def cross_entropy(state: TrainState, x_in, x, y):
    f = state.model.logits(x_in)
    return F.cross_entropy(f, y), f


def sgld_negatives(state: TrainState, n: int) -> torch.Tensor:
    """x~_K: K SGLD steps on E(x) from the replay buffer (reinit prob rho); finished chains go back
    into the buffer.  Chains that turned non-finite are counted (on this rank) and dropped.
    Under torchrun the starts are this rank's part of the global batch's and every rank's chains
    go back, so the buffer stays the same on every rank."""
    if state.shared is None:
        x0, idx = state.buffer.sample(n, state.generator)
    else:
        x0, idx = parallel.buffer_starts(state.buffer, n, state.shared)
    was_training = state.model.training
    state.model.eval()
    try:
        xk, ok = sgld(state.model, x0, None, state.sgld_config, state.generator)
    finally:
        state.model.train(was_training)
    state.diverged += int((~ok).sum())
    if state.shared is None:
        state.buffer.push(xk[ok], idx[ok])
    else:
        parallel.buffer_push(state.buffer, xk[ok], idx[ok])
    return xk[ok]


def ce_plus_energy(state: TrainState, x_in, x, y):
    """CE(x_in) + w * (mean E(x_in) - mean E(x~_K)): Alg. 1 (x_in = x_adv) and JEM (x_in = x)."""
    neg = sgld_negatives(state, len(x))
    f = state.model.logits(torch.cat([x_in, neg]))
    f_in, f_neg = f[: len(x_in)], f[len(x_in):]
    e_in = -torch.logsumexp(f_in, 1)
    e_neg = -torch.logsumexp(f_neg, 1)
    gen = e_in.mean() - e_neg.mean() if len(neg) else e_in.sum() * 0
    return F.cross_entropy(f_in, y) + state.recipe.energy_weight * gen, f_in


METHODS: dict[str, Method] = {
    "normal": Method(clean, cross_entropy),
    "noise": Method(gaussian_noise, cross_entropy),
    "at": Method(ce_attack, cross_entropy, adversarial=True),
    "prejeat": Method(energy_attack, cross_entropy, adversarial=True),
    "jeat": Method(energy_attack, ce_plus_energy, adversarial=True, sgld=True),
    "jem": Method(clean, ce_plus_energy, sgld=True),
}

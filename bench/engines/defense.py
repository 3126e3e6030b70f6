"""Defended inference: test-time Langevin refinement of the input before it is classified
(``--defense sgld-refine``), as JEM++ (``--n_steps_refine``, ``--n_dup_chains``) and the long-run
EBM defence of Hill et al. (2021) practise.

``RefinedModel`` wraps an ``EnergyModel`` and presents the same interface (``logits``, the energies,
``grad_energy``), so every metric group that declares the defence settings computes through it
unchanged: the pipeline makes the context of exactly those groups with it
(``bench.pipeline.compute.group_context``: ``defended``).  Its logits of x are

    f_def(x) = (1 / C) sum_c f(x_K^c),   x_K^c = K SGLD steps on E(x) from x_0^c = x

with C chains (``refine_chains``), K steps (``refine_steps``) of the chain of ``bench.engines.sampling``
(``langevin_step``, pixel convention of docs/CONVENTIONS.md, "SGLD": step ``refine_step_size``,
noise ``refine_noise``) on the marginal energy E(x) = -logsumexp f(x), clamped to [0, 1].

Randomness: the chain noise is drawn from the wrapper's own generator (seeded per group by the
pipeline, so a group's numbers are reproducible and independent of other groups), in the order the
model is called; each call draws fresh noise, so two calls on the same x differ: the defence is
random, as deployed.

Gradients (``backward``):

- ``full`` (default): autograd through all K steps, including the second-order term of each
  step's gradient, each step under ``torch.utils.checkpoint`` (memory flat in K: only the K
  states are kept, each step is recomputed in the backward pass); the noise is drawn before the
  step so recomputation replays it exactly;
- ``bpda``: the refinement treated as the identity in the backward pass (Athalye et al. 2018):
  f_def's gradient at x is the gradient of f at the refined x_K.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from bench.core.compat import StrEnum
from bench.core.energy import EnergyModel
from bench.core.settings import DEFENSE_SETTINGS as SETTINGS  # noqa: F401  (the defended model's settings)
from bench.core.settings import DefenseKind as Defense
from bench.engines.sampling import BlockNoise, SGLDConfig, langevin_step, sgld


class Backward(StrEnum):
    FULL = "full"
    BPDA = "bpda"


@dataclass(frozen=True)
class RefineConfig:
    steps: int = 10
    chains: int = 1
    step_size: float = 0.5
    noise: float = 0.005

    @classmethod
    def from_settings(cls, s) -> RefineConfig:
        return cls(int(s["refine_steps"]), int(s["refine_chains"]), float(s["refine_step_size"]),
                   float(s["refine_noise"]))

    @property
    def sgld(self) -> SGLDConfig:
        return SGLDConfig(steps=self.steps, step_size=self.step_size, noise=self.noise, energy="marginal")

    def describe(self) -> dict:
        return {"defense": Defense.SGLD_REFINE.value, "refine_steps": self.steps, "refine_chains": self.chains,
                "refine_step_size": self.step_size, "refine_noise": self.noise, "energy": "marginal E(x)",
                "logits": "mean over chains"}


class RefinedModel(EnergyModel):
    """``base`` with K SGLD refinement steps on E(x) before it classifies (module docstring)."""

    def __init__(self, base: EnergyModel, cfg: RefineConfig, generator: torch.Generator | None = None):
        torch.nn.Module.__init__(self)
        self.base = base
        self.cfg = cfg
        self.generator = generator
        self.backward = Backward.FULL
        self.input_shape, self.num_classes = base.input_shape, base.num_classes

    @property
    def net(self):  # the network the forward hooks watch (bench.pipeline.compute)
        return self.base.net

    @property
    def fast_path(self):
        return self.base.fast_path

    def set_fast_path(self, forward) -> None:
        self.base.set_fast_path(forward)

    @contextmanager
    def plain(self):
        with self.base.plain():
            yield self

    @contextmanager
    def backward_mode(self, mode: str):
        """``backward`` set to ``mode`` (``full`` or ``bpda``) inside the block."""
        old, self.backward = self.backward, Backward(mode)
        try:
            yield self
        finally:
            self.backward = old

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """K standard-normal draws shaped like x, from the wrapper's generator."""
        g = self.generator
        return torch.randn((self.cfg.steps, *x.shape), generator=g, device=x.device, dtype=x.dtype)

    def refine(self, x: torch.Tensor) -> torch.Tensor:
        """x_K from x_0 = x (one chain per row); differentiable per ``backward`` when x needs a gradient."""
        cfg = self.cfg.sgld
        if not (torch.is_grad_enabled() and x.requires_grad):
            return sgld(self.base, x, None, cfg, _Replay(self.noise(x)))[0]
        if self.backward == Backward.BPDA:
            xk = sgld(self.base, x.detach(), None, cfg, _Replay(self.noise(x)))[0]
            return x + (xk - x).detach()  # the identity in the backward pass
        noise = self.noise(x)

        def step(state, n):
            return langevin_step(self.base, state, None, cfg, n, create_graph=True)[0]

        for t in range(self.cfg.steps):
            x = checkpoint(step, x, noise[t], use_reentrant=False)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg.chains
        xs = x.repeat(c, *[1] * (x.dim() - 1)) if c > 1 else x
        f = self.base.logits(self.refine(xs))
        return f.view(c, len(x), -1).mean(0) if c > 1 else f

    forward = logits


class _Replay(BlockNoise):
    """Pre-drawn noise handed to ``bench.engines.sampling.sgld`` one step at a time (its ``BlockNoise``
    interface), so the non-differentiable and the checkpointed paths use the same draws."""

    def __init__(self, noise: torch.Tensor):  # noqa: D107  (no generators: the draws are made)
        self.noise, self.t = noise, 0

    def draw(self, x: torch.Tensor) -> torch.Tensor:
        n = self.noise[self.t]
        self.t += 1
        return n


def defended(model: EnergyModel, settings, generator: torch.Generator | None = None) -> EnergyModel:
    """``model`` under the defence the settings name (itself for ``none``)."""
    if settings.get("defense", Defense.NONE) in (None, Defense.NONE):
        return model
    return RefinedModel(model, RefineConfig.from_settings(settings), generator)

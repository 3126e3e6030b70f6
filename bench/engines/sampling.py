"""SGLD / Langevin dynamics on an EnergyModel (paper Eq. 10, 16, 17; Alg. 1) and image generation.

    x_{t+1} = x_t - (step_size / 2) * grad_x E(x_t) + noise * N(0, I)

The chain lives in [0, 1] pixel space, whatever the model's normalisation (docs/CONVENTIONS.md).
The paper's form takes noise = sqrt(step_size); JEM's practice sets the two apart.  JEM quotes
``sgld_lr = 1, sgld_std = 0.01`` on z = (x - 0.5) / 0.5, which is ``step_size = 0.5,
noise = 0.005`` here (``bench.core.settings.sgld_from_normalised``, the one conversion).  The energy is
``joint`` E(x,y) (Eq. 17, default for generation), ``ce`` E(x,y) - E(x) (Eq. 16) or ``marginal``
E(x) (the JEM/JEAT training term).  A chain that turns NaN or inf (its energy, or its unclamped
update, so an infinite gradient is caught before ``clamp`` would hide it) is frozen at its last
finite state and reported in the returned mask, never silently written as an image.

Generation (``generate``; the run's generated set, ``bench.engines.generation.generated``, is made by it):

- Labels are balanced over classes: ``y = 0, 1, ..., K-1, 0, 1, ...`` (``n`` images; with ``n``
  not a multiple of K the first ``n mod K`` classes have one image more).
- Starts (``init``): ``gaussian`` draws x0 ~ N(mu_y, Sigma_y), the class-conditional Gaussian of
  the training images (Sec. 2.2, ``bench.inputs.data.ClassGaussian``); ``uniform`` draws U(0, 1);
  ``buffer`` takes distinct samples of the model's SGLD replay buffer (unlabeled: each start is
  then run as the class-conditional chain of its assigned label).  Every start is clamped to
  [0, 1] before the first step, whatever ``clamp`` says: the model's domain is [0, 1], and
  Santurkar et al.'s class-conditional seeds (the start of Sec. 2.2) are clamped the same way.
  ``clamp`` only governs clamping after each Langevin step.
- Randomness: one seed is drawn from ``generator``; the starts come from a CPU generator seeded by
  it (so they do not depend on the device), and the chain noise from one generator per block of
  ``CHAIN_BLOCK`` consecutive chains on the model's device.  Batches hold whole blocks, so the
  images do not depend on ``batch_size`` (a batch smaller than a block runs one block).
- Diverged chains are counted and come back as NaN images (their labels kept), so no frozen
  half-way state is ever taken for a sample; metrics drop non-finite images and report the count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from bench.core.energy import Energy, EnergyModel, evaluates
from bench.core.errors import BenchError
from bench.core.settings import JEM_SGLD_NOISE, JEM_SGLD_STEP_SIZE, GenEnergy, GenInit
from bench.runtime import distributed
from bench.runtime.execution import Execution

CHAIN_BLOCK = 32  # chains per noise generator (the unit of randomness of generate)
INITS = tuple(GenInit)
ENERGIES = tuple(Energy)


@dataclass
class SGLDConfig:
    steps: int = 20
    step_size: float = JEM_SGLD_STEP_SIZE  # pixel space: JEM's sgld_lr = 1 on (x - 0.5) / 0.5
    noise: float | None = JEM_SGLD_NOISE  # JEM's sgld_std = 0.01; None: sqrt(step_size), Eq. 10
    energy: str = "joint"
    clamp: bool = True

    @property
    def noise_std(self) -> float:
        return math.sqrt(self.step_size) if self.noise is None else self.noise

    @classmethod
    def from_settings(cls, settings: dict) -> SGLDConfig:
        """The generation chain of a run's settings (``gen_steps``, ``gen_step_size``, ...)."""
        from bench.core.settings import DEFAULTS

        chain = ("gen_steps", "gen_step_size", "gen_noise", "gen_energy", "gen_clamp")  # of GEN_SETTINGS
        s = {k: settings.get(k, DEFAULTS[k]) for k in chain}
        noise = s["gen_noise"]
        return cls(steps=int(s["gen_steps"]), step_size=float(s["gen_step_size"]),
                   noise=None if noise is None else float(noise), energy=str(s["gen_energy"]),
                   clamp=bool(s["gen_clamp"]))


class BlockNoise:
    """Chain noise from one generator per block of ``block`` consecutive chains: chain ``i`` draws
    from ``generators[i // block]``, so a chain's noise does not depend on how chains are batched."""

    def __init__(self, generators: Sequence[torch.Generator], block: int = CHAIN_BLOCK):
        self.generators = list(generators)
        self.block = int(block)

    @classmethod
    def seeded(cls, seeds: Sequence[int], device, block: int = CHAIN_BLOCK) -> BlockNoise:
        gens = []
        for s in seeds:
            g = torch.Generator(device=device)
            g.manual_seed(int(s))
            gens.append(g)
        return cls(gens, block)

    def draw(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.block * len(self.generators):
            raise ValueError(f"{len(x)} chains but noise for {self.block * len(self.generators)}")
        out = torch.empty_like(x)
        for i, g in enumerate(self.generators):
            out[i * self.block:(i + 1) * self.block].normal_(generator=g)
        return out


@evaluates
def sgld(model: EnergyModel, x0: torch.Tensor, y: torch.Tensor | None, cfg: SGLDConfig,
         generator: torch.Generator | BlockNoise | None = None, callback=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``cfg.steps`` Langevin steps from x0; returns (x, finite) where ``finite`` is a bool mask
    of the chains that stayed finite throughout (diverged chains keep their last finite state).
    ``generator`` is a torch.Generator on x's device, or a ``BlockNoise`` (one per chain block).
    ``callback(t, x, e, g)`` sees each step's state, energies and gradients."""
    if cfg.energy not in ENERGIES:
        raise ValueError(f"unknown energy {cfg.energy!r}; expected one of {', '.join(ENERGIES)}")
    x = x0.detach().clone()
    finite = torch.isfinite(x.flatten(1)).all(1)
    shape = (-1, *[1] * (x.dim() - 1))
    for t in range(cfg.steps):
        if isinstance(generator, BlockNoise):
            noise = generator.draw(x)
        else:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        nxt, e, g, ok = langevin_step(model, x, y, cfg, noise)
        ok = ok & finite
        finite = ok
        x = torch.where(ok.view(shape), nxt, x).detach()
        if callback is not None:
            callback(t, x, e, g)
    return x, finite


def langevin_step(model: EnergyModel, x: torch.Tensor, y: torch.Tensor | None, cfg: SGLDConfig,
                  noise: torch.Tensor, create_graph: bool = False):
    """One step of the chain from x with the given standard-normal ``noise``: (next state, clamped
    when ``cfg.clamp``; energies; gradients; per-chain finite mask of the unclamped update).  With
    ``create_graph`` the next state is differentiable with respect to x through the gradient term
    (the full gradient of a refinement, ``bench.engines.defense``)."""
    e, g = model.grad_energy(x, y, cfg.energy, create_graph=create_graph)
    nxt = x - (0.5 * cfg.step_size) * g + cfg.noise_std * noise
    # one reduction per chain: a sum is finite only if every element is (checked before the
    # clamp, which would turn -inf into 0)
    ok = torch.isfinite(nxt.detach().flatten(1).sum(1)) & torch.isfinite(e.detach())
    if cfg.clamp:
        nxt = nxt.clamp(0, 1)
    return nxt, e, g, ok


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
        """Write x back to slots idx.  ``sample`` draws slots with replacement, so a slot may come
        twice: the last write wins, explicitly (a plain ``data[idx] = x`` leaves the winner to the
        backend, which broke bit-exact resume)."""
        idx = idx.to(self.data.device)
        order = torch.arange(len(idx), device=idx.device)
        last = torch.full((len(self.data),), -1, dtype=torch.long, device=idx.device)
        last.scatter_reduce_(0, idx, order, reduce="amax")
        slots = last >= 0
        self.data[slots] = x.detach().to(self.data.device)[last[slots]]


# --------------------------------------------------------------------------------------------
# generation


class Samples(NamedTuple):
    """Generated images (N, C, H, W) in [0, 1] on CPU, NaN where the chain diverged; labels (N,);
    the bool mask of diverged chains."""

    x: torch.Tensor
    y: torch.Tensor
    diverged: torch.Tensor

    @property
    def n_diverged(self) -> int:
        return int(self.diverged.sum())


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., K-1, 0, 1, ... (n labels, int64, CPU)."""
    return torch.arange(int(n), dtype=torch.int64) % int(num_classes)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0x7FFFFFFFFFFFFFFF


def _base_seed(generator: torch.Generator | int | None) -> int:
    if isinstance(generator, int):
        return int(generator)
    dev = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=dev).item())


def buffer_images(replay_buffer) -> torch.Tensor | None:
    """The images of a replay buffer given as a tensor or a ``ReplayBuffer`` (None passes through)."""
    if replay_buffer is None:
        return None
    return replay_buffer.data if isinstance(replay_buffer, ReplayBuffer) else replay_buffer


def initial_images(init: str, y: torch.Tensor, data, generator: torch.Generator | None = None,
                   replay_buffer=None) -> torch.Tensor:
    """Chain starts for labels y, on CPU, clamped to [0, 1] (see the module docstring).
    ``generator`` is a CPU generator."""
    from bench.inputs.data import ClassGaussian

    n = len(y)
    shape = tuple(data.input_shape)
    if init == "uniform":
        x = torch.rand((n, *shape), generator=generator)
    elif init == "gaussian":
        x = ClassGaussian(data.train, data.num_classes).sample(y, generator)
    elif init == "buffer":
        buf = buffer_images(replay_buffer)
        if buf is None:
            raise BenchError("gen_init=buffer needs an SGLD replay buffer, and this model has none "
                             "(train with the jem or jeat recipe, or use --gen-init gaussian/uniform)")
        buf = buf.detach().to("cpu", torch.float32)
        if tuple(buf.shape[1:]) != shape or len(buf) == 0:
            raise BenchError(f"replay buffer holds images of shape {tuple(buf.shape[1:])} "
                             f"({len(buf)} of them); the data are {shape}")
        good = torch.isfinite(buf.flatten(1)).all(1)
        if not good.all():
            raise BenchError(f"replay buffer holds {int((~good).sum())} non-finite images")
        if n <= len(buf):  # distinct buffer samples where there are enough
            idx = torch.randperm(len(buf), generator=generator)[:n]
        else:
            idx = torch.randint(0, len(buf), (n,), generator=generator)
        x = buf[idx]
    else:
        raise BenchError(f"unknown gen_init {init!r}; expected one of {', '.join(INITS)}")
    return x.clamp(0, 1)


def _model_device(model: torch.nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@evaluates
def generate(model: EnergyModel, data, cfg: SGLDConfig | None = None, n: int = 500, init: str = "gaussian",
             generator: torch.Generator | int | None = None, replay_buffer=None,
             run: Execution = Execution()) -> Samples:
    """Generate ``n`` images balanced over the ``data.num_classes`` classes by SGLD on the model's
    energy ``cfg.energy`` (``joint``: Eq. 17; ``ce``: Eq. 16) from ``init`` starts.

    ``data`` is a ``bench.inputs.data.Dataset`` (its classes, image shape, and training split for the
    Gaussian start); ``generator`` a torch.Generator (any device) or an int seed;
    ``replay_buffer`` a tensor (M, C, H, W) in [0, 1] or a ``ReplayBuffer`` (needed for
    ``init='buffer'``); ``run`` (``bench.runtime.execution.Execution``): chains per batch
    (``run.batch_size``), its progress around the batch loop, the device (default: the model's);
    in eval mode.  Returns ``Samples(x, y, diverged)`` on CPU.  ``run.sharded`` (under torchrun):
    each rank runs its contiguous share of the chain blocks and the images are gathered, identical
    to one process's (noise is drawn per block)."""
    cfg = cfg or SGLDConfig()
    if not isinstance(n, int) or n <= 0:
        raise BenchError(f"n-gen must be a positive integer, got {n}")
    if cfg.energy not in tuple(GenEnergy):
        raise BenchError(f"unknown gen_energy {cfg.energy!r}; expected joint (Eq. 17) or ce (Eq. 16)")
    if init not in INITS:
        raise BenchError(f"unknown gen_init {init!r}; expected one of {', '.join(INITS)}")
    dev = torch.device(run.device) if run.device is not None else _model_device(model)
    base = _base_seed(generator)
    y = balanced_labels(n, data.num_classes)
    g_init = torch.Generator().manual_seed(_splitmix64(base))
    x0 = initial_images(init, y, data, g_init, replay_buffer)

    n_blocks = -(-n // CHAIN_BLOCK)
    per_batch = max(1, int(run.batch_size) // CHAIN_BLOCK)
    out = torch.empty_like(x0)
    finite = torch.zeros(n, dtype=torch.bool)
    mine = distributed.shard(n_blocks) if run.sharded else range(n_blocks)
    starts = range(mine.start, mine.stop, per_batch)
    for b0 in run.iterate(starts, "generate (SGLD)", len(starts)):  # in eval mode (@evaluates)
        b1 = min(b0 + per_batch, mine.stop)
        a, z = b0 * CHAIN_BLOCK, min(b1 * CHAIN_BLOCK, n)
        noise = BlockNoise.seeded([_splitmix64(base + 1 + b) for b in range(b0, b1)], dev)
        xb, ok = sgld(model, x0[a:z].to(dev), y[a:z].to(dev), cfg, noise)
        out[a:z] = xb.detach().cpu()
        finite[a:z] = ok.cpu()
    if run.sharded:
        lo, hi = min(mine.start * CHAIN_BLOCK, n), min(mine.stop * CHAIN_BLOCK, n)
        out, finite = distributed.gather(out[lo:hi]), distributed.gather(finite[lo:hi])
    out[~finite] = float("nan")
    return Samples(out, y, ~finite)

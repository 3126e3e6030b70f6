"""What a metric group sees (``Context``, frozen: each layer makes the context it needs with
``dataclasses.replace``, never assigns to one it was given), the run's generated set given to a
group's context (``with_generated``) and the mean/standard-error helper the groups share."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bench.core.energy import EnergyModel, eval_mode
from bench.core.stats import mean_se  # noqa: F401  (bench.metrics.mean_se, moved to core)
from bench.inputs.data import Dataset
from bench.runtime.execution import Execution

if TYPE_CHECKING:
    from bench.engines.generation import Generated


@dataclass(frozen=True)
class Figure:
    """A figure a group writes: ``path`` to save it at, ``rel`` (relative to OUT) to record, and
    ``model``, the evaluated model's name, for the figure to show (the plots' ``model=``)."""

    path: Path
    rel: str
    model: str = ""


@dataclass(frozen=True)
class Context:
    """What a metric group sees: the model, the data, where to write figures, and the settings
    (while the group runs, its read-only ``bench.metrics.registry.SettingsView``: what it declares, plus the
    fast paths, ``EXECUTION_KEYS`` and ``IDENTITY_KEYS``).  Frozen: the runner makes the run's
    context once; ``bench.pipeline.compute`` makes each group's (and each out-of-memory retry's)
    from it with the group's settings view, the defended model, the batch size and the generated
    set (``dataclasses.replace``: the per-run memo and the figures made stay shared)."""

    model: EnergyModel
    data: Dataset
    settings: Mapping
    device: torch.device
    out: Path
    replay_buffer: torch.Tensor | None = None  # the checkpoint's SGLD replay buffer, images in [0, 1]
    data_root: str | None = None  # where data sets live (--data-root): OOD sets load from it
    # the checkpoint trained on the first ``train_used`` training points only (its recipe's
    # train_n); None: on all of them, or unknown.  The rest of the split was never seen.
    train_used: int | None = None
    generation: Generated | None = None  # the run's generated set, for a group that needs it (with_generated)
    progress: Callable | None = None  # progress(iterable, desc=..., total=...) -> iterable
    sharded: bool = False  # a sharded group's context under torchrun (bench.pipeline.compute)
    figures_made: list[str] = field(default_factory=list)  # ``figure``'s relative paths, in order
    model_name: str = ""  # the run's name, else the model's file stem or class: named in every figure
    _memo: dict = field(default_factory=dict, repr=False)

    def once(self, key, make: Callable[[], Any]) -> Any:
        """``make()`` computed once per run under ``key`` (groups that share an input, e.g. the
        fitted temperature or the OOD sets, compute it once)."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def generator(self, tag: str) -> torch.Generator:
        """A generator seeded by (seed, tag) on the model's device: each group draws from its own
        stream, so running a subset of suites, or resuming, never shifts another group's numbers."""
        g = torch.Generator(device=self.device)
        g.manual_seed(_seed_for(self.settings["seed"], tag))
        return g

    @property
    def execution(self) -> Execution:
        """How this group computes: the run's device, batch size and progress, and whether it is
        sharded (``bench.runtime.execution``); engines take it instead of four parameters."""
        return Execution(self.device, int(self.settings["batch_size"]), self.progress, self.sharded)

    def iterate(self, iterable, desc: str, total: int | None = None):
        return self.execution.iterate(iterable, desc, total)

    def figure(self, name: str) -> Figure:
        """The one way a group makes a figure: ``OUT/figures/<name>`` (its folder made), recorded
        in ``figures_made``; put its ``rel`` in the metric's details (``figure`` or ``figures``),
        where report.html finds it."""
        f = Figure(self.out / "figures" / name, f"figures/{name}", self.model_name)
        f.path.parent.mkdir(parents=True, exist_ok=True)
        if f.rel not in self.figures_made:
            self.figures_made.append(f.rel)
        return f

    def batches(self, x: torch.Tensor, *others: torch.Tensor, desc: str = "", indexed: bool = False):
        """Yield device batches of (x, *others) of ``settings['batch_size']`` (with ``indexed``:
        ``(i, x, *others)``, i the batch's global index, for per-batch random streams that do not
        depend on how batches are spread over processes).  In a sharded group under torchrun each
        rank gets its contiguous share of the batches; ``collect``/``gather`` reassemble per-point results."""
        bs = self.settings["batch_size"]
        mine = self.my_batches(len(x))
        for i in self.iterate(mine, desc, total=len(mine)):
            batch = tuple(t[i * bs:(i + 1) * bs].to(self.device) for t in (x, *others))
            yield (i, *batch) if indexed else batch

    def my_batches(self, n: int) -> range:
        return self.execution.my_batches(n)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return self.execution.gather(t)

    def collect(self, parts: list[torch.Tensor], empty: torch.Tensor | torch.dtype = torch.float64) -> torch.Tensor:
        return self.execution.collect(parts, empty)

    def gather_max(self, value: float) -> float:
        return self.execution.gather_max(value)


def with_generated(ctx: Context) -> Context:
    """``ctx`` with the run's generated set (``ctx.generation``; ``ctx`` itself when it has one):
    made once per run (``ctx.once``, keyed by ``generation_key``) through the context's model (in
    eval mode), on its execution, into ``OUT/samples`` (``bench.engines.generation.generated``)."""
    if ctx.generation is not None:
        return ctx
    from bench.engines import generation

    key = generation.generation_key(ctx.settings, ctx.data)

    def make():
        with eval_mode(ctx.model):  # as the group computes (bench.core.energy.evaluates)
            return generation.generated(ctx.model, ctx.data, ctx.settings, ctx.execution, ctx.out,
                                        ctx.generator("generate"), ctx.replay_buffer, ctx.model_name)

    return replace(ctx, generation=ctx.once(("generated", json.dumps(key, sort_keys=True)), make))


def _seed_for(seed: int, tag: str) -> int:
    import zlib

    return (int(seed) * 1_000_003 + zlib.crc32(tag.encode())) % (2**63 - 1)


# the registry lives in bench.metrics.registry (declarations only); metric modules import it from here

"""Data-parallel training for ``torchrun --nproc_per_node=N -m bench train ...``.

One process needs none of this (every helper is then unused or an identity), and a one-process
run is bit-for-bit the run it always was.  Under torchrun:

- Batches: the recipe's ``batch_size`` stays the global batch.  Every rank shuffles with the same
  data generator, takes the same global batch and trains on its contiguous share
  (``distributed.shard``).
- Gradients: each rank weights its mean loss by its share of the global batch
  (``len(share) / len(batch)``) and one all-reduce after ``backward`` sums the gradients, so the
  update is the one-process update on the global batch up to summation order.  Every rank applies
  the same summed gradient, so the weights stay bit-identical (checked after every epoch).  An
  explicit all-reduce rather than ``DistributedDataParallel``: the attack and SGLD run the network
  for input gradients only, the monitor deep-copies the model and checkpoints save ``model.net``;
  all of that stays as in one process.  (JEAT/JEM's energy term averages over the chains that
  stayed finite on each rank, so it equals the global average exactly when none diverged.)
- Randomness: per-sample randomness (attack starts, noise, SGLD) comes from a per-rank stream,
  ``rank_seed``; rank 0's is the one-process stream.  The replay buffer draws its slots and
  reinitialisation noise for the whole global batch from a generator every rank shares
  (``shared_seed``), each rank runs the chains of its share, and every rank pushes all ranks'
  finished chains in rank order: one logical buffer, identical everywhere.
- Batch norm: converted to SyncBatchNorm on CUDA.  torch has no SyncBatchNorm on CPU, so there
  each rank normalises with its own share's statistics and the running estimates are averaged
  over ranks after every epoch (the digits recipes use no batch norm).
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist
from torch import nn

from bench.core.errors import BenchError
from bench.engines.sampling import ReplayBuffer
from bench.runtime import distributed

RANK_STRIDE = 1000  # seed distance between two ranks' streams


def rank_seed(seed: int, rank: int) -> int:
    """The per-sample random stream of ``rank``: rank 0 keeps the one-process stream ``seed + 1``."""
    return seed + 1 + RANK_STRIDE * rank


def shared_seed(seed: int) -> int:
    """The replay-buffer generator every rank shares (apart from every rank's own stream)."""
    return seed + 2


def sync_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """SyncBatchNorm on CUDA; on CPU torch has none, so the network is returned as it is."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(net) if device.type == "cuda" else net


def share(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of a global batch (the whole batch in one process)."""
    part = distributed.shard(len(batch))
    return batch[part.start:part.stop]


def backward(model: nn.Module, loss: torch.Tensor, n_local: int, n_global: int) -> float:
    """Backward of this rank's mean ``loss`` on its ``n_local`` points, weighted by its share of the
    global batch, then the gradients summed over ranks; returns the global mean loss.

    A rank with an empty share still runs its (empty) forward and backward, whose gradients are
    zero: SyncBatchNorm's forward and backward are collectives every rank must join."""
    weight = n_local / n_global
    (loss * weight).backward()
    value = float(loss.detach()) * weight if n_local else 0.0  # an empty mean is NaN, its share 0
    return _sum_gradients(model, value)


def _sum_gradients(model: nn.Module, value: float) -> float:
    """All-reduce (sum) every parameter's gradient and ``value`` in one flat tensor.  A parameter
    without a gradient counts as zero (and gets one), so every rank sends the same layout."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    total = torch.tensor([value], device=params[0].device)
    _all_reduce_sum_([*(p.grad for p in params), total])
    return float(total)


def _all_reduce_sum_(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over ranks, in place, with one all-reduce of them packed flat (float32)."""
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sum over ranks, in float64 (counts stay exact), on any backend (gathered as
    objects: nccl reduces CUDA tensors only)."""
    if not distributed.active():
        return values
    return distributed.gather(torch.tensor([values], dtype=torch.float64)).sum(0).tolist()


def buffer_starts(buffer: ReplayBuffer, n: int, shared: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's ``n`` chain starts and their slots: the slots and reinitialisation noise are drawn
    for the whole global batch (every rank's ``n``, gathered) from the shared generator, and this
    rank takes its part, so every rank draws the same and the buffer stays one."""
    sizes = distributed.gather(torch.tensor([n])).tolist()
    x, idx = buffer.sample(sum(sizes), shared)
    a = sum(sizes[:distributed.rank()])
    return x[a:a + n], idx[a:a + n]


def buffer_push(buffer: ReplayBuffer, x: torch.Tensor, idx: torch.Tensor) -> None:
    """Push every rank's finished chains, in rank order (the order of the global batch, so the
    last write to a slot drawn twice is the one a single process would make)."""
    buffer.push(distributed.gather(x), distributed.gather(idx))


def average_batchnorm_stats(model: nn.Module) -> None:
    """Average the running mean and variance of plain (per-rank) batch norm over ranks, so every
    rank holds, and rank 0 saves, one estimate.  SyncBatchNorm's are identical already."""
    stats = [t for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and not isinstance(m, nn.SyncBatchNorm) for t in (m.running_mean, m.running_var) if t is not None]
    if not stats or not distributed.active():
        return
    _all_reduce_sum_(stats)
    for t in stats:
        t /= distributed.world()


def weights_digest(model: nn.Module) -> str:
    """sha256 of every tensor of the state dict, byte for byte."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_in_sync(model: nn.Module, epoch: int) -> None:
    """Every rank must hold bit-identical weights; a difference is a bug, never a result."""
    if not distributed.active():
        return
    digests = distributed.gather_objects(weights_digest(model))
    if len(set(digests)) > 1:
        raise BenchError(f"the {len(digests)} processes hold different weights after epoch {epoch} "
                         "(data-parallel training lost sync; please report this)")


def generator_states(g_train: torch.Generator, shared: torch.Generator) -> dict:
    """What a resume under torchrun needs beyond the one-process state: every rank's own stream
    (rows in rank order), the shared stream and the number of processes."""
    return {"processes": distributed.world(), "g_train_ranks": distributed.gather(g_train.get_state()[None]),
            "g_shared": shared.get_state()}


def restore_generators(state: dict, g_train: torch.Generator, shared: torch.Generator | None) -> None:
    """Set this rank's generators from a resume state (``g_train`` alone in one process)."""
    if shared is None:
        g_train.set_state(state["g_train"])
        return
    g_train.set_state(state["g_train_ranks"][distributed.rank()].clone())
    shared.set_state(state["g_shared"])


def check_processes(state: dict, path) -> None:
    """A resume must run with as many processes as the run it continues: the shares, the random
    streams and the per-rank batch statistics all depend on it."""
    written, now = int(state.get("processes", 1)), distributed.world()
    if written != now:
        how = "in one process (no torchrun)" if written == 1 else f"with torchrun --nproc_per_node={written}"
        raise BenchError(f"--resume: {path} was written by {written} process(es), this run has {now}; "
                         f"resume {how}")

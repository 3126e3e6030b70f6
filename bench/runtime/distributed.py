"""torch.distributed for ``torchrun --nproc_per_node=N bench run ...``.

One process is the default and needs none of this.  Under torchrun (``WORLD_SIZE`` > 1) the run
joins a process group (gloo on CPU, nccl on CUDA).  Sharded metric groups split their batches into
contiguous ranges, one per rank, and ``gather`` concatenates the per-point results in rank order,
so every rank holds exactly what one process would have computed; randomness is drawn per batch
(see ``Context.batches``), so the numbers do not depend on the number of processes.  Groups that
are not sharded run on rank 0 and their results are broadcast.  Only rank 0 writes files.
"""

from __future__ import annotations

import importlib
import os

import torch
import torch.distributed as dist


def requested() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init(device: torch.device) -> torch.device:
    """Join the torchrun process group if there is one; returns the device this rank uses
    (``cuda:LOCAL_RANK`` on GPU)."""
    if not requested() or active():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    # torch._dynamo, imported lazily by the first optimizer, keeps references to the default group
    # when a group exists at its import: destroy_process_group then cannot free it, the group's
    # worker threads outlive the interpreter, and a rank aborted at exit ("terminate called
    # without an active exception", 1 torchrun training in about 10 under load). Imported first,
    # it holds none.
    importlib.import_module("torch._dynamo")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def close() -> None:
    if active():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def shard(n: int, r: int | None = None, w: int | None = None) -> range:
    """The contiguous part ``[a, b)`` of ``range(n)`` that rank r of w takes."""
    r = rank() if r is None else r
    w = world() if w is None else w
    return range(n * r // w, n * (r + 1) // w)


def batch_share(n: int, batch_size: int, sharded: bool = True) -> range:
    """Indices of the batches of ``batch_size`` of n items that this process computes: all of
    them, or (``sharded``) this rank's contiguous share of them."""
    n_batches = -(-n // batch_size)
    return shard(n_batches) if sharded else range(n_batches)


def gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate each rank's tensor (first dimension may differ) in rank order, on every rank."""
    return torch.cat(gather_objects(t.detach().cpu())).to(t.device) if active() else t


def gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not active():
        return [obj]
    parts = [None] * world()
    dist.all_gather_object(parts, obj)
    return parts


def broadcast(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def on_main(fn):
    """``fn()`` on rank 0 only (a check that touches files); its result, or the BenchError it
    raised, reaches every rank, so all ranks go on or stop together."""
    from bench.core.errors import BenchError

    if not active():
        return fn()
    result = error = None
    if is_main():
        try:
            result = fn()
        except BenchError as e:
            error = str(e)
    result, error = broadcast((result, error))
    if error is not None:
        raise BenchError(error)
    return result


def abandon() -> None:
    """Leave the process group on an error path: no barrier (the other ranks may be inside a
    collective that never completes); their next collective then fails instead of hanging."""
    if active():
        dist.destroy_process_group()

"""Shared timing for the benchmarks: each arm is timed with the device synchronised around it,
and the two arms alternate (ours, peer, ours, ...) so drifting machine load hits both alike."""

from __future__ import annotations

import statistics
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def alternate(ours, peer, repeats: int, device: torch.device) -> tuple[float, float, list[float], list[float]]:
    """(median ours, median peer, times ours, times peer) over ``repeats`` alternating runs; warm up
    both before calling."""
    t_ours, t_peer = [], []
    for _ in range(repeats):
        t_ours.append(timed(ours, device))
        t_peer.append(timed(peer, device))
    return statistics.median(t_ours), statistics.median(t_peer), t_ours, t_peer

"""Throughput of the 15 common corruptions (bench.engines.corruptions.corrupt) per corruption.

Workload: the first ``--n`` Fashion-MNIST test images (1 x 28 x 28, from wherever
``bench.inputs.data.load('fashion-mnist')`` finds them; random images of that shape otherwise), one
batch, at ``--severity``; with ``--rgb`` random 3 x 32 x 32 (CIFAR-shaped) images instead.  Each
corruption runs once to warm up, then ``--repeats`` times; the median wall time is printed as a
Markdown row (seconds for the batch, images per second).

    python benchmarks/bench_corruptions.py [--n 1000] [--severity 3] [--threads 1] [--repeats 3]
                                           [--device cpu|cuda] [--rgb]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.core.errors import BenchError
from bench.engines.corruptions import CORRUPTIONS, available, corrupt


def images(args) -> tuple[torch.Tensor, str]:
    if args.rgb:
        return torch.rand(args.n, 3, 32, 32, generator=torch.Generator().manual_seed(0)), "random 3x32x32"
    try:
        from bench.inputs import data

        return data.load("fashion-mnist").test.x[: args.n], "Fashion-MNIST test images"
    except BenchError:
        return torch.rand(args.n, 1, 28, 28, generator=torch.Generator().manual_seed(0)), "random 1x28x28"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rgb", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, what = images(args)
    x = x.to(args.device)
    print(f"{len(x)} {what}, severity {args.severity}, {args.threads} thread(s), {args.device}")
    print("| corruption | s per batch | images/s |\n| --- | ---: | ---: |")
    for name in CORRUPTIONS:
        if name not in available(x.shape[1:]):
            continue
        corrupt(x[:16], name, args.severity)
        times = []
        for _ in range(args.repeats):
            if args.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            corrupt(x, name, args.severity)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        s = statistics.median(times)
        print(f"| {name} | {s:.3f} | {len(x) / s:,.0f} |")


if __name__ == "__main__":
    main()

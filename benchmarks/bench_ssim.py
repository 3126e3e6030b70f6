"""SSIM nearest-neighbour throughput: bench.engines.ssim.nearest_neighbours against a scikit-image loop.

Workload: every one of ``--n-gen`` query images against the whole digits training split (1347
images), k nearest by SSIM (win 7, data range 1, sample covariance: the ``ssim_nn`` metric).  The
query images stand in for generated ones: test images with Gaussian noise (std 0.1), clamped.
The peer calls ``skimage.metrics.structural_similarity`` once per pair, in a Python loop, and
keeps the k best per query (``numpy.argsort``).  Both arms compute the same pairs; before timing,
every SSIM of the peer is compared with ours (max |difference| must be <= 1e-5) and the
neighbour indices must agree.  Runs alternate (ours, peer, ours, ...) after a warm-up; the median
per arm gives pairs per second and the ratio ours / peer (target >= 10).  With ``--rgb`` the images
are random 3 x 32 x 32 (CIFAR-shaped) instead, ``--n-train`` of them.

    python benchmarks/bench_ssim.py [--device cpu|cuda] [--n-gen 8] [--k 10] [--repeats 3] [--threads 1]
                                    [--rgb --n-train 500]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from timing import alternate, sync


def workload(args) -> tuple[torch.Tensor, torch.Tensor, str]:
    g = torch.Generator().manual_seed(0)
    if args.rgb:
        train = torch.rand(args.n_train, 3, 32, 32, generator=g)
        gen = (train[: args.n_gen] + 0.1 * torch.randn(args.n_gen, 3, 32, 32, generator=g)).clamp(0, 1)
        return gen, train, f"random 3x32x32, {args.n_train} training images"
    from bench.inputs import data

    ds = data.load("digits")
    q = ds.test.x.repeat(-(-args.n_gen // len(ds.test)), 1, 1, 1)[: args.n_gen]
    gen = (q + 0.1 * torch.randn(q.shape, generator=g)).clamp(0, 1)
    return gen, ds.train.x, f"digits 1x8x8, the whole training split ({len(ds.train)} images)"


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-gen", type=int, default=8, help="query images (each against the whole training set)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rgb", action="store_true", help="random CIFAR-shaped images instead of digits")
    ap.add_argument("--n-train", type=int, default=500, help="training images with --rgb")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from skimage.metrics import structural_similarity

    from bench.engines.ssim import nearest_neighbours, ssim_matrix

    device = torch.device(args.device)
    gen, train, what = workload(args)
    gen_np = gen.numpy()
    train_np = train.numpy()
    pairs = len(gen) * len(train)

    def ours():
        vals, idx = nearest_neighbours(gen.to(device), train.to(device), args.k, device=device)
        sync(device)
        return vals, idx

    def peer():
        s = np.empty((len(gen), len(train)))
        for i in range(len(gen)):
            for j in range(len(train)):
                s[i, j] = structural_similarity(gen_np[i], train_np[j], data_range=1, channel_axis=0,
                                                win_size=7, gaussian_weights=False, use_sample_covariance=True)
        top = np.argsort(-s, axis=1, kind="stable")[:, : args.k]
        return s, top

    # identical values first
    ref, ref_top = peer()
    mine = ssim_matrix(gen.to(device), train.to(device), device=device).double().cpu().numpy()
    max_diff = float(np.abs(mine - ref).max())
    vals, idx = ours()
    ref_vals = np.take_along_axis(ref, ref_top, 1)
    same_vals = float(np.abs(vals.double().numpy() - ref_vals).max())
    same_idx = bool((idx.numpy() == ref_top).all()) or same_vals <= 1e-5  # ties may order differently
    ok = max_diff <= 1e-5 and same_vals <= 1e-5 and same_idx

    ours()  # warm-up (the peer ran above)
    mo, mp, _, _ = alternate(ours, peer, args.repeats, device)
    ratio = mp / mo
    print(f"device {device}, {what}, {len(gen)} queries, k {args.k}, {pairs} pairs, "
          f"{args.repeats} alternating repeats, {torch.get_num_threads()} threads")
    print(f"values: max |ours - scikit-image| over all {pairs} pairs = {max_diff:.2e}; "
          f"top-{args.k} values differ by <= {same_vals:.2e}; indices agree: {bool((idx.numpy() == ref_top).all())}; "
          f"{'OK' if ok else 'MISMATCH'}")
    print(f"ours (nearest_neighbours):      {mo:.4f} s median  {pairs / mo:12.0f} pairs/s")
    print(f"scikit-image loop:              {mp:.4f} s median  {pairs / mp:12.0f} pairs/s")
    print(f"ratio ours/peer throughput: {ratio:.1f}x (target >= 10)")
    if not ok:
        raise SystemExit("values differ from scikit-image")
    return ratio


if __name__ == "__main__":
    main()

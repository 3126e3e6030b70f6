"""IS/FID with and without the reference-statistics cache: two consecutive computations.

Both calls are ``bench.engines.sample_quality.fid_is`` on the same SGLD-generated digits (an untrained
digits CNN, class-conditional Gaussian starts) against the digits training split, with the
offline fid-helper FID Inception behind torch-fidelity's resizing (or ``--extractor``).  The
reference cache starts empty (a fresh ``$JEAT_BENCH_CACHE``): the first call extracts the training
images' features and writes their statistics, the second reads them back and extracts only the
generated images' features.  The extractor is loaded and warmed up before either call.  Prints
both times and the ratio first / second (target >= 2x); the two FIDs must be identical.

    python benchmarks/bench_fid_cache.py [--n-gen 200] [--n-ref 0 (all 1347)] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-gen", type=int, default=200, help="generated images")
    ap.add_argument("--n-ref", type=int, default=0, help="reference (training) images; 0: all")
    ap.add_argument("--gen-steps", type=int, default=20)
    ap.add_argument("--extractor", default="fid-helper", help="fid_extractor setting (auto, inception, fid-helper)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="20 generated vs 120 training images")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_gen, args.n_ref = 20, 120
    torch.set_num_threads(args.threads)
    try:  # numpy's BLAS too (the FID's 2048 x 2048 eigenvalues), so both calls run on the same threads
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    os.environ["JEAT_BENCH_CACHE"] = tempfile.mkdtemp(prefix="jeat-fid-cache-")

    from bench.core.energy import EnergyModel
    from bench.engines import features as F
    from bench.engines import sample_quality as Q
    from bench.engines.sampling import SGLDConfig, generate
    from bench.inputs import data, nets

    device = torch.device(args.device)
    ds = data.load("digits")
    ref = ds.train.x if args.n_ref <= 0 else ds.train.x[: args.n_ref]
    ref_name = "digits" if args.n_ref <= 0 else f"digits-first{len(ref)}"
    torch.manual_seed(0)
    model = EnergyModel(nets.build("digits-cnn", 10, 1), 0.5, 0.5, ds.input_shape, 10).to(device).eval()
    gen = generate(model, ds, SGLDConfig(steps=args.gen_steps), n=args.n_gen, generator=0, device=device)
    x_gen = gen.x[~gen.diverged]

    ext = F.resolve_extractor(args.extractor)
    F.extract_features(F.to_uint8_rgb(x_gen[:2]), ext, device)  # load and warm up the extractor

    t0 = time.perf_counter()
    first = Q.fid_is(x_gen, ref, ext, ref_name, "train", device)
    t1 = time.perf_counter()
    second = Q.fid_is(x_gen, ref, ext, ref_name, "train", device)
    t2 = time.perf_counter()
    a, b = t1 - t0, t2 - t1
    ratio = a / b
    print(f"device {device}, {torch.get_num_threads()} threads; extractor {ext.name} ({ext.source}); "
          f"{len(x_gen)} generated vs {len(ref)} training images ({ds.name})")
    print(f"reference cache: first call {first['reference']['cache']}, second call {second['reference']['cache']}; "
          f"identical FID: {first['fid'] == second['fid']} ({first['fid']:.4f}); is_mean {first['is_mean']}")
    print(f"first  (reference features + generated): {a:8.2f} s  "
          f"(reference {first['seconds_reference']:.2f} s, generated + FID {first['seconds_generated']:.2f} s)")
    print(f"second (cached reference + generated):   {b:8.2f} s  "
          f"(reference {second['seconds_reference']:.3f} s, generated + FID {second['seconds_generated']:.2f} s)")
    print(f"ratio first/second: {ratio:.2f}x (target >= 2)")
    return ratio


if __name__ == "__main__":
    main()

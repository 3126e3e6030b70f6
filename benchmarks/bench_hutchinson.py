"""Fisher-score throughput: batched Hutchinson (bench.engines.fisher_terms.fisher_scores) against a per-sample loop.

Both arms compute, for the same points and the same Rademacher probes, the per-point terms of the
joint and the marginal Fisher score (0.5 ||grad E||^2 and Hutchinson's tr Hess E, Eq. 23, 24).
Ours is what the ``jfs``/``mfs`` metrics run: one forward and one backward per energy per batch
of points for the gradients, then the quadratic forms v^T H v of all points and probes in
batched second-order passes (Taylor mode, both energies at once; see bench.metrics.fisher).
The peer is the textbook loop: one point at a time, a forward and a first backward
(``create_graph``) per point and energy, then one double backward (Hessian-vector product) per
probe.  Before timing, the two arms' per-point estimates must agree (max difference <= 1e-4 of
the largest magnitude); they are computed by different differentiation modes, so this also
checks one against the other.  Runs alternate (ours, peer, ours, ...) after a warm-up; the
median per arm gives points per second and the ratio ours / peer (target >= 5).  ``--method``
picks ours' second-order method (auto, jet, forward, reverse) to compare them.

    python benchmarks/bench_hutchinson.py [--device cpu|cuda] [--n 64] [--probes 16] [--batch-size 64]
                                          [--width 32] [--act silu] [--method auto] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
from timing import alternate, sync


def per_sample_loop(model, x, y, probes):
    """The peer: point by point, probe by probe.  probes (N, M, C, H, W) -> {kind: (grad, trace)}."""
    out = {k: ([], []) for k in ("joint", "marginal")}
    for i in range(len(x)):
        xi = x[i:i + 1].detach().clone().requires_grad_(True)
        f = model.logits(xi)
        energies = {"joint": -f[0, y[i]], "marginal": -torch.logsumexp(f[0], 0)}
        for kind, e in energies.items():
            (g,) = torch.autograd.grad(e, xi, create_graph=True)
            quad = []
            for v in probes[i].to(x.dtype):
                (hv,) = torch.autograd.grad(g, xi, grad_outputs=v.unsqueeze(0), retain_graph=True)
                quad.append((hv * v).sum())
            out[kind][0].append(0.5 * g.detach().pow(2).sum())
            out[kind][1].append(torch.stack(quad).mean().detach())
    return {k: (torch.stack(a).cpu(), torch.stack(b).cpu()) for k, (a, b) in out.items()}


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=64, help="points (digits test images)")
    ap.add_argument("--probes", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=32, help="digits-cnn width")
    ap.add_argument("--act", default="silu", help="activation (smooth: silu, softplus; relu has zero joint trace)")
    ap.add_argument("--method", default="auto", choices=["auto", "jet", "forward", "reverse"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from bench.core.energy import EnergyModel
    from bench.engines.fisher_terms import fisher_scores, rademacher
    from bench.inputs import data, nets
    from bench.runtime.execution import Execution

    device = torch.device(args.device)
    ds = data.load("digits")
    torch.manual_seed(0)
    net = nets.build("digits-cnn", ds.num_classes, ds.input_shape[0], width=args.width, act=args.act)
    model = EnergyModel(net, 0.5, 0.5, ds.input_shape, ds.num_classes).to(device).eval().requires_grad_(False)
    x = ds.test.x[: args.n].to(device)
    y = ds.test.y[: args.n].to(device)

    # the probes fisher_scores draws from this generator, drawn the same way for the peer
    def gen():
        return torch.Generator(device=device).manual_seed(0)

    probes = rademacher((len(x), args.probes, *x.shape[1:]), gen(), device)

    info = {}

    def ours():
        r = fisher_scores(model, x, y, probes=args.probes, generator=gen(),
                          run=Execution(device, args.batch_size), method=args.method, info=info)
        sync(device)
        return r

    def peer():
        r = per_sample_loop(model, x, y, probes)
        sync(device)
        return r

    a, b = ours(), peer()
    worst = 0.0
    for kind in ("joint", "marginal"):
        for name, ref in (("grad", b[kind][0]), ("trace", b[kind][1])):
            mine = a[kind][name]
            scale = ref.abs().max().clamp_min(1e-30)
            worst = max(worst, ((mine - ref).abs().max() / scale).item())
    same = worst <= 1e-4

    mo, mp, _, _ = alternate(ours, peer, args.repeats, device)
    ratio = mp / mo
    print(f"device {device}, digits-cnn width {args.width} ({args.act}), {len(x)} points, {args.probes} probes, "
          f"batch {args.batch_size}, joint + marginal, {args.repeats} alternating repeats, "
          f"{torch.get_num_threads()} threads")
    print(f"same estimates (per-point gradient and trace terms): max relative difference {worst:.1e} "
          f"{'OK' if same else 'MISMATCH'}")
    print(f"ours (batched, fisher_scores, {'/'.join(sorted(info['methods']))}): {mo:.3f} s median  "
          f"{len(x) / mo:9.1f} points/s")
    print(f"per-sample loop:                {mp:.3f} s median  {len(x) / mp:9.1f} points/s")
    print(f"ratio ours/peer throughput: {ratio:.1f}x (target >= 5)")
    if not same:
        raise SystemExit("the batched estimates differ from the per-sample loop")
    return ratio


if __name__ == "__main__":
    main()

"""AutoAttack wrapper overhead: bench's ``evaluate_autoattack`` against pyautoattack called directly.

The wrapper is what the ``autoattack`` metric runs: state key (model and data digests), keyed
state file, warning capture, RNG kept, pyautoattack itself, then the checks (eps ball, [0, 1],
robust <= clean, predictions recomputed).  The peer is ``AutoAttack(...).run_standard_evaluation``
on the same model, points, eps and seed, without a state file.  A small digits CNN is trained for
a second first so the attacks have robust points to work on.  Runs alternate after a warm-up;
the median per arm gives the overhead (target <= 5 %).  Both arms must report the same robust
accuracy.

    python benchmarks/bench_autoattack.py [--device cpu|cuda] [--n 32] [--eps 0.08] [--version standard]
                                          [--width 4] [--epochs 15] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torch.nn.functional as F
from timing import alternate


def trained_model(width: int, epochs: int, device: torch.device):
    from bench.core.energy import EnergyModel
    from bench.inputs import data, nets

    ds = data.load("digits")
    torch.manual_seed(0)
    net = nets.build("digits-cnn", ds.num_classes, ds.input_shape[0], width=width)
    model = EnergyModel(net, 0.5, 0.5, ds.input_shape, ds.num_classes).to(device).train()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    g = torch.Generator().manual_seed(0)
    xt, yt = ds.train.x.to(device), ds.train.y.to(device)
    for _ in range(epochs):
        perm = torch.randperm(len(yt), generator=g).to(device)
        for i in range(0, len(perm), 64):
            b = perm[i:i + 64]
            loss = F.cross_entropy(model.logits(xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval().requires_grad_(False), ds



def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=32, help="test points")
    ap.add_argument("--eps", type=float, default=0.08)
    ap.add_argument("--version", default="standard")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from pyautoattack import AutoAttack

    from bench.engines.aa_eval import evaluate_autoattack

    device = torch.device(args.device)
    model, ds = trained_model(args.width, args.epochs, device)
    x, y = ds.test.x[: args.n], ds.test.y[: args.n]
    kw = {"norm": "Linf", "eps": args.eps, "version": args.version, "seed": 0}
    results = {}

    def ours():
        with tempfile.TemporaryDirectory() as d:
            r = evaluate_autoattack(model, x, y, batch_size=args.batch_size, device=device, state_dir=d, **kw)
        results["ours"] = r.value

    def direct():
        aa = AutoAttack(model, device=device, **kw)
        x_adv, y_adv = aa.run_standard_evaluation(x.to(device), y.to(device), batch_size=args.batch_size)
        results["direct"] = (y_adv.cpu() == y).double().mean().item()

    # warm-up: one short run of each path
    AutoAttack(model, device=device, norm="Linf", eps=args.eps, version="custom", attacks=["apgd-ce"],
               seed=0).run_standard_evaluation(x[:4].to(device), y[:4].to(device))
    evaluate_autoattack(model, x[:4], y[:4], device=device, norm="Linf", eps=args.eps, version="custom",
                        attacks=["apgd-ce"], seed=0)
    mo, md, t_ours, t_direct = alternate(ours, direct, args.repeats, device)
    overhead = mo / md - 1
    print(f"device {device}, digits-cnn width {args.width}, {args.n} points, eps {args.eps}, "
          f"version {args.version}, {args.repeats} alternating repeats, {torch.get_num_threads()} threads")
    print(f"robust accuracy: ours {results['ours']:.4f}, pyautoattack direct {results['direct']:.4f}"
          f" ({'same' if results['ours'] == results['direct'] else 'DIFFERENT'})")
    print(f"ours (evaluate_autoattack):   {mo:.3f} s median  {sorted(round(t, 3) for t in t_ours)}")
    print(f"pyautoattack direct:          {md:.3f} s median  {sorted(round(t, 3) for t in t_direct)}")
    print(f"ratio ours/direct time: {mo / md:.3f}x, overhead {100 * overhead:+.2f}% (target <= 5%)")
    return overhead


if __name__ == "__main__":
    main()

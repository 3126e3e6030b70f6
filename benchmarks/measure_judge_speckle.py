"""Does the judge's FD read SGLD's pixel speckle?  The judge metrics of generated sets as they are
and after a 3x3 median filter applied to both the generated and the reference images.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/measure_judge_speckle.py runs/gen/fmnist-*-s0

Each DIR is a `bench run --suite generative` folder on Fashion-MNIST (DIR/samples/samples.npz);
the judge is the shipped one, the reference the first 10,000 training images (the metric's)."""

from __future__ import annotations

import sys

import numpy as np
import torch
from scipy.ndimage import median_filter
from torch_fidelity.metric_fid import fid_features_to_statistics

from bench.engines import judges
from bench.engines.density_coverage import density_coverage
from bench.engines.frechet import frechet
from bench.inputs import data


def median(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(median_filter(x.numpy(), size=(1, 1, 3, 3), mode="nearest"))


def scores(judge, x, ref_x):
    _, f = judges.judge_outputs(judge, x)
    _, rf = judges.judge_outputs(judge, ref_x)
    st = fid_features_to_statistics(rf.double())
    idx = torch.linspace(0, len(rf) - 1, len(f)).round().long()
    dc = density_coverage(rf[idx], f)
    return frechet(f, st["mu"], st["sigma"]), dc["density"], dc["coverage"]


def main() -> None:
    ds = data.load("fashion-mnist")
    path, source = judges.judge_path(ds.name, None)
    judge = judges.load_judge(path, source, 10, (1, 28, 28))
    ref = ds.train.x[:10000]
    ref_med = median(ref)
    print("| run | FD (judge) | density | coverage | FD, median 3x3 | density | coverage |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for d in sys.argv[1:]:
        z = np.load(f"{d}/samples/samples.npz")
        x = torch.from_numpy(z["x"]).float()
        x = x[torch.isfinite(x.flatten(1)).all(1)]
        raw, med = scores(judge, x, ref), scores(judge, median(x), ref_med)
        print(f"| {d.rstrip('/').split('/')[-1]} | " + " | ".join(f"{v:.3f}" for v in (*raw, *med)) + " |", flush=True)


if __name__ == "__main__":
    main()

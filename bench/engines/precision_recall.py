"""Precision and recall of generated features against real ones (Kynkaanniemi et al. 2019), on any
device, in blocks: the computation of torch-fidelity's ``prc_features_to_metric`` (its
``save_cpu_ram`` form, the suite's before this module) without moving the distance blocks to the CPU.

Each point's radius is the distance to its k-th nearest neighbour in its own set (the (k+1)-th
smallest distance, itself at 0 included); recall is the share of real points within the radius of
some generated point, precision the share of generated points within the radius of some real one.
The distances are torch-fidelity's: ``torch.cdist`` of the same (block x block) pairs; the radius
is kept as a running k+1 smallest over the column blocks instead of a ``kthvalue`` of the whole
row, which selects the same value, so the precision and recall are equal to torch-fidelity's
(tests/test_precision_recall.py), with memory of one block x block distance matrix on the device.
"""

from __future__ import annotations

import torch


def precision_recall(gen: torch.Tensor, real: torch.Tensor, k: int, block: int) -> tuple[float, float]:
    """(precision, recall) of the features gen (generated, N x D) and real (M x D), both with more
    than k points, on their device, distances in blocks of ``block`` rows and columns."""
    if min(len(gen), len(real)) <= k:
        raise ValueError(f"precision/recall need more than {k} points on each side; got {len(gen)} and {len(real)}")
    radius_gen, radius_real = _kth_distance(gen, k, block), _kth_distance(real, k, block)
    recall = _share_inside(real, gen, radius_gen, block)
    precision = _share_inside(gen, real, radius_real, block)
    return precision, recall


def _kth_distance(x: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Per row of x, its (k+1)-th smallest distance to the rows of x (its own 0 included)."""
    out = []
    for xb in x.split(block):
        best = None
        for yb in x.split(block):
            d = torch.cdist(xb, yb)
            d = d if best is None else torch.cat([best, d], dim=1)
            best = d.topk(min(k + 1, d.shape[1]), dim=1, largest=False).values  # ascending
        out.append(best[:, k])
    return torch.cat(out)


def _share_inside(x: torch.Tensor, centres: torch.Tensor, radius: torch.Tensor, block: int) -> float:
    """The share of rows of x within ``radius`` of some row of ``centres`` (distance <= radius),
    as torch-fidelity's float32 mean of the 0/1 flags."""
    flags = []
    for xb in x.split(block):
        inside = torch.zeros(len(xb), dtype=torch.bool, device=x.device)
        for cb, rb in zip(centres.split(block), radius.split(block), strict=True):
            inside |= (torch.cdist(xb, cb) <= rb).any(dim=1)
        flags.append(inside.float())
    return torch.cat(flags).mean().item()

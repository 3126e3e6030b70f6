"""Light, batched augmentation for training (the in-domain judges, docs/JUDGES.md).

``augment`` shifts each image by a random whole number of pixels in [-shift, shift] along each
axis (zeros come in at the border: the digits and Fashion-MNIST backgrounds are black) and flips
half the images left to right when ``hflip``.  With neither it returns ``x`` itself and draws no
random number, so recipes without augmentation train exactly as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, shift: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    if not shift and not hflip:
        return x
    n = len(x)
    if hflip:
        flip = torch.rand(n, generator=generator, device=x.device) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    if shift:
        x = translate(x, torch.randint(-shift, shift + 1, (n, 2), generator=generator, device=x.device))
    return x


def translate(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Each image ``x[i]`` moved by ``offsets[i] = (dx, dy)`` whole pixels (right, down), zero fill."""
    n, _, h, w = x.shape
    p = int(offsets.abs().max()) if len(offsets) else 0
    if p == 0:
        return x
    padded = F.pad(x, (p, p, p, p))
    rows = torch.arange(h, device=x.device).view(1, h, 1) + p - offsets[:, 1].view(n, 1, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) + p - offsets[:, 0].view(n, 1, 1)
    idx = (rows * (w + 2 * p) + cols).view(n, 1, h * w).expand(n, x.shape[1], h * w)
    return padded.flatten(2).gather(2, idx).view_as(x)

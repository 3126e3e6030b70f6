"""What a metric group costs, as a fact of the group: its work in passes of the model, images
through the feature extractor and SSIM pairs, declared beside it (``@register(cost=...)``) as a
function of the run's resolved settings and the data's sizes.  ``bench.pipeline.plan`` turns the work
into seconds with a short timing probe of this device (``bench run --plan``).

The kinds of work (``KINDS``), each counted in images (one image through one pass) and in calls
(batches: a call's fixed cost dominates a small network's pass):

- ``forward``: the model's forward pass without gradient;
- ``backward``: a forward and a backward pass to the input (an attack step, an SGLD step);
- ``second``: a forward and a double backward (one Hutchinson probe of a Hessian's trace);
- ``extractor``: an image through the FID feature extractor (Inception at 299 x 299);
- ``ssim``: one SSIM comparison of two images (counted as images, no calls);
- ``stats``: the multiply-adds of the statistics computed on features after the passes (KID's
  kernel matrices, FD-infinity's Frechet distances), in float32 units (a float64 multiply-add
  counts 2); the probe times a float32 matrix product;
- ``figure``: an image panel of a figure drawn and saved (an image without ticks: the sample,
  neighbour and denoising grids), its calls the figures;
- ``chart``: a chart panel (axes with ticks, labels, bars or lines, a legend: reliability
  diagrams, histograms, contours and their colour bars, curves), its calls the figures.  A chart
  panel costs several image panels (0.07 s and 0.013 s here), so the probe times each kind apart,
  each as figures of 1 and of several panels (a cost per figure and per panel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MODEL_KINDS = ("forward", "backward", "second")
FIGURE_KINDS = ("figure", "chart")
KINDS = (*MODEL_KINDS, "extractor", "ssim", "stats", *FIGURE_KINDS)


@dataclass(frozen=True)
class Work:
    """Images and calls per kind (``KINDS``); ``note``: what the count assumes, said in the plan."""

    forward: float = 0.0
    backward: float = 0.0
    second: float = 0.0
    extractor: float = 0.0
    ssim: float = 0.0
    stats: float = 0.0
    figure: float = 0.0
    chart: float = 0.0
    calls: dict = field(default_factory=dict)  # kind -> model calls (batches)
    note: str = ""

    def __add__(self, other: Work) -> Work:
        calls = {k: self.calls.get(k, 0) + other.calls.get(k, 0) for k in {*self.calls, *other.calls}}
        note = "; ".join(dict.fromkeys(part for n in (self.note, other.note) if n for part in n.split("; ")))
        return Work(**{k: getattr(self, k) + getattr(other, k) for k in KINDS}, calls=calls, note=note)

    def images(self, kind: str) -> float:
        return getattr(self, kind)

    def forward_equivalents(self) -> float:
        """The model's passes as forwards: a backward counts 3 (forward, then twice its arithmetic
        back), a double backward 5; the extractor and SSIM are not the model's and are left out."""
        return self.forward + 3 * self.backward + 5 * self.second

    def summary(self) -> str:
        parts = []
        for k, label in (("forward", "fwd"), ("backward", "fwd+bwd"), ("second", "2nd-order"),
                         ("extractor", "extractor images"), ("ssim", "SSIM pairs"),
                         ("stats", "statistics multiply-adds")):
            if getattr(self, k):
                parts.append(f"{_count(getattr(self, k))} {label}")
        n_figures = sum(self.calls.get(k, 0) for k in FIGURE_KINDS)
        if n_figures:
            parts.append(f"{n_figures:.0f} figure(s)")
        return ", ".join(parts) or "nothing"


def passes(kind: str, n: float, batch: int, steps: float = 1, note: str = "") -> Work:
    """``steps`` passes of ``kind`` over ``n`` images in batches of ``batch``."""
    if n <= 0 or steps <= 0:
        return Work()
    return Work(**{kind: n * steps}, calls={kind: math.ceil(n / max(1, batch)) * steps}, note=note)


def figures(n: int, panels: int = 1) -> Work:
    """``n`` figures of ``panels`` image panels each."""
    return Work(figure=n * panels, calls={"figure": n}) if n > 0 else Work()


def charts(n: int, panels: int = 1) -> Work:
    """``n`` figures of ``panels`` chart panels each."""
    return Work(chart=n * panels, calls={"chart": n}) if n > 0 else Work()


def images(kind: str, n: float) -> Work:
    """``n`` images of a kind without model calls (``extractor``, ``ssim``; ``stats``: multiply-adds)."""
    return Work(**{kind: max(0.0, n)})


@dataclass(frozen=True)
class Sizes:
    """The data's sizes a cost reads: the test and training splits, the classes, the image shape;
    ``reference_cached``: whether FID's reference features are at hand (shipped or on disk; None
    unknown); ``accuracy``: the model's clean accuracy on the first batch of test points (the
    probe's), which bounds the share of points an attack must keep attacking; ``dataset``: its name."""

    n_test: int
    n_train: int
    num_classes: int
    image_shape: tuple
    reference_cached: bool | None = None
    accuracy: float | None = None
    dataset: str | None = None  # the data set's name (its shipped judge)


def _count(v: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.0f}"


def count(s, key: str, total: int, default: int | None = None) -> int:
    """A count setting as a run uses it: its value (or ``default``, or ``total``) capped at ``total``."""
    v = s.get(key)
    v = default if v is None else v
    return int(min(total, v if v is not None else total))


def batch(s) -> int:
    return int(s.get("batch_size") or 250)

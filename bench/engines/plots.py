"""Figures as PNG files: plain functions on matplotlib's Agg canvas.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot, so
nothing here touches the global backend or pyplot's figure registry: the functions run headless,
in threads and under pytest, and leave an interactive session's backend alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 120


def new_figure(width: float, height: float) -> Figure:
    """A figure (size in inches) on its own Agg canvas, with constrained layout."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def panel_grid(n: int, max_cols: int, width: float, height: float, title: str = "") -> tuple[Figure, list]:
    """A figure of ``n`` panels in rows of at most ``max_cols`` (each ``width`` x ``height`` inches,
    room for a suptitle when ``title``): the n axes in reading order; spare cells are switched off."""
    cols = min(n, max_cols)
    rows = -(-n // cols)
    fig = new_figure(width * cols, height * rows + (0.3 if title else 0))
    axes = [ax for row in fig.subplots(rows, cols, squeeze=False) for ax in row]
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes[:n]


def save(fig: Figure, path: str | Path, model: str = "") -> Path:
    """Write ``fig`` as PNG to ``path`` (parent folders created) and return the path; a failed
    write is ``CannotWrite`` (``cannot write PATH: reason``).  ``model``: the evaluated model's name
    (``Context.figure(...).model``), put first in the figure's title, so that a figure copied out
    of its run still says whose it is.  Under torchrun only rank 0 renders: the other ranks of a
    sharded group draw into a scratch folder nobody reads, so their figures are not rendered."""
    from bench.core.errors import CannotWrite
    from bench.runtime import distributed

    if not distributed.is_main():
        return Path(path)
    if model:
        fig.suptitle("\n".join(t for t in (f"model: {model}", fig.get_suptitle()) if t), fontsize=9)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=DPI)
    except OSError as e:  # disk full, read-only: one error line, not a traceback from matplotlib
        raise CannotWrite(path, e) from None
    return path


def reliability_diagram(bins_stats: Mapping, path: str | Path, title: str = "", model: str = "") -> Path:
    """Reliability diagram in the style of the paper's Fig. 16 (after Guo et al. 2017).

    ``bins_stats`` is the per-bin record of ``bench.metrics.calibration.expected_calibration_error``:
    ``edges`` (B + 1 bin edges), ``count``, ``accuracy`` and ``confidence`` per bin (None for an
    empty bin), and optionally ``ece``, ``avg_accuracy``, ``avg_confidence``.

    Top panel: per-bin accuracy as bars and the diagonal of perfect calibration; the gap between
    average confidence and accuracy drawn from one to the other, each way in its own legended
    colour: red above the bar where the bin is over-confident (confidence above accuracy), dark
    over the bar's top where it is under-confident (accuracy above confidence).  Bottom panel: the
    confidence histogram (examples per bin) with vertical lines at the average confidence and the
    accuracy.  A long ``title`` wraps; ``model`` names the model above it.
    """
    import textwrap

    count = [int(c) for c in bins_stats["count"]]
    nbins = len(count)
    edges = list(bins_stats.get("edges") or [i / nbins for i in range(nbins + 1)])
    if len(edges) != nbins + 1:
        raise ValueError(f"reliability diagram: {nbins} bins need {nbins + 1} edges, got {len(edges)}")
    acc = [_num(a) for a in bins_stats["accuracy"]]
    conf = [_num(c) for c in bins_stats["confidence"]]
    lefts, widths = edges[:-1], [edges[i + 1] - edges[i] for i in range(nbins)]
    full = [i for i in range(nbins) if count[i] > 0]
    n = sum(count)
    avg_conf = _num(bins_stats.get("avg_confidence"))
    avg_acc = _num(bins_stats.get("avg_accuracy"))
    if n and math.isnan(avg_conf):
        avg_conf = sum(count[i] * conf[i] for i in full) / n
    if n and math.isnan(avg_acc):
        avg_acc = sum(count[i] * acc[i] for i in full) / n

    fig = new_figure(4.8, 6.6)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})

    top.plot([0, 1], [0, 1], ls="--", color="0.45", lw=1, label="Perfect calibration", zorder=1)
    top.bar([lefts[i] for i in full], [acc[i] for i in full], width=[widths[i] for i in full],
            align="edge", color="#1f77b4", edgecolor="black", lw=0.6, label="Accuracy", zorder=2)
    # gap: from the bin's accuracy up to its confidence (over-confident: on white, above the bar) or
    # down (under-confident: over the bar's top), opaque so each shows the colour its legend entry does
    from matplotlib.patches import Patch

    handles = top.get_legend_handles_labels()[0]
    for sign, colour, edge, hatch, label in (
            (1, "#f4a4a4", "#d62728", "//", "Gap, over-confident (confidence > accuracy)"),
            (-1, "#0b2e59", "white", "\\\\", "Gap, under-confident (accuracy > confidence)")):
        bins = [i for i in full if sign * (conf[i] - acc[i]) > 0]
        top.bar([lefts[i] for i in bins], [conf[i] - acc[i] for i in bins], bottom=[acc[i] for i in bins],
                width=[widths[i] for i in bins], align="edge", color=colour, edgecolor=edge, lw=0.6, hatch=hatch,
                zorder=3)
        handles.append(Patch(facecolor=colour, edgecolor=edge, hatch=hatch, lw=0.6, label=label))
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("Accuracy")
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=7, frameon=True)
    ece = _num(bins_stats.get("ece"))
    if not math.isnan(ece):
        top.text(0.97, 0.04, f"ECE = {100 * ece:.2f}%", transform=top.transAxes, ha="right", va="bottom",
                 fontsize=10, bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.6"})
    if title:
        top.set_title(textwrap.fill(title.replace(" = ", "\u00a0=\u00a0"), 58, break_on_hyphens=False), fontsize=10)  # "n = 450" unbroken

    bottom.bar(lefts, count, width=widths, align="edge", color="#1f77b4", edgecolor="black", lw=0.6)
    if n:
        bottom.axvline(avg_acc, color="black", lw=1.6, ls="-", label=f"Accuracy ({100 * avg_acc:.1f}%)")
        bottom.axvline(avg_conf, color="#d62728", lw=1.6, ls="--",
                       label=f"Avg. confidence ({100 * avg_conf:.1f}%)")
        bottom.legend(loc="upper left", fontsize=8, frameon=True)
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("Confidence")
    bottom.set_ylabel("Count")
    return save(fig, path, model)


def _num(v) -> float:
    return math.nan if v is None else float(v)


# --------------------------------------------------------------------------------------------
# images, SSIM neighbours (Fig. 7), energy contours (Fig. 2, 13), denoising (Fig. 15)


def _image(ax, img, title: str = "", fontsize: float = 7) -> None:
    """Show one image (C, H, W) in [0, 1] (tensor or array): grey for one channel, RGB for three."""
    import numpy as np

    a = img.detach().cpu().float().numpy() if hasattr(img, "detach") else np.asarray(img, dtype=float)
    a = np.clip(a, 0, 1)
    if a.ndim == 3 and a.shape[0] == 1:
        ax.imshow(a[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    elif a.ndim == 3:
        ax.imshow(a.transpose(1, 2, 0), interpolation="nearest")
    else:
        ax.imshow(a, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def ssim_neighbours_grid(generated, neighbours, ssim_values, path: str | Path, title: str = "", model: str = "") -> Path:
    """Fig. 7: each row a generated image, then its k nearest training images, SSIM in the titles.

    ``generated`` (R, C, H, W); ``neighbours`` (R, k, C, H, W); ``ssim_values`` (R, k)."""
    rows, k = int(neighbours.shape[0]), int(neighbours.shape[1])
    fig = new_figure(1.0 * (k + 1) + 0.3, 1.1 * rows + (0.4 if title else 0.1))
    axes = fig.subplots(rows, k + 1, squeeze=False)
    for r in range(rows):
        _image(axes[r][0], generated[r], "generated" if r == 0 else "")
        axes[r][0].set_ylabel(f"#{r}", fontsize=7)
        for j in range(k):
            _image(axes[r][j + 1], neighbours[r][j], f"SSIM {float(ssim_values[r][j]):.3f}")
        for side in ("left", "right", "top", "bottom"):
            axes[r][0].spines[side].set_color("#d62728")
            axes[r][0].spines[side].set_linewidth(1.5)
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path, model)


def _contour(ax, energies, coords, image=None, title: str = "", levels: int = 20):
    """Filled energy contour on the (alpha, beta) plane; darker is lower energy (Fig. 2, 13).
    The centre (the image itself) is a blue star, the grid's minimum a white cross."""
    import numpy as np

    e = energies.detach().cpu().double().numpy() if hasattr(energies, "detach") else np.asarray(energies, float)
    c = coords.detach().cpu().double().numpy() if hasattr(coords, "detach") else np.asarray(coords, float)
    cs = ax.contourf(c, c, e.T, levels=levels, cmap="viridis")  # e[i, j]: alpha = c[i] (x axis), beta = c[j]
    ax.contour(c, c, e.T, levels=levels, colors="k", linewidths=0.3, alpha=0.4)
    i, j = np.unravel_index(np.argmin(e), e.shape)
    ax.plot([0], [0], marker="*", color="#1f77b4", markersize=13, markeredgecolor="white", label="image",
            clip_on=False, zorder=5)
    ax.plot([c[i]], [c[j]], marker="x", color="white", markersize=8, mew=2, label="grid minimum",
            clip_on=False, zorder=6, path_effects=[_stroke()])
    ax.set_aspect("equal")
    ax.set_xlabel(r"$\alpha$ (direction 1)", fontsize=8)
    ax.set_ylabel(r"$\beta$ (direction 2)", fontsize=8)
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=8)
    if image is not None:
        inset = ax.inset_axes([0.0, 0.0, 0.22, 0.22])
        _image(inset, image)
    return cs


def _stroke():
    from matplotlib import patheffects

    return patheffects.withStroke(linewidth=3.5, foreground="black")


def energy_contour(energies, coords, path: str | Path, image=None, title: str = "", model: str = "") -> Path:
    """One energy landscape: ``energies`` (R, R) of E(x + alpha d1 + beta d2, y) over ``coords`` (R,)
    for alpha (first axis) and beta (second axis), with a colour bar and the image as an inset."""
    fig = new_figure(4.4, 3.8)
    ax = fig.subplots()
    cs = _contour(ax, energies, coords, image, title)
    cb = fig.colorbar(cs, ax=ax)
    cb.set_label("energy E(x, y)", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    ax.legend(loc="upper right", fontsize=7, framealpha=0.7)
    return save(fig, path, model)


def energy_contours(energies, coords, path: str | Path, images=None, titles=None, title: str = "",
                    model: str = "") -> Path:
    """Several energy landscapes side by side: ``energies`` (n, R, R), ``coords`` (R,), one panel
    each (own colour scale), images as insets."""
    fig, axes = panel_grid(int(energies.shape[0]), 4, 3.3, 3.1, title)
    for i, ax in enumerate(axes):
        cs = _contour(ax, energies[i], coords, None if images is None else images[i],
                      titles[i] if titles else "")
        cb = fig.colorbar(cs, ax=ax, shrink=0.8)
        cb.set_label("energy", fontsize=7)
        cb.ax.tick_params(labelsize=6)
    if len(axes):
        axes[0].legend(loc="upper right", fontsize=6, framealpha=0.7)  # the markers: image, grid minimum
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path, model)


def image_columns(columns, path: str | Path, title: str = "", row_labels=None, model: str = "") -> Path:
    """A grid with one column per (heading, images (R, C, H, W)) pair, e.g. Fig. 15: original |
    noisy | denoised after 10 steps | after 50 steps."""
    rows = int(columns[0][1].shape[0])
    ncol = len(columns)
    fig = new_figure(1.25 * ncol + 0.3, 1.15 * rows + (0.45 if title else 0.2))
    axes = fig.subplots(rows, ncol, squeeze=False)
    for j, (heading, imgs) in enumerate(columns):
        for r in range(rows):
            _image(axes[r][j], imgs[r], heading if r == 0 else "", fontsize=7)
            if j == 0 and row_labels is not None:
                axes[r][0].set_ylabel(str(row_labels[r]), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path, model)


# --------------------------------------------------------------------------------------------
# OOD detection (JEM's Fig. 5)


LOG_SCALE_SHARE = 0.8  # a histogram with one bin above this share of its points gets a log density axis


def ood_histograms(in_scores, out_scores: Mapping, path: str | Path, score: str = "score", title: str = "",
                   auroc: Mapping | None = None, model: str = "") -> Path:
    """Histograms of one OOD score: the in-distribution scores ``in_scores`` (N,) against each set
    of ``out_scores`` ({set name: (M,)}), one panel per set, shared bins over both, densities; each
    set's ``auroc`` in its panel's title, and a log density axis where one bin holds most points
    (over 80 % of either histogram)."""
    import numpy as np

    def arr(v):
        return np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=np.float64).ravel()

    a = arr(in_scores)
    sets = {k: arr(v) for k, v in out_scores.items()}
    fig, axes = panel_grid(max(1, len(sets)), 3, 3.4, 2.6, title)
    for ax in axes[len(sets):]:  # no OOD set: one empty panel, switched off
        ax.set_axis_off()
    for ax, (name, b) in zip(axes, sets.items(), strict=False):
        both = np.r_[a, b]
        both = both[np.isfinite(both)]
        lo, hi = (both.min(), both.max()) if len(both) else (0.0, 1.0)
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, 41)
        ca, _, _ = ax.hist(a[np.isfinite(a)], bins=edges, density=True, alpha=0.55, color="#1f77b4",
                           label="in-distribution")
        cb, _, _ = ax.hist(b[np.isfinite(b)], bins=edges, density=True, alpha=0.55, color="#d62728", label=name)
        peaked = any(c.sum() > 0 and c.max() > LOG_SCALE_SHARE * c.sum() for c in (ca, cb))
        if peaked:
            ax.set_yscale("log")
        ax.set_xlabel(score, fontsize=7)
        ax.set_ylabel("density (log)" if peaked else "density", fontsize=7)
        v = (auroc or {}).get(name)
        if v is not None:
            ax.set_title(f"{name}: AUROC {v:.3f}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=7, framealpha=0.7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path, model)


def robustness_curves(lines, path: str | Path, title: str = "", xlabel: str = "eps", model: str = "") -> Path:
    """Accuracy (%) against the attack radius: one line per ``(label, eps, accuracy, standard
    error)`` of ``lines`` (accuracies as fractions), each with a +-1 standard error band.  A label
    ``run: attack`` takes its run's colour and its attack's line style (several runs on one plot);
    the legend sits beside the axes."""
    import itertools

    from matplotlib import colormaps

    runs = list(dict.fromkeys(lab.rpartition(": ")[0] for lab, *_ in lines))
    attacks = list(dict.fromkeys(lab.rpartition(": ")[2] for lab, *_ in lines))
    cmap = colormaps["tab10" if len(runs) <= 10 else "tab20"]
    styles = dict(zip(attacks, itertools.cycle(["-", "--", ":", "-."]), strict=False))
    markers = dict(zip(attacks, itertools.cycle("osD^v"), strict=False))
    fig = new_figure(5.2 + (2.2 if len(lines) > 3 else 0), 3.6)
    ax = fig.add_subplot()
    for label, eps, acc, se in lines:
        run, _, attack = label.rpartition(": ")
        colour = cmap(runs.index(run) % cmap.N) if len(runs) > 1 else cmap(attacks.index(attack) % cmap.N)
        a = [100 * v for v in acc]
        band = [100 * v for v in se]
        ax.plot(eps, a, marker=markers[attack], markersize=3, linestyle=styles[attack] if len(runs) > 1 else "-",
                color=colour, label=label)
        ax.fill_between(eps, [v - b for v, b in zip(a, band, strict=True)],
                        [v + b for v, b in zip(a, band, strict=True)], color=colour, alpha=0.15)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("accuracy (%)", fontsize=8)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
    if lines:
        outside = len(lines) > 3
        ax.legend(fontsize=6 if outside else 7, framealpha=0.7, loc="upper left" if outside else "best",
                  bbox_to_anchor=(1.02, 1) if outside else None)
    if title:
        ax.set_title(title, fontsize=9)
    return save(fig, path, model)

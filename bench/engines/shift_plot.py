"""The shift suite's figure (``figures/shift_severity.png``): accuracy, ECE and the energy AUROC
against the corruption severity, each a mean over the corruptions (severity 0: the clean points)."""

from __future__ import annotations

from pathlib import Path

from bench.engines.plots import panel_grid, save


def severity_curves(accuracy, ece, auroc, path: str | Path, title: str = "", model: str = "") -> Path:
    """Three panels over severities 0..5: ``accuracy`` and ``ece`` (6 fractions each, severity 0
    clean) and ``auroc`` (5 fractions, severities 1..5; chance, 0.5, dotted)."""
    fig, axes = panel_grid(3, 3, 2.6, 2.4, title)
    panels = ((axes[0], range(6), accuracy, "accuracy (%)"), (axes[1], range(6), ece, "ECE (%)"),
              (axes[2], range(1, 6), auroc, "AUROC, E(x) (%)"))
    for ax, xs, ys, label in panels:
        ax.plot(list(xs), [100 * v for v in ys], marker="o", markersize=3)
        ax.set_xlabel("severity (0: clean)", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.set_xticks(range(6))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[2].axhline(50, linestyle=":", color="grey", linewidth=1)
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path, model)

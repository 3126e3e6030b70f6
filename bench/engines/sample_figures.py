"""Generated images as the paper's Fig. 6: one row per class (``sample_mosaic``, ``sample_grid``),
drawn on ``bench.engines.plots``' canvas; the run's samples (``bench.engines.generation``) and
``bench samples`` use them."""

from __future__ import annotations

from pathlib import Path

from bench.engines.plots import new_figure, save


def sample_mosaic(x, y, per_class: int = 10, num_classes: int | None = None, pad: int = 1):
    """The Fig. 6 layout as one RGB array: row c holds the first ``per_class`` images of label c
    (x (N, C, H, W) in [0, 1], y (N,)); pads are white, empty cells light grey, and a diverged
    (non-finite) image is a red cell.  -> (array (R*(H+pad)+pad, K*(W+pad)+pad, 3), row labels)."""
    import numpy as np

    a = x.detach().cpu().float().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float32)
    lab = y.detach().cpu().numpy() if hasattr(y, "detach") else np.asarray(y)
    n, c, h, w = a.shape
    rows = list(range(int(num_classes))) if num_classes else sorted(int(v) for v in np.unique(lab))
    cols = max(1, min(int(per_class), max((int((lab == r).sum()) for r in rows), default=1)))
    mosaic = np.ones((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), dtype=np.float32)
    for i, r in enumerate(rows):
        idx = np.flatnonzero(lab == r)[:cols]
        for j in range(cols):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            cell = mosaic[top:top + h, left:left + w]
            if j >= len(idx):
                cell[:] = 0.85
                continue
            img = a[idx[j]]
            if not np.isfinite(img).all():
                cell[:] = (0.85, 0.1, 0.1)
                continue
            img = np.clip(img, 0, 1).transpose(1, 2, 0)
            cell[:] = img if c == 3 else np.repeat(img[..., :1], 3, axis=2)
    return mosaic, rows


def sample_grid(x, y, path: str | Path, class_names=None, per_class: int = 10, title: str = "",
                num_classes: int | None = None, model: str = "") -> Path:
    """Generated images, one row per class as in the paper's Fig. 6 (first ``per_class`` images
    of each class; diverged chains, NaN images, shown as red cells).  One image on one axes, so
    100 classes x 10 columns draw as fast as 10 x 10."""
    if num_classes is None and class_names:
        num_classes = len(class_names)
    mosaic, rows = sample_mosaic(x, y, per_class, num_classes)
    h_px, w_px = mosaic.shape[:2]
    cell = 0.55 if x.shape[-1] <= 16 else 0.8  # inches per image
    n_cols = max(1, round((w_px - 1) / (x.shape[-1] + 1)))
    width = cell * n_cols + 1.0
    height = width * h_px / w_px * (width - 1.0) / width + (0.45 if title else 0.15)
    fig = new_figure(width, max(1.2, height))
    ax = fig.subplots()
    ax.imshow(mosaic, interpolation="nearest")
    h = x.shape[-2]
    ax.set_yticks([1 + i * (h + 1) + h / 2 - 0.5 for i in range(len(rows))])
    names = [str(class_names[r]) if class_names and r < len(class_names) else str(r) for r in rows]
    ax.set_yticklabels(names, fontsize=7 if len(rows) <= 20 else 4)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ("left", "right", "top", "bottom"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=8)
    return save(fig, path, model)

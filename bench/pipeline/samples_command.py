"""``bench samples``: sample quality of any generator's images, no model needed.

Reading (``read_samples``): PATH is

- an ``.npz`` with ``x`` (uint8, (N, H, W, C) or (N, H, W); or float in [0, 1], (N, C, H, W)) and
  optionally ``y`` (N non-negative integer labels); bench's own ``samples/samples.npz`` qualifies
  (its NaN images, diverged SGLD chains, are left out and counted);
- a folder of PNG images, flat (no labels) or with one subfolder per class (labels: the folder
  name when every name is an integer, else the index of the name in sorted order), read by
  ``bench.inputs.images`` (palette images as their palette's values, alpha refused);
- a ``.pt`` file read with ``torch.load(weights_only=True)``: a tensor laid out as ``x`` above, or
  a dict with ``x`` and optionally ``y``.

Images must have the data set's shape (C, H, W); grey data accept RGB images whose three channels
are equal.  Anything else is a one-line error.

Evaluating (``evaluate``), against the training split of the data set: ``fid``, ``kid_mean`` /
``kid_std``, ``precision`` / ``recall``, ``is_mean`` / ``is_std`` (null without Inception logits),
exactly as ``bench run --suite generative`` computes them (``bench.engines.sample_quality``), plus
``ssim_nn`` (mean SSIM to the nearest training image, ``bench.engines.ssim``) and
``diversity_ssim``.  Output as ``bench run``: OUT/results.json (schema 1; its model section
describes the sample file and its sha256), OUT/tables, OUT/report.html.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.core import fileio
from bench.core.errors import BenchError
from bench.runtime.execution import Execution, resolve_device

IMAGE_SUFFIXES = (".png",)


@dataclass
class SampleSet:
    """Finite images (N, C, H, W) float32 in [0, 1], labels (N,) or None, and where they came from."""

    x: torch.Tensor
    y: torch.Tensor | None
    info: dict = field(default_factory=dict)


def _from_arrays(x, y, where: str) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(images, labels or None, images dropped): float images holding NaN or inf anywhere (bench's
    diverged SGLD chains) are left out, with their labels."""
    from bench.inputs import data

    x = np.asarray(x)
    keep = np.ones(len(x), dtype=bool)
    if np.issubdtype(x.dtype, np.floating) and x.ndim >= 3:
        keep = np.isfinite(x.reshape(len(x), -1)).all(1)
        if not keep.any():
            raise BenchError(f"{where}: every image holds NaN or inf")
    imgs = data.as_images(x[keep], where)
    labels = None
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(x):
            raise BenchError(f"{where}: y must hold one label per image, got shape {y.shape} for {len(x)} images")
        labels = data.as_labels(y[keep], len(imgs), where)
    return imgs, labels, int((~keep).sum())


def _read_npz(p: Path):
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k in ("x", "y")}
    except Exception as e:
        raise BenchError(f"{p}: not a readable .npz ({type(e).__name__})") from None
    if "x" not in arrays:
        raise BenchError(f"{p}: needs an array x (and optionally y)")
    return _from_arrays(arrays["x"], arrays.get("y"), str(p)) + ("npz",)


def _read_pt(p: Path):
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise BenchError(f"{p}: not loadable with torch.load(weights_only=True) ({type(e).__name__})") from None
    if isinstance(obj, dict):
        if "x" not in obj:
            raise BenchError(f"{p}: a dict of samples needs the key x (and optionally y), found {sorted(map(str, obj))}")
        x, y = obj["x"], obj.get("y")
    else:
        x, y = obj, None
    if not isinstance(x, torch.Tensor) or (y is not None and not isinstance(y, torch.Tensor)):
        raise BenchError(f"{p}: expected a tensor of images (or a dict of tensors x, y)")
    return _from_arrays(x.detach().cpu().numpy(), None if y is None else y.cpu().numpy(), str(p)) + ("pt",)


def _read_folder(p: Path):
    from bench.inputs import images

    flat, broken = images.image_files(p, IMAGE_SUFFIXES)
    subs = sorted(d for d in p.iterdir() if d.is_dir())
    if flat and subs:
        raise BenchError(f"{p}: holds both images and subfolders; use one folder per class, or a flat folder")
    if flat:
        files, labels = flat, None
    else:
        per = []
        for d in subs:
            fs, b = images.image_files(d, IMAGE_SUFFIXES)
            broken += b
            if fs:
                per.append((d, fs))
        if not per:
            raise BenchError(f"{p}: no .png images in it or in its subfolders")
        names = [d.name for d, _ in per]
        ids = [int(n) for n in names] if all(n.isdigit() for n in names) else list(range(len(names)))
        files = [f for _, fs in per for f in fs]
        labels = np.array([i for i, (_, fs) in zip(ids, per, strict=True) for _ in fs], dtype=np.int64)
    images.warn_broken(p, broken)
    x, y, dropped = _from_arrays(images.read_images(files, p), labels, str(p))
    return x, y, dropped, "png-folder", files


def read_samples(path: str | Path, shape: tuple | None = None, num_classes: int | None = None) -> SampleSet:
    """Read generated images from an .npz, a PNG folder or a .pt file (module docstring); checks
    them against the data set's image ``shape`` (C, H, W) and ``num_classes`` when given."""
    p = Path(path).expanduser()
    if not p.exists():
        raise BenchError(f"samples not found: {p}")
    files = None
    if p.is_dir():
        x, y, dropped, fmt, files = _read_folder(p)
        digest = fileio.sha256_files(files, p)
    elif p.suffix.lower() == ".npz":
        x, y, dropped, fmt = _read_npz(p)
        digest = fileio.sha256(p)
    elif p.suffix.lower() in (".pt", ".pth"):
        x, y, dropped, fmt = _read_pt(p)
        digest = fileio.sha256(p)
    else:
        raise BenchError(f"{p}: samples must be an .npz, a .pt file or a folder of PNG images")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        if shape[0] == 1 and x.shape[1] == 3 and tuple(x.shape[2:]) == tuple(shape[1:]) \
                and bool((x[:, :1] == x[:, 1:]).all()):
            x = x[:, :1].contiguous()  # grey images stored as RGB
        else:
            raise BenchError(f"{p}: images of shape {tuple(x.shape[1:])}, the data set's are {tuple(shape)}")
    if y is not None and num_classes is not None and len(y) and int(y.max()) >= num_classes:
        raise BenchError(f"{p}: label {int(y.max())} but the data set has {num_classes} classes")
    info = {"path": str(p), "sha256": digest, "format": fmt, "n": len(x), "n_nonfinite_dropped": dropped,
            "labels": y is not None}
    if files is not None:
        info["files"] = len(files)
    return SampleSet(x, y, info)


def evaluate(path: str | Path, dataset: str, out: str | Path, data_root: str | None = None,
             ref_stats: str | None = None, fid_extractor: str = "auto", inception_weights: str | None = None,
             device: str = "auto", batch_size: int | None = None, ssim_k: int = 10, n_ref: int | None = None,
             log=None, extractor_weights: str | None = None):
    """Sample-quality metrics of the images at ``path`` against the training split of ``dataset``;
    writes OUT/results.json, OUT/tables, OUT/figures/samples.png (a grid of the submitted images)
    and OUT/report.html; -> Results."""
    from bench.core import progress
    from bench.core.results import Results
    from bench.core.settings import reference_size
    from bench.engines.features import FEATURE_BATCH
    from bench.inputs import data
    from bench.outputs import table_files
    from bench.pipeline import runner

    log = log or progress.say
    started = time.time()
    out = Path(out)
    dev = resolve_device(device)
    ds = data.load(dataset, data_root)
    samples = read_samples(path, ds.input_shape, ds.num_classes)
    fileio.check_out(out)
    ref = ds.train.subset(reference_size(ds.name, n_ref))  # FID/KID/PR/diversity reference
    bs = min(int(batch_size or FEATURE_BATCH), FEATURE_BATCH)
    config = {"dataset": ds.name, "fid_extractor": fid_extractor, "inception_weights": inception_weights,
              "extractor_weights": extractor_weights, "ref_stats": ref_stats, "batch_size": bs, "ssim_k": ssim_k,
              "n_ref": len(ref)}
    metrics = _feature_metrics(samples, ds, ref, (fid_extractor, inception_weights, extractor_weights), ref_stats,
                               dev, bs, log)
    metrics.update(_ssim_metrics(samples, ds, ref, ssim_k, dev, log))
    metrics["diversity_ssim"].details["grid"] = _grid(samples, ds, out)
    model = {"path": samples.info["path"], "sha256": samples.info["sha256"], "arch": Path(samples.info["path"]).name,
             "method": "samples", "dataset": ds.name, "num_classes": ds.num_classes, "samples": samples.info}
    res = Results(model, {
        "command": "samples", "suites": ["samples"], "seed": None, "device": str(dev), "versions": runner.versions(),
        "started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 2), "config": config}, metrics)
    table_files.write_run_outputs(res, out, log)
    return res


SHOWN = 100  # images in the grid of bench samples: the first ones (per class when labelled)


def _grid(samples: SampleSet, ds, out: Path) -> str:
    """OUT/figures/samples.png: the submitted images, one row per class (10 each) when labelled,
    else the first 100 in rows of 10; -> its path relative to OUT."""
    from bench.engines import sample_figures

    path = out / "figures" / "samples.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if samples.y is not None:
        sample_figures.sample_grid(samples.x, samples.y, path, class_names=ds.classes or None,
                                   num_classes=ds.num_classes, title=f"submitted images, {len(samples.x)} in all")
    else:
        x = samples.x[:SHOWN]
        sample_figures.sample_grid(x, torch.arange(len(x)) // 10, path, class_names=[""] * ((len(x) + 9) // 10),
                                   title=f"the first {len(x)} of {len(samples.x)} submitted images")
    return "figures/samples.png"


def _feature_metrics(samples: SampleSet, ds, ref, extractor: tuple, ref_stats, dev, bs, log) -> dict:
    """FID, IS, KID, precision/recall of the samples (null with a reason where they cannot be had)."""
    from bench.core import progress
    from bench.engines.features import ExtractorUnavailable, resolve_extractor
    from bench.engines.sample_quality import FEATURE_METRICS, fid_is, fid_is_results
    from bench.metrics import Result

    x, n = samples.x, len(samples.x)
    metrics: dict[str, Result] = {}
    feature_names = ("fid", "fid_inf", "is_mean", "is_std", *FEATURE_METRICS)

    t0 = time.time()
    if ds.input_shape[0] not in (1, 3):
        metrics.update({m: Result.missing(f"FID/IS/KID need grey or RGB images; {ds.name} has "
                                          f"{ds.input_shape[0]} channels", n=n) for m in feature_names})
    elif n < 2:
        metrics.update({m: Result.missing(f"{n} images; FID needs 2", n=n) for m in feature_names})
    else:
        try:
            ext = resolve_extractor(*extractor)  # (name, inception weights, encoder weights)
        except ExtractorUnavailable as e:
            metrics.update({m: Result.missing(str(e), n=n) for m in feature_names})
        else:
            log(f"[samples] features of {n} images ({ext.name})")
            r = fid_is(x, ref.x, ext, ds.name, "train", Execution(dev, bs), verbose=progress.interactive(),
                       ref_stats=ref_stats)
            details = {"extractor": ext.name, "extractor_identity": ext.identity, "extractor_source": ext.source,
                       "weights": ext.weights, "feature_layer": ext.fid_layer, "n_generated": n,
                       "reference": f"{ds.name}:train", "n_reference": len(ref), "samples": samples.info["path"],
                       "preprocessing": ext.preprocessing}
            metrics.update(fid_is_results(r, ext, n, details, dev))
    for m in feature_names:
        metrics[m].seconds = time.time() - t0

    return metrics


def _ssim_metrics(samples: SampleSet, ds, ref, ssim_k: int, dev, log) -> dict:
    """SSIM to the nearest training images and the SSIM diversity of the samples."""
    from bench.engines.sample_quality import diversity_result
    from bench.metrics.memorization import ssim_nn_result

    x, y = samples.x, samples.y
    metrics: dict = {}
    t0 = time.time()
    log(f"[samples] SSIM nearest neighbours of {len(x)} images among {len(ds.train)} training images")
    metrics["ssim_nn"] = ssim_nn_result(x, ds.train.x, ssim_k, Execution(dev))[0]
    metrics["ssim_nn"].seconds = time.time() - t0
    t0 = time.time()
    metrics["diversity_ssim"] = diversity_result(x, y, ref.x, ref.y, dev)
    metrics["diversity_ssim"].seconds = time.time() - t0

    return metrics

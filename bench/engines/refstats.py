"""The reference of FID, KID and precision/recall: reference statistics files (what ``bench
ref-stats`` writes, what ``--ref-stats FILE`` reads), the statistics shipped for the bundled training
splits (``models/refstats/``) and the disk cache (``reference_features`` looks in that order).

A reference statistics file is an ``.npz`` with any of

    mu, sigma   the FID statistics of the reference features (torch-fidelity's
                ``fid_features_to_statistics``: mu float32, sigma float64), under the names
                pytorch-fid and clean-fid read
    features    the reference features themselves (N, D), float32 or float16 (``--precision``):
                KID and precision/recall need them, mu/sigma alone do not suffice
    meta        JSON: the reference's identity as the FID cache keys it (data set, split, n, sha256
                of the uint8 images, extractor identity = name + weights sha256, feature layer,
                torch-fidelity version, pipeline), plus ``features_dtype`` and ``source``
    extractor   the extractor identity again, as a plain string

``--ref-stats FILE`` (``bench run`` setting ``ref_stats``, and ``bench samples``): a file whose
``meta`` names another extractor or feature layer than the run's, or another data set, split or
image size (``image_size``, [H, W]; files written before it was recorded are not compared on it)
than the run's reference, is refused (one-line error).  A
file without ``meta`` (a plain pytorch-fid/clean-fid ``mu``/``sigma`` file) is accepted; the FID's
details then say its extractor is not recorded.  FID uses the file's mu/sigma (or, for a
features-only file, the statistics of its features); KID and precision/recall use the file's
features, and are null with that reason when the file holds mu/sigma only (nothing is computed
from the training images when a file is given).

Shipped statistics: every ``models/refstats/*.npz`` is a reference file as above.  The runner
(``reference_features``) uses one automatically when its ``meta`` matches the run's
reference exactly in split, n, image sha256, extractor identity, feature layer and pipeline (the
data set's name and torch-fidelity's version are recorded but not compared); otherwise the
reference is read from the disk cache or computed.  The digits file holds the 1347 training
features of fid-helper's Inception (the offline default extractor) in float16 (5.5 MB; mu/sigma
float32 would be 16.8 MB for sigma alone): each feature is within a relative 2^-11 (float16's
rounding; features below float16's normal range, 6.1e-5, within 3e-8 absolute) of the float32
value, and mu/sigma are recomputed from them.  Adding another data set is one command, e.g.

    bench ref-stats --dataset fashion-mnist --no-mu-sigma --precision float16 \\
        --out models/refstats/fashion-mnist-train.npz

(no code changes: the folder is searched; mind the size, N x D x 2 bytes of features).

The disk cache: reference statistics (mu and sigma of the training split's features) and the
features are cached under ``$JEAT_BENCH_CACHE`` (default ``~/.cache/jeat-bench``) in ``fid-ref/``,
keyed by the data set's name, split, a sha256 of its uint8 images, the extractor's identity (name +
sha256 of its weights), the feature layer and torch-fidelity's version: a second run skips the
training set entirely (``details['reference_cache'] == 'hit'``).  Each cache file holds a sha256
of its meta and arrays (``digest``): a file whose arrays do not match it (edited by hand, or
written before the digest was) is recomputed after a warning line, never served
(``bench.engines.reference_cache``).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import torch

from bench.core.errors import BenchError
from bench.engines import features, reference_cache
from bench.engines.features import FEATURES
from bench.runtime import distributed
from bench.runtime.execution import Execution

PIPELINE = 1  # bumps the reference cache when the preprocessing (bench.engines.features) changes

# what must agree between a shipped file's meta and a run's reference key
MATCH_FIELDS = ("split", "n", "images_sha256", "extractor", "layer", "pipeline")
PRECISIONS = ("float32", "float16")
NO_EXTRACTOR_NOTE = ("the reference statistics file's extractor is not recorded (a plain mu/sigma file): it is "
                     "assumed to be this run's; statistics of another network give a meaningless FID")


def shipped_dir() -> Path:
    from bench.inputs import zoo

    return zoo.models_dir() / "refstats"


def statistics(features: torch.Tensor) -> dict:
    """torch-fidelity's FID statistics {mu (float32), sigma (float64)} of float32 features."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(features.detach().cpu().to(torch.float32))


def _read(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise BenchError(f"reference statistics {path}: not a readable .npz ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:100] if str(e) else ''})") from None


def _meta(arrays: dict, path: Path) -> dict | None:
    if "meta" not in arrays:
        return None
    try:
        meta = json.loads(str(arrays["meta"]))
    except (ValueError, TypeError):
        raise BenchError(f"reference statistics {path}: its meta is not JSON") from None
    if not isinstance(meta, dict):
        raise BenchError(f"reference statistics {path}: its meta is not a JSON object")
    return meta


def _unpack(arrays: dict, path: Path) -> tuple[dict | None, torch.Tensor | None]:
    """(stats or None, features float32 or None) of a file's arrays, shapes checked."""
    feats = None
    if "features" in arrays:
        f = arrays["features"]
        if f.ndim != 2 or not np.issubdtype(f.dtype, np.floating) or len(f) < 2:
            raise BenchError(f"reference statistics {path}: features must be a float array (N >= 2, D), "
                             f"got {f.shape} {f.dtype}")
        feats = torch.from_numpy(f.astype(np.float32))
    stats = None
    if "mu" in arrays or "sigma" in arrays:
        if not {"mu", "sigma"} <= arrays.keys():
            raise BenchError(f"reference statistics {path}: needs both mu and sigma")
        mu, sigma = arrays["mu"], arrays["sigma"]
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise BenchError(f"reference statistics {path}: mu {mu.shape} and sigma {sigma.shape} do not fit "
                             "(expected (D,) and (D, D))")
        stats = {"mu": mu.astype(np.float32), "sigma": sigma.astype(np.float64)}
    if stats is None and feats is None:
        raise BenchError(f"reference statistics {path}: holds neither mu/sigma nor features "
                         f"(found {', '.join(sorted(arrays)) or 'nothing'})")
    if stats is not None and feats is not None and feats.shape[1] != len(stats["mu"]):
        raise BenchError(f"reference statistics {path}: features of dimension {feats.shape[1]} but mu of {len(stats['mu'])}")
    if stats is None:
        stats = statistics(feats)
    return stats, feats


# what a --ref-stats file's meta must agree on with the run's reference, where it records them
REFERENCE_FIELDS = ("dataset", "split", "image_size")


def read_file(path: str | Path, extractor_identity: str, layer: str,
              reference: dict | None = None) -> tuple[dict, torch.Tensor | None, dict]:
    """A ``--ref-stats`` file -> (stats, features or None, info).  Refuses (BenchError, one line) a
    file whose recorded extractor or layer differs from the run's, and one whose recorded data set,
    split or image size (``REFERENCE_FIELDS``) differs from ``reference`` (the run's)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise BenchError(f"reference statistics file not found: {p}")
    arrays = _read(p)
    meta = _meta(arrays, p)
    wrong = [k for k in REFERENCE_FIELDS if meta is not None and reference is not None
             and meta.get(k) is not None and reference.get(k) is not None and meta[k] != reference[k]]
    if wrong:
        def shown(d: dict) -> str:
            return ", ".join(f"{k} {d.get(k)}" for k in wrong)
        raise BenchError(f"reference statistics {p} are of {shown(meta)}, this run's reference is of "
                         f"{shown(reference)}; write matching ones with `bench ref-stats`")
    if meta is not None and (meta.get("extractor"), str(meta.get("layer"))) != (extractor_identity, str(layer)):
        raise BenchError(f"reference statistics {p} were made with extractor {meta.get('extractor')} (layer "
                         f"{meta.get('layer')}), this run uses {extractor_identity} (layer {layer}); "
                         "write matching ones with `bench ref-stats` or choose that --fid-extractor")
    stats, feats = _unpack(arrays, p)
    info = {"cache": "file", "file": str(p), "sha256": features.file_digests(p)["sha256"], "key": meta,
            "has_features": feats is not None, "n": len(feats) if feats is not None else (meta or {}).get("n")}
    if meta is None:
        info["note"] = NO_EXTRACTOR_NOTE
    return stats, feats, info


def find_shipped(key: dict, folder: Path | None = None) -> tuple[dict, torch.Tensor | None, Path] | None:
    """The shipped reference whose meta matches ``key`` on ``MATCH_FIELDS`` -> (stats, features
    or None, file), or None."""
    folder = shipped_dir() if folder is None else folder
    if not folder.is_dir():
        return None
    for p in sorted(folder.glob("*.npz")):
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"])) if "meta" in z.files else None
        except Exception:
            continue  # a broken shipped file is never used
        if isinstance(meta, dict) and all(meta.get(k) == key.get(k) for k in MATCH_FIELDS):
            stats, feats = _unpack(_read(p), p)
            return stats, feats, p
    return None


def write_file(path: str | Path, key: dict, stats: dict, features: torch.Tensor | None, mu_sigma: bool = True,
               precision: str = "float32", source: str = "") -> Path:
    """Write a reference statistics file (module docstring); -> its path."""
    from bench.core.fileio import atomic_write_bytes, check_writable

    if precision not in PRECISIONS:
        raise BenchError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not mu_sigma and features is None:
        raise BenchError("a reference statistics file needs mu/sigma or features (or both)")
    arrays = {}
    if mu_sigma:
        arrays.update(mu=np.asarray(stats["mu"], np.float32), sigma=np.asarray(stats["sigma"], np.float64))
    if features is not None:
        arrays["features"] = features.detach().cpu().numpy().astype(precision)
    meta = dict(key, features_dtype=precision if features is not None else None, source=source)
    arrays.update(meta=np.array(json.dumps(meta, sort_keys=True)), extractor=np.array(str(key.get("extractor"))))
    path = Path(path)
    check_writable(path)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return path


# --------------------------------------------------------------------------------------------
# the reference of a run: a --ref-stats file, the shipped statistics, the disk cache


def images_sha256(u8: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(u8.shape)).encode())
    h.update(u8.contiguous().numpy().tobytes())
    return h.hexdigest()


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)[:40].strip("_") or "data"


def reference_statistics(x: torch.Tensor, ext: features.Extractor, name: str, split: str = "train",
                         run: Execution = FEATURES, cache: bool = True, verbose: bool = False) -> tuple[dict, dict]:
    """FID statistics {mu, sigma} (torch-fidelity's ``fid_features_to_statistics``) of the
    reference images x ([0, 1] floats); -> (stats, info), see ``reference_features``."""
    stats, _, info = reference_features(x, ext, name, split, run, cache, verbose)
    return stats, info


def reference_features(x: torch.Tensor, ext: features.Extractor, name: str, split: str = "train",
                       run: Execution = FEATURES, cache: bool = True, verbose: bool = False,
                       ref_stats: str | None = None, shipped: bool = True) -> tuple[dict, torch.Tensor | None, dict]:
    """The reference of FID, KID and precision/recall: -> (stats {mu, sigma}, features (N, D)
    float32 or None, info).  Looked up in this order (``info['cache']`` says which):

    - ``file``: a ``--ref-stats`` file (``read_file``: refused when its extractor is
      not ``ext``; features None when it holds mu/sigma only); x is not touched;
    - ``shipped``: a file under ``models/refstats/`` made from exactly these images with this
      extractor (``find_shipped``);
    - ``hit``: the disk cache (``$JEAT_BENCH_CACHE/fid-ref``, features float32 and mu/sigma);
    - ``miss`` (computed and written to the cache) or ``off`` (computed, ``cache=False``).

    ``run`` (``bench.runtime.execution.Execution``): where and in what batches features are extracted;
    ``run.sharded`` (torchrun): rank 0 reads the cache and shares what it found; on a miss every
    rank extracts its share of the features and rank 0 writes the cache."""
    sharded = run.sharded
    size = [int(v) for v in x.shape[-2:]] if x is not None else None
    if ref_stats:
        return read_file(ref_stats, ext.identity, ext.fid_layer, {"dataset": name, "split": split, "image_size": size})
    u8 = features.to_uint8_rgb(x)
    key, path = _reference_key(u8, ext, name, split)
    # the image size is recorded with the key (a --ref-stats file written from it names it) but
    # does not key the disk cache (the images' sha256 covers their shape)
    info = {"cache": "off", "file": str(path), "key": dict(key, image_size=size)}
    found = find_shipped(key) if shipped else None
    if found is not None and found[1] is not None:
        return found[0], found[1], dict(info, cache="shipped", file=str(found[2]))
    writer = cache and (not sharded or distributed.is_main())
    got = reference_cache.read(key, path) if writer else None
    if sharded:
        got = distributed.broadcast(got)
    if got is not None:
        stats, feats = got
        info["cache"] = "hit"
    else:
        feats = features.extract_features(u8, ext, run, verbose)[ext.fid_layer]
        feats = feats.to(torch.float32)
        stats = statistics(feats)
        if writer and reference_cache.write(key, path, stats, feats):
            info["cache"] = "miss"
    if found is not None:  # shipped mu/sigma without features: FID from them, the features from above
        stats, info = found[0], dict(info, cache="shipped", file=str(found[2]), features_from=info["cache"])
    return stats, feats, info


def _reference_key(u8: torch.Tensor, ext: features.Extractor, name: str, split: str) -> tuple[dict, Path]:
    from torch_fidelity import __version__ as tf_version

    key = {"dataset": name, "split": split, "n": len(u8), "images_sha256": images_sha256(u8),
           "extractor": ext.identity, "layer": ext.fid_layer, "torch_fidelity": tf_version, "pipeline": PIPELINE}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return key, reference_cache.cache_dir() / "fid-ref" / f"{_slug(name)}-{split}-{_slug(ext.name)}-{digest}.npz"


def reference_at_hand(x: torch.Tensor, ext: features.Extractor, name: str, split: str = "train") -> bool:
    """Whether ``reference_features`` of these images would find their features without the
    extractor (shipped with features, or in the disk cache): the run's plan counts them otherwise."""
    key, path = _reference_key(features.to_uint8_rgb(x), ext, name, split)
    found = find_shipped(key)
    return (found is not None and found[1] is not None) or path.is_file()

"""The plan's timing probe, kept between runs: a second ``bench run`` of the same model on the same
device and batch size reads the probe's seconds per image and per call (and the peak memory per
image, the clean accuracy on the probe's points) instead of timing the passes again.

An entry is a small JSON file under ``$JEAT_BENCH_CACHE/plan-probe/`` (beside the FID reference
cache, ``bench.engines.reference_cache.cache_dir``), named by the sha256 of what the timings depend on:
the device (and its name), the machine and thread count, torch's version, the model's weights
digest, the batch size, the fast-path settings, the data's name and image shape, and the FID
extractor settings (its probe is kept in the same entry).  The probe draws no random number a
metric sees and its timings move no metric, so a cached probe changes the plan's estimates at
most (taken under another load), never a value.  A missing, unreadable or foreign entry is a
miss; a cache that cannot be written is skipped silently (it is only a cache).
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import torch

FIELDS = ("unit", "call", "accuracy", "peak_per_image", "peak_source")
FORMAT = 1
ENABLED = True  # the test suite switches it off (tests/conftest.py): a test's probe is its own


def key(device: torch.device, weights: str | None, s: dict, ds) -> str | None:
    """The entry's name for this device, model and settings; None (no caching) without a weights digest."""
    if not weights:
        return None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    facts = {"format": FORMAT, "device": str(device), "device_name": name, "machine": platform.machine(),
             "threads": torch.get_num_threads(), "torch": torch.__version__, "weights": weights,
             "batch_size": int(s.get("batch_size") or 250), "data": [ds.name, list(ds.input_shape)],
             **{k: s.get(k) for k in ("channels_last", "amp", "compile", "fid_extractor", "inception_weights",
                                       "extractor_weights")}}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def _path(k: str) -> Path:
    from bench.engines.reference_cache import cache_dir

    return cache_dir() / "plan-probe" / f"{k}.json"


def load(k: str | None) -> dict | None:
    """The cached probe fields (``FIELDS``), or None."""
    if k is None or not ENABLED:
        return None
    try:
        rec = json.loads(_path(k).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("key") != k or not isinstance(rec.get("unit"), dict):
        return None
    return {f: rec.get(f) for f in FIELDS}


def store(k: str | None, probe) -> None:
    """Write the probe's fields under ``k`` (atomically; silently not when the cache is not writable)."""
    from bench.core.fileio import atomic_write_bytes

    if k is None or not ENABLED:
        return
    rec = {"key": k, **{f: getattr(probe, f) for f in FIELDS}}
    try:
        _path(k).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(_path(k), json.dumps(rec, sort_keys=True).encode())
    except OSError:
        pass

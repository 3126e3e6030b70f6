"""The disk cache of FID references (``bench.engines.refstats.reference_features``): the mu/sigma
and the features of a reference under ``$JEAT_BENCH_CACHE/fid-ref`` (default
``~/.cache/jeat-bench``), each file with a sha256 of its meta and arrays (``digest``): a file whose
arrays do not match it is recomputed after a warning line, never served; a cache that cannot be
written is gone without (a warning line), since it is only a cache."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch


def cache_dir() -> Path:
    """``$JEAT_BENCH_CACHE`` or ``~/.cache/jeat-bench``."""
    return Path(os.environ.get("JEAT_BENCH_CACHE") or Path.home() / ".cache" / "jeat-bench").expanduser()


CACHED_ARRAYS = ("mu", "sigma", "features")


def _arrays_digest(meta: str, arrays: dict) -> str:
    """sha256 of a cache file's meta and of its arrays (name, dtype, shape and bytes of each)."""
    h = hashlib.sha256(meta.encode())
    for name in CACHED_ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def read(key: dict, path: Path) -> tuple[dict, torch.Tensor] | None:
    """(stats, features) cached under ``key``, or None (missing, unreadable, another key, an older
    cache file without features, or arrays that do not match the digest written with them: an
    edited file is recomputed, after a warning line, never served)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = str(z["meta"])
            if json.loads(meta) != key:
                return None
            arrays = {k: z[k] for k in CACHED_ARRAYS}
            digest = str(z["digest"]) if "digest" in z.files else None
    except Exception:
        return None  # unreadable: recompute and overwrite
    if digest != _arrays_digest(meta, arrays):
        from bench.core import progress

        progress.say(f"warning: the FID reference cache {path} does not match the digest written with it "
                     f"({'none recorded' if digest is None else 'its arrays were edited'}); it is recomputed")
        return None
    return {"mu": arrays["mu"], "sigma": arrays["sigma"]}, torch.from_numpy(arrays["features"])


def write(key: dict, path: Path, stats: dict, features: torch.Tensor) -> bool:
    """Cache the reference with a digest of its arrays; False (after a warning line) when the
    cache cannot be written."""
    from bench.core.fileio import atomic_write_bytes

    meta = json.dumps(key, sort_keys=True)
    arrays = {"mu": np.asarray(stats["mu"]), "sigma": np.asarray(stats["sigma"]),
              "features": features.detach().cpu().numpy()}
    buf = io.BytesIO()
    np.savez(buf, **arrays, meta=np.array(meta), digest=np.array(_arrays_digest(meta, arrays)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:  # $JEAT_BENCH_CACHE a file, read-only or full: the cache is only a cache
        from bench.core import progress

        progress.say(f"warning: the reference cache {cache_dir()} is not usable ({e.strerror or e}); "
                     "going on without it (set JEAT_BENCH_CACHE to a writable folder)")
        return False
    return True

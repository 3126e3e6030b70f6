"""Per-point outcomes, compactly: the bits that let ``bench check`` pair a rerun with its baseline.

A baseline and a rerun of the same checkpoint evaluate the same points with the same seeds, so
their difference is best counted point by point: how many points flipped (correct <-> wrong,
robust <-> fooled), not how far two proportions lie apart as if they were independent samples.
A metric that is a share of points records, in ``details["outcomes"]``, which points counted:

    {"bits": "<hex>", "n": 450, "of": "correct under PGD-20, per test point in order"}

``bits`` is numpy's ``packbits`` (big-endian within each byte, zero-padded) written as hex: 113
characters for 450 points.  Continuous metrics computed from per-point predictions (ECE, NLL, ...)
record the correctness bits of those predictions too, so the check can tell a flipped point (a
legitimate kernel difference near a decision boundary) from a drift of the metric itself.
Means over points (NLL, Brier, PSNR, Fisher terms) and the inputs of statistics over points (the
top-class confidence under ECE) record their per-point floats in ``details["per_point"]``:

    {"f32le": "<base64>", "n": 450, "of": "NLL per test point in order"}

float32, little-endian, base64: 2,400 characters for 450 points.  ``bench compare`` pairs two
models' records point by point (a paired standard error, a paired bootstrap).

A record may hold several images per test point (the shift suite's pooled metrics: each point
under every corruption and severity).  Such a metric names its test points in
``details["per_point_of"]``: the number of points n, the record laid out image set by image set,
n images each in the points' order, so image i is of point i % n (``by_point``).  Its images are
not independent, and ``bench compare`` tests it with the point as the unit.
Nothing here imports torch: ``bench check`` reads these records.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

KEY = "outcomes"
VALUES_KEY = "per_point"
CLUSTER_KEY = "per_point_of"  # the number of test points of a record of several images per point


def pack(flags, of: str) -> dict:
    """The record of per-point booleans ``flags`` (a tensor, array or list)."""
    a = _numpy_bool(flags)
    return {"bits": np.packbits(a).tobytes().hex(), "n": int(a.size), "of": of}


def unpack(record) -> np.ndarray | None:
    """The booleans of a record; None for a missing or malformed one (never raises: a baseline
    edited by hand is judged by its values, and its record is then refused by ``consistent``)."""
    bits, n = _text_and_count(record, "bits")
    if bits is None:
        return None
    try:
        raw = bytes.fromhex(bits)
    except ValueError:
        return None
    if len(raw) != (n + 7) // 8:
        return None
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:n].astype(bool)


def of(details) -> np.ndarray | None:
    """The per-point booleans a metric's ``details`` record, if any."""
    return unpack(details.get(KEY)) if isinstance(details, dict) else None


def flips(a: np.ndarray, b: np.ndarray) -> int | None:
    """How many points differ between two records of the same points (None: not the same points)."""
    if a is None or b is None or a.shape != b.shape:
        return None
    return int(np.count_nonzero(a != b))


def pack_values(values, of: str) -> dict:
    """The record of per-point floats ``values`` (a tensor, array or list), as float32."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    a = np.asarray(values, dtype="<f4").reshape(-1)
    return {"f32le": base64.b64encode(a.tobytes()).decode("ascii"), "n": int(a.size), "of": of}


def unpack_values(record) -> np.ndarray | None:
    """The float64 values of a ``pack_values`` record; None for a missing or malformed one."""
    raw, n = _text_and_count(record, "f32le")
    if raw is None:
        return None
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(data) != 4 * n:
        return None
    return np.frombuffer(data, dtype="<f4").astype(np.float64)


def values_of(details) -> np.ndarray | None:
    """The per-point floats a metric's ``details`` record, if any."""
    return unpack_values(details.get(VALUES_KEY)) if isinstance(details, dict) else None


def points_of(details) -> int | None:
    """The number of test points a metric's records are laid out over (``CLUSTER_KEY``); None where
    the metric records one value per point (or nothing) or the count is malformed."""
    n = details.get(CLUSTER_KEY) if isinstance(details, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def by_point(record: np.ndarray, points: int) -> np.ndarray:
    """A record of image sets of ``points`` images each as one row per test point (points x sets):
    row j holds point j's images.  A record whose length is no multiple of ``points``: ValueError."""
    if record.ndim != 1 or record.size == 0 or record.size % points:
        raise ValueError(f"a record of {record.size} values is not image sets of {points} test points")
    return record.reshape(-1, points).T


def _text_and_count(record, key: str) -> tuple[str | None, int]:
    """(the record's encoded text under ``key``, its point count ``n``), or (None, 0) for a record
    that is no dict or whose text or count is malformed (a bool, a negative or a non-integer n)."""
    if not isinstance(record, dict):
        return None, 0
    text, n = record.get(key), record.get("n")
    if not isinstance(text, str) or not isinstance(n, int) or isinstance(n, bool) or n < 0:
        return None, 0
    return text, n


def _numpy_bool(flags) -> np.ndarray:
    if hasattr(flags, "detach"):
        flags = flags.detach().cpu().numpy()
    a = np.asarray(flags).reshape(-1)
    if a.dtype != np.bool_:
        if a.size and not np.isin(a, (0, 1)).all():
            raise ValueError("per-point outcomes must be booleans or 0/1")
        a = a.astype(bool)
    return a

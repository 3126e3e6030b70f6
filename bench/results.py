"""The results record (results.json, schema 1; see DESIGN.md) and atomic JSON I/O."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from bench.checkpoints import atomic_write_bytes
from bench.errors import BenchError
from bench.metrics import Result

SCHEMA = 1


@dataclass
class Results:
    model: dict
    run: dict
    metrics: dict[str, Result] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "model": self.model, "run": self.run,
                "metrics": {k: v.to_json() for k, v in self.metrics.items()}}

    def write(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    def value(self, name: str) -> float | None:
        r = self.metrics.get(name)
        return None if r is None else r.value

    @classmethod
    def from_json(cls, d: dict, where: str = "results") -> Results:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            got = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise BenchError(f"{where}: not a results file of schema {SCHEMA} (schema {got!r})")
        try:
            metrics = {k: Result.from_json(v) for k, v in d["metrics"].items()}
            return cls(d["model"], d["run"], metrics)
        except (KeyError, TypeError, ValueError) as e:
            raise BenchError(f"{where}: malformed results file ({type(e).__name__}: {e})") from None


def read(path: str | Path) -> Results:
    """Read results.json (or a directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    return Results.from_json(read_json(p), str(p))


def read_json(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise BenchError(f"file not found: {p}")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchError(f"{p}: not valid JSON ({e})") from None


def write_json(path: str | Path, obj) -> None:
    """Atomic (write, fsync, rename), strict JSON: NaN/inf become null."""
    text = json.dumps(_finite(obj), indent=1, sort_keys=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def _finite(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    return o

"""The results record (results.json, schema 1; see docs/CONVENTIONS.md) and atomic JSON I/O."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.fileio import atomic_write_bytes

SCHEMA = 1


@dataclass
class Result:
    """One metric: its value (None only with a ``reason``), standard error, n, seconds, details."""

    value: float | None
    std: float | None = None
    n: int = 0
    reason: str | None = None
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.value is not None:
            self.value = float(self.value)
            if not math.isfinite(self.value):
                self.reason = self.reason or f"non-finite value {self.value}"
                self.value = None
        if self.value is None and not self.reason:
            raise ValueError("a metric without a value needs a reason")
        if self.std is not None:
            self.std = float(self.std)

    @classmethod
    def missing(cls, reason: str, n: int = 0, **details) -> Result:
        return cls(None, None, n, reason, details=details)

    def to_json(self) -> dict:
        d = {"value": self.value, "std": self.std, "n": int(self.n), "reason": self.reason,
             "seconds": round(float(self.seconds), 3)}
        if self.details:
            d["details"] = self.details
        return d

    @classmethod
    def from_json(cls, d: dict) -> Result:
        return cls(d["value"], d.get("std"), d.get("n", 0), d.get("reason"), d.get("seconds", 0.0), d.get("details", {}))


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
        for key, kind in (("model", dict), ("run", dict), ("metrics", dict)):
            if not isinstance(d.get(key), kind):
                raise BenchError(f"{where}: malformed results file ({key} must be an object, "
                                 f"not {type(d.get(key)).__name__})")
        try:
            metrics = {k: Result.from_json(v) for k, v in d["metrics"].items()}
            return cls(d["model"], d["run"], metrics)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BenchError(f"{where}: malformed results file ({type(e).__name__}: {e})") from None


# what JSON type each kind of setting holds in results.json's run.config, in words and as Python types
_HOLDS = {"int": ("an integer", int), "count": ("an integer", int), "number": ("a number", (int, float)),
          "fraction": ("a number", (int, float)), "bool": ("true or false", bool), "text": ("text", str),
          "file": ("text", str), "choice": ("text", str), "choices": ("text", str), "counts": ("a list", list),
          "numbers": ("a list", list)}


def setting_refusal(name: str, v) -> str | None:
    """Why ``v``, a run's recorded value of setting ``name`` (results.json ``run.config``), is not of
    the type the setting holds, in words (``run.config.eps is the text '0.1', but eps takes a number:
    the types differ``); None: it is.  Only the type is judged: a recorded value was validated when
    it was given, and a derived one may sit on a bound (at eps 0 the derived PGD step is 0); a name
    this bench does not declare (an older or newer run's) and a null (unset) are not judged."""
    from bench.core.settings import SPECS

    st = SPECS.get(name)
    if st is None or v is None or st.kind not in _HOLDS:
        return None
    words, types = _HOLDS[st.kind]
    if isinstance(v, bool) == (st.kind == "bool") and isinstance(v, types):
        return None
    got = {bool: "true/false", int: "the integer", float: "the number", str: "the text", list: "the list",
           dict: "the object"}.get(type(v), type(v).__name__)
    return f"run.config.{name} is {got} {v!r}, but {name} takes {words}: the types differ"


def platform_record(device) -> dict:
    """Where a run's numbers were computed (results.json ``run.platform``): the platform fingerprint
    of ``bench.core.fingerprint``, which ``bench check --exact`` compares."""
    from bench.core import fingerprint

    return fingerprint.record(device)


def read(path: str | Path, what: str = "") -> Results:
    """Read results.json (or a directory holding one): the one reader of results files."""
    return read_raw(path, what)[0]


def read_raw(path: str | Path, what: str = "") -> tuple[Results, dict]:
    """(the record, the parsed JSON) of results.json or a directory holding one; a missing folder
    or file, invalid JSON, another schema or shape: one-line ``BenchError`` (``what``, e.g.
    "baseline", prefixes the where)."""
    p = Path(path)
    name = f"{what} {path}" if what else str(path)
    if p.is_dir():
        p = p / "results.json"
        if not p.is_file():
            raise BenchError(f"{name}: no results.json in it (write one with `bench run --out {path}`)")
    elif not p.exists():
        raise BenchError(f"{name}: no such file or directory")
    elif not p.is_file():
        raise BenchError(f"{name}: {not_a_file(p)}")
    raw = read_json(p)
    return Results.from_json(raw, str(p)), raw


def not_a_file(p: Path) -> str:
    """What ``p``, which exists, is when it is not a regular file (``/dev/null``: a character device)."""
    import stat

    mode = p.stat().st_mode
    kinds = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))
    return "not a regular file (" + next((what for test, what in kinds if test(mode)), "of another kind") + ")"


def read_json(path: str | Path) -> dict:
    """The JSON of a regular file; one line for a missing path, one that is no regular file
    (``/dev/null``), an empty file and invalid JSON."""
    p = Path(path)
    if not p.exists():
        raise BenchError(f"file not found: {p}")
    if not p.is_file():
        raise BenchError(f"{p}: {not_a_file(p)}")
    try:
        text = p.read_text()
        if not text.strip():
            raise BenchError(f"{p}: the file is empty (no JSON in it)")
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchError(f"{p}: not valid JSON ({e})") from None


def json_text(obj) -> str:
    """The text ``write_json`` writes: strict JSON (NaN/inf as null), indented by one, a final newline."""
    return json.dumps(finite(obj), indent=1, sort_keys=False, allow_nan=False) + "\n"


def write_json(path: str | Path, obj) -> None:
    """Atomic (write, fsync, rename), strict JSON: NaN/inf become null."""
    atomic_write_bytes(path, json_text(obj).encode())


def finite(o):
    """``o`` with every non-finite float replaced by None (what strict JSON holds)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [finite(v) for v in o]
    return o

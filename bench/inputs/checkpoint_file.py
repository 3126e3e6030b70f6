"""A checkpoint file read once: its bytes, their sha256 and, for a safetensors file, its header's
metadata.  ``bench run`` reads the file once (``read``) and hands the bytes on: the ``bench``
metadata it looks at to pick the data set (``bench_meta``), the model built from the same bytes
(``bench.inputs.checkpoints.load``) and the file's digest in results.json (``model.sha256``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from bench.core.errors import BenchError


@dataclass(frozen=True)
class CheckpointFile:
    path: Path
    data: bytes = field(repr=False)
    sha256: str

    @property
    def is_safetensors(self) -> bool:
        """By its name, or by its content: an 8-byte header length, then the JSON header."""
        return self.path.suffix == ".safetensors" or (len(self.data) >= 9 and self.data[8:9] == b"{")

    def metadata(self) -> dict:
        """The safetensors header's ``__metadata__`` (names -> strings; ``{}`` when there is none);
        ValueError when the header is not one (truncated, not JSON, not an object)."""
        if len(self.data) < 8:
            raise ValueError("shorter than a safetensors header")
        n = int.from_bytes(self.data[:8], "little")
        if 8 + n > len(self.data):
            raise ValueError("header longer than the file")
        head = json.loads(self.data[8:8 + n])
        if not isinstance(head, dict):
            raise ValueError("header is not a JSON object")
        return head.get("__metadata__") or {}

    def bench_meta(self) -> dict | None:
        """The ``bench`` metadata of a ``.safetensors`` file (what ``bench train`` recorded: data
        set, architecture, threat model, ...), or None: another format, none recorded, or a file
        ``bench.inputs.checkpoints.load`` refuses with the precise error."""
        if self.path.suffix != ".safetensors":
            return None
        try:
            meta = json.loads(self.metadata().get("bench", "null"))
        except (ValueError, TypeError):
            return None
        return meta if isinstance(meta, dict) else None


def read(spec: str | Path) -> CheckpointFile:
    """The file ``spec`` names, read once (a missing file, a folder or an unreadable file is a
    one-line error)."""
    path = Path(spec)
    if not path.exists():
        raise BenchError(f"model file not found: {spec}")
    if path.is_dir():
        raise BenchError(f"model path is a directory, not a checkpoint: {spec}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BenchError(f"cannot read model file {spec}: {e.strerror or e}") from None
    return CheckpointFile(path, data, hashlib.sha256(data).hexdigest())

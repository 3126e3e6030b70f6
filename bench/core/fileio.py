"""File I/O shared by every writer: atomic writes, write checks and file digests (no torch, no model
code).  A failed write is ``bench.core.errors.CannotWrite``: one ``error: cannot write PATH: reason`` line."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from bench.core.errors import BenchError, CannotWrite


def sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write, fsync, rename: a kill never leaves a half-written file under ``path``, and a failed
    write or rename leaves no temporary file behind."""
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: str | Path, write) -> None:
    """``write(f)`` into a temporary file beside ``path``, then fsync and rename, as
    ``atomic_write_bytes``: for a file written in parts, never held whole in memory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, CannotWrite):
            raise CannotWrite(path, e) from None  # one error line: disk full, read-only, no permission
        raise


def check_writable(path: str | Path) -> None:
    """Refuse, as ``cannot write PATH: reason``, a file that could not be written later (its folder
    missing, read-only or not a folder): say so before any long computation, not after it."""
    path = Path(path)
    probe = path.with_name(f".{path.name}.probe{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as e:
        raise CannotWrite(path, e) from None


OUT_FOLDERS = ("tables", "figures", "samples", "cache")  # the folders bench writes under --out


def check_out(out: str | Path) -> None:
    """Make the ``--out`` folder and prove it writable (a probe file, named by the process so two
    runs into one folder never share it), or refuse as ``cannot write to --out OUT: reason``; refuse
    an ``OUT_FOLDERS`` folder that is a symbolic link leading out of OUT (bench writes inside only)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise BenchError(f"cannot write to --out {out}: {e.strerror or e}") from None
    root = out.resolve()
    for name in OUT_FOLDERS:
        link = out / name
        if link.is_symlink() and not Path(os.path.realpath(link)).is_relative_to(root):
            raise BenchError(f"{link} is a symbolic link to {os.readlink(link)}, outside --out {out}; bench "
                             "writes inside --out only: remove the link or use another --out")


TEMPORARY = re.compile(r"\..+\.(?:tmp|probe)(\d+)|\.write-test(\d+)")  # the names the writers above give


def temporary_pid(name: str) -> int | None:
    """The process id in the name of a temporary file these writers make (``atomic_write_bytes``,
    ``check_writable``, ``check_out``), None for any other name."""
    m = TEMPORARY.fullmatch(name)
    return int(m.group(1) or m.group(2)) if m else None


def remove_stale_temporaries(folder: str | Path, alive) -> list[Path]:
    """Remove, under ``folder`` (its subfolders too, no symbolic link followed), the temporary files
    of processes that are not ``alive(pid)`` (a writer killed with -9 leaves them); -> the removed
    files.  A file that cannot be removed is left."""
    removed = []
    for root, _, files in os.walk(folder):
        for name in files:
            pid = temporary_pid(name)
            if pid is None or pid == os.getpid() or alive(pid):
                continue
            try:
                (Path(root) / name).unlink()
            except OSError:
                continue
            removed.append(Path(root) / name)
    return removed


def sha256_files(files, root: str | Path) -> str:
    """sha256 over the sorted relative names and bytes of ``files`` under ``root`` (a folder of images)."""
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).relative_to(root).as_posix().encode() + b"\0")
        h.update(Path(f).read_bytes())
    return h.hexdigest()

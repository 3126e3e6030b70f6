"""One bench run per output folder: ``OUT/.bench.lock``, created atomically (``O_CREAT | O_EXCL``)
and holding the owner's pid, host, start time and command.  A second run that finds a live lock
stops at once with one line (``BenchError``, exit 2); a lock whose pid is dead on this host is
stale (a run killed with -9) and taken over, with a note.  The lock is removed when the run ends,
also on an error or an interrupt.  Under torchrun only rank 0 locks (bench.pipeline.runner).  Once the
lock is taken, the temporary files of dead processes left in the folder are removed (a note names them)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.core.errors import BenchError, CannotWrite
from bench.core.fileio import remove_stale_temporaries

NAME = ".bench.lock"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # cannot tell: assume alive, never take a live run's folder
    return True


def _read(path: Path) -> dict | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _stale(rec: dict | None) -> bool:
    """A lock of this host whose pid is dead; a lock of another host, or one being written (not
    readable yet), is never stale."""
    if rec is None or rec.get("host") != socket.gethostname():
        return False
    pid = rec.get("pid")
    return isinstance(pid, int) and not isinstance(pid, bool) and not _alive(pid)


def acquire(out: Path, command: str | None = None, log: Callable[[str], None] = print) -> Path:
    """Create ``out/.bench.lock`` or raise the one-line BenchError naming the run that holds it."""
    path = Path(out) / NAME
    rec = {"pid": os.getpid(), "host": socket.gethostname(),
           "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": command if command is not None else shlex.join(["bench", *sys.argv[1:]])}
    for _ in range(2):  # a stale lock is removed once, then created again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _read(path)
            if not _stale(other):
                raise BenchError(_in_use(out, other)) from None
            log(f"note: {path} was left by bench run pid {other['pid']} (started {other.get('started', '?')}), "
                "which is no longer running; taken over")
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            continue
        except OSError as e:
            raise CannotWrite(path, e) from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(rec) + "\n")
        _clean(Path(out), log)
        return path
    raise BenchError(_in_use(out, _read(path)))


def _clean(out: Path, log: Callable[[str], None]) -> None:
    """With the folder locked, the temporary files of dead processes (``.results.json.tmpPID`` of a
    run killed with -9) are stale: removed, with a note naming them."""
    removed = remove_stale_temporaries(out, _alive)
    if removed:
        names = ", ".join(str(p.relative_to(out)) for p in removed[:3]) + (" ..." if len(removed) > 3 else "")
        log(f"note: removed {len(removed)} temporary file(s) left in {out} by processes no longer running: {names}")


def _in_use(out: Path, rec: dict | None) -> str:
    rec = rec or {}
    pid = rec.get("pid", "unknown")
    host = rec.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return (f"{out} is in use by another bench run (pid {pid}{where}, started {rec.get('started', 'unknown')}); "
            "wait for it or use another --out")


def release(path: Path) -> None:
    """Remove the lock if it is still this process's (a takeover by another run is left alone)."""
    rec = _read(path)
    if rec is not None and (rec.get("pid"), rec.get("host")) != (os.getpid(), socket.gethostname()):
        return
    try:
        path.unlink()
    except FileNotFoundError:
        pass


@contextmanager
def held(out: Path, command: str | None = None, log: Callable[[str], None] = print) -> Iterator[Path]:
    """``acquire`` for the block, released after it, whatever ends it."""
    path = acquire(out, command, log)
    try:
        yield path
    finally:
        release(path)

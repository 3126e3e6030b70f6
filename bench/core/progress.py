"""Progress reporting: bars on a terminal, quiet lines in logs (CI=true or not a tty)."""

from __future__ import annotations

import os
import sys


def interactive() -> bool:
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true", "yes")


def bar(iterable, desc: str = "", total: int | None = None):
    if not interactive():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def say(message: str) -> None:
    """One status line on stderr (kept out of stdout, which carries results)."""
    print(message, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def heartbeat_seconds() -> float:
    """Seconds between heartbeat lines: ``JEAT_BENCH_HEARTBEAT`` (seconds), else 30 (10 on a terminal)."""
    try:
        return max(0.01, float(os.environ["JEAT_BENCH_HEARTBEAT"]))
    except (KeyError, ValueError):
        return 10.0 if interactive() else 30.0


class Heartbeat:
    """A line every ``every`` seconds while a slow step runs, on a terminal and in CI logs alike:
    ``[desc] 250/1000 points done, 2m10s elapsed, ETA 6m30s`` (the ETA from the points finished so
    far; none before the first ones).  Use as a context manager; ``advance(k)`` counts k points done.
    ``block``: the points finished together (a batch); when one block holds them all no count moves
    before the end, so the line says so instead of a count and an ETA that never come:
    ``[desc] all 20 points in one block, 1m30s elapsed (they finish together)``."""

    def __init__(self, desc: str, total: int, every: float | None = None, say=say, unit: str = "points",
                 block: int | None = None):
        import threading
        import time

        self.desc, self.total, self.unit, self.say, self.block = desc, int(total), unit, say, block
        self.every = heartbeat_seconds() if every is None else every
        self.done, self._clock = 0, time.monotonic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{desc}")

    def line(self) -> str:
        elapsed = self._clock() - self.started
        if self.done == 0 and self.block is not None and self.total <= self.block:
            return (f"[{self.desc}] all {self.total} {self.unit} in one block, {_duration(elapsed)} elapsed "
                    "(they finish together)")
        text = f"[{self.desc}] {self.done}/{self.total} {self.unit} done, {_duration(elapsed)} elapsed"
        if 0 < self.done < self.total:
            return text + f", ETA {_duration(elapsed / self.done * (self.total - self.done))}"
        return text + (", ETA after the first block" if self.done == 0 else "")

    def advance(self, k: int) -> None:
        self.done += int(k)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self.say(self.line())

    def __enter__(self) -> Heartbeat:
        self.started = self._clock()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

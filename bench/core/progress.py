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

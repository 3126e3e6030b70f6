"""Whether two recorded settings are the same value (``bench check``, ``bench compare``): a run
records what the user typed, so ``--normalize 0.286/0.353`` and ``0.2860/0.3530``, or an eps of
0.1 and 0.1000000000000001, are one evaluation, not two.
"""

from __future__ import annotations

import math
import re

_SEPARATORS = re.compile(r"([,/:;\s]+)")


def same_value(a, b, rel: float = 1e-9) -> bool:
    """Whether two recorded settings are the same value: numbers within ``rel`` (and 1e-12), lists
    and objects item by item, and strings equal or equal number by number between the same
    separators (``--normalize 0.286/0.353`` is ``0.2860/0.3530``); a boolean equals only a boolean."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b or math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_value(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k], rel) for k in a)
    if isinstance(a, str) and isinstance(b, str):
        if a == b:
            return True
        pa, pb = _SEPARATORS.split(a.strip()), _SEPARATORS.split(b.strip())
        return len(pa) == len(pb) and all(x.strip() == y.strip() or (i % 2 == 0 and _close(x, y, rel))
                                          for i, (x, y) in enumerate(zip(pa, pb, strict=True)))
    return a == b


def _close(x: str, y: str, rel: float) -> bool:
    try:
        return same_value(float(x), float(y), rel)
    except ValueError:
        return False

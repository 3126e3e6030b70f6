"""What one setting is (``Setting``): its kind of value, default, derivation, sign and enum, and the
check of a value against them (``Setting.check``, the one place a single value is checked).  The
table of every setting is ``bench.core.settings.SETTINGS``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.compat import StrEnum

# a number's sign: what it refuses (a step size of 0 or below moves nothing, or climbs the loss
# the wrong way; a negative noise or radius is a sign error); ``any``: a number of either sign
SIGNS: dict[str, Callable[[float], bool]] = {"positive": lambda v: v <= 0, "non-negative": lambda v: v < 0,
                                              "any": lambda v: False}
KINDS = ("int", "count", "number", "fraction", "bool", "text", "file", "choice", "choices", "counts", "numbers")


@dataclass(frozen=True)
class Setting:
    """One setting, declared once: its name, kind, default, what its default derives from, help
    text and, for a closed vocabulary, its enum.  ``bench run``'s options (``bench.cli``),
    ``validate`` and ``DEFAULTS`` are generated from ``SETTINGS``; the groups a setting keys are
    those that list it in their ``@register(settings=...)`` (their cache keys).

    kinds: ``int`` an integer (in ``bounds`` when given); ``count`` a positive integer; ``number`` a finite float (``8/255``
    on the command line); ``fraction`` a number in [0, 1]; ``bool`` a --x/--no-x flag; ``text``;
    ``file`` an existing file; ``choice`` one of ``choices``; ``choices`` a comma list of some of
    them; ``counts`` positive integers (comma list on the command line); ``numbers`` finite numbers
    (a comma list, ``2/255`` allowed).  ``sign`` (every ``number`` and ``numbers`` setting declares
    one): ``positive`` (a step size), ``non-negative`` (a noise, a radius) or ``any``.
    ``derive(s, linf_eps)`` gives the value of a setting left None once the others are known
    (``complete``); ``derived_from`` says so in words."""

    name: str
    kind: str
    default: Any
    help: str = ""
    choices: type[StrEnum] | None = None
    derived_from: str | None = None
    derive: Callable[[dict, float], Any] | None = None
    option: bool = True  # a ``bench run`` option
    bounds: tuple[int, int] | None = None  # an int's range, low <= v < high
    sign: str | None = None  # a number's sign (SIGNS); every number declares one

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"setting {self.name}: kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if (self.kind in ("number", "numbers")) != (self.sign is not None) or self.sign not in (None, *SIGNS):
            raise ValueError(f"setting {self.name}: a number declares its sign (one of {', '.join(SIGNS)}), "
                             "and only a number has one")
        if (self.kind in ("choice", "choices")) != (self.choices is not None):
            raise ValueError(f"setting {self.name}: a choice needs its enum, and only a choice has one")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, v) -> str | None:
        """Why ``v`` is not a valid value (None: valid; None is always valid: unset/derived)."""
        if v is None:
            return None
        k, shown = self.kind, f"{self.flag[2:]} must be"
        if k in ("int", "count") and (isinstance(v, bool) or not isinstance(v, int) or (k == "count" and v <= 0)):
            return f"{shown} a {'positive ' if k == 'count' else ''}integer, got {v}"
        if k == "int" and self.bounds and not self.bounds[0] <= v < self.bounds[1]:
            lo, hi = self.bounds
            return f"{shown} an integer in [{lo}, {_power(hi)}), got {v}"
        if k in ("number", "fraction") and (isinstance(v, bool) or not isinstance(v, int | float)
                                            or not math.isfinite(v) or (k == "fraction" and not 0 <= v <= 1)):
            return f"{shown} a {'number in [0, 1]' if k == 'fraction' else 'finite number'}, got {v}"
        if k == "bool" and not isinstance(v, bool):
            return f"{shown} true or false, got {v}"
        if k in ("text", "file") and not isinstance(v, str):
            return f"{shown} text, got {v}"
        if k == "file" and not Path(v).is_file():
            return f"--{self.flag[2:]} file not found: {v}"
        if k == "choice" and v not in {c.value for c in self.choices}:
            return f"unknown {self.name.replace('_', ' ')} {v!r}; expected one of {', '.join(c.value for c in self.choices)}"
        if k == "choices":  # a comma list of some of the choices
            known = [c.value for c in self.choices]
            items = [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else []
            bad = [p for p in items if p not in known]
            if bad or not items:
                return f"--{self.flag[2:]}: unknown {self.name.replace('_', ' ')} {bad[0] if bad else ''!r}; expected some of {', '.join(known)}"
        if k == "counts" and (not isinstance(v, list | tuple) or not v
                              or any(isinstance(c, bool) or not isinstance(c, int) or c <= 0 for c in v)):
            return f"{shown} positive integers, got {v}"
        if k == "numbers" and (not isinstance(v, list | tuple) or not v
                               or any(isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c)
                                      for c in v)):
            return f"{shown} a comma list of finite numbers (e.g. 0,0.05,0.1 or 2/255,4/255), got {v}"
        if k in ("number", "numbers"):
            return self._signed(v if k == "numbers" else [v])
        return None


    def _signed(self, values) -> str | None:
        """Why one of ``values`` (finite numbers) has not the setting's ``sign``; None: all do."""
        bad = next((v for v in values if SIGNS[self.sign](v)), None)
        if bad is None:
            return None
        return f"{self.flag[2:]}{' value' if self.kind == 'numbers' else ''} must be a {self.sign} number, got {bad}"


def _power(n: int) -> str:
    """``2**63`` for a power of two, else the number."""
    return f"2**{n.bit_length() - 1}" if n > 1 and n & (n - 1) == 0 else str(n)

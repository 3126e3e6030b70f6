"""What Python 3.10 lacks and the package uses (``requires-python >= 3.10``).

``StrEnum`` (3.11+): on 3.10 a ``str`` + ``Enum`` whose ``str()`` and ``format()`` are its value,
as the standard library's is; on 3.11+ the standard library's own."""

from __future__ import annotations

from enum import Enum

try:
    from enum import StrEnum
except ImportError:  # Python 3.10

    class StrEnum(str, Enum):  # type: ignore[no-redef]
        """A str-valued Enum: ``str(member)`` and ``f"{member}"`` are its value."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return format(str(self.value), spec)


__all__ = ["StrEnum"]

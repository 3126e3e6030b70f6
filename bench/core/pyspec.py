"""``py:module:name`` specs (``--model py:module:function``, ``--arch py:module:Class``): the
object they name, imported from the current directory as well as from ``sys.path`` (the ``bench``
console script does not put the current directory there, so a user's ``models.py`` next to them
would not be found), with a one-line error that says to set PYTHONPATH where the module is nowhere.
"""

from __future__ import annotations

import importlib
import os
import sys

from bench.core.errors import BenchError


def parts(spec: str, form: str = "py:module:function") -> tuple[str, str]:
    """``py:module:name`` -> (module, name); another form is a BenchError naming ``form``."""
    bits = spec.split(":", 2)
    if len(bits) != 3 or bits[0] != "py" or not all(bits[1:]):
        raise BenchError(f"bad {'factory' if form.endswith('function') else 'architecture'} {spec!r}: expected {form}")
    return bits[1], bits[2]


def resolve(spec: str, what: str = "factory", form: str = "py:module:function"):
    """The object ``spec`` names.  The current directory is searched after ``sys.path``.  Errors
    (one line): the bad form, a module found nowhere (set PYTHONPATH), a missing name, and an error
    raised while the module is imported."""
    module, name = parts(spec, form)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)  # after the installed packages: a local file never shadows one
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name and module.split(".")[0] == e.name.split(".")[0]:
            raise BenchError(f"cannot import {what} {spec!r}: no module {e.name!r} in the current directory "
                             f"({cwd}) or on sys.path; set PYTHONPATH to the folder that holds it") from None
        raise BenchError(f"cannot import {what} {spec!r}: {e}") from None
    except (ImportError, AttributeError) as e:
        raise BenchError(f"cannot import {what} {spec!r}: {e}") from None
    except Exception as e:  # a SyntaxError in the module, or an error while it is imported
        raise BenchError(f"cannot import {what} {spec!r}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None

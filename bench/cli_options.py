"""The options of ``bench run``, one per declared setting (``bench.core.settings.SETTINGS``), and
the click types that read their kinds (numbers as fractions like ``8/255``, comma lists)."""

from __future__ import annotations

from fractions import Fraction

import click

from bench.core.settings import DEFAULTS, SETTINGS


class _Number(click.ParamType):
    """A float that may be written as a fraction, e.g. 8/255."""

    name = "number"

    def convert(self, value, param, ctx):
        if isinstance(value, float | int):
            return float(value)
        try:
            return float(Fraction(value.strip())) if "/" in value else float(value)
        except (ValueError, ZeroDivisionError):
            hint = ""
            if "," in value and param is not None and param.name == "eps":
                hint = "; several radii go in --eps-grid (a robustness curve), --eps is the one threat model"
            self.fail(f"{value!r} is not a number (e.g. 0.1 or 8/255){hint}", param, ctx)


NUMBER = _Number()


class NonEmptyPath(click.Path):
    """A path argument or option that refuses ``''``: an empty path would be the working folder
    (``--out ''`` wrote results.json, tables/, figures/ and cache/ there)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path, which would mean the working folder; give a path", param, ctx)
        return super().convert(value, param, ctx)


class _Counts(click.ParamType):
    """Positive integers as a comma list, e.g. 10,50."""

    name = "counts"

    def convert(self, value, param, ctx):
        if isinstance(value, list | tuple):
            return list(value)
        try:
            return [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma list of integers (e.g. 10,50)", param, ctx)


class _Numbers(click.ParamType):
    """Finite numbers as a comma list, each as ``NUMBER`` reads it, e.g. 0,2/255,0.05."""

    name = "numbers"

    def convert(self, value, param, ctx):
        if isinstance(value, list | tuple):
            return [float(v) for v in value]
        parts = [v for v in value.split(",") if v.strip()]
        if not parts:
            self.fail(f"{value!r} is not a comma list of numbers (e.g. 0,0.05,0.1)", param, ctx)
        return [NUMBER.convert(v, param, ctx) for v in parts]


def _strip_commas(ctx, param, value):
    return None if value is None else ",".join(v.strip() for v in value.split(",") if v.strip())


def _option(st):
    """The ``bench run`` option of one declared setting (bench.core.settings.SETTINGS); every option
    defaults to None, so an unset setting takes the data set's, the checkpoint's or the declared default."""
    shown = (None if "default" in st.help else f"default: {st.derived_from}" if st.derived_from
             else None if st.default is None else f"default: {DEFAULTS[st.name]}")
    help_ = f"{st.help} ({shown})" if shown else st.help
    if st.kind == "bool":
        return click.option(f"{st.flag}/--no-{st.flag[2:]}", st.name, default=None, help=help_)
    types = {"int": int, "count": int, "number": NUMBER, "fraction": NUMBER, "text": str, "choices": str,
             "counts": _Counts(), "numbers": _Numbers(),
             "file": click.Path(dir_okay=False),
             "choice": click.Choice([c.value for c in st.choices]) if st.choices else None}
    return click.option(st.flag, st.name, default=None, type=types[st.kind], help=help_,
                        callback=_strip_commas if st.kind in ("text", "choices") else None)


def setting_options(fn):
    """Every declared setting with ``option`` as a ``bench run`` option, in the table's order."""
    for st in reversed([st for st in SETTINGS if st.option]):
        fn = _option(st)(fn)
    return fn

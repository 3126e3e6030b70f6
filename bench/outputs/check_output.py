"""What ``bench check`` reports and in which forms: a ``Report`` of one ``Row`` per metric (status
``ok``, ``REGRESSION``, ``not checkable`` or ``missing``; ``bench.outputs.check`` decides them), as the
aligned text the command prints, Markdown (``--markdown``, e.g. ``$GITHUB_STEP_SUMMARY``) and JUnit
XML (``--junit``), and the same files for a check that could not compare at all.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from bench.core.errors import BenchError
from bench.core.fileio import atomic_write_bytes

OK, REGRESSION, NOT_CHECKABLE, MISSING = "ok", "REGRESSION", "not checkable", "missing"
IMPROVED = "improved"  # --one-sided: beyond the tolerance in the metric's better direction (passes)


@dataclass
class Row:
    metric: str
    baseline: float | None
    current: float | None
    delta: float | None
    tolerance: float | None
    status: str  # ok | improved | REGRESSION | not checkable | missing
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status == REGRESSION


@dataclass
class Report:
    rows: list[Row]
    notes: list[str] = field(default_factory=list)  # e.g. differing versions (not compared)
    mode: str = "portable"  # exact, portable, statistical, or several joined by "/"
    label: str = "run"  # what was checked, e.g. digits-jeat
    strict: bool = False  # missing and not-checkable metrics fail too (CI)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if self.fails(r)]

    def fails(self, r: Row) -> bool:
        return r.failed or (self.strict and r.status in (NOT_CHECKABLE, MISSING))

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.rows) for s in (OK, IMPROVED, REGRESSION, NOT_CHECKABLE, MISSING)}

    def summary(self) -> str:
        c = self.counts()
        return (f"{c[OK]} ok, " + (f"{c[IMPROVED]} improved, " if c[IMPROVED] else "") + f"{c[REGRESSION]} regression(s), {c[NOT_CHECKABLE]} not checkable, "
                f"{c[MISSING]} missing ({self.mode} mode{', strict' if self.strict else ''})")

    def _cells(self, r: Row) -> tuple[str, ...]:
        return (r.metric, _f(r.baseline), _f(r.current), _f(r.delta, sign=True), _f(r.tolerance), r.status)

    def format(self) -> str:
        head = ("metric", "baseline", "current", "delta", "tolerance", "status")
        body = [self._cells(r)[:5] + (r.status + (f"  ({r.note})" if r.note else ""),) for r in self.rows]
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(5)]
        lines = ["  ".join(x[i].ljust(widths[i]) if i == 0 else x[i].rjust(widths[i]) for i in range(5))
                 + "  " + x[5] for x in [head, *body]]
        return "\n".join(self.notes + lines + [self.summary()])

    def to_markdown(self) -> str:
        """A Markdown section (heading, table, summary), e.g. for ``$GITHUB_STEP_SUMMARY``."""
        verdict = f"{len(self.regressions)} regression(s)" if self.regressions else "passed"
        lines = [f"### bench check {self.label}: {verdict}", "",
                 "| metric | baseline | current | delta | tolerance | status | note |",
                 "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
        for r in self.rows:
            cells = list(self._cells(r)) + [r.note]
            if self.fails(r):
                cells[5] = f"**{r.status}**"
            lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
        lines += ["", self.summary()]
        lines += [f"- {_md(n)}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_junit(self) -> bytes:
        """JUnit XML: one test case per metric; a regression is a failure, a metric not checkable or
        missing is skipped (with its reason)."""
        c = self.counts()
        n_failed = len(self.regressions)
        skipped = len(self.rows) - n_failed - c[OK] - c[IMPROVED]
        suite = _junit_suite(self.label, self.mode, len(self.rows), n_failed, skipped, 0)
        for note in self.notes:
            ET.SubElement(ET.SubElement(suite, "properties"), "property", name="note", value=note)
        for r in self.rows:
            case = ET.SubElement(suite, "testcase", classname=f"bench.outputs.check.{self.label}", name=r.metric, time="0")
            detail = (f"baseline {_f(r.baseline)}, current {_f(r.current)}, delta {_f(r.delta, sign=True)}, "
                      f"tolerance {_f(r.tolerance)}" + (f" ({r.note})" if r.note else ""))
            if self.fails(r):
                ET.SubElement(case, "failure", message=detail, type="regression").text = detail
            elif r.status in (NOT_CHECKABLE, MISSING):
                ET.SubElement(case, "skipped", message=f"{r.status}: {r.note}")
            else:
                ET.SubElement(case, "system-out").text = detail
        return _junit_bytes(suite)


def junit_error(label: str, mode: str, message: str) -> bytes:
    """JUnit XML for a check that could not compare at all (exit code 2): one erroring case."""
    suite = _junit_suite(label, mode, 1, 0, 0, 1)
    case = ET.SubElement(suite, "testcase", classname=f"bench.outputs.check.{label}", name="compare", time="0")
    ET.SubElement(case, "error", message=message, type="not compared").text = message
    return _junit_bytes(suite)


def markdown_error(label: str, message: str) -> str:
    return f"### bench check {label}: not compared\n\nerror: {_md(message)}\n"


def _junit_suite(label, mode, tests, failures, skipped, errors) -> ET.Element:
    return ET.Element("testsuite", name=f"bench check {label} ({mode})", tests=str(tests), failures=str(failures),
                      skipped=str(skipped), errors=str(errors), time="0")


def _junit_bytes(suite: ET.Element) -> bytes:
    root = ET.Element("testsuites", name="bench check", tests=suite.get("tests"), failures=suite.get("failures"),
                      skipped=suite.get("skipped"), errors=suite.get("errors"))
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _md(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _f(v, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+.4g}" if sign else f"{v:.4g}"



def write_outputs(report_or_error: Report | str, junit=None, markdown=None, label_: str = "run",
                  mode: str = "statistical") -> None:
    """``--junit FILE`` (written) and ``--markdown FILE`` (appended, as ``$GITHUB_STEP_SUMMARY``
    expects) for a report, or for the one-line error of a check that could not compare."""
    rep = report_or_error if isinstance(report_or_error, Report) else None
    try:
        if junit:
            atomic_write_bytes(junit, rep.to_junit() if rep else junit_error(label_, mode, report_or_error))
        if markdown:
            with open(markdown, "a", encoding="utf-8") as f:
                f.write(rep.to_markdown() if rep else markdown_error(label_, report_or_error))
    except OSError as e:
        raise BenchError(f"cannot write {e.filename}: {e.strerror or e}") from None

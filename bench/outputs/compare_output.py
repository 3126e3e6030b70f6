"""What ``bench compare`` prints and writes: an aligned text table per run against the first, and
the same as Markdown (``--markdown``, appended, e.g. ``$GITHUB_STEP_SUMMARY``), CSV (``--csv``),
LaTeX (``--latex``, a booktabs tabular) and JUnit XML (``--junit``: one test case per metric and
run; a metric significantly worse than the first run's, after Holm's correction, is a failure).
"""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET

from bench.core.errors import BenchError
from bench.core.fileio import atomic_write_bytes
from bench.metrics import registry
from bench.outputs.check_output import _f, _md
from bench.outputs.compare import Comparison, Test

HEAD = ("metric", "A", "B", "B - A", "SE", "A only", "B only", "test", "p", "p (Holm)", "verdict")


def verdict(t: Test, alpha: float) -> str:
    """``B better`` / ``B worse`` (in the metric's declared direction) / ``B differs`` (no direction)
    where Holm's p is below ``alpha``; else ``no significant difference``; ``not tested``."""
    if t.p_holm is None:
        return "not tested"
    if t.p_holm >= alpha:
        return "no significant difference"
    better = registry.spec(t.metric).higher_is_better
    if better is None:
        return "B differs"
    return "B better" if (t.diff > 0) == better else "B worse"


def _p(p) -> str:
    return "-" if p is None else (f"{p:.2g}" if p < 0.001 else f"{p:.3f}")


def _count(v) -> str:
    return "-" if v is None else str(v)


def cells(t: Test, alpha: float) -> tuple[str, ...]:
    return (t.metric, _f(t.a), _f(t.b), _f(t.diff, sign=True), _f(t.se), _count(t.only_a), _count(t.only_b),
            t.test or "-", _p(t.p), _p(t.p_holm), verdict(t, alpha))


def _heading(comp: Comparison, label: str) -> str:
    return f"B = {label} against A = {comp.labels[0]}"


def _footer(comp: Comparison) -> list[str]:
    by_note: dict[str, list[str]] = {}
    for t in (t for ts in comp.tests.values() for t in ts if t.note):
        by_note.setdefault(t.note, []).append(t.metric)
    notes = [f"{', '.join(dict.fromkeys(names))}: {note}" for note, names in by_note.items()]
    return [f"Holm's correction over {sum(t.p is not None for ts in comp.tests.values() for t in ts)} tests; "
            f"significant at {comp.alpha}"] + notes


def to_text(comp: Comparison) -> str:
    out = []
    for label, tests in comp.tests.items():
        body = [cells(t, comp.alpha) for t in tests]
        widths = [max(len(x[i]) for x in [HEAD, *body]) for i in range(len(HEAD) - 1)]
        out.append(_heading(comp, label))
        out += ["  ".join(x[i].ljust(widths[i]) if i in (0, 7) else x[i].rjust(widths[i])
                          for i in range(len(HEAD) - 1)) + "  " + x[-1] for x in [HEAD, *body]]
        out.append("")
    return "\n".join(out + _footer(comp))


def to_markdown(comp: Comparison) -> str:
    lines = [f"### bench compare: {', '.join(comp.labels)}", ""]
    for label, tests in comp.tests.items():
        lines += [f"{_md(_heading(comp, label))}", "", "| " + " | ".join(HEAD) + " |",
                  "| --- | " + " | ".join("---:" for _ in HEAD[1:7]) + " | --- | ---: | ---: | --- |"]
        for t in tests:
            c = list(cells(t, comp.alpha))
            if c[-1] in ("B worse", "B better", "B differs"):
                c[-1] = f"**{c[-1]}**"
            lines.append("| " + " | ".join(_md(x) for x in c) + " |")
        lines.append("")
    return "\n".join(lines + [f"- {_md(n)}" for n in _footer(comp)]) + "\n"


def to_csv(comp: Comparison) -> str:
    """One row per metric and run, full precision (empty for none)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["a", "b", "metric", "value_a", "value_b", "diff", "se", "only_a", "only_b", "test", "p", "p_holm",
                "verdict", "note"])
    for label, tests in comp.tests.items():
        for t in tests:
            w.writerow([comp.labels[0], label, t.metric, *("" if v is None else repr(v) for v in
                        (t.a, t.b, t.diff, t.se, t.only_a, t.only_b)), t.test, "" if t.p is None else repr(t.p),
                        "" if t.p_holm is None else repr(t.p_holm), verdict(t, comp.alpha), t.note])
    return buf.getvalue()


def _tex(s: str) -> str:
    return s.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")


def to_latex(comp: Comparison) -> str:
    """A booktabs tabular per run against the first: metric, A, B, difference +- SE, discordant
    counts, test, Holm's p; a significant difference in bold."""
    out = []
    for label, tests in comp.tests.items():
        out += [f"% {_tex(_heading(comp, label))}", "\\begin{tabular}{lrrrrrlr}", "\\toprule",
                "Metric & A & B & B $-$ A $\\pm$ SE & A only & B only & Test & $p$ (Holm) \\\\", "\\midrule"]
        for t in tests:
            c = cells(t, comp.alpha)
            diff = f"{c[3]} $\\pm$ {c[4]}" if t.se is not None else c[3]
            if verdict(t, comp.alpha) in ("B worse", "B better", "B differs"):
                diff = f"\\textbf{{{diff}}}"
            out.append(" & ".join(_tex(x) if i != 3 else x for i, x in
                                  enumerate((c[0], c[1], c[2], diff, c[5], c[6], c[7], c[9]))) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(out)


def to_junit(comp: Comparison) -> bytes:
    """JUnit XML: a test case per metric and run; ``B worse`` fails, ``not tested`` is skipped."""
    tests = [(label, t) for label, ts in comp.tests.items() for t in ts]
    verdicts = [verdict(t, comp.alpha) for _, t in tests]
    failed, skipped = verdicts.count("B worse"), verdicts.count("not tested")
    suite = ET.Element("testsuite", name=f"bench compare {comp.labels[0]}", tests=str(len(tests)),
                       failures=str(failed), skipped=str(skipped), errors="0", time="0")
    for (label, t), v in zip(tests, verdicts, strict=True):
        case = ET.SubElement(suite, "testcase", classname=f"bench.outputs.compare.{label}", name=t.metric, time="0")
        c = cells(t, comp.alpha)
        detail = (f"A {c[1]}, B {c[2]}, B - A {c[3]} (SE {c[4]}), A only {c[5]}, B only {c[6]}, {c[7]}, "
                  f"p {c[8]}, Holm {c[9]}: {v}" + (f" ({t.note})" if t.note else ""))
        if v == "B worse":
            ET.SubElement(case, "failure", message=detail, type="significantly worse").text = detail
        elif v == "not tested":
            ET.SubElement(case, "skipped", message=detail)
        else:
            ET.SubElement(case, "system-out").text = detail
    root = ET.Element("testsuites", name="bench compare", tests=suite.get("tests"), failures=str(failed),
                      skipped=str(skipped), errors="0")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write(comp: Comparison, markdown=None, csv_path=None, latex=None, junit=None) -> None:
    try:
        if markdown:
            with open(markdown, "a", encoding="utf-8") as f:
                f.write(to_markdown(comp))
        for path, text in ((csv_path, to_csv), (latex, to_latex)):
            if path:
                atomic_write_bytes(path, text(comp).encode())
        if junit:
            atomic_write_bytes(junit, to_junit(comp))
    except OSError as e:
        raise BenchError(f"cannot write {e.filename}: {e.strerror or e}") from None

"""report.html: one self-contained page a person opens instead of reading results.json.

The page holds the paper-style tables, every figure each run's results record (sample grids,
reliability diagrams, energy contours, SSIM neighbour grids, OOD histograms: the PNG paths a
metric's ``details`` name under ``figure``, ``figures`` or ``grid``, relative to the run's folder),
each embedded as a base64 ``data:`` URI so the file can be mailed or archived alone, and each run's
model (sha256 included), metrics, settings (``run.config``) and versions.  A figure is found from
``results.json``, never by searching folders: a stale PNG that no result names is not shown, and
a recorded path outside the run's folder is ignored.  Plain HTML with inline CSS, no scripts;
every piece of text from the results is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from pathlib import Path

from bench.core.fileio import atomic_write_bytes
from bench.core.results import Results
from bench.outputs import all_tables, paper_layout
from bench.outputs.table_text import to_html

FIGURE_KEYS = ("figure", "figures", "grid")  # the details keys under which groups record the figures they wrote
FIGURE_DIRS = ("figures", "samples")  # the order figures are shown in: figures/ first, then samples/

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
caption { text-align: left; padding: 0.3em 0; caption-side: top; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #e2e2e2; text-align: left; vertical-align: top; }
table.results td { text-align: right; font-variant-numeric: tabular-nums; }
table.results thead th { border-bottom: 2px solid #444; }
table.results tr.paper { color: #555; background: #f6f6f6; }
table.kv th { font-weight: 600; white-space: nowrap; }
td.code, code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.92em; word-break: break-all; }
ul.notes { font-size: 0.85em; color: #555; margin-top: 0; }
details { margin: 0.6em 0; } summary { cursor: pointer; font-weight: 600; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; border: 1px solid #ddd; padding: 0.5em; background: #fff; }
figure img { max-width: 560px; height: auto; display: block; image-rendering: auto; }
figcaption { font-size: 0.85em; color: #444; margin-top: 0.3em; }
.null { color: #a33; }
figure.wide-fig { flex-basis: 100%; } figure.wide-fig img { max-width: 100%; }
.wide { overflow-x: auto; max-width: 100%; }
.runs > div { min-width: 0; overflow-x: auto; }
.runs { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 1.5em; }
.runs figure img { max-width: 100%; }
body:has(.runs) { max-width: 95vw; }
"""


def e(x) -> str:
    """Escape any value as HTML text."""
    return html.escape("" if x is None else str(x), quote=True)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def recorded_figures(res: Results | dict) -> list[str]:
    """The figure paths the metrics' details record (``FIGURE_KEYS``), each once, in metric order
    (of a Results or its ``metrics``: name -> Result)."""
    found = []
    for r in (res.metrics if isinstance(res, Results) else res).values():
        details = r.details if isinstance(r.details, dict) else {}
        for key in FIGURE_KEYS:
            v = details.get(key)
            for path in ([v] if isinstance(v, str) else v if isinstance(v, list) else []):
                if isinstance(path, str) and path and path not in found:
                    found.append(path)
    return found


def figures(run_dir: Path, res: Results) -> list[Path]:
    """The PNG files that ``res`` records (``recorded_figures``) and that exist inside ``run_dir``,
    each once, as ``run_dir / relative path``: those under ``figures/``, then ``samples/``, then any
    other folder, each in name order."""
    run_dir = Path(run_dir)
    root = run_dir.resolve()
    found = set()
    for rec in recorded_figures(res):
        p = (run_dir / rec).resolve()
        if p.suffix.lower() == ".png" and p.is_relative_to(root) and p.is_file():
            found.add(run_dir / p.relative_to(root))

    def order(p: Path):
        top = p.relative_to(run_dir).parts[0]
        return (FIGURE_DIRS.index(top) if top in FIGURE_DIRS else len(FIGURE_DIRS), p)

    return sorted(found, key=order)


def missing_figures(run_dir: Path, res: Results | dict) -> list[str]:
    """The PNG paths ``res`` records inside ``run_dir`` whose files are not there (deleted since):
    the report names them, and ``bench run`` computes their group again rather than reuse its cache."""
    root = Path(run_dir).resolve()
    return [rec for rec in recorded_figures(res) if (p := (root / rec).resolve()).suffix.lower() == ".png"
            and p.is_relative_to(root) and not p.is_file()]


def _num(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return str(v)


def _value(v) -> str:
    return _num(v) if isinstance(v, int | float) and not isinstance(v, bool) else \
        json.dumps(v, default=str) if isinstance(v, list | dict) else str(v)


def _kv(rows, cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{e(k)}</th><td class=\"code\">{e(_value(v))}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def _metrics(res: Results) -> str:
    head = "<tr><th>metric</th><th>value</th><th>std</th><th>n</th><th>seconds</th><th>reason</th></tr>"
    rows = []
    for name, r in res.metrics.items():
        val = _num(r.value) if r.value is not None else '<span class="null">null</span>'
        rows.append(f"<tr><th>{e(name)}</th><td>{val}</td><td>{e(_num(r.std))}</td><td>{e(r.n)}</td>"
                    f"<td>{e(_num(r.seconds))}</td><td>{e(r.reason or '')}</td></tr>")
    return f'<table class="metrics"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


ATTACKED = ("adv", "fgsm", "pgd", "attack")  # figure names of attacked inputs: after the clean ones


def _suite_of(res: Results) -> dict[str, str]:
    """Figure path -> the suite of the first metric recording it (``run.groups``), "other" else."""
    suite_of_metric = {m: rec.get("suite") for rec in (res.run.get("groups") or {}).values()
                       if isinstance(rec, dict) for m in rec.get("metrics") or []}
    found: dict[str, str] = {}
    for name, r in res.metrics.items():
        details = r.details if isinstance(r.details, dict) else {}
        for key in FIGURE_KEYS:
            v = details.get(key)
            for path in ([v] if isinstance(v, str) else v if isinstance(v, list) else []):
                if isinstance(path, str):
                    found.setdefault(path, suite_of_metric.get(name) or "other")
    return found


def _figures(run_dir: Path, res: Results) -> str:
    """The run's figures grouped by suite (in the order the suites ran), clean before attacked."""
    figs, missing = figures(run_dir, res), missing_figures(run_dir, res)
    gone = (f'<p class="meta null">Recorded in results.json but missing from {e(run_dir)}: '
            f'{e(", ".join(missing))}.</p>' if missing else "")
    if not figs:
        return gone or '<p class="meta">No figures recorded in results.json.</p>'
    suite_of = _suite_of(res)
    order = [str(s) for s in res.run.get("suites") or []]
    by_suite: dict[str, list[Path]] = {}
    for p in figs:
        by_suite.setdefault(suite_of.get(p.relative_to(run_dir).as_posix(), "other"), []).append(p)
    parts = []
    for suite in sorted(by_suite, key=lambda k: (order.index(k) if k in order else len(order), k)):
        items = []
        for p in sorted(by_suite[suite], key=lambda p: (any(a in p.name for a in ATTACKED), figs.index(p))):
            rel = p.relative_to(run_dir).as_posix()
            wide = ' class="wide-fig"' if _png_width(p) > 1100 else ""  # a multi-panel figure: a row of its own
            items.append(f'<figure{wide}><img src="{data_uri(p)}" alt="{e(rel)}" loading="eager">'
                         f"<figcaption>{e(rel)}</figcaption></figure>")
        parts.append(f"<h4>{e(suite)}</h4>" + '<div class="figs">' + "".join(items) + "</div>")
    return gone + "".join(parts)


def _png_width(path: Path) -> int:
    """The pixel width in a PNG's header (0 if it is not one)."""
    head = Path(path).read_bytes()[:24]
    return int.from_bytes(head[16:20], "big") if head[:8] == b"\x89PNG\r\n\x1a\n" else 0


def ran_settings(res: Results) -> list[tuple[str, object]]:
    """The settings of ``run.config`` that key a group of this run (``Group.keyed_settings``),
    sorted; all of them for a record without groups (``bench samples``) or of unknown groups."""
    from bench.metrics import registry

    config = res.run.get("config") or {}
    groups = res.run.get("groups") or {}
    known = registry.declared_groups()
    if not groups or any(g not in known for g in groups):
        return sorted(config.items())
    keys = {k for g in groups for k in known[g].keyed_settings}
    return sorted((k, v) for k, v in config.items() if k in keys)


def run_section(run_dir: Path, res: Results, name: str, open_: bool = True) -> str:
    m, r = res.model, res.run
    model = [(k, m.get(k)) for k in ("path", "sha256", "arch", "method", "dataset", "num_classes")]
    model += [(k, v) for k, v in m.items() if k not in dict(model)]
    run = [("directory", str(run_dir)), ("suites", ", ".join(map(str, r.get("suites") or []))),
           ("seed", r.get("seed")), ("device", r.get("device")), ("started", r.get("started")),
           ("seconds", r.get("seconds"))]
    if isinstance(r.get("cache"), dict):
        run.append(("cache", r["cache"]))
    if r.get("flags"):  # the sanity flags raised (bench.runtime.sanity), one line each
        run.append(("flags", "; ".join(f"{f.get('flag')} ({f.get('metric')}): {f.get('message')}" for f in r["flags"])))
    config = ran_settings(res)
    versions = sorted((r.get("versions") or {}).items())
    ident = (f'model sha256: <code>{e(m["sha256"])}</code>' if m.get("sha256") else
             f'weights sha256: <code>{e(m["weights_sha256"])}</code>' if m.get("weights_sha256") else
             "model sha256: <code>unknown</code>")
    return "\n".join([
        f"<details{' open' if open_ else ''}><summary>{e(name)}</summary>",
        f'<p class="meta">{ident}</p>',
        "<h3>Model</h3>", _kv(model),
        "<h3>Run</h3>", _kv(run),
        "<h3>Settings of the suites that ran (run.config)</h3>",
        _kv(config) if config else '<p class="meta">none recorded</p>',
        "<h3>Versions</h3>", _kv(versions) if versions else '<p class="meta">none recorded</p>',
        "<h3>Metrics (raw values)</h3>", _metrics(res),
        "</details>"])


def _side_by_side(blocks: list[str]) -> str:
    return f'<div class="runs">{"".join(f"<div>{b}</div>" for b in blocks)}</div>' if len(blocks) > 1 else "".join(blocks)


def render(runs: list[tuple[Path, Results]], tables: list[paper_layout.Table], title: str = "JEAT-Bench report",
           figures: list[Path] = ()) -> str:
    names = paper_layout.labels([r for _, r in runs])
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
             f"<h1>{e(title)}</h1>",
             f'<p class="meta">Written {e(now)} by bench; {len(runs)} run(s). In the tables accuracies and ECE are in % (raw fractions in the metric lists), '
             "best of our rows per column in bold, the paper's rows shaded.</p>"]
    pairs = list(zip(runs, names, strict=True))
    parts.append("<h2>Figures</h2>")  # first: each run's, grouped by suite; several runs side by side
    parts.append(_side_by_side([f"<h3>{e(n)}</h3>" + _figures(d, r) for (d, r), n in pairs]))
    parts.append("<h2>Tables</h2>")
    parts += [f'<div class="wide">{to_html(t)}</div>' for t in tables] or \
        ['<p class="meta">No table metrics in this run.</p>']
    parts += [f'<figure><img src="{data_uri(p)}" alt="{e(p.name)}" loading="eager"><figcaption>{e(p.name)}'
              "</figcaption></figure>" for p in map(Path, figures)]  # bench table's figures of several runs
    parts.append("<h2>Runs</h2>")  # model, settings, versions, and the raw metric list last
    parts.append(_side_by_side([run_section(d, r, n) for (d, r), n in pairs]))  # every run open
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def write_report(path: str | Path, runs: list[tuple[Path, Results]], tables: list[paper_layout.Table],
                 title: str = "JEAT-Bench report", figures: list[Path] = ()) -> Path:
    """Write the page (atomically) to ``path`` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, render(runs, tables, title, figures).encode("utf-8"))
    return path


def write_run_report(res: Results, out: str | Path) -> Path:
    """``bench run``'s page: ``out/report.html`` for the run in ``out``."""
    out = Path(out)
    return write_report(out / "report.html", [(out, res)], all_tables.run_tables(res),
                        title=f"JEAT-Bench: {paper_layout.label(res)}")

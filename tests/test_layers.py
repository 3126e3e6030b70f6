"""The package's layering: every module imports alone, the top-level imports between bench
modules form no cycle (read from the sources with ast, so an import inside a function, made at
call time, does not count), nor do all imports, those inside functions included; the outputs
(results, check, tables, report) depend one way; no module is longer than ``MAX_LINES``."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import bench

ROOT = Path(bench.__file__).parent


def modules() -> dict[str, Path]:
    """bench module name -> source file, for every module of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__main__":  # runs the command line when imported
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known, top_level: bool) -> set[str]:
    """The bench modules ``name`` imports (``from bench.x import y`` counts bench.x.y when that is a
    module, else bench.x); with ``top_level`` only the statements run at import time (module body,
    including ``if``/``try`` blocks, not function or class bodies)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if name == "bench":  # bench's __init__ holds the version and the lazy re-exports of the Python API
        top_level = True  # (module __getattr__: bench.evaluate, bench.functional), which the top of the
        # house (bench.api) imports on first use, once every module below has its bench.__version__
    nodes = []
    todo = list(tree.body) if top_level else list(ast.walk(tree))
    while todo:
        node = todo.pop()
        if top_level and isinstance(node, ast.If | ast.Try | ast.With):
            todo += [n for field in ("body", "orelse", "finalbody", "handlers") for n in getattr(node, field, [])]
        elif top_level and isinstance(node, ast.ExceptHandler):
            todo += node.body
        nodes.append(node)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    # importing bench.a.b runs bench.a's __init__ first: the packages above count too (bench's own
    # __init__ holds only the version), except the module's own packages, whose __init__ is running
    # or done by the time the module runs
    own = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)}
    found |= {".".join(m.split(".")[:k]) for m in found for k in range(2, m.count(".") + 1)} - own
    return {m for m in found if m in known and m != name}


def graph(top_level: bool = True) -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known, top_level) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_reads_relative_and_from_imports(tmp_path):
    known = {"bench", "bench.metrics", "bench.metrics.fisher", "bench.core.energy", "bench.engines.plots", "bench.inputs.nets",
             "bench.inputs.nets.wrn", "bench.metrics.x"}
    src = tmp_path / "x.py"
    src.write_text("import math\nfrom bench.core.energy import EnergyModel\nfrom ..engines import plots\n"
                   "if True:\n    from bench.inputs.nets.wrn import WRN\n"
                   "def f():\n    from . import fisher\n")
    top = {"bench.core.energy", "bench.engines.plots", "bench.inputs.nets.wrn", "bench.inputs.nets"}  # bench.inputs.nets: wrn's package
    assert imports("bench.metrics.x", src, known, top_level=True) == top
    assert imports("bench.metrics.x", src, known, top_level=False) == top | {"bench.metrics.fisher"}


FRESH_IMPORTS = """
import importlib, sys
for name in sys.argv[1:]:
    for m in [m for m in sys.modules if m == "bench" or m.startswith("bench.")]:
        del sys.modules[m]  # each module is imported first, before any other bench module
    try:
        importlib.import_module(name)
    except Exception as e:
        print(f"{name}: {type(e).__name__}: {e}")
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    """One fresh interpreter (third-party libraries imported once); before each module every bench
    module is dropped from sys.modules, so a module that imports only after another one fails."""
    proc = subprocess.run([sys.executable, "-c", FRESH_IMPORTS, *sorted(modules())], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == ""


def test_no_cycle_among_top_level_imports():
    assert cycles(graph(top_level=True)) == []


# the layers, lowest first: a module imports only modules of its own layer or of layers below
# (docs/ARCHITECTURE.md); bench.cli, bench.api, bench.functional, bench.train and the bench.data
# shim sit on top and may import any of them
LAYERS = ("core", "runtime", "inputs", "engines", "metrics", "outputs", "pipeline")
# what reads metric facts only: the registry's declarations, not a metric's code
FACTS = {"bench.metrics", "bench.metrics.registry", "bench.metrics.suites"}


def layer(module: str) -> int | None:
    """The layer of a bench module (None: bench itself and the modules on top)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def upward(g: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a layer above its own (or from the top), as 'a -> b'."""
    bad = []
    for name, deps in g.items():
        own = layer(name)
        if own is None:
            continue
        for d in sorted(deps):
            theirs = layer(d)
            if d != "bench" and (theirs is None or theirs > own):
                bad.append(f"{name} -> {d}")
    return bad


def test_the_layer_rule_finds_an_upward_import():
    g = {"bench.core.a": {"bench.engines.b"}, "bench.engines.b": {"bench.core.a"}, "bench.cli": {"bench.pipeline.x"},
         "bench.pipeline.x": {"bench.cli"}}
    assert upward(g) == ["bench.core.a -> bench.engines.b", "bench.pipeline.x -> bench.cli"]


def test_no_module_imports_a_layer_above_its_own():
    """Anywhere in a module, top level or inside a function: a lazy import runs the wrong way too."""
    assert upward(graph(top_level=False)) == []


def test_every_module_is_in_a_layer_or_on_top():
    top = {"bench", "bench.cli", "bench.cli_options", "bench.cli_results", "bench.api", "bench.functional", "bench.data"}
    loose = sorted(m for m in modules() if layer(m) is None and m not in top and not m.startswith("bench.train"))
    assert loose == [], f"modules outside the layers: {loose}"


@pytest.mark.parametrize("module, forbidden", [
    ("bench.engines.sampling", ("bench.engines.plots", "bench.inputs.checkpoints")),  # the sampler: no figures, no files
    ("bench.core.results", ("bench.metrics",)),  # the record of results: no metric code
])
def test_layer_boundaries(module, forbidden):
    """Anywhere in the module (top level or inside a function), no import of a forbidden module or
    of one inside a forbidden package."""
    known = modules()
    got = imports(module, known[module], known, top_level=False)
    bad = sorted(m for m in got for f in forbidden if m == f or m.startswith(f + "."))
    assert bad == [], f"{module} imports {bad}"


@pytest.mark.parametrize("module", ["bench.outputs.check", "bench.outputs.table_files", "bench.outputs.report"])
def test_outputs_read_facts_not_metric_code(module):
    known = modules()
    got = imports(module, known[module], known, top_level=False)
    assert sorted(m for m in got if m.startswith("bench.metrics") and m not in FACTS) == []


def test_no_cycle_among_all_imports():
    """Imports inside functions too: a lazy import hides a cycle from import time, not from the
    design (tables -> report -> tables was one)."""
    assert cycles(graph(top_level=False)) == []


OUTPUTS = ("bench.core.results", "bench.outputs.check", "bench.outputs.check_output", "bench.outputs.paper_layout", "bench.outputs.table_text",
           "bench.outputs.table_files", "bench.outputs.report")


def test_outputs_depend_one_way():
    """report.html is built from the tables' content and formats (paper_layout, table_text);
    ``bench table`` (tables.build) writes the report: report never imports tables, anywhere."""
    g = graph(top_level=False)
    assert "bench.outputs.report" in g["bench.outputs.table_files"] and "bench.outputs.table_files" not in g["bench.outputs.report"]
    assert cycles({m: g[m] & set(OUTPUTS) for m in OUTPUTS}) == []


MAX_LINES = 400


def test_no_module_is_longer_than_max_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"over {MAX_LINES} lines: {long}"

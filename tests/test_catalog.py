"""A metric module is its declaration: it imports no torch at module level (its group functions
import their engines when called), so ``bench check`` and ``bench table`` read the facts straight
from the code, with no copy of them to go stale; the maths lives in the engines, which
``bench.functional`` calls; and an engine a group imports inside its function keys its cache."""

import json
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages

import bench
from bench.core import code_digest
from bench.metrics import registry

ROOT = Path(bench.__file__).parents[1]
BASELINE = ROOT / "results" / "baseline" / "digits-jeat.json"
METRIC_MODULE_LINES = 350

CHECK_WITHOUT_TORCH = """
import sys
from bench.cli import cli
try:
    cli.main(["check", sys.argv[1], "--baseline", sys.argv[1], "--exact"], standalone_mode=False)
except SystemExit as e:
    print("exit", e.code)
print("torch" in sys.modules, sorted(m for m in sys.modules if m.startswith("bench.metrics.")))
"""


def test_bench_check_of_a_baseline_imports_no_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CHECK_WITHOUT_TORCH, str(BASELINE)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    torch_in, imported = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    assert torch_in == "False", proc.stdout[-2000:]
    assert set(registry.modules()) <= set(eval(imported)), imported  # the facts come from the modules
    n = len(json.loads(BASELINE.read_text())["metrics"])
    assert f"{n} ok, 0 regression(s), 0 not checkable, 0 missing (exact mode)" in proc.stdout


REGISTER_WITHOUT_TORCH = """
import importlib.abc, json, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked here ({name})")
        return None

sys.meta_path.insert(0, NoTorch())
from bench.metrics import registry
groups = registry.load_all()
print(json.dumps({name: [sp.name for sp in g.specs] + list(g.settings) for name, g in groups.items()}))
"""


def test_every_metric_module_registers_its_groups_with_torch_unimportable(tmp_path):
    """Every metric module imports and registers its groups with torch made unimportable (a
    meta-path finder refusing it), and declares there exactly what it declares with torch."""
    proc = subprocess.run([sys.executable, "-c", REGISTER_WITHOUT_TORCH], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    without = json.loads(proc.stdout.strip().splitlines()[-1])
    live = {name: [sp.name for sp in g.specs] + list(g.settings) for name, g in registry.load_all().items()
            if g.module in registry.modules()}
    assert without == live
    assert {"accuracy", "pgd20", "autoattack", "ece", "fisher", "ood", "denoise", "is_fid"} <= set(without)


def test_no_metric_module_is_longer_than_350_lines():
    """A metric module declares its groups and reads its engines' results: the maths lives in
    bench/engines, so none grows past 350 lines."""
    long = {}
    for m in registry.modules():
        path = ROOT / Path(*m.split(".")).with_suffix(".py")
        if path.is_file() and (n := len(path.read_text().splitlines())) > METRIC_MODULE_LINES:
            long[m] = n
    assert long == {}, long


def _bench_imports(module: str) -> set[str]:
    from tests.test_layers import imports, modules

    known = modules()
    return imports(module, known[module], known, top_level=False)


def test_bench_functional_calls_engines_not_metric_modules():
    got = _bench_imports("bench.functional")
    assert sorted(m for m in got if m.startswith("bench.metrics")) == []
    assert {"bench.engines.robust_flags", "bench.engines.calibration_fit", "bench.engines.fisher_terms",
            "bench.engines.ood_scores", "bench.engines.denoising"} <= got


def test_an_engine_imported_inside_a_group_function_keys_its_cache():
    """bench.metrics.fisher imports its engine only inside fisher_group: the group's code digest
    still covers the engine, so an edit there recomputes instead of serving stale numbers."""
    assert "bench.engines.fisher_terms" not in _top_level_imports("bench.metrics.fisher")
    memo: dict = {}
    before = code_digest.code_sha256("bench.metrics.fisher", memo)
    assert "bench.engines.fisher_terms" in memo and "bench.engines.taylor" in memo  # and what the engine imports
    src, deps = memo["bench.engines.fisher_terms"]
    memo["bench.engines.fisher_terms"] = (src + b"\n# an edit\n", deps)
    assert code_digest.code_sha256("bench.metrics.fisher", memo) != before
    assert code_digest.code_sha256("bench.metrics.fisher") == before  # the files as they are: the same key


def _top_level_imports(module: str) -> set[str]:
    from tests.test_layers import imports, modules

    known = modules()
    return imports(module, known[module], known, top_level=True)


def test_every_package_under_bench_ships():
    """setup.py finds the packages: every folder of bench/ holding modules is one of them."""
    found = set(find_packages(str(ROOT), include=["bench", "bench.*"]))
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "bench").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert folders <= found, sorted(folders - found)


def test_a_source_tree_without_the_wheel_mapping_finds_the_repository_folders(monkeypatch):
    """CI imports ``bench`` from the checkout (pytest puts the root on sys.path), where
    ``bench._models`` and ``bench._results`` do not exist: the fallback must be the repository's
    own models/ and results/ (it pointed inside bench/ after the layer move, and CI failed)."""
    from bench.inputs import zoo

    def no_mapping(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(zoo.resources, "files", no_mapping)
    assert zoo.results_dir() == ROOT / "results"
    assert (zoo.results_dir() / "baseline" / "cases.json").is_file()
    assert (zoo.models_dir() / "recipes").is_dir()

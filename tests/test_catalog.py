"""The metric catalogue (bench/metrics/catalog.json) says what the registry says, serves facts
without torch while it holds the sources as they are, and gives way to the registry when not."""

import json
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages

import bench
from bench.metrics import catalog, registry

ROOT = Path(bench.__file__).parents[1]
BASELINE = ROOT / "results" / "baseline" / "digits-jeat.json"


def test_the_catalogue_equals_the_live_registry():
    live = catalog.build(registry.load_all(), registry.modules())
    assert json.loads(catalog.PATH.read_text()) == json.loads(json.dumps(live)), \
        "bench/metrics/catalog.json is stale: run python tools/make_catalog.py"


def test_catalogue_facts_equal_the_registered_facts():
    for g in registry.load_all().values():
        held = {e["name"]: e for e in catalog.held(g.module) or []}
        assert g.name in held, g.name
        assert held[g.name]["specs"] == g.specs and tuple(held[g.name]["settings"]) == g.settings


def test_a_changed_source_is_not_served_from_the_catalogue(monkeypatch):
    monkeypatch.setattr(catalog, "source_digest", lambda m: "0" * 64)
    assert catalog.held("bench.metrics.robustness") is None


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
    last = proc.stdout.strip().splitlines()[-1]
    assert last == "False ['bench.metrics.catalog', 'bench.metrics.registry']", proc.stdout[-2000:]
    n = len(json.loads(BASELINE.read_text())["metrics"])
    assert f"{n} ok, 0 regression(s), 0 not checkable, 0 missing (exact mode)" in proc.stdout


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

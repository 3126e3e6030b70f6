"""The metric registry: each metric declares its facts (bench.metrics.Metric) where its group is
registered, and bench check, bench table and the suite list derive from them.  Adding a metric is
one module: the last test registers a new group with a new suite here, and nothing else is edited."""

import json
import math

import pytest

from bench import metrics
from bench.cli import main
from bench.core.results import read
from bench.inputs import checkpoints
from bench.metrics import PROPORTION, Metric, Result, register, relative, suites
from bench.outputs import all_tables
from bench.outputs.check_rules import statistical as default_tolerance
from tests.conftest import tiny_model

META = {"arch": "digits-cnn", "arch_kwargs": {"width": 4, "act": "silu"}, "num_classes": 10,
        "input_shape": [1, 8, 8], "dataset": "digits", "method": "normal",
        "threat_model": {"norm": "Linf", "eps": 0.1}}


@pytest.fixture
def registry():
    """The registry as it was after the test (groups registered here are dropped)."""
    metrics.load_all()
    before = dict(metrics.GROUPS)
    yield metrics.GROUPS
    metrics.GROUPS.clear()
    metrics.GROUPS.update(before)


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoints.save(path, tiny_model(), META)
    return str(path)


def _const(ctx):
    return {"widget_share": Result(0.25, n=40)}


def test_a_metric_name_is_declared_once(registry):
    with pytest.raises(ValueError, match="'accuracy' is already declared by group accuracy"):
        register("acc_again", "robust", metrics=(Metric.proportion("accuracy"),), settings=())(_const)
    with pytest.raises(ValueError, match="already declared by group ood"):  # inside the OOD group's pattern
        register("ood_more", "ood", metrics=(Metric("ood_auroc_px_extra"),), settings=())(_const)
    with pytest.raises(ValueError, match="declared twice"):
        register("twice", "gadgetry", metrics=("w", "w"), settings=())(_const)
    with pytest.raises(ValueError, match="need names"):
        register("pattern", "gadgetry", metrics=(Metric("w_*"),), settings=())(_const)
    assert not {"acc_again", "ood_more", "twice", "pattern"} & set(registry)


def test_an_undeclared_returned_name_is_refused(registry, ckpt, tmp_path):
    @register("leaky", "gadgetry", metrics=(Metric("widget_share"),), settings=())
    def leaky(ctx):
        return {"widget_share": Result(0.25, n=40), "gadget": Result(1.0, n=1)}

    with pytest.raises(RuntimeError, match=r"leaky returned undeclared metric\(s\) \['gadget'\]"):
        from bench.pipeline import runner
        runner.run(ckpt, "gadgetry", tmp_path / "run", device="cpu", log=lambda m: None)
    # a group whose names depend on the settings: each name must fall under one of its patterns
    g = metrics.Group("named", "gadgetry", (), (), leaky, names=lambda s: ("w_1", "v_1"), specs=(Metric("w_*"),))
    with pytest.raises(ValueError, match=r"undeclared metric\(s\) \['v_1'\]"):
        g.for_settings({})


def test_the_suites_keep_their_order_and_the_facts_their_rules():
    from bench.metrics import registry

    # the suites follow the metric modules' order (registry.ORDER), then registration: derived, not listed
    by_module = [g.suite for m in registry.ORDER for g in metrics.GROUPS.values() if g.fn.__module__ == f"bench.metrics.{m}"]
    assert suites.resolve("all") == suites.names() == list(dict.fromkeys(by_module))
    assert suites.resolve("ood,robust") == ["robust", "ood"]
    assert metrics.spec("ood_adv_fpr95_px_uniform").higher_is_better is False  # the OOD group's pattern
    assert metrics.spec("ood_auroc_px_uniform").higher_is_better is True
    assert metrics.spec("no_such_metric") == Metric("no_such_metric")  # not checkable, plain float


def test_a_new_group_with_a_new_suite_is_one_module(registry, ckpt, tmp_path, capsys):
    """Registered here and nowhere else: ``--suite gadgetry`` runs it, bench check bounds it by its
    declared rule, the tables show it in percent with its column label."""
    register("widgets", "gadgetry", settings=("n_eval",),
             metrics=(Metric("widget_share", "proportion", True, "percent", PROPORTION, 1.0, column="Widgets",
                             portable=metrics.POINTS, bounds=(0.0, 1.0)),
                      Metric("widget_size", "mm", False, tolerance=relative(0.2), column="Size",
                             portable=metrics.STABLE)))(
        lambda ctx: {"widget_share": Result(0.25, n=40), "widget_size": Result(3.0, n=40)})
    assert suites.resolve("all")[-1] == "gadgetry"
    out = tmp_path / "run"
    assert main(["run", "--model", ckpt, "--suite", "gadgetry", "--n-eval", "40", "--device", "cpu",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    res = read(out / "results.json")
    assert list(res.metrics) == ["widget_share", "widget_size"] and res.run["suites"] == ["gadgetry"]
    # check: 3 SE of the difference of two proportions at p = (0.25 * 40 + 1) / 42, n = 40
    p = 11 / 42
    assert default_tolerance("widget_share", res.metrics["widget_share"])[0] == pytest.approx(
        3 * math.sqrt(2) * math.sqrt(p * (1 - p) / 40))
    assert default_tolerance("widget_size", res.metrics["widget_size"])[0] == pytest.approx(0.6)
    assert main(["check", str(out), "--baseline", str(out), "--strict"]) == 0
    assert "2 ok, 0 regression(s), 0 not checkable" in capsys.readouterr().out
    assert main(["check", str(out), "--baseline", str(out), "--statistical"]) == 0
    assert "2 ok, 0 regression(s), 0 not checkable" in capsys.readouterr().out
    # tables: its suite's table, the share in percent, best by its declared direction
    md = (out / "tables" / "gadgetry.md").read_text()
    assert "| Model | Data set | n | Widgets (%) | Size |" in md and "| 25.00 | 3.00 |" in md
    t = all_tables.suite_tables([res, res])[0]
    assert t.better == {"Widgets (%)": "max", "Size": "min"}
    assert json.loads((out / "results.json").read_text())["metrics"]["widget_share"]["value"] == 0.25


# --------------------------------------------------------------------------------------------
# the registry enforces what docs/ARCHITECTURE.md says


def test_reading_an_undeclared_setting_is_an_error_naming_group_and_setting(registry, ckpt, tmp_path):
    """The logit_margin of the guide, with n_eval read but not declared: before, a rerun at another
    --n-eval was served from the cache; now the first read is an error (in use and in tests)."""
    from bench.metrics.registry import UndeclaredSetting
    from bench.pipeline import runner

    def margin(ctx):
        n = ctx.settings["n_eval"]
        return {"logit_margin": Result(1.0, n=n)}

    logit_margin = register("logit_margin", "gadgetry", metrics=(Metric("logit_margin"),),
                            settings=("ece_bins",))(margin)

    with pytest.raises(UndeclaredSetting, match="metric group logit_margin reads setting 'n_eval', which it "
                                                "does not declare"):
        runner.run(ckpt, "gadgetry", tmp_path / "run", device="cpu", settings={"n_eval": 50}, log=lambda m: None)
    ctx = metrics.Context(tiny_model(), None, {"n_eval": 50, "ece_bins": 20, "batch_size": 8}, "cpu", tmp_path)
    for reading in (lambda s: s["n_eval"], lambda s: s.get("n_eval"), lambda s: "n_eval" in s):
        with pytest.raises(UndeclaredSetting, match="logit_margin reads setting 'n_eval'"):
            reading(metrics.GROUPS["logit_margin"].view(ctx.settings))
    with pytest.raises(UndeclaredSetting, match="'n_eval'"):
        logit_margin(ctx)  # the registered function called alone, as a test does
    assert ctx.settings == {"n_eval": 50, "ece_bins": 20, "batch_size": 8}  # restored after
    view = metrics.GROUPS["logit_margin"].view(ctx.settings)
    assert dict(view) == {"ece_bins": 20, "batch_size": 8}  # what it declares plus the execution keys
    with pytest.raises(TypeError):
        view["ece_bins"] = 5  # read-only

    # declared, it runs; a rerun at another --n-eval recomputes
    metrics.GROUPS.pop("logit_margin")
    register("logit_margin", "gadgetry", metrics=(Metric("logit_margin"),), settings=("n_eval",))(margin)
    first = runner.run(ckpt, "gadgetry", tmp_path / "ok", device="cpu", settings={"n_eval": 50}, log=lambda m: None)
    again = runner.run(ckpt, "gadgetry", tmp_path / "ok", device="cpu", settings={"n_eval": 60}, log=lambda m: None)
    assert first.metrics["logit_margin"].n == 50 and again.metrics["logit_margin"].n == 60
    assert again.run["cache"]["computed"] == ["logit_margin"]


def test_groups_on_generated_images_declare_the_generation_settings(registry):
    from bench.core.settings import GEN_SETTINGS

    register("gen_gadget", "gadgetry", metrics=(Metric("gadget_n"),), settings=("n_ref",),
             needs=("generated",))(_const)
    assert set(GEN_SETTINGS) <= set(metrics.GROUPS["gen_gadget"].settings)  # they key its cache
    assert "batch_size" in metrics.GROUPS["is_fid"].settings  # the features' batch (min(batch_size, 64))


@pytest.fixture
def fresh_modules(registry, monkeypatch):
    """The metric modules discovered anew; any module imported here forgotten after."""
    import sys

    from bench.metrics import registry as reg

    before = set(sys.modules)
    monkeypatch.setattr(reg, "_LOADED", [])
    yield reg
    for m in set(sys.modules) - before:
        del sys.modules[m]


GADGET_MODULE = '''
from bench.metrics import Metric, Result, register


@register("gadget", "gadgetry", metrics=(Metric("gadget_count"),), settings=())
def gadget(ctx):
    return {"gadget_count": Result(1.0, n=1)}
'''


def test_a_new_metric_module_is_discovered_after_the_known_ones(fresh_modules, tmp_path, monkeypatch):
    """Dropped into bench/metrics/ (here: a folder added to the package's path), a module needs no
    list edited: its suite comes after the nine, whose order is kept."""
    (tmp_path / "gadgets.py").write_text(GADGET_MODULE)
    monkeypatch.setattr(metrics, "__path__", [*metrics.__path__, str(tmp_path)])
    assert fresh_modules.modules()[:9] == [f"bench.metrics.{m}" for m in fresh_modules.ORDER]
    assert "bench.metrics.gadgets" in fresh_modules.modules()
    assert suites.resolve("all") == [*NINE, "gadgetry"]
    assert main(["run", "--help"]) == 0


def test_a_metric_module_outside_the_tree_comes_from_an_entry_point(fresh_modules, tmp_path, monkeypatch):
    import importlib.metadata
    import sys

    (tmp_path / "outside_gadgets.py").write_text(GADGET_MODULE)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    ep = importlib.metadata.EntryPoint("gadgets", "outside_gadgets", fresh_modules.ENTRY_POINTS)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [ep] if group == fresh_modules.ENTRY_POINTS else [])
    assert fresh_modules.modules()[-1] == "outside_gadgets"
    assert suites.resolve("all") == [*NINE, "gadgetry"]


def test_a_metric_module_that_fails_to_import_is_an_error_naming_it(fresh_modules, tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_gadgets.py").write_text("import no_such_library_here\n")
    monkeypatch.setattr(metrics, "__path__", [*metrics.__path__, str(tmp_path)])
    with pytest.raises(Exception, match=r"metric module bench.metrics.broken_gadgets failed to import: "
                                        r"ModuleNotFoundError: No module named 'no_such_library_here'"):
        suites.resolve("all")
    assert main(["run", "--suite", "robust", "--out", str(tmp_path / "run")]) == 2
    assert "error: metric module bench.metrics.broken_gadgets failed to import" in capsys.readouterr().err


NINE = ["robust", "calibration", "generative", "score", "memorization", "landscape", "denoise", "ood", "shift"]


def test_the_suite_lists_of_the_cli_and_the_readme_are_the_registry_s(registry, capsys):
    import re
    from pathlib import Path

    assert suites.names() == NINE
    register("widgets", "gadgetry", metrics=(Metric("widget_count"),), settings=())(_const)
    assert main(["run", "--help"]) == 0
    helptext = " ".join(capsys.readouterr().out.split())
    assert "all, or a comma list of: " + ", ".join([*NINE, "gadgetry"]) + " [default: all]" in helptext
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = re.search(r"bench run +\[--model PATH\] \[--suite all\|([a-z|]+)\[,\.\.\]\]", readme)
    assert listed and listed[1].split("|") == NINE


def test_the_architecture_map_names_what_exists():
    """docs/ARCHITECTURE.md names every module of bench/ (the top-level files by path, those of the
    layer packages by name in their package's row) and only names that exist (it named
    bench.metrics._MODULES, which did not, and left out registry.py, samples_command.py, errors.py)."""
    import importlib
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "ARCHITECTURE.md").read_text()
    modules = sorted(p.relative_to(root).as_posix() for p in (root / "bench").glob("*.py") if not p.name.startswith("_"))
    assert [m for m in modules if f"`{m}`" not in text] == []
    rows = {line.split("|")[2].strip(" `"): line for line in text.splitlines() if line.startswith("| ") and "`bench/" in line}
    for pkg in ("core", "runtime", "inputs", "engines", "metrics", "outputs", "pipeline"):
        row = rows.get(f"bench/{pkg}/", "")
        named = sorted(p.stem for p in (root / "bench" / pkg).glob("*.py") if not p.name.startswith("_"))
        assert [m for m in named if f"`{m}`" not in row] == [], pkg
    for dotted in sorted(set(re.findall(r"`(bench(?:\.[A-Za-z_]+)+)", text))):
        mod, _, name = dotted.rpartition(".")
        try:
            importlib.import_module(dotted)
        except ImportError:
            assert hasattr(importlib.import_module(mod), name), dotted

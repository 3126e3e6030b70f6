"""The metric registry: each metric declares its facts (bench.metrics.Metric) where its group is
registered, and bench check, bench table and the suite list derive from them.  Adding a metric is
one module: the last test registers a new group with a new suite here, and nothing else is edited."""

import json
import math

import pytest

from bench import checkpoints, metrics, paper_tables, suites
from bench.check_rules import statistical as default_tolerance
from bench.cli import main
from bench.metrics import PROPORTION, Metric, Result, register, relative
from bench.results import read
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
        from bench import runner
        runner.run(ckpt, "gadgetry", tmp_path / "run", device="cpu", log=lambda m: None)
    # a group whose names depend on the settings: each name must fall under one of its patterns
    g = metrics.Group("named", "gadgetry", (), (), leaky, names=lambda s: ("w_1", "v_1"), specs=(Metric("w_*"),))
    with pytest.raises(ValueError, match=r"undeclared metric\(s\) \['v_1'\]"):
        g.for_settings({})


def test_the_suites_keep_their_order_and_the_facts_their_rules():
    assert suites.resolve("all") == ["robust", "calibration", "generative", "score", "memorization",
                                     "landscape", "denoise", "ood"]
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
    assert "| Model | Widgets | Size |" in md and "| 25.00 | 3.00 |" in md
    t = paper_tables.suite_tables([res, res])[0]
    assert t.better == {"Widgets": "max", "Size": "min"}
    assert json.loads((out / "results.json").read_text())["metrics"]["widget_share"]["value"] == 0.25

"""Runs that add up (issue 26 item 2): a second suite into one --out gives the union, or refuses."""

import json

import pytest
import torch

from bench import cli
from bench.core.errors import BenchError
from bench.inputs import checkpoints
from bench.metrics import Group, Result
from bench.pipeline import runner
from tests.conftest import tiny_model
from tests.test_runner import META

QUIET = {"log": lambda m: None, "device": "cpu"}


@pytest.fixture
def two_suites(monkeypatch):
    def clean(ctx):
        x, y = ctx.data.test.x[:ctx.settings["n_eval"]], ctx.data.test.y[:ctx.settings["n_eval"]]
        with torch.no_grad():
            acc = (ctx.model.logits(x).argmax(1) == y).float().mean()
        return {"accuracy": Result(acc, n=len(y))}

    groups = {
        "clean": Group("clean", "robust", ("accuracy",), ("n_eval",), clean),
        "attack": Group("attack", "robust", ("pgd20",), ("eps",), lambda ctx: {"pgd20": Result(ctx.settings["eps"], n=1)}),
        "calib": Group("calib", "calibration", ("ece",), ("ece_bins",),
                       lambda ctx: {"ece": Result(1.0 / ctx.settings["ece_bins"], n=2)}),
    }
    monkeypatch.setattr("bench.metrics.registry.load_all", lambda: groups)
    monkeypatch.setattr("bench.metrics.suites.groups_for",
                        lambda names, runnable=True: [g for g in groups.values() if g.suite in names])
    return groups


def _ckpt(tmp_path, seed=0, name="m"):
    path = tmp_path / f"{name}.safetensors"
    checkpoints.save(path, tiny_model(seed=seed), META)
    return str(path)


def test_second_suite_adds_up(tmp_path, two_suites):
    ckpt, out = _ckpt(tmp_path), tmp_path / "run"
    first = runner.run(ckpt, "robust", out, settings={"n_eval": 40}, **QUIET)
    second = runner.run(ckpt, "calibration", out, settings={"n_eval": 40, "ece_bins": 8}, **QUIET)
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["metrics"]) == {"accuracy", "pgd20", "ece"}  # before: ece alone
    assert saved["metrics"]["accuracy"] == first.to_json()["metrics"]["accuracy"]
    assert saved["metrics"]["ece"]["value"] == 1 / 8
    assert saved["run"]["suites"] == ["robust", "calibration"]
    assert saved["run"]["cache"] == {"hits": [], "computed": ["calib"], "kept": ["clean", "attack"]}
    assert set(saved["run"]["groups"]) == {"clean", "attack", "calib"} and saved["run"]["groups"]["clean"]["kept"]
    assert set(saved["run"]["code_sha256"]) == {"clean", "attack", "calib"}
    assert second.metrics["pgd20"].value == 0.1
    page = (out / "report.html").read_text()
    assert "pgd20" in page and "ece" in page and "accuracy" in page
    # the same suite again at another setting replaces its own group, keeps the other suite's
    third = runner.run(ckpt, "calibration", out, settings={"n_eval": 40, "ece_bins": 4}, **QUIET)
    assert third.metrics["ece"].value == 0.25 and set(third.metrics) == {"accuracy", "pgd20", "ece"}


@pytest.mark.parametrize("change, message", [
    ({"settings": {"n_eval": 40, "eps": 0.05}}, "its group attack ran with eps=0.1, this run has eps=0.05"),
    ({"seed": 1}, "of another model (weights sha256"),
    ({"settings": {"n_eval": 30}}, "its group clean ran with n_eval=40, this run has n_eval=30"),
])
def test_conflicting_second_run_refuses_and_keeps_the_first(tmp_path, two_suites, capsys, change, message):
    ckpt, out = _ckpt(tmp_path), tmp_path / "run"
    runner.run(ckpt, "robust", out, settings={"n_eval": 40}, **QUIET)
    before = (out / "results.json").read_bytes()
    other = _ckpt(tmp_path, seed=change["seed"], name="other") if "seed" in change else ckpt
    with pytest.raises(BenchError, match=message.replace("(", r"\(")):
        runner.run(other, "calibration", out, settings=change.get("settings", {"n_eval": 40}), **QUIET)
    assert (out / "results.json").read_bytes() == before  # nothing dropped
    args = ["run", "--model", other, "--suite", "calibration", "--out", str(out), "--device", "cpu"]
    args += ["--n-eval", str(change.get("settings", {"n_eval": 40})["n_eval"])]
    args += ["--eps", "0.05"] if "eps" in change.get("settings", {}) else []
    assert cli.main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and message in errors[0], errors  # one line, no traceback
    assert (out / "results.json").read_bytes() == before

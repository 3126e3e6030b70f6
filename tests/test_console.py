"""What `bench run` and `bench models` print (issue 31): each metric's standard error and n, the eps
the attacks used, and the released models' architecture and eps in aligned columns."""

import json
import math

import torch

from bench.cli import main
from bench.core.results import Result, Results
from bench.inputs import checkpoints, zoo
from bench.metrics import Group
from bench.outputs import console
from tests.conftest import tiny_model

META = {"arch": "digits-cnn", "arch_kwargs": {"width": 4, "act": "silu"}, "num_classes": 10,
        "input_shape": [1, 8, 8], "dataset": "digits", "method": "normal"}


def _accuracy(ctx):
    test = ctx.data.test.subset(ctx.settings["n_eval"])
    with torch.no_grad():
        ok = (ctx.model.logits(test.x.to(ctx.device)).argmax(1).cpu() == test.y).double()
    p = float(ok.mean())
    return {"acc": Result(p, math.sqrt(p * (1 - p) / len(ok)), len(ok)), "gone": Result.missing("no reason at all")}


def test_metric_lines_show_std_and_n_by_hand():
    lines = console.metric_lines({"accuracy": Result(0.75, 0.0125, 1200), "ece": Result(0.031, None, 450),
                                  "fid": Result.missing("refused: no training split")})
    assert lines == ["accuracy  0.7500  ± 0.0125  n=1200",
                     "ece       0.0310            n=450",
                     "fid       null  (refused: no training split)"]
    res = Results({}, {"config": {"eps": 8 / 255, "norm": "Linf"}}, {})
    assert console.threat_line(res).startswith("threat model: Linf eps = 0.03137 (8/255 of the [0, 1] pixel range)")
    assert console.threat_line(Results({}, {"config": {}}, {})) is None


def test_bench_run_prints_std_n_and_the_eps_used(tmp_path, use_groups, capsys):
    use_groups({"acc": Group("acc", "robust", ("acc", "gone"), ("n_eval",), _accuracy)})
    ckpt = tmp_path / "m.safetensors"
    checkpoints.save(ckpt, tiny_model(), META)
    args = ["run", "--model", str(ckpt), "--suite", "robust", "--n-eval", "40", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out.splitlines()
    m = json.loads((tmp_path / "a" / "results.json").read_text())["metrics"]["acc"]
    p = m["value"]
    assert printed[0] == f"acc   {p:.4f}  ± {math.sqrt(p * (1 - p) / 40):.4f}  n=40"  # the binomial SE, by hand
    assert printed[1] == "gone  null  (no reason at all)"
    assert printed[2].startswith("threat model: Linf eps = 0.1 (25.5/255")  # the digits default
    assert main([*args, "--eps", "0.05", "--out", str(tmp_path / "b")]) == 0
    assert any(s.startswith("threat model: Linf eps = 0.05 (12.75/255") for s in capsys.readouterr().out.splitlines())


def test_bench_models_lists_arch_and_eps_in_aligned_columns(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, s in enumerate(out) if "fmnist" in s and s.startswith("released"))
    table = out[header + 1:header + 14]
    assert table[0].split() == ["name", "method", "arch", "activation", "train", "eps", "accuracy", "pgd20", "pgd20",
                                "eps", "trained", "sha256"]
    starts = {col: table[0].index(col) for col in ("method", "arch", "activation", "accuracy", "sha256")}
    for line in table[1:]:  # every column starts where its header does, the -lrelu names included
        for col, at in starts.items():
            assert line[at - 2:at] == "  " and line[at] != " ", (col, line)
    rows = {s.split()[0]: s.split() for s in table[1:]}
    assert len(rows) == len(zoo.manifest("fmnist")["models"]) == 12
    from safetensors import safe_open

    for name in ("fmnist-jeat-lrelu", "fmnist-normal"):
        with safe_open(str(zoo.models_dir() / "fmnist" / f"{name}.safetensors"), framework="pt") as f:
            meta = json.loads(f.metadata()["bench"])
        row = rows[name]
        assert row[2:4] == [meta["arch"], meta["arch_kwargs"]["act"]]
        assert row[4] == (str(meta["threat_model"]["eps"]) if meta.get("threat_model") else "-")
        assert row[7] == str(zoo.manifest("fmnist")["models"][name]["eps"])
    assert rows["fmnist-jeat-lrelu"][:5] == ["fmnist-jeat-lrelu", "jeat", "wrn-10-1", "leaky_relu", "0.1"]
    assert rows["fmnist-normal"][4] == "-"

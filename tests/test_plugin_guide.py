"""docs/ARCHITECTURE.md, "Adding a metric": a metric module in a package of its own, named by a
``jeat_bench.metrics`` entry point, is picked up by bench run, bench check and bench table."""

import json
import os
import subprocess
import sys
from pathlib import Path

MODULE = '''
import torch

from bench.metrics import MEAN, STABLE, Context, Metric, Result, mean_se, register


@register("logit_margin", "margins", metrics=(Metric("logit_margin", "logit", True, tolerance=MEAN,
                                                    portable=STABLE, column="Margin"),),
          settings=("n_eval",), sharded=True)
def margin_group(ctx: Context) -> dict[str, Result]:
    split = ctx.data.test.subset(ctx.settings["n_eval"])
    parts = []
    with torch.no_grad():
        for x, y in ctx.batches(split.x, split.y, desc="margin"):
            f = ctx.model.logits(x)
            top2 = f.topk(2, dim=1).values
            parts.append((top2[:, 0] - top2[:, 1]).double().cpu())
    mean, se, _ = mean_se(ctx.collect(parts))
    return {"logit_margin": Result(mean, se, len(split.x))}
'''


def _bench(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "bench", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_an_outside_metric_module_is_picked_up_by_run_check_and_table(tmp_path):
    site = tmp_path / "site"
    (site / "my_metrics").mkdir(parents=True)
    (site / "my_metrics" / "__init__.py").write_text("")
    (site / "my_metrics" / "margin.py").write_text(MODULE)
    info = site / "my_metrics-0.1.dist-info"  # what `pip install` of a package declaring the entry point writes
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-metrics\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[jeat_bench.metrics]\nmargin = my_metrics.margin\n")
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), str(site)]), OMP_NUM_THREADS="1")
    out = tmp_path / "run"
    r = _bench(["run", "--suite", "margins", "--n-eval", "30", "--device", "cpu", "--out", str(out)], env, tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert list(res["metrics"]) == ["logit_margin"] and res["run"]["suites"] == ["margins"]
    assert res["metrics"]["logit_margin"]["value"] > 0 and res["metrics"]["logit_margin"]["n"] == 30
    r = _bench(["check", str(out), "--baseline", str(out / "results.json"), "--strict"], env, tmp_path)
    assert r.returncode == 0 and "1 ok, 0 regression(s), 0 not checkable" in r.stdout, r.stdout + r.stderr
    r = _bench(["table", str(out), "--out", str(tmp_path / "t")], env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Margin" in (tmp_path / "t" / "margins.md").read_text()
    # without the package the suite does not exist, and the check cannot read the metric's rule
    bare = dict(env, PYTHONPATH=str(repo))
    assert "unknown suite 'margins'" in _bench(["run", "--suite", "margins", "--out", str(tmp_path / "x")],
                                               bare, tmp_path).stderr
    r = _bench(["check", str(out), "--baseline", str(out / "results.json"), "--strict"], bare, tmp_path)
    assert r.returncode == 1 and "not checkable" in r.stdout

"""The CI regression job: rerun a fixed subset of suites on every released digits checkpoint and
`bench check` it against its baseline in results/baseline/ (made by `bench run --suite all`).

Marked `regression` (minutes, not seconds): `pytest -m "not regression"` skips it while developing;
`tox -e tests` and CI run it.  Generation's IS/FID is left out: its Inception passes alone cost
minutes per model on a CPU.
"""

import json
import re

import pytest

from bench import zoo
from bench.cli import main
from bench.train import METHODS

SUITES = "robust,calibration,score,memorization,landscape,denoise"

pytestmark = pytest.mark.regression


def baseline(method: str):
    return zoo.results_dir() / "baseline" / f"digits-{method}.json"


@pytest.mark.parametrize("method", METHODS)
def test_released_checkpoint_matches_its_baseline(tmp_path, method, capsys):
    base = baseline(method)
    assert base.is_file(), f"no baseline for digits-{method}: run bench run --suite all on it"
    out = tmp_path / method
    rc = main(["run", "--model", str(zoo.released_path(method)), "--suite", SUITES, "--out", str(out),
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    rc = main(["check", str(out), "--baseline", str(base)])
    report = capsys.readouterr().out
    assert rc == 0, report
    summary = re.search(r"(\d+) ok, (\d+) regression", report)
    assert summary and int(summary[1]) >= 15 and summary[2] == "0", report  # really compared, metric by metric

    if method == "jeat":  # the same run against a deliberately perturbed baseline must fail
        doc = json.loads(base.read_text())
        doc["metrics"]["pgd20"]["value"] -= 0.15
        bad = tmp_path / "perturbed.json"
        bad.write_text(json.dumps(doc))
        assert main(["check", str(out), "--baseline", str(bad)]) == 1
        assert "REGRESSION" in capsys.readouterr().out

"""The CI regression job: rerun a fixed subset of suites on every released checkpoint, the six
digits models and the six Fashion-MNIST ones, and `bench check --exact` it against its baseline in
results/baseline/ (made by `bench run --suite all`).

Exact mode: on the baseline's own platform (recorded in its ``run.platform``) every metric must
reproduce to 1e-6 relative, so a bug that moves pgd20 by one example fails (the statistical mode
lets it move by 8 points at n=450).  The thread count is the one platform property a test can
set, so the rerun uses the baseline's; on another machine or with other versions the check is
refused and the test fails with that reason (regenerate the baselines there, or compare without
--exact).  A baseline that predates the platform record fails the same way: regenerate it.

Marked `regression` (minutes, not seconds): `pytest -m "not regression"` skips it while developing;
`tox -e tests` and CI run it, two checkpoints at a time (``-n 2``, pytest-xdist: each rerun is
single-threaded like its baseline, so two processes use a 2-core machine; 390 s there for all 12).
Generation's IS/FID is left out: its Inception passes alone cost minutes per model on a CPU.  On
Fashion-MNIST (28x28, 1,000 evaluation points) the subset is the suites that cost seconds per
model on one CPU thread (``SUITES["fmnist"]``; the baselines record each group's seconds): AutoAttack's 200 points alone take about ten minutes per robust model, and
the memorization suite needs the generated set.  The Fashion-MNIST cases need Debian's
dataset-fashion-mnist: in CI (``CI`` set) its absence fails them, elsewhere it skips them.
"""

import json
import re

import pytest
import torch

from bench import check, results, runner, zoo
from bench.cli import main
from bench.train import METHODS
from tests.conftest import fashion_mnist_or_skip

SUITES = {"digits": "robust,calibration,score,memorization,landscape,denoise",
          "fmnist": "calibration,score,landscape,denoise"}
MIN_OK = {"digits": 15, "fmnist": 25}  # metrics compared and equal, at least (the suites' numeric metrics)
CASES = [(zoo_name, m) for zoo_name in SUITES for m in METHODS]

pytestmark = pytest.mark.regression


def baseline(zoo_name: str, method: str):
    return zoo.results_dir() / "baseline" / f"{zoo_name}-{method}.json"


@pytest.fixture
def baseline_threads():
    """Run with the thread count the baseline recorded (it sets the summation order); restored after."""
    before = torch.get_num_threads()

    def use(base: results.Results):
        threads = (base.run.get("platform") or {}).get("threads")
        if isinstance(threads, int) and threads > 0:
            torch.set_num_threads(threads)

    yield use
    torch.set_num_threads(before)


@pytest.mark.parametrize(("zoo_name", "method"), CASES, ids=[f"{z}-{m}" for z, m in CASES])
def test_released_checkpoint_matches_its_baseline(tmp_path, zoo_name, method, capsys, baseline_threads):
    if zoo_name == "fmnist":
        fashion_mnist_or_skip()
    base = baseline(zoo_name, method)
    assert base.is_file(), f"no baseline for {zoo_name}-{method}: run bench run --suite all on it"
    recorded = results.read(base)
    baseline_threads(recorded)
    # refused before minutes of computing: the platform this run will record is known now
    here = results.Results({}, {"platform": results.platform_record("cpu"), "versions": runner.versions(),
                                "config": recorded.run.get("config")})
    why = check.exact_refusal(recorded, here)
    assert why is None, f"{base}: {why}"
    out = tmp_path / method
    model = str(zoo.released_path(method)) if zoo_name == "digits" else f"{zoo_name}-{method}"  # a released name
    rc = main(["run", "--model", model, "--suite", SUITES[zoo_name], "--out", str(out), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    rc = main(["check", str(out), "--baseline", str(base), "--exact"])
    captured = capsys.readouterr()
    report = captured.out
    assert rc == 0, report + captured.err
    summary = re.search(r"(\d+) ok, (\d+) regression\(s\), (\d+) not checkable", report)
    assert summary and int(summary[1]) >= MIN_OK[zoo_name] and summary[2] == "0" and summary[3] == "0", report
    assert "(exact mode)" in report  # really compared, metric by metric, to 1e-6

    if (zoo_name, method) == ("digits", "jeat"):  # the same run against a baseline with one example flipped must fail
        doc = json.loads(base.read_text())
        doc["metrics"]["pgd20"]["value"] -= 1 / doc["metrics"]["pgd20"]["n"]
        bad = tmp_path / "perturbed.json"
        bad.write_text(json.dumps(doc))
        assert main(["check", str(out), "--baseline", str(bad), "--exact"]) == 1
        assert "REGRESSION" in line_of(capsys.readouterr().out, "pgd20")


def line_of(report: str, name: str) -> str:
    return next(x for x in report.splitlines() if x.split() and x.split()[0] == name)

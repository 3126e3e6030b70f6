"""The CI regression job: rerun every case of results/baseline/cases.json (each released checkpoint
with its suites and arguments; every suite runs on at least one checkpoint per data set) and
`bench check --exact --strict` it against its baseline results/baseline/<case>.json, made by the
same command (tools/make_baselines.py).

`--exact` is bit for bit where this machine's fingerprint (CPU vendor, family and model, torch's
CPU capability, oneDNN, BLAS, kernel environment, threads, library versions) equals the
baseline's; on any other machine it says which part differs and applies the portable paired
rules (points that flipped, pairs that changed, a small relative drift: docs/CHECKS.md), so an
honest rerun anywhere passes and a bug-sized change fails.  `--strict`: every metric of the
baseline must be compared and ok (nothing missing, nothing not checkable).

The rerun uses the thread count the baseline recorded (one), two cases at a time under
pytest-xdist (`-n 2`); `BENCH_REGRESSION_THREADS=N` runs it at N threads instead (a simulated
other machine, like `ATEN_CPU_CAPABILITY=default` or `ONEDNN_MAX_CPU_ISA=AVX2`).  Marked
`regression` (minutes): `pytest -m "not regression"` skips it while developing.  The Fashion-MNIST
cases need Debian's dataset-fashion-mnist: in CI (`CI` set) its absence fails them, elsewhere it
skips them.
"""

import json
import os
import re

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.core import outcomes, results
from bench.inputs import zoo
from bench.outputs import check
from tests.conftest import fashion_mnist_or_skip

CASES = json.loads((zoo.results_dir() / "baseline" / "cases.json").read_text())["cases"]

pytestmark = pytest.mark.regression


def baseline(case: str):
    return zoo.results_dir() / "baseline" / f"{case}.json"


def longest_first(cases) -> list[str]:
    """The cases by their baseline's recorded run time, longest first (a case without a baseline
    last, where its test says so).  pytest-xdist gives a worker the next case as one ends, so the
    two workers finish within a short case of each other; in cases.json's order the longest
    (fmnist-jeat, 3 of the job's 12 minutes of work) came eleventh and ran alone at the end."""
    def seconds(case: str) -> float:
        try:
            return float(json.loads(baseline(case).read_text())["run"]["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1.0

    return sorted(cases, key=seconds, reverse=True)


def rerun_args(case: str, out) -> list[str]:
    c = CASES[case]
    return ["run", "--model", c["model"], "--suite", c["suites"], *c["args"], "--seed", "0", "--device", "cpu",
            "--out", str(out)]


@pytest.fixture
def baseline_threads():
    """Run with the thread count the baseline recorded (it sets the summation order), or
    BENCH_REGRESSION_THREADS: torch's and the BLAS numpy calls (KID, FID), which the baselines'
    OMP_NUM_THREADS=1 set alike; restored after."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    limits = []

    def use(base: results.Results):
        threads = os.environ.get("BENCH_REGRESSION_THREADS") or (base.run.get("platform") or {}).get("threads")
        if threads:
            torch.set_num_threads(int(threads))
            limits.append(threadpool_limits(int(threads), user_api="blas"))

    yield use
    for lim in limits:
        lim.restore_original_limits()
    torch.set_num_threads(before)


@pytest.mark.parametrize("case", longest_first(CASES))
def test_released_checkpoint_matches_its_baseline(tmp_path, case, capsys, baseline_threads):
    if case.startswith("fmnist"):
        fashion_mnist_or_skip()
    base = baseline(case)
    assert base.is_file(), f"no baseline for {case}: python tools/make_baselines.py {case}"
    recorded = results.read(base)
    baseline_threads(recorded)
    out = tmp_path / case
    rc = main(rerun_args(case, out))
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    rc = main(["check", str(out), "--baseline", str(base), "--exact", "--strict"])
    captured = capsys.readouterr()
    report = captured.out
    assert rc == 0, report + captured.err
    summary = re.search(r"(\d+) ok, (\d+) regression\(s\), (\d+) not checkable, (\d+) missing", report)
    assert summary and int(summary[1]) == len(recorded.metrics) and summary.groups()[1:] == ("0", "0", "0"), report
    # per metric: a group added later (tools/make_baselines.py --add) records its own platform
    rerun = results.read(out)
    same = not any(check.fingerprint_differences(recorded, rerun, m) for m in recorded.metrics)
    assert ("(exact mode, strict)" in report) == same, report

    if case == "digits-jeat":  # flipped points in the baseline's own record must fail
        pgd_same = not check.fingerprint_differences(recorded, rerun, "pgd20")
        _flipped_points_fail(tmp_path, out, base, 1 if pgd_same else 5, capsys)


def _flipped_points_fail(tmp_path, out, base, k: int, capsys) -> None:
    """k points of pgd20 flipped, value and per-point record alike (an honest-looking baseline):
    on the baseline's own platform one flip fails --exact; elsewhere five of 450 (1.1 points)
    fail the paired rule."""
    doc = json.loads(base.read_text())
    m = doc["metrics"]["pgd20"]
    bits = outcomes.unpack(m["details"]["outcomes"])
    bits[np.flatnonzero(bits)[:k]] = False
    m["details"]["outcomes"] = outcomes.pack(bits, m["details"]["outcomes"]["of"])
    m["value"] = float(bits.mean())
    bad = tmp_path / "flipped.json"
    bad.write_text(json.dumps(doc))
    assert main(["check", str(out), "--baseline", str(bad), "--exact"]) == 1
    row = next(x for x in capsys.readouterr().out.splitlines() if x.split() and x.split()[0] == "pgd20")
    assert "REGRESSION" in row and f"{k} of 450 points flipped" in row, row

"""Gates for a new checkpoint: `bench check RUN --require 'pgd20>=0.60'` (with or without a
baseline) and `bench check NEW --baseline OLD --another-model [--margin pgd20=0.01]` (fails when
NEW is significantly worse by a paired one-sided test, passes when equal or better)."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from scipy.stats import binomtest

from bench.cli import main
from bench.core import outcomes
from tests.test_tables import CONFIG, make_run, metric

N = 1000
RNG = np.random.default_rng(3)
OLD = RNG.random(N) < 0.62
WORSE = np.where(RNG.random(N) < 0.3, RNG.random(N) < 0.3, OLD)  # a fine-tuned copy that lost robustness
BETTER = OLD | (RNG.random(N) < 0.2)
CLEAN = RNG.random(N) < 0.77


def share(bits):
    return metric(float(bits.mean()), None, N, **{outcomes.KEY: outcomes.pack(bits, "x")})


def write(root, name, robust, sha, config=None, **more):
    m = {"accuracy": share(CLEAN), "pgd20": share(robust), "ssim_nn": metric(0.6, 0.002, 100), **more}
    return make_run(root, name, "at", m, sha=sha, config=config)


def run(args, capsys):
    code = main(["check", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def row(out, name):
    return next(line for line in out.splitlines() if line.split() and line.split()[0] == name)


def test_require_without_a_baseline(tmp_path, capsys):
    r = write(tmp_path, "new", OLD, "aa" * 32)
    code, out, _ = run([r, "--require", "pgd20>=0.60", "--require", "accuracy > 0.7"], capsys)
    assert code == 0 and "required: met" in row(out, "pgd20>=0.6")
    code, out, err = run([r, "--require", "pgd20>=0.65"], capsys)
    assert code == 1 and "REGRESSION" in row(out, "pgd20>=0.65") and "regression: pgd20>=0.65" in err
    code, out, _ = run([r, "--require", "autoattack>=0.5"], capsys)  # required but not in the run
    assert code == 1 and "not in this run" in row(out, "autoattack>=0.5")
    for bad, why in (("pgd20=>0.6", "expected METRIC>=X"), ("pgd20>=x", "not a number"),
                     ("pgd2>=0.6", "unknown metric"), ("pgd20>=nan", "finite")):
        code, out, err = run([r, "--require", bad], capsys)
        assert code == 2 and why in err and out == "", bad
    code, _, err = run([r], capsys)
    assert code == 2 and "give --baseline FILE, --require" in err


def test_require_joins_a_regression_check(tmp_path, capsys):
    old = write(tmp_path, "old", OLD, "aa" * 32) / "results.json"
    rerun = write(tmp_path, "rerun", OLD, "aa" * 32)
    code, out, _ = run([rerun, "--baseline", old, "--require", "pgd20>=0.70"], capsys)
    assert code == 1 and row(out, "pgd20").split()[5] == "ok" and "REGRESSION" in row(out, "pgd20>=0.7")


def test_another_model_that_lost_robustness_fails(tmp_path, capsys):
    old = write(tmp_path, "old", OLD, "aa" * 32) / "results.json"
    new = write(tmp_path, "new", WORSE, "bb" * 32)
    code, _, err = run([new, "--baseline", old], capsys)  # without the flag: another model is refused
    assert code == 2 and "model.sha256" in err
    junit = tmp_path / "gate.xml"
    code, out, err = run([new, "--baseline", old, "--another-model", "--junit", junit], capsys)
    b, c = int(np.sum(OLD & ~WORSE)), int(np.sum(~OLD & WORSE))
    p = binomtest(b, b + c, 0.5, alternative="greater").pvalue
    assert code == 1 and "regression: pgd20" in err
    line = row(out, "pgd20")
    assert "REGRESSION" in line and "significantly worse" in line and f"baseline only {b}," in line
    assert f"this run only {c};" in line and f"one-sided p {p:.2g}" in line and p < 1e-9
    assert row(out, "accuracy").split()[5] == "ok" and "equal" in row(out, "accuracy")
    assert "not checkable" in row(out, "ssim_nn") and "no direction" in row(out, "ssim_nn")
    failed = [c.get("name") for c in ET.parse(junit).getroot().iter("testcase") if c.find("failure") is not None]
    assert failed == ["pgd20"]
    # a margin wider than the loss passes it ("worse, not significantly")
    loss = (b - c) / N
    code, out, _ = run([new, "--baseline", old, "--another-model", "--margin", f"pgd20={loss + 0.05:.3f}"], capsys)
    assert code == 0 and "worse, not significantly" in row(out, "pgd20")


def test_another_model_that_is_equal_or_better_passes(tmp_path, capsys):
    old = write(tmp_path, "old", OLD, "aa" * 32) / "results.json"
    rerun = write(tmp_path, "rerun", OLD, "aa" * 32)
    code, out, _ = run([rerun, "--baseline", old, "--another-model"], capsys)
    assert code == 0 and "equal" in row(out, "pgd20") and "the same weights" in out
    better = write(tmp_path, "better", BETTER, "cc" * 32)
    code, out, _ = run([better, "--baseline", old, "--another-model"], capsys)
    assert code == 0 and row(out, "pgd20").split()[5] == "improved" and "better" in row(out, "pgd20")


def test_another_model_on_another_evaluation_is_refused(tmp_path, capsys):
    old = write(tmp_path, "old", OLD, "aa" * 32) / "results.json"
    new = write(tmp_path, "new", WORSE, "bb" * 32, config=dict(CONFIG, eps=0.2))
    code, out, err = run([new, "--baseline", old, "--another-model"], capsys)
    assert code == 2 and "another evaluation" in err and "run.config.eps" in err and out == ""
    for extra, why in ((["--margin", "pgd20=0.01"], "--margin is for --another-model"),
                       (["--another-model", "--exact"], "takes --margin, not"),
                       (["--another-model", "--margin", "pgd2=0.01"], "--margin 'pgd2=0.01'")):
        code, _, err = run([write(tmp_path, "n2", WORSE, "bb" * 32), "--baseline", old, *extra], capsys)
        assert code == 2 and why in err, extra


@pytest.mark.parametrize("weights_equal", [True, False])
def test_a_model_is_its_weights_not_its_file(tmp_path, capsys, weights_equal):
    """A bench.evaluate run records the state dict's digest as model.sha256, a bench run the
    file's; weights_sha256 decides."""
    old = write(tmp_path, "old", OLD, "aa" * 32) / "results.json"
    new = write(tmp_path, "new", OLD, "bb" * 32)
    for path, w in ((old, "ee"), (new / "results.json", "ee" if weights_equal else "ef")):
        doc = json.loads(path.read_text())
        doc["model"]["weights_sha256"] = w * 32
        path.write_text(json.dumps(doc))
    code, _, err = run([new, "--baseline", old], capsys)
    assert code == (0 if weights_equal else 2), err
    assert weights_equal or "model.weights_sha256" in err


def test_settings_are_compared_as_values(tmp_path, capsys):
    """--normalize 0.286/0.353 against a baseline made with 0.2860/0.3530 (runs without a weights
    digest, where the normalisation is compared), and a float setting within rounding."""
    old = write(tmp_path, "old", OLD, "aa" * 32, config=dict(CONFIG, normalize="0.2860/0.3530")) / "results.json"
    same = write(tmp_path, "same", OLD, "aa" * 32, config=dict(CONFIG, normalize="0.286/0.353", eps=0.1 + 1e-14))
    code, _, err = run([same, "--baseline", old], capsys)
    assert code == 0, err
    other = write(tmp_path, "other", OLD, "aa" * 32, config=dict(CONFIG, normalize="0.287/0.353"))
    code, _, err = run([other, "--baseline", old], capsys)
    assert code == 2 and "run.config.normalize" in err

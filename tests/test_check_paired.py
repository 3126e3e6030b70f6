"""`bench check` pairs a rerun with its baseline: the same points and seeds, so it counts what
flipped (points, pairs) and bounds continuous drift by the kernel noise measured across machines.
Exact mode is bit for bit on the baseline's own fingerprint and the paired rules elsewhere; a
baseline no check can trust is refused; --strict lets nothing pass unchecked.  The expected
verdicts are hand-counted: k flipped points of n, a share of n_in x n_out pairs, a relative drift."""

import contextlib
import copy
import json

import numpy as np
import pytest

from bench.cli import main
from bench.core import outcomes, results
from bench.core.errors import BenchError
from bench.inputs import zoo
from bench.outputs import check as checking
from tests.test_tables import CONFIG, VERSIONS

PLATFORM = {"machine": "x86_64", "system": "Linux", "python": "3.11.7", "torch": "2.14.1", "device": "cpu",
            "device_name": "AMD EPYC", "cpu_vendor": "AuthenticAMD", "cpu_family": "26", "cpu_model": "2",
            "cpu_capability": "AVX512", "onednn": "oneDNN v3.12.0", "blas": "MKL 2024.2", "kernel_env": {},
            "threads": 1}
N = 450
RNG = np.random.default_rng(0)
CORRECT = RNG.random(N) < 0.9
ROBUST = CORRECT & (RNG.random(N) < 0.5)


def points(name, flags, n=None, **details):
    flags = np.asarray(flags, bool)
    return {"value": float(flags.mean()), "std": 0.01, "n": int(n or len(flags)), "reason": None, "seconds": 0.1,
            "details": {outcomes.KEY: outcomes.pack(flags, name), **details}}


def value(v, n=N, std=None, **details):
    return {"value": v, "std": std, "n": n, "reason": None, "seconds": 0.1, "details": details}


def metrics():
    return {"accuracy": points("accuracy", CORRECT), "pgd20": points("pgd20", ROBUST),
            "autoattack": points("autoattack", ROBUST[:100]),
            "ece": dict(value(0.0300), details={outcomes.KEY: outcomes.pack(CORRECT, "correct clean")}),
            "nll": dict(value(0.2500), details={outcomes.KEY: outcomes.pack(CORRECT, "correct clean")}),
            "jfs": value(12.5, 500, 0.3), "fid": value(212.8, 500), "ssim_nn": value(0.417, 500),
            "ood_auroc_px_uniform": value(0.8317, N, n_in=N, n_out=N),
            "ood_aupr_in_px_uniform": value(0.8761, N, n_in=N, n_out=N),
            "ood_fpr95_px_uniform": value(0.8667, N, n_in=N, n_out=N)}


def write(root, name, m, platform=None, **run):
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    doc = {"schema": 1, "model": {"sha256": "ab" * 32, "weights_sha256": "cd" * 32, "method": "jeat",
                                  "dataset": "digits", "num_classes": 10},
           "run": {"suites": ["robust", "calibration", "score", "generative", "memorization", "ood"], "seed": 0,
                   "versions": dict(VERSIONS), "platform": dict(platform or PLATFORM),
                   "data": {"train_sha256": "11" * 32, "test_sha256": "22" * 32}, "config": dict(CONFIG)} | run,
           "metrics": m}
    (d / "results.json").write_text(json.dumps(doc))
    return d


def flip(record, k, name="x"):
    """``record`` with k of its points flipped (correct -> wrong), value and bits alike."""
    bits = outcomes.of(record["details"]).copy()
    bits[np.flatnonzero(bits)[:k]] = False
    return dict(record, value=float(bits.mean()), details={outcomes.KEY: outcomes.pack(bits, name)})


def check(tmp_path, cur_m, *args, base_m=None, cur_platform=None, capsys=None):
    base = write(tmp_path, "base", base_m or metrics()) / "results.json"
    cur = write(tmp_path, "cur", cur_m, platform=cur_platform)
    code = main(["check", str(cur), "--baseline", str(base), *args])
    out, err = capsys.readouterr()
    return code, out, err


def row(out, name):
    return next(x for x in out.splitlines() if x.split() and x.split()[0] == name)


OTHER = dict(PLATFORM, cpu_family="23", cpu_model="49", cpu_capability="AVX2")  # the other EPYC


# --- points -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("k", "ok"), [(0, True), (2, True), (3, False), (5, False)])
def test_flipped_points_at_n_450_two_pass_three_fail(tmp_path, capsys, k, ok):
    """At most floor(0.005 n) points may flip: 2 of 450; 1 percentage point is 4.5 points."""
    m = metrics()
    m["pgd20"] = flip(m["pgd20"], k)
    code, out, err = check(tmp_path, m, capsys=capsys)
    assert (code == 0) == ok, out + err
    assert f"paired, per-point record: {k} of 450 points flipped, at most 2" in row(out, "pgd20")


def test_flips_that_cancel_are_still_counted(tmp_path, capsys):
    """Three points fooled and three others robust now: the value is unchanged, six points moved."""
    m = metrics()
    bits = outcomes.of(m["pgd20"]["details"]).copy()
    bits[np.flatnonzero(bits)[:3]] = False
    bits[np.flatnonzero(~bits & CORRECT)[:3]] = True
    m["pgd20"] = dict(m["pgd20"], details={outcomes.KEY: outcomes.pack(bits, "x")})
    assert m["pgd20"]["value"] == metrics()["pgd20"]["value"]
    code, out, _ = check(tmp_path, m, capsys=capsys)
    assert code == 1 and "6 of 450 points flipped" in row(out, "pgd20")


def test_without_records_the_values_count_the_points(tmp_path, capsys):
    base_m, m = metrics(), metrics()
    for d in (base_m, m):
        d["pgd20"]["details"] = {}
    m["pgd20"]["value"] += 4 / N
    code, out, _ = check(tmp_path, m, base_m=base_m, capsys=capsys)
    assert code == 1 and "paired, from the values: 4 of 450 points flipped, at most 2" in row(out, "pgd20")


def test_one_point_of_100_fails(tmp_path, capsys):
    """AutoAttack's 100 points: 0.005 x 100 rounds down to 0 flips allowed (1 point = 1 pp)."""
    m = metrics()
    m["autoattack"] = flip(m["autoattack"], 1)
    code, out, _ = check(tmp_path, m, capsys=capsys)
    assert code == 1 and "1 of 100 points flipped, at most 0" in row(out, "autoattack")


# --- ranks, continuous -------------------------------------------------------------------------

def test_auroc_is_compared_in_pairs(tmp_path, capsys):
    """One AUROC point of 450 x 450 pairs is 2,025 pairs; the rule allows 0.1 % (202)."""
    m = metrics()
    m["ood_auroc_px_uniform"]["value"] += 100 / N**2
    code, out, _ = check(tmp_path, m, capsys=capsys)
    assert code == 0 and "100 of 202500 pairs changed, at most 202" in row(out, "ood_auroc_px_uniform")
    m["ood_auroc_px_uniform"]["value"] += 0.01
    m["ood_aupr_in_px_uniform"]["value"] += 0.01
    m["ood_fpr95_px_uniform"]["value"] += 4 / N
    code, out, err = check(tmp_path, m, capsys=capsys)
    assert code == 1 and err == "regression: ood_auroc_px_uniform, ood_aupr_in_px_uniform, ood_fpr95_px_uniform\n"


@pytest.mark.parametrize("name", ["jfs", "nll", "fid", "ssim_nn", "ece"])
def test_two_percent_relative_fails_kernel_noise_passes(tmp_path, capsys, name):
    m = metrics()
    m[name]["value"] *= 1 + 3e-5  # the drift measured across simulated machines, at its largest
    code, out, err = check(tmp_path, m, capsys=capsys)
    assert code == 0, out + err
    m[name]["value"] *= 1.02
    code, out, err = check(tmp_path, m, capsys=capsys)
    assert code == 1 and err == f"regression: {name}\n", out


def test_flipped_predictions_widen_ece_by_two_over_n_each_and_nll_not_at_all(tmp_path, capsys):
    """ECE moves by at most 2/n per flipped prediction; NLL has no such bound: flagged, not passed."""
    m = metrics()
    m["ece"] = dict(m["ece"], value=0.0300 + 3.5 / N, details={outcomes.KEY: flip(points("e", CORRECT), 2)
                                                                 ["details"][outcomes.KEY]})
    m["nll"] = dict(m["nll"], details=m["ece"]["details"])
    code, out, _ = check(tmp_path, m, capsys=capsys)
    assert "+ 2/n for each of the 2 flipped points" in row(out, "ece") and "ok" in row(out, "ece")
    assert "not checkable  (2 of its points flipped" in row(out, "nll")
    code, _, _ = check(tmp_path, m, "--strict", capsys=capsys)
    assert code == 1


# --- exact, and the fingerprint ------------------------------------------------------------------

def test_exact_on_the_same_fingerprint_fails_one_flipped_point(tmp_path, capsys):
    m = metrics()
    code, out, _ = check(tmp_path, m, "--exact", capsys=capsys)
    assert code == 0 and out.rstrip().endswith("(exact mode)")
    m["pgd20"] = flip(m["pgd20"], 1)
    code, out, _ = check(tmp_path, m, "--exact", capsys=capsys)
    assert code == 1 and "exact: 1 of 450 points flipped" in row(out, "pgd20")


@pytest.mark.parametrize(("field", "shown"), [("cpu_capability", "platform.cpu_capability 'AVX512' -> 'AVX2'"),
                                              ("threads", "platform.threads 1 -> 2")])
def test_exact_on_another_fingerprint_says_what_differs_and_pairs(tmp_path, capsys, field, shown):
    other = dict(PLATFORM, **{field: OTHER[field] if field != "threads" else 2})
    m = metrics()
    m["pgd20"] = flip(m["pgd20"], 1)  # a kernel-sized difference: passes the paired rule
    m["jfs"]["value"] *= 1 + 1e-5
    code, out, err = check(tmp_path, m, "--exact", cur_platform=other, capsys=capsys)
    assert code == 0, out + err
    assert out.splitlines()[0].startswith(f"--exact: the fingerprint differs ({shown}), so 11 metric(s)")
    assert out.rstrip().endswith("(portable mode)")
    m["pgd20"] = flip(m["pgd20"], 4)
    assert check(tmp_path, m, "--exact", cur_platform=other, capsys=capsys)[0] == 1  # never a silent pass


def test_a_cached_group_is_compared_on_the_platform_it_was_computed_on(tmp_path, capsys):
    """The run says threads 2, but its pgd20 group came from a cache made at 1 thread (the
    baseline's): pgd20 is compared exactly, the other metrics by the paired rules."""
    m = metrics()
    m["pgd20"] = flip(m["pgd20"], 1)
    groups = {"pgd20": {"suite": "robust", "metrics": ["pgd20"], "cached": True, "platform": PLATFORM}}
    base = write(tmp_path, "base", metrics()) / "results.json"
    cur = write(tmp_path, "cur", m, platform=dict(PLATFORM, threads=2), groups=groups)
    code = main(["check", str(cur), "--baseline", str(base), "--exact"])
    out, _ = capsys.readouterr()
    assert code == 1 and "exact: 1 of 450 points flipped" in row(out, "pgd20")
    assert "so 10 metric(s)" in out


# --- refused and strict --------------------------------------------------------------------------

@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["accuracy"].update(value=1.258), "metric accuracy: value 1.258 is not a finite number in [0.0, 1.0]"),
    (lambda m: m["fid"].update(value=float("nan")), "metric fid: value nan is not a finite number"),
    (lambda m: m["jfs"].update(n="fifty"), "metric jfs: n 'fifty' is not a count"),
    (lambda m: m["pgd20"].update(value=m["pgd20"]["value"] + 0.01), "disagrees with its per-point record"),
])
def test_a_baseline_no_check_can_trust_is_refused(tmp_path, capsys, edit, message):
    base_m = metrics()
    edit(base_m)
    code, out, err = check(tmp_path, metrics(), base_m=base_m, capsys=capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize(("where", "key"), [("model", "weights_sha256"), ("data", "test_sha256"),
                                            ("data", "train_sha256")])
def test_other_weights_or_data_are_another_evaluation(tmp_path, capsys, where, key):
    base = write(tmp_path, "base", metrics()) / "results.json"
    cur = write(tmp_path, "cur", metrics())
    doc = json.loads((cur / "results.json").read_text())
    (doc["model"] if where == "model" else doc["run"]["data"])[key] = "ef" * 32
    (cur / "results.json").write_text(json.dumps(doc))
    code = main(["check", str(cur), "--baseline", str(base)])
    err = capsys.readouterr().err
    assert code == 2 and key in err and "not compared" in err


def test_nothing_in_common_exits_2(tmp_path, capsys):
    code, _, err = check(tmp_path, {"denoise_psnr": value(7.3, 200)}, capsys=capsys)
    assert code == 2 and "no metric in common" in err


def test_strict_fails_missing_and_a_killed_run_fails_anyway(tmp_path, capsys):
    m = metrics()
    del m["fid"]  # its suite ran (generative in run.suites): an interrupted run
    code, out, _ = check(tmp_path, m, capsys=capsys)
    assert code == 1 and "not in this run although its suite ran" in row(out, "fid")
    base_m = dict(metrics(), denoise_psnr=value(7.3, 200))  # denoise did not run now: missing
    code, out, _ = check(tmp_path, metrics(), base_m=base_m, capsys=capsys)
    assert code == 0 and "missing" in row(out, "denoise_psnr")
    code, out, err = check(tmp_path, metrics(), "--strict", base_m=base_m, capsys=capsys)
    assert code == 1 and "regression: denoise_psnr" in err


# --- the released baselines as data ----------------------------------------------------------------

def _bug_sized(name: str, r: dict) -> float:
    """A change the size of a real bug: 1 percentage point of a share of points (4.5 points at
    n = 450), one AUROC/AUPR point, 2 % relative of anything else (0.01 for a 0)."""
    from bench.metrics import registry

    v = r["value"]
    if v is None:
        return 0.5
    sp = registry.spec(name)
    if sp.portable.unit in ("points", "pairs", "absolute"):
        return v + (0.01 if v < 0.5 else -0.01)
    if not v:
        return 0.01
    return v * 0.98 if sp.bounds[1] is not None and abs(v) * 1.02 > sp.bounds[1] else v * 1.02


@pytest.mark.parametrize("case", json.loads((zoo.results_dir() / "baseline" / "cases.json").read_text())["cases"])
def test_every_metric_of_every_baseline_catches_a_bug_sized_change(tmp_path, capsys, case):
    """Each baseline against itself on another machine (the issue's AVX2-only EPYC) passes; every
    one of its metrics moved by a bug-sized amount fails, in the run and in the baseline."""
    doc = json.loads((zoo.results_dir() / "baseline" / f"{case}.json").read_text())
    base = tmp_path / "base.json"
    base.write_text(json.dumps(doc))
    other = copy.deepcopy(doc)
    other["run"]["platform"] = dict(other["run"]["platform"], cpu_family="23", cpu_model="49",
                                    cpu_capability="AVX2")
    cur = tmp_path / "cur" / "results.json"
    cur.parent.mkdir()
    cur.write_text(json.dumps(other))
    code = main(["check", str(cur), "--baseline", str(base), "--exact", "--strict"])
    out, err = capsys.readouterr()
    assert code == 0 and "portable mode, strict)" in out, out + err  # exact/portable: groups added on another machine
    base_res, honest = results.Results.from_json(doc), results.Results.from_json(other)
    for i, (name, r) in enumerate(doc["metrics"].items()):
        if r["value"] is None:
            continue
        with _moved(other, name, _bug_sized(name, r)):  # the run moved
            if i == 0:  # the command line once per case: its exit code and message
                cur.write_text(json.dumps(other))
                code = main(["check", str(cur), "--baseline", str(base), "--exact"])
                out, err = capsys.readouterr()
                assert code == 1 and err == f"regression: {name}\n", (name, out)
            moved = checking.compare(base_res, results.Results.from_json(other), exact=True)
        assert [row.metric for row in moved.regressions] == [name], name
        with _moved(doc, name, _bug_sized(name, r)):  # the same change made to the baseline by hand, the run honest
            edited = results.Results.from_json(doc)
            try:
                checking.refuse_bad_baseline(edited, doc["metrics"], "baseline")  # refused: disagrees with its record
            except BenchError:
                continue
            assert checking.compare(edited, honest).regressions, name  # else a regression


@contextlib.contextmanager
def _moved(doc: dict, name: str, value):
    """``doc`` with metric ``name``'s value set to ``value`` for the duration (a copy of a 1 MB
    results document per metric cost more than the checks themselves)."""
    before = doc["metrics"][name]["value"]
    doc["metrics"][name]["value"] = value
    try:
        yield doc
    finally:
        doc["metrics"][name]["value"] = before


def test_metrics_as_a_list_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    doc = json.loads((write(tmp_path, "b", metrics()) / "results.json").read_text())
    bad.write_text(json.dumps(dict(doc, metrics=list(doc["metrics"].values()))))
    code = main(["check", str(write(tmp_path, "c", metrics())), "--baseline", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "metrics must be an object, not list" in err


def test_junit_on_a_full_disk_prints_the_verdict_first(tmp_path, capsys, monkeypatch):
    import errno

    from bench.core import fileio

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r.xml"))

    monkeypatch.setattr(fileio, "atomic_write_bytes", full)
    monkeypatch.setattr("bench.outputs.check_output.atomic_write_bytes", full)
    base = write(tmp_path, "base", metrics()) / "results.json"
    cur = write(tmp_path, "cur", metrics())
    code = main(["check", str(cur), "--baseline", str(base), "--junit", str(tmp_path / "r.xml")])
    out, err = capsys.readouterr()
    assert code == 2 and "0 regression(s)" in out.splitlines()[-1]  # the verdict was printed
    assert err == f"error: cannot write {tmp_path / 'r.xml'}: No space left on device\n"

"""`bench check` for a user's own model (issue 26, item 4): only the settings of the compared
metrics must match; wildcard tolerances; a one-sided mode; labels that name the run."""

import xml.etree.ElementTree as ET

from tests.test_check import base_metrics, line, run
from tests.test_tables import CONFIG, make_run, metric

ROBUST = ("accuracy", "pgd20", "pgd20_energy", "autoattack")


def robust_only(m):
    return {k: v for k, v in m.items() if k in ROBUST}


def test_a_setting_of_no_compared_metric_is_not_compared(tmp_path, capsys):
    """A baseline made with --n-gen 100 checks a robust-only run made with the default n_gen."""
    base = make_run(tmp_path, "b", "jeat", robust_only(base_metrics()), sha="ab" * 32,
                    config=dict(CONFIG, n_gen=100)) / "results.json"
    cur = make_run(tmp_path, "c", "jeat", robust_only(base_metrics()), sha="ab" * 32, config=dict(CONFIG, n_gen=1000))
    code, out, err = run([str(cur), "--baseline", str(base)], capsys)
    assert code == 0, err
    assert line(out, "accuracy").split()[5] == "ok"


def test_a_setting_of_a_compared_metric_is_still_refused(tmp_path, capsys):
    # fid and is_mean are in both: their group declares n_gen
    base = make_run(tmp_path, "b", "jeat", base_metrics(), sha="ab" * 32, config=dict(CONFIG, n_gen=100))
    cur = make_run(tmp_path, "c", "jeat", base_metrics(), sha="ab" * 32, config=dict(CONFIG, n_gen=1000))
    code, out, err = run([str(cur), "--baseline", str(base / "results.json")], capsys)
    assert code == 2 and out == "" and "run.config.n_gen (baseline 100, current 1000)" in err
    # eps keys pgd20 (not accuracy: an accuracy-only pair at another eps is compared); the seed
    # and the model always count
    for config, sha, expect in ((dict(CONFIG, eps=0.05), "ab" * 32, "run.config.eps"),
                                (dict(CONFIG, seed=1), "ab" * 32, "run.config.seed"),
                                (CONFIG, "cd" * 32, "model.sha256")):
        both = {"accuracy": metric(0.95), "pgd20": metric(0.40)}
        b = make_run(tmp_path, "b2", "jeat", both, sha="ab" * 32)
        c = make_run(tmp_path, "c2", "jeat", both, sha=sha, config=config)
        code, _, err = run([str(c), "--baseline", str(b / "results.json")], capsys)
        assert code == 2 and expect in err, (expect, err)


def test_wildcard_tolerances(tmp_path, capsys):
    base = make_run(tmp_path, "b", "jeat", base_metrics(), sha="ab" * 32) / "results.json"
    m = dict(base_metrics(), pgd20=metric(0.30), pgd20_energy=metric(0.10))
    cur = make_run(tmp_path, "c", "jeat", m, sha="ab" * 32)
    code, out, _ = run([str(cur), "--baseline", str(base), "--tolerance", "pgd20*=0.5"], capsys)
    assert code == 0
    assert line(out, "pgd20").split()[4:6] == ["0.5", "ok"] and line(out, "pgd20_energy").split()[4:6] == ["0.5", "ok"]
    code, out, err = run([str(cur), "--baseline", str(base), "--tolerance", "ood_auroc_*=0.01"], capsys)
    assert code == 2 and "--tolerance 'ood_auroc_*=0.01'" in err and "matches no metric" in err


def test_one_sided_improvement_is_not_a_failure(tmp_path, capsys):
    base = make_run(tmp_path, "b", "jeat", base_metrics(), sha="ab" * 32) / "results.json"
    better = dict(base_metrics(), accuracy=metric(0.99), fid=metric(20.0, None, 100))  # fid: lower is better
    cur = make_run(tmp_path, "c", "jeat", better, sha="ab" * 32)
    code, out, _ = run([str(cur), "--baseline", str(base), "--paired"], capsys)
    assert code == 1  # two-sided: a change either way fails
    code, out, err = run([str(cur), "--baseline", str(base), "--one-sided", "--paired"], capsys)
    assert code == 0, out
    assert line(out, "accuracy").split()[5] == "improved" and line(out, "fid").split()[5] == "improved"
    assert "2 improved" in out.splitlines()[-1]
    worse = make_run(tmp_path, "w", "jeat", dict(base_metrics(), accuracy=metric(0.80), fid=metric(80.0, None, 100)),
                     sha="ab" * 32)
    code, out, _ = run([str(worse), "--baseline", str(base), "--one-sided", "--paired"], capsys)
    assert code == 1 and line(out, "accuracy").split()[5] == "REGRESSION" and line(out, "fid").split()[5] == "REGRESSION"
    # no direction (ssim_nn): two-sided either way
    for v in (0.5, 0.7):
        c = make_run(tmp_path, f"s{v}", "jeat", dict(base_metrics(), ssim_nn=metric(v, 0.002, 100)), sha="ab" * 32)
        code, out, _ = run([str(c), "--baseline", str(base), "--one-sided", "--paired"], capsys)
        assert code == 1 and line(out, "ssim_nn").split()[5] == "REGRESSION"


def test_labels_name_the_run_folder_and_the_model(tmp_path, capsys):
    base = make_run(tmp_path, "b", "jeat", base_metrics(), sha="ab" * 32) / "results.json"
    labels = []
    for folder in ("a", "b2"):
        cur = make_run(tmp_path / "runs", folder, "jeat", base_metrics(), sha="ab" * 32)
        junit, md = tmp_path / f"{folder}.xml", tmp_path / f"{folder}.md"
        code, _, err = run([str(cur), "--baseline", str(base), "--junit", str(junit), "--markdown", str(md)], capsys)
        assert code == 0, err
        heading = md.read_text().splitlines()[0]
        classnames = {c.get("classname") for c in ET.parse(junit).getroot().iter("testcase")}
        assert len(classnames) == 1
        assert heading.startswith("### bench check digits-jeat (") and f"runs/{folder})" in heading
        labels.append((heading, classnames.pop()))
    assert labels[0][0] != labels[1][0] and labels[0][1] != labels[1][1]
    assert labels[0][1].startswith("bench.outputs.check.digits-jeat (") and labels[0][1].endswith("runs/a)")

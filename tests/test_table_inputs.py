"""`bench table` inputs that broke a paper's build or a run (issue 35): LaTeX specials in a row's
name, the same run given twice, --out pointing at a run."""

import json

from bench.cli import main

NAME = "a_b%c&d#e$f{g}~h^i\\j"


def _run(root, name, run_name=None):
    d = root / name
    d.mkdir(parents=True)
    run = {"config": {"norm": "Linf", "eps": 0.1, "seed": 0}, "seed": 0}
    if run_name:
        run["name"] = run_name
    (d / "results.json").write_text(json.dumps({
        "schema": 1, "model": {"path": f"/ckpts/{name}.safetensors", "sha256": "ab" * 32, "arch": "digits-cnn",
                               "method": "jeat", "dataset": "digits"},
        "run": run, "metrics": {"accuracy": {"value": 0.9, "std": 0.01, "n": 450}}}))
    (d / "report.html").write_text("the run's own page")
    return d


def test_latex_escapes_every_special_of_a_row_name(tmp_path):
    d = _run(tmp_path, "r", run_name=NAME)
    assert main(["table", str(d), "--out", str(tmp_path / "t")]) == 0
    tex = (tmp_path / "t" / "table1.tex").read_text()
    escaped = r"a\_b\%c\&d\#e\$f\{g\}\textasciitilde{}h\textasciicircum{}i\textbackslash{}j"
    row = next(line for line in tex.splitlines() if line.startswith("a"))
    assert row.startswith(escaped + " & "), row
    assert "e$f" not in tex and "{g}" not in tex and "~h" not in tex and "^i" not in tex


def test_the_same_run_twice_is_refused_in_one_line(tmp_path, capsys):
    d = _run(tmp_path, "r")
    assert main(["table", str(d), str(d / "results.json"), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "given twice" in err
    assert not (tmp_path / "t").exists()


def test_out_pointing_at_a_run_is_refused_and_its_report_kept(tmp_path, capsys):
    d, other = _run(tmp_path, "r"), _run(tmp_path, "s")
    assert main(["table", str(d), "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "holds a run" in err
    assert (other / "report.html").read_text() == "the run's own page"
    assert not (other / "table1.tex").exists()

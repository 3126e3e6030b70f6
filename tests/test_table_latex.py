"""`bench table` for a paper (issue 31, item 4): --columns, --rows, --caption, --label and the
paper rows; the LaTeX compiles with pdflatex and booktabs (skipped, with its reason, without a TeX
installation) and the calibration tables fit a page."""

import shutil
import subprocess

import pytest

from bench.cli import main
from tests.test_table_bold import shares
from tests.test_tables import CONFIG, make_run, metric

CIFAR = dict(CONFIG, eps=8 / 255, n_eval=200)
CALIBRATION = {"ece": 0.0312, "mce": 0.2011, "ece_adaptive": 0.0298, "nll": 0.4321, "brier": 0.1234,
               "temperature": 1.4321, "ece_ts": 0.0123, "nll_ts": 0.4012, "brier_ts": 0.1201}


def _calibration(shift):
    out = {}
    for name, v in CALIBRATION.items():
        for suffix, k in (("", 1.0), ("_fgsm", 3.0)):
            if name == "temperature" and suffix:
                continue
            std = 0.0123 if name.startswith(("nll", "brier")) else None
            out[name + suffix] = metric(v * k + shift, std, 200)
    return out


@pytest.fixture
def paper_runs(tmp_path):
    """Three CIFAR-10 runs at eps 8/255 on the same 200 points (per-point bits), with calibration."""
    runs = []
    for name, clean, robust, shift in (("ckpt-jeat", 180, 110, 0.0), ("ckpt-at", 170, 90, 0.01),
                                       ("ckpt-normal", 186, 2, 0.02)):
        metrics = {"accuracy": shares(range(clean), 200, "correct clean"), "pgd20": shares(range(robust), 200),
                   "autoattack": shares(range(robust - 5 if robust > 5 else 0), 200), **_calibration(shift)}
        runs.append(make_run(tmp_path, name, "jeat", metrics, sha=name.encode().hex()[:2] * 32, dataset="cifar10",
                             config=CIFAR, suites=("robust", "calibration")))
    return runs


def _table(out, *args):
    return main(["table", *args, "--out", str(out)])


def test_columns_rows_caption_label(paper_runs, tmp_path, capsys):
    out = tmp_path / "t"
    assert _table(out, *map(str, paper_runs), "--columns", "accuracy,pgd20,autoattack", "--rows",
                  "ckpt-at=AT (ours),ckpt-jeat=JEAT (ours)", "--caption", "Robustness on CIFAR-10.",
                  "--label", "tab:robust", "--without-paper") == 0
    assert sorted(p.name for p in out.glob("*.tex")) == ["table3.tex"]  # the one table holding all three
    tex = (out / "table3.tex").read_text()
    rows = [line for line in tex.splitlines() if line.endswith(r"\\")]
    assert [r.split(" & ")[0] for r in rows[1:]] == ["AT (ours)", "JEAT (ours)"]  # chosen, in order, renamed
    assert r"\caption{Robustness on CIFAR-10. All rows: data set cifar10, threat model $\ell_\infty$, " \
           r"$\epsilon = 8/255$, $n = 200$ test points. Bold:" in tex
    assert r"\label{tab:robust}" in tex and "paper:" not in tex
    # 110 vs 90 robust of the same 200 points, nested: McNemar 20 to 0, p = 2^-19
    assert r"$\mathbf{55.00}$" in rows[2] and r"\mathbf" not in rows[1]
    assert r"Standard\\Accuracy" in rows[0]  # a long header on two lines
    assert r"$\mathbf{90.00}$" in rows[2]  # 90 vs 85 % of the same points, nested: 10 to 0, p = 0.002
    capsys.readouterr()
    # by default the paper's CIFAR-10 rows stand beside CIFAR-10 runs, after a rule
    assert _table(tmp_path / "p", *map(str, paper_runs), "--columns", "autoattack") == 0
    tex = (tmp_path / "p" / "table3.tex").read_text()
    assert "paper: JEAT, CIFAR-10" in tex and tex.count(r"\midrule") == 2


@pytest.mark.parametrize("args, says", [
    (["--columns", "accuracy,nope"], "--columns nope: no such column"),
    (["--rows", "ckpt-jeat,ckpt-x"], "--rows ckpt-x: no such row; the rows are: ckpt-jeat, ckpt-at, ckpt-normal"),
    (["--rows", "ckpt-jeat=A,ckpt-at=A"], "--rows names a row twice: A"),
])
def test_bad_choices_are_one_line(paper_runs, tmp_path, capsys, args, says):
    assert _table(tmp_path / "t", *map(str, paper_runs), *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err


def _pdflatex(tex_files, where):
    """Compile the tables into one article with booktabs; (returncode, log text)."""
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (Debian: apt-get install texlive-latex-base "
                    "texlive-latex-recommended; .ci/run tries it)")
    found = subprocess.run(["kpsewhich", "booktabs.sty"], capture_output=True, text=True)
    if not found.stdout.strip():
        pytest.skip("booktabs.sty is not installed (Debian: texlive-latex-recommended)")
    doc = where / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n"
                   "\\begin{document}\n" + "".join(f"\\input{{{p.name}}}\n" for p in tex_files)
                   + "\\end{document}\n")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=where,
                         capture_output=True, text=True, timeout=120)
    return run.returncode, (where / "doc.log").read_text(errors="replace")


def test_latex_compiles_with_pdflatex_and_booktabs(paper_runs, tmp_path):
    name = "a_b%c&d#e$f{g}~h^i\\j"  # every LaTeX special in a row's name (issue 35)
    out = tmp_path / "t"
    assert _table(out, *map(str, paper_runs), "--columns", "accuracy,pgd20,autoattack,ece,nll,brier", "--rows",
                  f"ckpt-jeat={name},ckpt-at,ckpt-normal", "--caption", "Ours against the paper (50% of 8/255 & more).",
                  "--label", "tab:x_y") == 0
    tex_files = sorted(out.glob("*.tex"))  # no table holds all six: each that holds any
    assert [p.stem for p in tex_files] == ["calibration", "table1", "table3"]
    assert r"\label{tab:x_y-table3}" in (out / "table3.tex").read_text()
    cal = (out / "calibration.tex").read_text()
    assert "ECE (\\%) & " in cal and "MCE" not in cal and "paper:" not in cal  # the paper has no calibration
    code, log = _pdflatex(tex_files, out)
    assert code == 0, log[-2000:]
    assert "Undefined control sequence" not in log and "Missing $" not in log
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(out / "doc.pdf"), "-"], capture_output=True, text=True).stdout
        assert name in text and "8/255" in text and "ECE (%)" in text


def test_calibration_tables_fit_a_page(paper_runs, tmp_path):
    """Clean, FGSM and temperature-scaled calibration apart: each no wider than an article's text."""
    out = tmp_path / "t"
    assert _table(out, *map(str, paper_runs)) == 0
    cal = sorted(out.glob("calibration*.tex"))
    assert [p.stem for p in cal] == ["calibration", "calibration_fgsm", "calibration_ts", "calibration_ts_fgsm"]
    for p in cal:
        (tmp_path / p.stem).mkdir()
        shutil.copy(p, tmp_path / p.stem / p.name)
        code, log = _pdflatex([p], tmp_path / p.stem)
        assert code == 0 and "Overfull \\hbox" not in log, (p.name, log[-1500:])

"""`bench table`: Tables 1-3 assembled from several results.json fixtures, beside the paper."""

import json
import math
import re

import pandas as pd
import pytest

from bench.cli import main
from bench.outputs import paper_layout, table_files
from bench.outputs.over_seeds import over_seeds as merge_seeds
from bench.outputs.table_latex import shared_context
from bench.outputs.table_select import Choice

CONFIG = {"seed": 0, "eps": 0.1, "n_eval": 360, "n_gen": 100, "pgd_steps": 20, "batch_size": 250}
VERSIONS = {"bench": "0.1.0", "torch": "2.14.1", "numpy": "2.3.0", "python": "3.12.0"}


def metric(value, std=None, n=360, reason=None, **details):
    d = {"value": value, "std": std, "n": n, "reason": reason, "seconds": 0.5}
    if details:
        d["details"] = details
    return d


def make_run(root, name, method="jeat", metrics=None, *, sha=None, config=None, arch="digits-cnn",
             dataset="digits", suites=("robust",), run_name=None):
    """Write ROOT/NAME/results.json (schema 1; run.name ``run_name``, as bench run --name) and
    return the directory."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    doc = {"schema": 1,
           "model": {"path": f"/data/ckpts/{name}.safetensors", "sha256": sha or (name.encode().hex() * 64)[:64],
                     "arch": arch, "method": method, "dataset": dataset, "num_classes": 10},
           "run": {"suites": list(suites), "seed": 0, "device": "cpu", "versions": dict(VERSIONS),
                   "started": "2026-11-25T05:00:00+00:00", "seconds": 12.5, "config": dict(config or CONFIG)},
           "metrics": metrics or {}}
    if run_name is not None:
        doc["run"]["name"] = run_name
    (d / "results.json").write_text(json.dumps(doc))
    return d


def share(p, n=360, **details):
    """A share of n points with its standard error sqrt(p (1 - p) / n), as the robust suite records it."""
    return metric(p, math.sqrt(p * (1 - p) / n), n, **details)


@pytest.fixture
def three(tmp_path):
    jeat = make_run(tmp_path, "run-jeat", "jeat", {
        "accuracy": share(0.95), "pgd20": share(0.40), "pgd20_energy": share(0.45),
        "jfs": metric(0.02, 0.001), "mfs": metric(0.15, 0.01), "fid": metric(None, reason="no Inception weights"),
        "is_mean": metric(2.5, 0.1, 100)})
    at = make_run(tmp_path, "run-at", "at", {
        "accuracy": share(0.90), "pgd20": share(0.50),
        "pgd20_energy": metric(None, reason="attack skipped by test"),
        "jfs": metric(0.5, 0.01), "mfs": metric(1.0, 0.05), "fid": metric(80.0, n=100), "is_mean": metric(2.0, 0.1, 100)})
    normal = make_run(tmp_path, "run-normal", "normal", {
        "accuracy": share(0.97), "pgd20": share(0.01), "pgd20_energy": share(0.02)})
    return [jeat, at, normal]


def test_tables_values_names_best_and_footnotes(three, tmp_path):
    built = table_files.build(three, tmp_path / "out", report=False, choice=Choice(with_paper=True))
    t1, t2, t3 = built.tables[:3]  # then the suite tables
    ours = t1.df[t1.df["source"] == "ours"].reset_index(drop=True)
    assert list(ours["Model"]) == ["run-jeat", "run-at", "run-normal"]  # the checkpoints' stems
    assert not any("/" in m for m in t1.df["Model"])  # never the path
    assert ours["No Attack"].tolist() == pytest.approx([95.0, 90.0, 97.0])  # percent
    assert ours["Normal Attack"].tolist() == pytest.approx([40.0, 50.0, 1.0])
    assert pd.isna(ours.loc[1, "Energy Attack"])
    paper = t1.df[t1.df["source"] == "paper"]
    assert len(paper) == 2 and paper["No Attack"].tolist() == pytest.approx([94.39, 78.54])
    # Table 2: the paper's rows from results/paper/table2.csv (PreJEAT's IS/FID from Fig. 6)
    p2 = t2.df[t2.df["source"] == "paper"].set_index("Model")
    assert p2.loc["paper: JEAT, CIFAR-10 (Table 2)", "FID"] == pytest.approx(38.24)
    assert p2.loc["paper: PreJEAT, CIFAR-10 (Fig. 6)", "IS"] == pytest.approx(7.91)
    assert t2.df.loc[0, "JFS"] == pytest.approx(0.02) and t2.df.loc[1, "FID"] == pytest.approx(80.0)
    assert "Diverged (%)" not in t2.columns  # no run holds diverged_fraction: no column of dashes
    assert len(t3.df[t3.df["source"] == "paper"]) == 4

    md1 = table_files.to_markdown(t1)
    rows = {line.split("|")[1].strip(): line for line in md1.splitlines() if line.startswith("| ")}
    # bold only the significantly best of ours (paper rows never): z on the standard errors,
    # 50 vs 40 % at n = 360: z = 2.7; 45 vs 2 %: z = 16; but 97 vs 95 %: z = 1.37, no mark
    assert "**50.00**" in rows["run-at"]
    assert "**45.00**" in rows["run-jeat"]
    assert "**97.00" not in md1 and "**94.39**" not in md1
    assert md1.count("**") == 2 * 2 + 2  # two bold cells + the bold table name
    # the missing metric: a dash with its reason as a footnote that says what it is
    assert "– [1]" in rows["run-at"]
    assert "[1] no value: attack skipped by test" in md1
    md2 = table_files.to_markdown(t2)
    assert "no value: no Inception weights" in md2 and "] no value: not run" in md2  # normal: no Table 2 metric
    nrow = [line for line in md2.splitlines() if line.startswith("| run-normal")][0]
    assert nrow.count("–") == 5  # n (no numbers), JFS, MFS, IS, FID
    # lower Fisher scores are better: 0.02 ± 0.001 against 0.5 ± 0.01
    jrow = [line for line in md2.splitlines() if line.startswith("| run-jeat")][0]
    assert "**0.020** [1]" in jrow and "**0.15** [1]" in jrow and "**2.50** [2]" in jrow  # IS 2.5 ± 0.1 vs 2.0 ± 0.1


def test_paper_rows_only_beside_cifar_runs_or_when_asked(three, tmp_path):
    """Digits runs get no CIFAR rows unless --with-paper; CIFAR-10 runs get the paper's CIFAR-10
    rows (not its CIFAR-100 ones); --without-paper drops them; a table nothing of ran is not written."""
    digits = table_files.build(three[2:], tmp_path / "d", report=False)  # the normal run: Table 1 metrics only
    assert [t.name for t in digits.tables] == ["table1", "table3"]
    assert all((t.df["source"] == "ours").all() for t in digits.tables)
    assert not (tmp_path / "d" / "table2.tex").exists()
    cifar = make_run(tmp_path, "cifar-jeat", "jeat", {"accuracy": share(0.9, 1000), "pgd20": share(0.5, 1000)},
                     dataset="cifar10", config=dict(CONFIG, eps=8 / 255))
    t1 = table_files.build([cifar], tmp_path / "c", report=False).tables[0]
    assert list(t1.df["Model"]) == ["cifar-jeat", "paper: normal WRN-28-10, CIFAR-10"]
    assert list(t1.columns) == ["No Attack", "Normal Attack"]  # no energy attack ran
    assert t1.df.loc[0, "Threat model"] == "Linf, eps 8/255" == t1.df.loc[1, "Threat model"]
    none = table_files.build([cifar], tmp_path / "n", report=False, choice=Choice(with_paper=False)).tables[0]
    assert list(none.df["Model"]) == ["cifar-jeat"]
    full = table_files.build([cifar], tmp_path / "f", report=False, choice=Choice(with_paper=True)).tables[0]
    assert len(full.df) == 3


def test_latex_is_balanced_booktabs_and_escaped(three, tmp_path):
    make_run(tmp_path, "odd", "jeat", {"accuracy": share(0.5), "pgd20": share(0.25)}, run_name="my_method (wrn_28_10)")
    built = table_files.build([*three, tmp_path / "odd"], tmp_path / "out", report=False)
    for t in built.tables:
        tex = (tmp_path / "out" / f"{t.name}.tex").read_text()
        begins, ends = re.findall(r"\\begin\{(\w+)\}", tex), re.findall(r"\\end\{(\w+)\}", tex)
        assert begins[:1] == ["table"] and ends[-1:] == ["table"] and sorted(begins) == sorted(ends)
        assert begins.count("tabular") == 1 + tex.count("[b]")  # the body, and each header on two lines
        assert tex.count(r"\toprule") == 1 and tex.count(r"\bottomrule") == 1
        assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
        assert tex.count("{") - tex.count(r"\{") == tex.count("}") - tex.count(r"\}")
        assert tex.count("$") % 2 == 0
        body = tex[tex.index(r"\toprule"):tex.index(r"\bottomrule")]
        ncols = len(t.columns) + len([c for c in t.context if c not in shared_context(t)]) + 1
        for line in body.splitlines():
            if line.endswith(r"\\"):
                assert len(re.findall(r"(?<!\\)&", line)) == ncols - 1, line
        text = "\n".join(line for line in tex.splitlines() if not line.startswith(r"\label"))
        text = re.sub(r"(?<!\\)\$[^$]*\$", "", text)  # math ($\ell_\infty$) may hold _
        assert not re.search(r"(?<!\\)[_%#]", text.replace(r"\textbackslash{}", "")), "unescaped LaTeX specials"
    tex1 = (tmp_path / "out" / "table1.tex").read_text()
    assert r"my\_method (wrn\_28\_10)" in tex1 and r"\label{tab:table1}" in tex1
    assert r"$\mathbf{50.00}$" in tex1 and r"\mathbf{97" not in tex1  # 97 vs 95 % at n = 360: not significant
    assert "Accuracy (\\%)" in tex1 and r"\textsuperscript{a}\,no value: attack skipped by test" in tex1
    # every row on digits, L-inf eps 0.1, 360 points: said once in the caption, not in a column
    assert r"All rows: data set digits, threat model $\ell_\infty$, $\epsilon = 0.1$, $n = 360$ test points." in tex1
    assert "Data set &" not in tex1 and "Bold: the best of a column where it is significantly better" in tex1


def test_csv_round_trips_through_pandas(three, tmp_path):
    built = table_files.build(three, tmp_path / "out", report=False)
    for t in built.tables:
        back = pd.read_csv(tmp_path / "out" / f"{t.name}.csv")
        spread = [f"{c} {k}" for c in t.columns for k in ("std", "n")] if t.name in ("generative", "score") else []
        assert sorted(back.columns) == sorted(["Model", "source", *t.context, *t.columns, *spread])
        pd.testing.assert_frame_equal(back, t.df, check_dtype=False)
    assert sorted(p.name for p in built.paths) == sorted(
        f"{name}.{ext}" for name in ("table1", "table2", "table3", "generative", "score") for ext in ("csv", "tex", "md"))


def test_rows_named_by_stem_and_the_same_stem_told_apart_without_paths(tmp_path):
    a = make_run(tmp_path, "a", "jeat", {"accuracy": metric(0.9)}, sha="1" * 64)
    b = make_run(tmp_path, "b", "jeat", {"accuracy": metric(0.8)}, sha="2" * 64)
    c = make_run(tmp_path, "c", "jeat", {"accuracy": metric(0.7)}, sha="2" * 64, config=dict(CONFIG, eps=0.2))

    def runs(*dirs, path="/ckpts/one/model.safetensors"):
        out = [table_files.load_runs([d])[0][1] for d in dirs]
        for r in out:
            r.model["path"] = path  # the same file name in other folders
        return out
    assert paper_layout.labels(runs(a, b, path=None)) == ["JEAT [sha256 11111111]", "JEAT [sha256 22222222]"]
    assert paper_layout.labels(runs(a, b)) == ["model [sha256 11111111]", "model [sha256 22222222]"]
    assert paper_layout.labels(runs(b, c)) == ["model [eps=0.1]", "model [eps=0.2]"]
    assert len(set(paper_layout.labels(runs(a, a)))) == 2
    assert paper_layout.labels(runs(a, path="py:mymodel:SmallCNN")) == ["SmallCNN"]  # not "model (py:..., ...)"
    assert paper_layout.labels(runs(a, path="rb:Carmon2019Unlabeled")) == ["Carmon2019Unlabeled"]
    # two recipes of one method and architecture (SiLU and leaky ReLU): named by their recipes
    two = runs(a, b)
    two[0].model["recipe"], two[1].model["recipe"] = "fmnist-jeat", "fmnist-jeat-lrelu"
    assert paper_layout.labels(two) == ["model [recipe fmnist-jeat]", "model [recipe fmnist-jeat-lrelu]"]


def test_cli_table_prints_markdown_and_writes_files(three, tmp_path, capsys):
    out = tmp_path / "tables"
    assert main(["table", *map(str, three), "--out", str(out), "--with-paper"]) == 0
    printed = capsys.readouterr().out
    for name in ("table1", "table2", "table3"):
        assert f"**{name}**" in printed
        assert (out / f"{name}.md").read_text() in printed
    assert "| run-jeat |" in printed and "paper: JEAT, CIFAR-10" in printed
    assert (out / "report.html").is_file()


@pytest.mark.parametrize("case", ["missing-dir", "no-results", "corrupt", "other-schema", "not-object"])
def test_cli_table_bad_input_exit_2(case, three, tmp_path, capsys):
    bad = tmp_path / "bad"
    if case != "missing-dir":
        bad.mkdir()
    if case == "corrupt":
        (bad / "results.json").write_text('{"schema": 1, "model": ')
    elif case == "other-schema":
        (bad / "results.json").write_text(json.dumps({"schema": 2, "model": {}, "run": {}, "metrics": {}}))
    elif case == "not-object":
        (bad / "results.json").write_text(json.dumps({"schema": 1, "model": [], "run": {}, "metrics": {}}))
    assert main(["table", str(three[0]), str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(bad) in err
    expect = {"missing-dir": "no such file or directory", "no-results": "no results.json", "corrupt": "not valid JSON",
              "other-schema": "schema 2", "not-object": "malformed"}[case]
    assert expect in err


def _pgd(value, eps, n=360):
    return share(value, n, threat_model={"norm": "Linf", "eps": eps})


def test_rows_state_dataset_threat_and_n_and_best_is_per_dataset_and_threat(tmp_path):
    """Runs on different data sets or radii are not one ranking: each row says its data set,
    threat model and n, and the best is marked only among rows of the same data set and threat."""
    cfg3 = dict(CONFIG, eps=0.3)
    dirs = [
        make_run(tmp_path, "digits-normal", "normal", {"accuracy": share(0.97), "pgd20": _pgd(0.30, 0.1)}),
        make_run(tmp_path, "digits-jeat", "jeat", {"accuracy": share(0.95), "pgd20": _pgd(0.60, 0.1)}),
        make_run(tmp_path, "fmnist-normal", "normal", {"accuracy": share(0.99, 500), "pgd20": _pgd(0.90, 0.1, 500)},
                 dataset="fashion-mnist"),
        make_run(tmp_path, "digits-normal-03", "normal", {"accuracy": share(0.97), "pgd20": _pgd(0.05, 0.3)},
                 config=cfg3),
        make_run(tmp_path, "digits-at-03", "at", {"accuracy": share(0.92), "pgd20": _pgd(0.20, 0.3)}, config=cfg3),
    ]
    built = table_files.build(dirs, tmp_path / "out", report=False)
    t1, t3 = (next(t for t in built.tables if t.name == name) for name in ("table1", "table3"))
    for t in (t1, t3):
        md = table_files.to_markdown(t)
        header = next(line for line in md.splitlines() if line.startswith("| Model"))
        assert "Data set" in header and "Threat model" in header and "| n |" in header, header
        rows = [line for line in md.splitlines() if line.startswith("| ") and "paper" not in line][1:]
        assert len(rows) == 5
        cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
        assert [c[1] for c in cells] == ["digits", "digits", "fashion-mnist", "digits", "digits"]
        assert [c[2] for c in cells] == ["Linf, eps 0.1"] * 3 + ["Linf, eps 0.3"] * 2
        assert [c[3] for c in cells] == ["360", "360", "500", "360", "360"]
        robust = [c[5] for c in cells]  # No Attack / Standard Accuracy, then PGD-20
        # digits eps 0.1: JEAT; fashion-mnist alone: no mark; digits eps 0.3: AT; never across groups
        assert [("**" in c) for c in robust] == [False, True, False, False, True], robust
        clean = [c[4] for c in cells]  # 97 vs 95 % at n = 360: z = 1.37, no mark; 97 vs 92 %: z = 2.96
        assert [("**" in c) for c in clean] == [False, False, False, True, False], clean
    # CSV holds the same context columns
    back = pd.read_csv(tmp_path / "out" / "table1.csv")
    assert list(back["Threat model"][:5]) == ["Linf, eps 0.1"] * 3 + ["Linf, eps 0.3"] * 2


def _seeded(root, name, seed, fid, sha="ab" * 32, method="jeat"):
    d = make_run(root, name, method, {"fid": metric(fid, n=500), "accuracy": metric(0.9, 0.01),
                                      **({"kid_mean": metric(0.05, 0.01)} if seed == 0 else {})},
                 sha=sha, config=dict(CONFIG, seed=seed), suites=("generative",))
    doc = json.loads((d / "results.json").read_text())
    doc["run"]["seed"] = seed
    (d / "results.json").write_text(json.dumps(doc))
    return d


def test_over_seeds_merges_one_model_and_keeps_the_others(tmp_path):
    """Two seeds of one checkpoint become one row: the mean, ± the standard deviation over the
    seeds (hand-computed: FID 120 and 126 -> 123 ± 4.2426); another checkpoint stays its own row;
    a metric only one seed holds is null with the seed that lacks it."""
    runs = [_seeded(tmp_path, "jeat-s0", 0, 120.0), _seeded(tmp_path, "jeat-s1", 1, 126.0),
            _seeded(tmp_path, "at-s0", 0, 110.0, sha="cd" * 32, method="at")]
    built = table_files.build(runs, tmp_path / "out", report=False, over_seeds=True)
    t2 = next(t for t in built.tables if t.name == "generative")  # the suite tables show the std
    ours = t2.df[t2.df["source"] == "ours"].reset_index(drop=True)
    assert list(ours["Model"]) == ["jeat-s0 [seeds 0, 1]", "at-s0"]
    assert ours["FID"].tolist() == pytest.approx([123.0, 110.0])
    assert t2.stds[(0, "FID")] == pytest.approx(2 ** 0.5 * 3)  # stdev(120, 126)
    assert (1, "FID") not in t2.stds  # one run: its own std (none recorded)
    assert "standard deviation over the seeds" in t2.caption
    table2 = next(t for t in built.tables if t.name == "table2")  # shows no spread, so promises none
    assert not table2.stds and "± the standard deviation" not in table2.caption
    assert "is in the suite tables" in table2.caption
    merged = merge_seeds([r for _, r in table_files.load_runs(runs)])
    assert merged[0].metrics["fid"].details["values"] == [120.0, 126.0]
    assert merged[0].metrics["kid_mean"].value is None
    assert merged[0].metrics["kid_mean"].reason == "not held at seed(s) 1 of 2"
    # without the flag every run is a row
    plain = table_files.build(runs, tmp_path / "plain", report=False).tables[1]  # Table 2
    assert len(plain.df[plain.df["source"] == "ours"]) == 3


def test_over_seeds_keeps_the_reason_a_metric_is_null_at_every_seed():
    """A metric null at every seed for one reason (the Inception Score offline) keeps that reason
    beside the seeds that lack it, so the table's footnote still says why."""
    from bench.core.results import Result, Results

    def run(seed, reason):
        return Results({"sha256": "ab" * 32}, {"name": "m", "seed": seed, "config": {"seed": seed}},
                       {"is_mean": Result.missing(reason), "fid": Result(100.0 + seed, None, 500)})
    merged = merge_seeds([run(0, "no Inception logits"), run(1, "no Inception logits")])
    assert merged[0].metrics["is_mean"].reason == "not held at seed(s) 0, 1 of 2: no Inception logits"
    assert merged[0].metrics["fid"].value == 100.5
    mixed = merge_seeds([run(0, "one reason"), run(1, "another")])
    assert mixed[0].metrics["is_mean"].reason == "not held at seed(s) 0, 1 of 2"


def test_over_seeds_does_not_merge_other_settings_or_a_repeated_seed(tmp_path):
    from bench.core import results
    from bench.outputs.over_seeds import over_seeds

    a = results.read(_seeded(tmp_path, "a", 0, 120.0))
    b = results.read(_seeded(tmp_path, "b", 1, 126.0))
    b.run["config"]["n_gen"] = 2000  # another setting: not the same experiment
    assert len(over_seeds([a, b])) == 2
    c = results.read(_seeded(tmp_path, "c", 0, 121.0))  # seed 0 twice
    assert len(over_seeds([a, c])) == 2


def test_cli_table_over_seeds(tmp_path, capsys):
    runs = [_seeded(tmp_path, "s0", 0, 120.0), _seeded(tmp_path, "s1", 1, 126.0)]
    assert main(["table", *map(str, runs), "--over-seeds", "--out", str(tmp_path / "t")]) == 0
    assert "| s0 [seeds 0, 1] | digits | 500 | 123.00 ± 4.24 |" in capsys.readouterr().out

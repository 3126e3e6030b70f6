"""report.html: self-contained (figures as data URIs), tables, settings, versions, escaped text;
written by `bench run` and `bench table`; rendered in headless Chromium where one is installed."""

import base64
import json
import re
import shutil
import struct
import subprocess
import zlib

import pytest

from bench.cli import main
from bench.core import results
from bench.inputs import checkpoints
from bench.outputs import report
from bench.pipeline import runner
from tests.test_tables import make_run, metric

HOSTILE = '<script>alert("x")</script> & <b>'


def png(path, w=6, h=4, colour=(200, 30, 30)):
    """A real (tiny, RGB) PNG file."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes(colour) * w for _ in range(h))
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def reliability_png(path):
    from bench.engines import plots

    stats = {"edges": [i / 4 for i in range(5)], "count": [0, 5, 10, 85], "accuracy": [None, 0.4, 0.6, 0.95],
             "confidence": [None, 0.4, 0.65, 0.9], "ece": 0.05}
    return plots.reliability_diagram(stats, path, "clean")


@pytest.fixture
def run_dir(tmp_path):
    """A run whose results record four figures (details ``figure``, ``figures``, ``grid``, one of
    them twice) beside files no result names, a path outside the run and a missing file."""
    d = make_run(tmp_path, "run-jeat", "jeat", {
        "accuracy": metric(0.95), "pgd20": metric(0.4), "pgd20_energy": metric(None, reason=HOSTILE),
        "ece": metric(0.03, figure="figures/reliability_clean.png"), "jfs": metric(0.02, 0.001, 100),
        "landscape_flatness": metric(0.1, figures=["figures/landscape_0.png", "figures/missing.png"]),
        "ssim_nn": metric(0.5, figure="figures/sub/ssim_neighbours.png", grid="samples/grid.png",
                          samples="samples/samples.npz"),
        "diverged_fraction": metric(0.0, grid="samples/grid.png"),
        "fid": metric(None, reason="outside", figure="../outside.png", grid=str(tmp_path / "outside.png"))},
        suites=("robust", "calibration", "score"))
    figs = [reliability_png(d / "figures" / "reliability_clean.png"),
            png(d / "figures" / "landscape_0.png", colour=(0, 90, 200)),
            png(d / "figures" / "sub" / "ssim_neighbours.png", colour=(20, 160, 20)),
            png(d / "samples" / "grid.png", 12, 12, (250, 250, 0))]
    (d / "figures" / "notes.txt").write_text("not an image")
    png(d / "figures" / "stale.png", colour=(9, 9, 9))  # on disk, named by no result: not shown
    png(tmp_path / "outside.png", colour=(7, 7, 7))  # named, but outside the run's folder: not shown
    return d, figs


def _srcs(page):
    return re.findall(r'<img src="([^"]*)"', page)


def test_run_report_is_self_contained_with_tables_settings_and_versions(run_dir):
    d, figs = run_dir
    res = results.read(d)
    path = report.write_run_report(res, d)
    page = path.read_text()
    srcs = _srcs(page)
    assert len(srcs) == len(figs) == 4
    for f in figs:  # every figure, embedded byte for byte
        assert "data:image/png;base64," + base64.b64encode(f.read_bytes()).decode() in srcs
        assert f'alt="{f.relative_to(d).as_posix()}"' in page
    assert [s.split('alt="')[1] for s in re.findall(r'<img [^>]*alt="[^"]*', page)] == [
        "figures/landscape_0.png", "figures/reliability_clean.png", "figures/sub/ssim_neighbours.png",
        "samples/grid.png"]  # figures/ then samples/, each in name order
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing outside the file
    assert '<table class="results" id="table1">' in page and 'id="table3"' in page and 'id="table2"' in page
    assert "<strong>" not in page.split('id="table1"')[1].split("</table>")[0]  # one run: no best
    assert "95.00" in page and ">run-jeat<" in page  # the checkpoint's stem
    assert res.model["sha256"] in page
    for k, v in res.run["config"].items():
        assert f"<th>{k}</th><td class=\"code\">{v}</td>" in page
    for k, v in res.run["versions"].items():
        assert f"<th>{k}</th><td class=\"code\">{v}</td>" in page
    assert "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;" in page
    assert page.count("<table") == page.count("</table>") and page.count("<details") == page.count("</details>")


def test_table_report_holds_every_runs_figures(run_dir, tmp_path, capsys):
    d, figs = run_dir
    other = make_run(tmp_path, "run-at", "at", {"accuracy": metric(0.9), "pgd20": metric(0.5)})
    extra = png(other / "samples" / "grid.png", 8, 8, (1, 2, 3))
    doc = json.loads((other / "results.json").read_text())
    doc["metrics"]["accuracy"]["details"] = {"grid": "samples/grid.png"}  # what results.json records is shown
    (other / "results.json").write_text(json.dumps(doc))
    assert main(["table", str(d), str(other), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    srcs = _srcs(page)
    assert len(srcs) == 5
    for f in [*figs, extra]:
        assert "data:image/png;base64," + base64.b64encode(f.read_bytes()).decode() in srcs
    # 95 vs 90 % at n = 360 without standard errors or per-point outcomes: nothing is significantly best
    assert "<strong>" not in page.split('id="table1"')[1].split("</table>")[0]
    assert ">run-at<" in page and "paper: JEAT, CIFAR-10" not in page  # digits runs: no CIFAR rows
    assert "[1] no value: \\<script\\>alert" in (tmp_path / "out" / "table1.md").read_text()  # no raw HTML in Markdown


META = {"arch": "digits-cnn", "arch_kwargs": {"width": 4, "act": "silu"}, "num_classes": 10,
        "input_shape": [1, 8, 8], "dataset": "digits", "method": "jeat", "threat_model": {"norm": "Linf", "eps": 0.1}}


@pytest.fixture
def quick_run(tmp_path, monkeypatch):
    """runner.run on a tiny checkpoint with one fake metric group that writes a figure."""
    from bench.metrics import Group, Result
    from tests.conftest import tiny_model

    ckpt = tmp_path / "m.safetensors"
    checkpoints.save(ckpt, tiny_model(), META)

    def clean(ctx):
        png(ctx.out / "figures" / "fake.png")
        return {"accuracy": Result(0.5, n=10, details={"figure": "figures/fake.png"})}

    monkeypatch.setattr("bench.metrics.registry.load_all", lambda: {"clean": Group("clean", "robust", ("accuracy",), (), clean)})
    return str(ckpt)


def test_bench_run_writes_the_report(quick_run, tmp_path):
    out = tmp_path / "run"
    res = runner.run(quick_run, "robust", out, settings={"n_eval": 10}, log=lambda m: None)
    page = (out / "report.html").read_text()
    assert len(_srcs(page)) == 1 and res.model["sha256"] in page and 'id="table1"' in page


def test_a_failing_report_never_loses_results(quick_run, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report, "write_run_report", boom)
    logged = []
    out = tmp_path / "run"
    res = runner.run(quick_run, "robust", out, settings={"n_eval": 10}, log=logged.append)
    assert results.read(out).metrics["accuracy"].value == res.metrics["accuracy"].value == 0.5
    assert not (out / "report.html").exists()
    assert any("report.html not written: RuntimeError: disk on fire" in m for m in logged)


def browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; });
  document.body.setAttribute("data-images", ok.length + "/" + imgs.length);
  document.body.setAttribute("data-tables", document.querySelectorAll("table.results tbody tr").length);
});
</script>"""


@pytest.mark.skipif(browser() is None, reason="no headless browser installed (chromium, chromium-browser or "
                    "google-chrome); .ci/run installs Debian's chromium")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    d, figs = run_dir
    page = report.write_run_report(results.read(d), d).read_text()
    # the page has no script of its own: a probe is added to a copy, after the page has loaded
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    cmd = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
           "--dump-dom", probe.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'data-images="(\d+)/(\d+)"', done.stdout)
    assert m, f"no probe result; chromium exit {done.returncode}: {done.stderr[-800:]}"
    assert m.group(1) == m.group(2) == str(len(figs)), "some images did not load"
    rows = int(re.search(r'data-tables="(\d+)"', done.stdout).group(1))
    # every row the page's results tables hold is in the rendered DOM: counted in the HTML source
    # (the paper's CIFAR rows are no longer beside a digits run, so the count is the page's own)
    bodies = re.findall(r'<table class="results"[^>]*>.*?<tbody>(.*?)</tbody>', page, flags=re.S)
    assert len(bodies) >= 3 and rows == sum(b.count("<tr") for b in bodies)

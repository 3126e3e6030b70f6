"""The reliability diagrams (issue 31): every drawn colour explained in the legend, a long title
wrapped instead of clipped, and the model named in the figure, from the run down to the plot."""

from pathlib import Path

import torch
from matplotlib.colors import to_rgba

from bench.cli import main
from bench.engines import plots
from bench.metrics.calibration import expected_calibration_error

TITLE = "Clean data, temperature 1.23 (two-fold cross-fit on the evaluation points), n = 450"


def _drawn(monkeypatch):
    figures = []
    real = plots.save

    def keep(fig, path, model=""):
        out = real(fig, path, model)
        figures.append((fig, out))
        return out

    monkeypatch.setattr(plots, "save", keep)
    return figures


def test_every_gap_colour_is_in_the_legend_and_the_title_fits(tmp_path, monkeypatch):
    figures = _drawn(monkeypatch)
    conf = torch.tensor([0.15, 0.18, 0.92, 0.95, 0.97, 0.55])
    ok = torch.tensor([1, 1, 0, 0, 1, 1])  # low confidence right (under-confident), high wrong (over)
    _, stats = expected_calibration_error(conf.double(), ok, 10)
    plots.reliability_diagram(stats, tmp_path / "r.png", TITLE, model="digits-jeat")
    fig, path = figures[0]
    assert path.is_file()
    top = fig.axes[0]
    bars = [p for p in top.patches if p.get_height() != 0]
    # the gap bars by the sign of their height: down = under-confident, up = over-confident
    colour = {(p.get_height() > 0, p.get_y() != 0): p.get_facecolor() for p in bars}
    legend = {t.get_text(): h.get_facecolor() for t, h in zip(fig.legends[0].get_texts(),
                                                              fig.legends[0].legend_handles, strict=True)
              if hasattr(h, "get_facecolor")}  # the patches (the diagonal is a line)
    under = legend["Gap, under-confident (accuracy > confidence)"]
    over = legend["Gap, over-confident (confidence > accuracy)"]
    assert colour[(False, True)] == under and colour[(True, True)] == over  # drawn as the legend shows them
    assert under[3] == over[3] == 1.0 and under != to_rgba("#1f77b4")  # opaque: no blend the legend lacks
    assert legend["Accuracy"] == colour[(True, False)]
    title = top.get_title().splitlines()
    assert len(title) == 2 and all(len(line) <= 58 for line in title) and title[-1].endswith("n\u00a0=\u00a0450")
    assert fig.get_suptitle() == "model: digits-jeat"


def test_bench_run_names_its_model_in_the_figures(tmp_path, monkeypatch, one_thread):
    figures = _drawn(monkeypatch)
    args = ["run", "--model", "digits-jeat", "--suite", "calibration", "--n-eval", "40", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    # the run's figures, under OUT (the run plan's timing probe draws one of its own in a scratch folder)
    figures[:] = [(f, p) for f, p in figures if tmp_path in Path(p).parents]
    names = {path.name: fig.get_suptitle() for fig, path in figures}
    assert {"reliability_clean.png", "reliability_clean_ts.png", "reliability_fgsm.png"} <= set(names)
    assert all(t.splitlines()[0] == "model: digits-jeat" for t in names.values()), names
    figures.clear()
    assert main([*args, "--name", "my run", "--out", str(tmp_path / "b")]) == 0
    figures[:] = [(f, p) for f, p in figures if tmp_path in Path(p).parents]
    assert figures and all(f.get_suptitle().startswith("model: my run") for f, _ in figures)


def test_only_rank_0_renders_a_figure(tmp_path, monkeypatch):
    """Under torchrun the other ranks of a sharded group draw into a scratch folder nobody reads:
    plots.save renders on rank 0 only (it returns the path either way)."""
    from bench.runtime import distributed

    bins = {"count": [3, 1], "accuracy": [0.5, 1.0], "confidence": [0.4, 0.9]}
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    assert plots.reliability_diagram(bins, tmp_path / "rank1.png") == tmp_path / "rank1.png"
    assert not (tmp_path / "rank1.png").exists()
    monkeypatch.setattr(distributed, "is_main", lambda: True)
    plots.reliability_diagram(bins, tmp_path / "rank0.png")
    assert (tmp_path / "rank0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

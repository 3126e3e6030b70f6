"""The report page's layout (issue 26 item 6): figures first by suite, clean before attacked,
the settings of the suites that ran, the raw metrics last, several runs side by side."""

from bench.core.results import Result, Results
from bench.outputs import report
from tests.test_report import png


def _run(tmp_path, name="r", model=None):
    d = tmp_path / name
    for f in ("reliability_fgsm.png", "reliability_clean.png", "ood_adv_px.png", "ood_px.png"):
        png(d / "figures" / f)
    fig = lambda f: {"figure": f"figures/{f}"}  # noqa: E731
    metrics = {"ood_auroc_px_uniform": Result(0.9, n=10, details=fig("ood_adv_px.png")),
               "ood_aupr_in_px_uniform": Result(0.8, n=10, details=fig("ood_px.png")),
               "ece": Result(0.1, n=10, details=fig("reliability_clean.png")),
               "ece_fgsm": Result(0.2, n=10, details=fig("reliability_fgsm.png"))}
    run = {"suites": ["calibration", "ood"], "config": {"n_eval": 10, "ece_bins": 15, "n_gen": 500, "ood": ["uniform"]},
           "groups": {"ece": {"suite": "calibration", "metrics": ["ece", "ece_fgsm"]},
                      "ood": {"suite": "ood", "metrics": ["ood_auroc_px_uniform", "ood_aupr_in_px_uniform"]}}}
    return d, Results(model or {"sha256": "ab" * 32, "dataset": "digits", "method": "jeat"}, run, metrics)


def test_figures_first_by_suite_clean_before_attacked_metrics_last(tmp_path):
    page = report.render([_run(tmp_path)], [])
    at = page.index
    assert at("<h2>Figures</h2>") < at("<h2>Tables</h2>") < at("<h2>Runs</h2>") < at("Metrics (raw values)")
    names = ["reliability_clean.png", "reliability_fgsm.png", "ood_px.png", "ood_adv_px.png"]
    assert [at(f"<figcaption>figures/{n}") for n in names] == sorted(at(f"<figcaption>figures/{n}") for n in names)
    assert at("<h4>calibration</h4>") < at("<h4>ood</h4>")
    settings = page[at("Settings of the suites that ran"):at("<h3>Versions")]
    assert "ece_bins" in settings and "n_eval" in settings and "ood" in settings
    assert "n_gen" not in settings  # a generative setting: that suite did not run


def test_several_runs_side_by_side_and_py_model_by_weights(tmp_path):
    a = _run(tmp_path, "a")
    b = _run(tmp_path, "b", model={"path": "py:mod:make", "sha256": None, "weights_sha256": "cd" * 32})
    page = report.render([a, b], [])
    assert page.count('<div class="runs">') == 2  # figures and run details, each in columns
    assert "<details open>" in page and "<details>" not in page  # not collapsed
    assert f"weights sha256: <code>{'cd' * 32}</code>" in page and "unknown" not in page

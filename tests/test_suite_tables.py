"""Every suite gets its table (issue 26, item 1): calibration, generative, score, memorization,
landscape and denoise, with value ± std cells and std/n columns free of float noise in the CSV."""

import pandas as pd

from bench.outputs import all_tables, table_files
from tests.test_tables import make_run, metric

SUITE_METRICS = {
    "calibration": ("ece", "nll", "brier", "mce", "ece_adaptive", "temperature", "ece_ts", "nll_ts", "brier_ts",
                    "ece_fgsm", "nll_fgsm", "brier_fgsm", "mce_fgsm", "ece_adaptive_fgsm", "ece_ts_fgsm",
                    "nll_ts_fgsm", "brier_ts_fgsm"),
    "generative": ("fid", "kid_mean", "precision", "recall", "diversity_ssim", "is_mean", "diverged_fraction"),
    "score": ("jfs", "mfs"),
    "memorization": ("ssim_nn",),
    "landscape": ("landscape_flatness", "landscape_center_is_min", "landscape_min_offset"),
    "denoise": ("denoise_psnr_noisy", "denoise_psnr", "denoise_ssim_noisy", "denoise_ssim"),
}


def _all_metrics():
    m = {name: metric(0.25, n=100) for names in SUITE_METRICS.values() for name in names}
    m["ece"] = metric(0.47609999999999997, 0.0123, n=450)  # percent: 47.609999999999996 x 100 in floats
    m["jfs"] = metric(0.47609999999999997, 0.01, n=200)
    return m


# the calibration suite in four tables that fit a page: clean, FGSM, and the temperature-scaled ones
CALIBRATION_PARTS = {
    "calibration": ("ece", "nll", "brier", "mce", "ece_adaptive"),
    "calibration_fgsm": ("ece_fgsm", "nll_fgsm", "brier_fgsm", "mce_fgsm", "ece_adaptive_fgsm"),
    "calibration_ts": ("temperature", "ece_ts", "nll_ts", "brier_ts"),
    "calibration_ts_fgsm": ("ece_ts_fgsm", "nll_ts_fgsm", "brier_ts_fgsm"),
}


def test_every_suite_gets_its_table(tmp_path):
    runs = [table_files.results.read(make_run(tmp_path, f"r{i}", "jeat", _all_metrics()) / "results.json")
            for i in range(2)]
    got = {t.name: t for t in all_tables.suite_tables(runs)}
    expected = {k: v for k, v in SUITE_METRICS.items() if k != "calibration"} | CALIBRATION_PARTS
    assert set(got) == set(expected)
    for name, names in expected.items():
        assert sorted(got[name].columns.values()) == sorted(names), name
    assert sorted(sum(CALIBRATION_PARTS.values(), ())) == sorted(SUITE_METRICS["calibration"])


def test_one_unit_per_family_in_the_header(tmp_path):
    """MCE, adaptive and scaled ECE in % as ECE is (0.25 -> 25.00), the unit in the header, never the
    caption's "ECE (%) (ECE)"; the FGSM and TS tables' headers leave out what their caption says."""
    runs = [table_files.results.read(make_run(tmp_path, "r", "jeat", _all_metrics()) / "results.json")]
    got = {t.name: t for t in all_tables.suite_tables(runs)}
    assert list(got["calibration"].columns) == ["ECE (%)", "NLL (nats)", "Brier", "MCE (%)", "Adaptive ECE (%)"]
    assert list(got["calibration_fgsm"].columns) == ["ECE (%)", "NLL (nats)", "Brier", "MCE (%)", "Adaptive ECE (%)"]
    assert list(got["calibration_ts"].columns) == ["Temperature", "ECE (%)", "NLL (nats)", "Brier"]
    assert got["calibration"].df.loc[0, "MCE (%)"] == 25.0 and got["calibration"].df.loc[0, "Brier"] == 0.25
    assert got["calibration_ts"].df.loc[0, "ECE (%)"] == 25.0 and got["calibration_ts"].df.loc[0, "Temperature"] == 0.25
    assert list(got["denoise"].columns)[:2] == ["PSNR noisy (dB)", "PSNR (dB)"]
    for t in got.values():
        assert "(ECE)" not in t.caption and "(%) (" not in t.caption


def test_a_suite_no_run_holds_has_no_table(tmp_path):
    runs = [table_files.results.read(make_run(tmp_path, "r", "jeat", {"ece": metric(0.1), "fid": metric(None, reason="x")})
                                / "results.json")]
    assert {t.name for t in all_tables.suite_tables(runs)} == {"calibration", "generative"}


def test_cells_show_std_and_csv_has_std_n_without_float_noise(tmp_path):
    a = make_run(tmp_path, "a", "jeat", _all_metrics(), sha="1" * 64)
    b = make_run(tmp_path, "b", "jeat", dict(_all_metrics(), ece=metric(0.3, None, n=450)), sha="2" * 64)
    table_files.build([a, b], tmp_path / "out", report=False)
    md = (tmp_path / "out" / "calibration.md").read_text()
    assert "47.61 ± 1.23" in md
    tex = (tmp_path / "out" / "calibration.tex").read_text()
    assert r"$47.61 \pm 1.23$" in tex
    csv = (tmp_path / "out" / "calibration.csv").read_text()
    assert "47.609999" not in csv and "0.47609999" not in csv
    back = pd.read_csv(tmp_path / "out" / "calibration.csv")
    col = next(c for c, m in all_tables.suite_tables([table_files.results.read(a / "results.json")])[0].columns.items()
               if m == "ece")
    assert back[col].tolist() == [47.61, 30.0]
    assert back[f"{col} std"].tolist()[0] == 1.23 and pd.isna(back[f"{col} std"].tolist()[1])
    assert back[f"{col} n"].tolist() == [450, 450]
    score = (tmp_path / "out" / "score.csv").read_text()
    assert ",0.4761," in score and "0.47609999" not in score

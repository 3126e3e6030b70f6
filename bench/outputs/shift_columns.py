"""The names of the ``shift`` suite's metrics (accuracy, calibration and energy AUROC under the
common corruptions, severities 1-5), read from results for the shift tables of
``bench.outputs.all_tables``: the one module that knows them (c a corruption, k a severity).

- ``shift_acc_<c>_<k>``, ``shift_acc_<c>`` (mean over severities), ``shift_acc_s<k>`` (mean over
  corruptions), ``shift_acc_mean``;
- ``shift_ce_<c>``, ``shift_mce``, ``shift_rmce`` (corruption errors, Hendrycks and Dietterich 2019);
- ``shift_ece_s<k>``, ``shift_nll_s<k>``, ``shift_ece_mean``, ``shift_nll_mean``;
- ``shift_auroc_energy_s<k>``, ``shift_auroc_msp_s<k>``.

Only which metric fills which column lives here; their facts (unit, display, direction) are
each metric's declaration (``bench.metrics.spec``), as in every table.
"""

from __future__ import annotations

import re

from bench.core.results import Results

SUITE = "shift"  # its tables are laid out here, not by all_tables.suite_tables
PREFIX = "shift_"
ACC = "shift_acc_"
SEVERITY = re.compile(r"^shift_(acc|ece|auroc_energy)_s(\d+)$")
# the summary columns after the corruptions: (header, metric)
SUMMARY = (("mean", "shift_acc_mean"), ("mCE", "shift_mce"), ("rel. mCE", "shift_rmce"))
# the calibration table's quantities: (header, metric at severity 0 = the clean points or None)
QUANTITIES = (("acc", "acc", "accuracy"), ("ECE", "ece", "ece"), ("AUROC E", "auroc_energy", None))


def held(runs: list[Results]) -> bool:
    """Whether any of the runs holds a metric of the shift suite."""
    return any(m.startswith(PREFIX) for r in runs for m in r.metrics)


def _corruption(metric: str) -> str | None:
    """``c`` of ``shift_acc_<c>`` (the mean over severities); None for any other name."""
    if not metric.startswith(ACC):
        return None
    rest = metric[len(ACC):]
    if rest == "mean" or re.fullmatch(r"s\d+", rest) or re.search(r"_\d+$", rest):
        return None
    return rest or None


def corruption_columns(runs: list[Results]) -> dict[str, str]:
    """corruption -> ``shift_acc_<c>``, in the order of the runs' records (first seen first)."""
    out: dict[str, str] = {}
    for r in runs:
        for m in r.metrics:
            c = _corruption(m)
            if c is not None:
                out.setdefault(c, m)
    return out


def severity_columns(runs: list[Results]) -> list[tuple[str, int, str]]:
    """(quantity header, severity, metric) of the calibration-under-shift table, per quantity the
    clean points (severity 0: ``accuracy``, ``ece``; none for the AUROC) then the severities the
    runs hold, ascending."""
    found = sorted({(q, int(k)) for r in runs for m in r.metrics if (hit := SEVERITY.match(m))
                    for q, k in [hit.groups()]}, key=lambda qk: qk[1])
    cols = []
    for head, q, clean in QUANTITIES:
        levels = [k for qq, k in found if qq == q]
        if clean is not None and levels:
            cols.append((head, 0, clean))
        cols += [(head, k, f"shift_{q}_s{k}") for k in levels]
    return cols

"""Python 3.10 support (requires-python >= 3.10): the package imports without enum.StrEnum."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WITHOUT_STRENUM = """
import enum, http.client, json, torch  # the standard library and torch use enum.StrEnum on 3.11+
del enum.StrEnum  # as on Python 3.10, for the package
import bench.core.settings, bench.core.energy, bench.engines.attacks, bench.metrics.registry
from bench.core.settings import Norm, DEFAULTS
assert str(Norm.L2) == "L2" and f"{Norm.LINF}" == "Linf" and f"{Norm.L2:>4}" == "  L2", (str(Norm.L2), f"{Norm.L2}")
assert Norm.L2 == "L2" and isinstance(Norm.L2, str) and Norm("Linf") is Norm.LINF
assert DEFAULTS["norm"] == "Linf" and type(DEFAULTS["norm"]) is str
print("ok")
"""


def test_imports_without_strenum():
    r = subprocess.run([sys.executable, "-c", WITHOUT_STRENUM], cwd=ROOT, capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]

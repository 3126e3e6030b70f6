"""The Python API beside the command line: ``bench.evaluate(model, dataset=..., suites=...)``.

A notebook user evaluates a model in memory, an ``nn.Module`` that returns logits, and gets the
numbers ``bench run`` would give for the same weights, data, seed and settings: ``evaluate`` calls
the runner (``bench.run.runner.run``) with the module where ``bench run`` passes a file, so the
settings, their names, validation, caching and results.json are the command line's.  ::

    import bench
    res = bench.evaluate(net, dataset="digits", suites="robust,calibration", normalize="half", n_eval=200)
    res.metrics["pgd20"].value
    res.to_frame()            # pandas: one row per metric (value, std, n, reason, suite)
    res.save("runs/mine")     # the folder ``bench run --out runs/mine`` writes

The module's input normalisation is given as for a plain state dict on the command line:
``normalize`` (``--normalize``: a preset such as ``cifar10``, ``half`` for [-1, 1] inputs, or
``"M1,M2,M3/S1,S2,S3"``) or ``mean``/``std``; the module then receives (x - mean) / std of images x
in [0, 1].  Without either it receives [0, 1] images.  An ``EnergyModel`` brings its own.  The
model's identity in results.json: ``model.sha256`` is the sha256 of the module's state dict and
``model.path``/``model.arch`` its class (a file's sha256 and path in ``bench run``).
"""

from __future__ import annotations

import difflib
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.results import Result, Results

RUN_ARGS = ("data_root", "device", "resume", "download", "name", "log")  # runner.run's own arguments


@dataclass
class Evaluation:
    """What ``evaluate`` returns: the run's ``Results`` (``metrics``, ``model``, ``run``) and the
    folder holding its results.json, tables, figures and report.html (a temporary one unless
    ``out`` was given; ``save`` copies it)."""

    results: Results
    folder: Path
    _cleanup: weakref.finalize | None = field(default=None, repr=False)

    @property
    def metrics(self) -> dict[str, Result]:
        return self.results.metrics

    @property
    def model(self) -> dict:
        return self.results.model

    @property
    def run(self) -> dict:
        return self.results.run

    def value(self, name: str) -> float | None:
        return self.results.value(name)

    def to_json(self) -> dict:
        """results.json's content."""
        return self.results.to_json()

    def to_frame(self):
        """A pandas DataFrame, one row per metric (index ``metric``): ``value``, ``std``, ``n``,
        ``reason`` (why a value is null) and ``suite``."""
        import pandas as pd

        suite = {m: g.get("suite") for g in self.run.get("groups", {}).values() for m in g.get("metrics", ())}
        rows = [{"metric": k, "value": r.value, "std": r.std, "n": r.n, "reason": r.reason, "suite": suite.get(k)}
                for k, r in self.metrics.items()]
        frame = pd.DataFrame(rows, columns=["metric", "value", "std", "n", "reason", "suite"])
        return frame.set_index("metric")

    def save(self, out: str | Path) -> Path:
        """Copy the run's folder (results.json, tables, figures, report.html, cache) to ``out``, which
        is then what ``bench run --out OUT`` writes: ``bench table`` and ``bench check`` read it.
        An ``out`` holding another run's results.json is refused."""
        out = Path(out)
        if out.resolve() == self.folder.resolve():
            return out
        if (out / "results.json").exists():
            raise BenchError(f"{out} already holds a results.json; save into an empty or new folder")
        try:
            shutil.copytree(self.folder, out, dirs_exist_ok=True)
        except OSError as e:
            raise BenchError(f"cannot write to {out}: {e.strerror or e}") from None
        return out

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={r.value:.4g}" if r.value is not None else f"{k}=null" for k, r in self.metrics.items())
        return f"Evaluation({self.model.get('arch')} on {self.model.get('dataset')}: {shown})"


def evaluate(model, dataset: str | None = None, suites: str | list[str] = "all", out: str | Path | None = None,
             *, mean=None, std=None, data_root: str | None = None, device: str = "auto", resume: bool = True,
             download: bool = False, name: str | None = None, log=None, **settings) -> Evaluation:
    """Evaluate ``model`` (an ``nn.Module`` returning logits (N, classes), or an ``EnergyModel``) on
    ``dataset`` (``bench run --dataset``: digits, fashion-mnist, cifar10, ``npz:PATH``, ...) with
    ``suites`` (``all``, a comma list or a list) and ``settings`` named as ``bench run``'s options
    (``n_eval=200``, ``eps=0.1``, ``seed=0``, ``normalize="cifar10"``; ``bench run --help``), into
    ``out`` (the folder ``bench run --out`` writes; None: a temporary folder, see
    ``Evaluation.save``).  ``mean``/``std``: the module's input normalisation, per channel or one
    value (or ``normalize``).  Bad arguments are a one-line ``BenchError``."""
    from torch import nn

    from bench.core.energy import eval_mode
    from bench.run import runner

    if not isinstance(model, nn.Module):
        raise BenchError(f"bench.evaluate takes an nn.Module (or an EnergyModel), not a {type(model).__name__}; "
                         "for a checkpoint file use bench.run.runner.run(model=PATH) or `bench run --model PATH`")
    if not dataset or not isinstance(dataset, str):
        raise BenchError("bench.evaluate needs dataset= (digits, fashion-mnist, cifar10, cifar100, folder:PATH, "
                         "npz:PATH): a model in memory records no data set")
    _check_names(settings)
    if mean is not None or std is not None:
        if settings.get("normalize") is not None:
            raise BenchError("give normalize= or mean=/std=, not both")
        settings["normalize"] = _as_normalize(mean, std)
    if isinstance(settings.get("normalize"), str):
        settings["normalize"] = ",".join(v.strip() for v in settings["normalize"].split(","))  # as the CLI strips
    if out is None:
        folder = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    else:
        folder = Path(out)
    kw = {"log": log} if log is not None else {}
    try:
        with eval_mode(model):  # evaluated in eval mode; every submodule's own mode given back after
            res = runner.run(model=model, suite=suites, out=folder, dataset=dataset, data_root=data_root,
                             device=device, resume=resume, download=download, settings=settings, name=name, **kw)
    except BaseException:
        if out is None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    ev = Evaluation(res, folder)
    if out is None:  # the temporary folder goes with the object
        ev._cleanup = weakref.finalize(ev, shutil.rmtree, str(folder), True)
    return ev


def _check_names(settings: dict) -> None:
    """Every keyword must name a setting of ``bench.core.settings.SETTINGS`` (a typo is an error that
    names the closest one, never a setting silently ignored)."""
    from bench.core.settings import SPECS

    for key in settings:
        if key not in SPECS:
            close = difflib.get_close_matches(key, [*SPECS, *RUN_ARGS, "mean", "std"], n=1)
            hint = f"; did you mean {close[0]}?" if close else "; see bench run --help for the settings"
            raise BenchError(f"bench.evaluate: unknown setting {key!r}{hint}")


def _as_normalize(mean, std) -> str:
    """``mean``/``std`` (a number or one per channel each) as ``--normalize``'s ``M1,M2/S1,S2``,
    so results.json records them as the command line would (``run.config.normalize``)."""
    import torch

    def text(v, default: float) -> str:
        try:
            vals = torch.as_tensor(default if v is None else v, dtype=torch.float64).flatten().tolist()
        except (TypeError, ValueError, RuntimeError):
            raise BenchError(f"mean/std must be numbers or sequences of numbers, got {v!r}") from None
        return ",".join(repr(float(x)) for x in vals)

    return f"{text(mean, 0.0)}/{text(std, 1.0)}"

"""The reference model of the corruption errors (CE, mCE, relative mCE: ``bench.metrics.shift``),
the model in AlexNet's role in Hendrycks & Dietterich (2019):

- ``--shift-reference RUN``: an earlier run's folder whose results.json holds ``accuracy`` and
  every ``shift_acc_<c>_<k>`` the run needs, on the same test data (digest), the same number of
  points and the same seed (so the same corrupted images); anything else is one error line naming
  what differs.  The file's sha256 keys the cache.
- otherwise, for a released checkpoint (``bench models``), the released ``normal`` model of the
  same data set and activation, evaluated on the same corrupted images; its weights' sha256 keys
  the cache.
- otherwise none: the corruption errors are null with ``NO_REFERENCE`` as the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.fileio import sha256
from bench.core.results import read_json
from bench.engines.shift_stats import SEVERITIES

NO_REFERENCE = "no reference model: pass --shift-reference RUN"


@dataclass
class Reference:
    """The reference: ``kind`` ``run`` (its error rates ``err`` per (c, k) and ``clean_err`` read
    from ``label``'s results.json) or ``released`` (``model`` to evaluate, ``label`` its name);
    ``digest``: what keys the cache (the file's sha256, or the weights')."""

    kind: str
    label: str
    digest: str
    model: object = None
    err: dict | None = None
    clean_err: float | None = None

    def record(self) -> dict:
        """What the metrics' details say of it."""
        what = "an earlier run's results.json" if self.kind == "run" else "the released normal model, evaluated here"
        return {"kind": self.kind, "reference": self.label, "what": what,
                ("results_sha256" if self.kind == "run" else "weights_sha256"): self.digest}


def from_run(folder: str, names, n: int, seed: int, data_sha256) -> Reference:
    """The reference an earlier run in ``folder`` gives (see the module docstring); one BenchError
    line naming the first thing that differs."""
    path = Path(folder) / "results.json" if Path(folder).is_dir() else Path(folder)
    doc = read_json(path)
    where = f"--shift-reference {folder}"
    run, metrics = doc.get("run") or {}, doc.get("metrics") or {}
    if not isinstance(metrics, dict) or not isinstance(run, dict):
        raise BenchError(f"{where}: {path} is not a results.json of bench run")
    data = run.get("data") or {}
    theirs = [data.get("train_sha256"), data.get("test_sha256")]
    if list(data_sha256 or []) != theirs:
        raise BenchError(f"{where}: evaluated other data (test sha256 {str(theirs[1])[:12]}, this run's "
                         f"{str((data_sha256 or [None, None])[1])[:12]})")
    their_seed = (run.get("config") or {}).get("seed", run.get("seed"))
    if their_seed != seed:
        raise BenchError(f"{where}: seed {their_seed} differs from this run's {seed} (other corrupted images)")
    need = ["accuracy", *(f"shift_acc_{c}_{k}" for c in names for k in SEVERITIES)]
    values = {}
    for m in need:
        r = metrics.get(m)
        if not isinstance(r, dict) or not isinstance(r.get("value"), int | float):
            raise BenchError(f"{where}: holds no value of {m} (run it with --suite robust,shift and "
                             f"--shift-corruptions {','.join(names)})")
        if r.get("n") != n:
            raise BenchError(f"{where}: {m} is over {r.get('n')} points, this run's over {n} (n-eval differs)")
        values[m] = float(r["value"])
    err = {(c, k): 1.0 - values[f"shift_acc_{c}_{k}"] for c in names for k in SEVERITIES}
    return Reference("run", str(folder), sha256(path), err=err, clean_err=1.0 - values["accuracy"])


def released_normal(model_sha256: str | None) -> tuple[str, Path] | None:
    """(name, file) of the released ``normal`` model of the same zoo and activation as the released
    checkpoint whose file sha256 is ``model_sha256``; None when it is no released checkpoint."""
    from bench.inputs import zoo

    for prefix in zoo.ZOOS:
        models = zoo.manifest(prefix).get("models", {})
        mine = next((e for e in models.values() if model_sha256 and e.get("sha256") == model_sha256), None)
        if mine is None:
            continue
        for name, e in sorted(models.items()):
            if e.get("method") == "normal" and e.get("activation") == mine.get("activation"):
                return name, zoo.models_dir() / prefix / e["file"]
    return None


def released(model_sha256: str | None, device) -> Reference | None:
    """The released normal model (loaded, eval mode, on ``device``) for a released checkpoint."""
    found = released_normal(model_sha256)
    if found is None:
        return None
    from bench.inputs import checkpoints

    name, path = found
    loaded = checkpoints.load(str(path))
    return Reference("released", name, loaded.weights_sha256, model=loaded.model.to(device).eval())

"""The Python API beside the command line: ``bench.load(name_or_path)`` and
``bench.evaluate(model, data, suites=...)``.

A notebook user evaluates a model in memory, an ``nn.Module`` that returns logits, and gets the
numbers ``bench run`` would give for the same weights, data, seed and settings: ``evaluate`` calls
the runner (``bench.pipeline.runner.run``) with the module where ``bench run`` passes a file, so the
settings, their names, validation, caching and results.json are the command line's.  ::

    import bench
    net = bench.load("fmnist-jeat")                    # a released model (bench models), an nn.Module
    res = bench.evaluate(net, suites="robust,calibration", n_eval=200)   # on its own data set
    res = bench.evaluate(my_net, (x, y), normalize="half", eps=8 / 255)  # arrays in [0, 1], labels
    print(res)                # one metric a line: value, ± standard error, n; then the eps used
    res.metrics["pgd20"].value
    res.to_frame()            # pandas: one row per metric (value, std, n, reason, suite)
    res.save("runs/mine")     # the folder ``bench run --out runs/mine`` writes

``data`` is a data set's name (``digits``, ``cifar10``, ``npz:PATH``, ...), arrays ``(x, y)`` or
``((x_train, y_train), (x_test, y_test))``, or a torch ``Dataset`` of (image, label): see
``evaluate`` for how arrays are checked, identified (the sha256 of their content) and what happens
without a training split.

The module's input normalisation is given as for a plain state dict on the command line:
``normalize`` (``--normalize``: a preset such as ``cifar10``, ``half`` for [-1, 1] inputs, or
``"M1,M2,M3/S1,S2,S3"``) or ``mean``/``std``; the module then receives (x - mean) / std of images x
in [0, 1].  Without either it receives [0, 1] images.  An ``EnergyModel``, and a model from
``bench.load``, brings its own.  The model's identity in results.json: ``model.sha256`` is the
sha256 of the module's state dict and ``model.path``/``model.arch`` its class (a file's sha256 and
path in ``bench run``, and for a model from ``bench.load`` whose weights are still the file's).
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
        return (f"<Evaluation of {self.model.get('arch')} on {self.model.get('dataset')}: {len(self.metrics)} metrics; "
                "print() it for the table>")

    def __str__(self) -> str:
        """What ``bench run`` prints: the model and data, one metric a line (value, ± standard
        error, n, or null and why), then the threat model's eps."""
        from bench.outputs import console

        data = self.run.get("data") or {}
        head = (f"{self.model.get('path')} ({self.model.get('arch')}) on {self.model.get('dataset')}, "
                f"{data.get('n_test')} test points (sha256 {str(data.get('test_sha256'))[:12]})")
        return "\n".join([head, *console.summary(self.results)])


def evaluate(model, data=None, suites: str | list[str] = "all", out: str | Path | None = None,
             *, dataset: str | None = None, mean=None, std=None, data_root: str | None = None, device: str = "auto",
             resume: bool = True, download: bool = False, name: str | None = None, log=None,
             **settings) -> Evaluation:
    """Evaluate ``model`` on ``data`` with ``suites`` and ``settings``, as ``bench run`` does.

    ``model``: an ``nn.Module`` returning logits (N, classes), an ``EnergyModel``, or what
    ``bench.load`` returned (evaluated as its file: results.json records the file, its sha256, its
    method and data set, exactly as ``bench run --model NAME``; once its weights change it is
    evaluated as a module in memory).

    ``data`` (or ``dataset=``, the same):

    - a data set's name as ``bench run --dataset`` takes it: ``digits``, ``fashion-mnist``,
      ``cifar10``, ``cifar100``, ``folder:PATH``, ``npz:PATH``;
    - arrays in memory, torch tensors or numpy arrays: ``(x, y)`` or
      ``((x_train, y_train), (x_test, y_test))``, images in [0, 1] as (N, C, H, W) or (N, H, W) for
      grey (uint8 is scaled by 1/255), integer labels in 0..classes-1;
    - a torch ``Dataset`` yielding (image, label) (or a pair: training, test), e.g. torchvision's
      with ``transforms.ToTensor()`` and no ``Normalize``;
    - None: the data set a file from ``bench.load`` names.

    Arrays are checked as an npz data set is (shape, range, finite values, labels): each fault is
    one ``BenchError`` line.  Their data set is named ``arrays`` and identified by the sha256 of
    the images and labels (results.json ``run.data.train_sha256``/``test_sha256``), so the same
    arrays reuse the cache.  With ``(x, y)`` alone there is no training split: the training split
    is the evaluated points themselves, and the metrics comparing with it (FID, KID,
    precision/recall, SSIM neighbours, the memorization suite's comparisons) are null with the reason
    ``refused: the training and test sets are the same images ...``; pass
    ``((x_train, y_train), (x_test, y_test))`` for them.  The eps default is the one for digits
    (0.1) unless ``eps=`` says otherwise: ``print(evaluation)`` shows the eps used.

    ``suites``: ``all``, a comma list or a list.  ``settings``: named as ``bench run``'s options
    (``n_eval=200``, ``eps=8/255``, ``seed=0``; ``bench run --help``).  ``normalize``
    (``"cifar10"``, ``"half"`` for [-1, 1], ``"M1,M2,M3/S1,S2,S3"``) or ``mean``/``std``: the
    module's input normalisation; the module then receives (x - mean) / std of images x in [0, 1]
    (an ``EnergyModel``, and a model from ``bench.load``, brings its own).  ``out``: the folder
    ``bench run --out`` writes; None: a temporary one (``Evaluation.save`` copies it).  Bad
    arguments are a one-line ``BenchError``.  ::

        import bench, numpy as np
        net = bench.load("digits-jeat")
        z = np.load("mine.npz")
        x, y = z["x"], z["y"]          # (N, 1, 8, 8) float in [0, 1] (or uint8), integer labels
        ev = bench.evaluate(net, (x, y), suites="robust,calibration", eps=0.1, n_eval=200)
        print(ev)                  # one metric a line: value, ± standard error, n; then the eps
    """
    from torch import nn

    from bench.core.energy import eval_mode
    from bench.pipeline import runner

    if not isinstance(model, nn.Module):
        raise BenchError(f"bench.evaluate takes an nn.Module (or an EnergyModel), not a {type(model).__name__}; "
                         "for a released name or a checkpoint file use bench.load(NAME_OR_PATH) first")
    _check_names(settings)
    if isinstance(out, str) and not out.strip():  # as bench run --out '' (cli_options.NonEmptyPath)
        raise BenchError("out is an empty path, which would mean the working folder; give a path "
                         "(or None for a temporary folder)")
    if mean is not None or std is not None:
        if settings.get("normalize") is not None:
            raise BenchError("give normalize= or mean=/std=, not both")
        settings["normalize"] = _as_normalize(mean, std)
    if isinstance(settings.get("normalize"), str):
        settings["normalize"] = ",".join(v.strip() for v in settings["normalize"].split(","))  # as the CLI strips
    dataset = _data(model, data, dataset)
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


def load(name_or_path: str, *, arch: str | None = None, num_classes: int | None = None,
         input_shape: tuple[int, int, int] | None = None, arch_kwargs: dict | None = None,
         normalize: str | None = None, mean=None, std=None):
    """A released or saved model as an ``nn.Module`` (a ``bench.core.energy.EnergyModel``: logits of
    images in [0, 1], its normalisation inside), in eval mode.

    ``name_or_path``: a released name as ``bench models`` lists it (``digits-jeat``,
    ``fmnist-jeat``, ``fmnist-at-lrelu``, ...), a ``.safetensors`` file ``bench train`` wrote, or any
    other ``bench run --model`` form: a plain state dict (.pt/.pth, read with
    ``weights_only=True``) with ``arch=`` (``wrn-28-10``, ``resnet18``, ``py:module:Class``, ...), a
    JEM checkpoint, ``py:module:function``.  A file bench did not write records neither its number
    of classes nor its image shape: give ``num_classes=`` and ``input_shape=(C, H, W)``, and its
    normalisation as ``normalize=`` (``cifar10``, ``half``, ``"M1,M2,M3/S1,S2,S3"``) or
    ``mean=``/``std=`` (default: none, the network sees [0, 1] pixels).

    The module remembers its file: ``bench.evaluate(model, ...)`` records the file's path, sha256,
    method and data set in results.json (``data`` may then be left out: the data set the file
    names) and takes the eps default from its threat model, exactly as ``bench run --model NAME``;
    once its weights change (fine-tuning), it is evaluated as any module in memory.  ::

        net = bench.load("fmnist-jeat")            # WRN-10-1 on Fashion-MNIST, L-inf eps 0.1
        net(x)                                     # logits of images x in [0, 1], (N, 1, 28, 28)
        bench.evaluate(net, suites="robust")       # as `bench run --model fmnist-jeat --suite robust`
        mine = bench.load("wrn.pt", arch="wrn-28-10", num_classes=10, input_shape=(3, 32, 32),
                          normalize="cifar10")
    """
    from bench.inputs import checkpoints, zoo

    if not isinstance(name_or_path, str | Path):
        raise BenchError(f"bench.load takes a released name or a path, not a {type(name_or_path).__name__}")
    spec = zoo.resolve_spec(str(name_or_path))
    if mean is not None or std is not None:
        if normalize is not None:
            raise BenchError("give normalize= or mean=/std=, not both")
        normalize = _as_normalize(mean, std)
    own = spec.endswith(".safetensors") or spec.startswith(("py:", "rb:"))
    if not own and Path(spec).is_file() and (num_classes is None or input_shape is None):
        raise BenchError(f"bench.load: {spec} is not a bench checkpoint (.safetensors); a plain state dict or a "
                         "JEM file needs num_classes= and input_shape=(C, H, W) (and a plain state dict arch=)")
    if not own and not Path(spec).exists():
        names = [r["name"] for z in zoo.ZOOS for r in zoo.released_rows(z)]
        close = difflib.get_close_matches(str(name_or_path), names, n=1)
        raise BenchError(f"bench.load: no released model or file {name_or_path!r}"
                         + (f"; did you mean {close[0]}?" if close else "; bench models lists the released ones"))
    loaded = checkpoints.load(spec, arch=arch, num_classes=num_classes,
                              input_shape=tuple(input_shape) if input_shape else None, arch_kwargs=arch_kwargs,
                              normalize=normalize)
    return checkpoints.remember_source(loaded)


def _data(model, data, dataset):
    """``evaluate``'s data: a data set's name, a ``bench.inputs.data.Dataset``, or the data set of
    the arrays or torch Dataset given (``bench.inputs.arrays``)."""
    from bench.inputs import arrays
    from bench.inputs.data import Dataset

    if data is not None and dataset is not None:
        raise BenchError("give data= or dataset=, not both (they are the same argument)")
    given = data if data is not None else dataset
    if given is None:
        named = (getattr(model, "bench_source", None) or {}).get("meta", {}).get("dataset")
        if named:
            return named
        raise BenchError("bench.evaluate needs data= (digits, fashion-mnist, cifar10, cifar100, folder:PATH, npz:PATH, "
                         "(x, y) arrays or a torch Dataset): a model in memory records no data set")
    if isinstance(given, str | Dataset):
        if not given:
            raise BenchError("bench.evaluate: data= is an empty name")
        return given
    if not arrays.is_arrays(given):
        raise BenchError(f"bench.evaluate: data= takes a data set's name, {arrays.FORMS}; "
                         f"got a {type(given).__name__}")
    ds = arrays.dataset(given)
    return arrays.with_num_classes(ds, _outputs(model, ds.test.x[:2]))


def _outputs(model, x) -> int | None:
    """The model's number of classes: an EnergyModel's (or its file's), else the width of its logits
    on two of the images, computed in eval mode and no_grad (each submodule's mode restored after);
    None when that forward fails (the run then says why)."""
    import torch

    known = getattr(model, "num_classes", None) or (getattr(model, "bench_source", None) or {}).get("meta", {}).get(
        "num_classes")
    if isinstance(known, int):
        return known
    modes = [(m, m.training) for m in model.modules()]
    try:
        device = next(iter(model.parameters()), torch.empty(0)).device
        model.eval()
        with torch.no_grad():
            out = model(x.to(device))
        return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.ndim == 2 else None
    except Exception:
        return None
    finally:
        for m, training in modes:
            m.training = training

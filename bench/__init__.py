"""JEAT-Bench: classifiers read as energy-based models, evaluated for robustness and generation.

``bench.load(name_or_path)`` returns a released or saved model as an ``nn.Module``;
``bench.evaluate(model, data=..., suites=...)`` evaluates a model in memory on a data set's name,
arrays or a torch Dataset (``bench.api``);
``bench.functional`` holds a pure function on tensors for every metric family.  Both load on
first use, so ``import bench`` (and ``bench check``) imports no torch."""

__version__ = "0.1.0"

__all__ = ["evaluate", "functional", "load", "__version__"]


def __getattr__(name: str):
    if name in ("evaluate", "load"):
        from bench import api

        return getattr(api, name)
    if name == "functional":
        import importlib

        return importlib.import_module("bench.functional")
    raise AttributeError(f"module 'bench' has no attribute {name!r}")

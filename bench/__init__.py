"""JEAT-Bench: classifiers read as energy-based models, evaluated for robustness and generation.

``bench.evaluate(model, dataset=..., suites=...)`` evaluates a model in memory (``bench.api``);
``bench.functional`` holds a pure function on tensors for every metric family.  Both load on
first use, so ``import bench`` (and ``bench check``) imports no torch."""

__version__ = "0.1.0"

__all__ = ["evaluate", "functional", "__version__"]


def __getattr__(name: str):
    if name == "evaluate":
        from bench.api import evaluate

        return evaluate
    if name == "functional":
        import importlib

        return importlib.import_module("bench.functional")
    raise AttributeError(f"module 'bench' has no attribute {name!r}")

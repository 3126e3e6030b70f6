"""One context per group, one run request (issue 32): no engine takes a metric ``Context``; a
context cannot be assigned to (frozen, its run settings read-only), so a group's own one (its
settings view, the defended model, a halved batch size, the generated set) is a new Context and the
run's stays as it was; one ``bench run`` reads its checkpoint file once and hashes its weights once."""

import ast
import builtins
import dataclasses
import io
from pathlib import Path

import pytest
import safetensors
import torch

import bench
from bench.core.settings import DEFAULTS
from bench.engines.defense import RefinedModel
from bench.inputs import checkpoints, nets
from bench.metrics import Context, Group, Result
from bench.pipeline import compute, runner
from tests.conftest import tiny_model
from tests.test_runner import META

ENGINES = Path(bench.__file__).parent / "engines"


def context_uses(source: str) -> list[str]:
    """Where a module's functions take a metric context: a parameter named ``ctx``/``context`` or
    annotated ``Context``, or an attribute read of a name ``ctx``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            a = node.args
            for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
                if arg is None:
                    continue
                note = ast.unparse(arg.annotation) if arg.annotation is not None else ""
                if arg.arg in ("ctx", "context") or "Context" in note:
                    found.append(f"{node.name}({arg.arg}) line {node.lineno}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ctx":
            found.append(f"ctx.{node.attr} line {node.lineno}")
    return found


def test_the_scan_finds_a_context_taken_by_duck_typing():
    assert context_uses("def generated(ctx):\n    return ctx.model\n") == ["generated(ctx) line 1", "ctx.model line 2"]
    assert context_uses("def f(run: 'Context'):\n    pass\n") == ["f(run) line 1"]
    assert context_uses("def f(model, run, out):\n    return model(run, out)\n") == []


@pytest.mark.parametrize("path", sorted(ENGINES.rglob("*.py")), ids=lambda p: p.stem)
def test_no_engine_takes_a_context(path):
    """Engines take what they need (model, execution, out folder, settings values), never the
    metric layer's Context (which the layer rule cannot see when it comes by duck typing)."""
    assert context_uses(path.read_text()) == []


def test_a_context_cannot_be_assigned_to(digits, tmp_path):
    ctx = Context(tiny_model(), digits, dict(DEFAULTS), torch.device("cpu"), tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.model = tiny_model(seed=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.generation = None
    g = Group("g", "robust", ("m",), ("n_eval",), lambda c: {})
    with pytest.raises(TypeError):  # the group's settings view is read-only
        g.viewed(ctx).settings["batch_size"] = 1


def test_compute_makes_the_group_its_own_contexts_and_leaves_the_run_context(digits, tmp_path):
    """A group declaring the defence computes on the defended model, each out-of-memory retry on a
    context of half the batch size; the run's context keeps its model, settings and batch size."""
    seen = []

    def big(ctx):
        seen.append(ctx)
        if ctx.settings["batch_size"] > 40:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return {"m": Result(0.5, n=1)}

    plain = tiny_model()
    settings = dict(DEFAULTS, defense="sgld-refine", refine_steps=1)
    run_ctx = Context(plain, digits, settings, torch.device("cpu"), tmp_path)
    g = Group("big", "robust", ("m",), ("defense", "refine_steps", "refine_chains", "refine_step_size",
                                        "refine_noise"), big)
    out, cacheable = compute.compute(g, run_ctx)
    assert cacheable and out["m"].details == {"out_of_memory_at_batch_sizes": [250, 125, 62], "batch_size_used": 31}
    assert [c.settings["batch_size"] for c in seen] == [250, 125, 62, 31]
    assert len({id(c) for c in seen}) == 4 and all(c is not run_ctx for c in seen)
    assert all(isinstance(c.model, RefinedModel) and c.model.base is plain for c in seen)
    assert len({id(c.model) for c in seen}) == 1  # one defended model (one noise stream) over the retries
    assert run_ctx.model is plain and run_ctx.settings is settings and settings["batch_size"] == 250
    # a group that does not declare the defence sees the plain model
    g2 = Group("plain", "robust", ("m",), ("n_eval",), lambda c: seen.append(c) or {"m": Result(1.0, n=1)})
    compute.compute(g2, run_ctx)
    assert seen[-1].model is plain


@pytest.fixture
def one_group(monkeypatch):
    def clean(ctx):
        x, y = ctx.data.test.x[:10], ctx.data.test.y[:10]
        with torch.no_grad():
            return {"accuracy": Result((ctx.model.logits(x).argmax(1) == y).float().mean().item(), n=10)}

    monkeypatch.setattr("bench.metrics.registry.load_all",
                        lambda: {"clean": Group("clean", "robust", ("accuracy",), ("n_eval",), clean)})


@pytest.mark.parametrize("kind", ["safetensors", "state_dict"])
def test_a_run_reads_its_checkpoint_once_and_hashes_its_weights_once(kind, tmp_path, monkeypatch, one_group):
    model = tiny_model()
    if kind == "safetensors":
        path, kw = tmp_path / "m.safetensors", {}
        checkpoints.save(path, model, META)
    else:
        path, kw = tmp_path / "m.pt", {"dataset": "digits", "arch": "digits-cnn", "settings": {"normalize": "half"}}
        torch.save(nets.build("digits-cnn", 10, 1).state_dict(), path)  # --arch digits-cnn: its default width
    reads, hashes = [], []
    real_open, real_safe_open, real_load, real_hash = io.open, safetensors.safe_open, torch.load, \
        checkpoints.weights_sha256

    def counted_open(file, *a, **k):
        if isinstance(file, str | Path) and Path(file) == path:
            reads.append("open")
        return real_open(file, *a, **k)

    def counted_safe_open(file, *a, **k):
        if Path(file) == path:
            reads.append("safe_open")
        return real_safe_open(file, *a, **k)

    def counted_load(f, *a, **k):
        if isinstance(f, str | Path) and Path(f) == path:
            reads.append("torch.load")
        return real_load(f, *a, **k)

    monkeypatch.setattr(io, "open", counted_open)
    monkeypatch.setattr(builtins, "open", counted_open)
    monkeypatch.setattr(safetensors, "safe_open", counted_safe_open)
    monkeypatch.setattr(torch, "load", counted_load)
    monkeypatch.setattr(checkpoints, "weights_sha256", lambda m: hashes.append(1) or real_hash(m))
    res = runner.run(str(path), "robust", tmp_path / "run", device="cpu", log=lambda m: None, **kw)
    monkeypatch.undo()
    assert reads == ["open"] and len(hashes) == 1
    expect = checkpoints.load(str(path), **({"arch": "digits-cnn", "num_classes": 10, "input_shape": (1, 8, 8),
                                            "normalize": "half"} if kind == "state_dict" else {}))
    assert res.model["sha256"] == checkpoints.sha256(path) == expect.sha256
    assert res.model["weights_sha256"] == expect.weights_sha256

"""The in-domain judges of sample quality (docs/JUDGES.md): a plain classifier per data set,
trained by its recipe (``models/recipes/<zoo>-judge.toml``) and shipped as
``models/judges/<zoo>-judge.safetensors`` with ``models/judges/manifest.json``, or a user's own
checkpoint (``--judge PATH``, any file ``bench.inputs.checkpoints.load`` accepts; a plain state dict
takes ``--judge-arch``).

``judge_outputs`` passes images through a judge and returns its logits and its penultimate
features: the input of its last ``nn.Linear`` module (a forward hook; a judge without one has no
features).  The metrics on them are ``bench.metrics.judged``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bench.core.energy import EnergyModel
from bench.core.errors import BenchError
from bench.inputs import zoo
from bench.runtime.execution import Execution

MANIFEST = "manifest.json"


def judges_dir() -> Path:
    return zoo.models_dir() / "judges"


def shipped_name(dataset: str) -> str | None:
    """The shipped judge's file name for a data set (``fashion-mnist`` -> ``fmnist-judge.safetensors``)."""
    for prefix, name in zoo.ZOOS.items():
        if name == dataset:
            return f"{prefix}-judge.safetensors"
    return None


def manifest() -> dict:
    path = judges_dir() / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass
class Judge:
    """A loaded judge: its model, where it came from, its file's sha256 and what it records."""

    model: EnergyModel
    path: str
    sha256: str | None
    weights_sha256: str | None
    source: str  # "shipped" or "--judge"
    meta: dict = field(default_factory=dict)

    def describe(self) -> dict:
        fm = self.meta.get("final_metrics") or {}
        return {"judge": self.path, "judge_source": self.source, "judge_sha256": self.sha256,
                "judge_weights_sha256": self.weights_sha256, "judge_arch": self.meta.get("arch"),
                "judge_recipe": self.meta.get("recipe"), "judge_recorded_test_accuracy": fm.get("test_accuracy")}


def judge_path(dataset: str, judge: str | None) -> tuple[str | None, str]:
    """(the judge's path, its source) for a run: ``--judge`` if given, else the shipped one for the
    data set (None when there is none)."""
    if judge:
        return judge, "--judge"
    name = shipped_name(dataset)
    path = judges_dir() / name if name else None
    return (str(path), "shipped") if path is not None and path.is_file() else (None, "shipped")


def no_judge_reason(dataset: str) -> str:
    return (f"no in-domain judge shipped for {dataset} (shipped: digits, fashion-mnist); pass --judge PATH, "
            "a classifier of this data set's classes")


def load_judge(path: str, source: str, num_classes: int, input_shape: tuple, arch: str | None = None) -> Judge:
    """Load a judge (``bench.inputs.checkpoints.load``) and check it fits the data set: its classes and
    a last Linear layer whose input are the features."""
    from bench.inputs import checkpoints

    loaded = checkpoints.load(path, arch=arch, num_classes=num_classes, input_shape=tuple(input_shape))
    model = loaded.model.eval()
    if model.num_classes is not None and model.num_classes != num_classes:
        raise BenchError(f"--judge {path}: {model.num_classes} classes, the data set has {num_classes}")
    last_linear(model.net, path)
    return Judge(model, path, loaded.sha256, loaded.weights_sha256, source, dict(loaded.meta))


def last_linear(net: nn.Module, where: str = "judge") -> nn.Linear:
    """The network's last ``nn.Linear`` module (in module order): its input are the penultimate features."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise BenchError(f"{where}: the judge has no nn.Linear layer, so no penultimate features")
    return linears[-1]


@torch.no_grad()
def judge_outputs(judge: Judge | EnergyModel, x: torch.Tensor, run: Execution = Execution()) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, K), penultimate features (N, d)) of images x in [0, 1], in float32 on the CPU,
    computed in batches of ``run.batch_size`` on ``run``'s device."""
    model = judge.model if isinstance(judge, Judge) else judge
    dev = run.on(x)
    model = model.to(dev).eval()
    seen: list[torch.Tensor] = []
    hook = last_linear(model.net).register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().flatten(1)))
    logits, feats = [], []
    try:
        for i in range(0, len(x), run.batch_size):
            seen.clear()
            logits.append(model.logits(x[i:i + run.batch_size].to(dev)).float().cpu())
            feats.append(seen[-1].float().cpu())
    finally:
        hook.remove()
    k = model.num_classes or 0
    if not logits:
        return torch.zeros(0, k), torch.zeros(0, 0)
    return torch.cat(logits), torch.cat(feats)

"""Architectures by name.

    wrn-D-W            WideResNet (RobustBench/TRADES key layout), e.g. wrn-28-10, wrn-16-4
    jem-wrn-D-W        JEM's WideResNet (no norm by default, leaky ReLU, conv biases)
    resnet18           ResNet-18 with the CIFAR stem (AutoAttack / RobustBench example keys)
    preact-resnet18    PreAct ResNet-18 (RobustBench key layout)
    digits-cnn         a small CNN for 8x8 digits

Every constructor takes ``num_classes`` and ``in_channels``; extra keyword arguments are the
architecture's own (``norm``, ``act``, ``width`` ...).  ``build`` returns the module and the exact
arguments used, which checkpoints record so a file rebuilds its own network.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from bench.core.errors import BenchError
from bench.inputs.nets.digits_cnn import DigitsCNN
from bench.inputs.nets.resnet import PreActResNet18, ResNet18
from bench.inputs.nets.wrn import JemWideResNet, WideResNet

# name -> (constructor, pattern of the name's own arguments)
_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "wrn": WideResNet,
    "jem-wrn": JemWideResNet,
    "resnet18": ResNet18,
    "preact-resnet18": PreActResNet18,
    "digits-cnn": DigitsCNN,
}
_DEPTH_WIDTH = re.compile(r"^(wrn|jem-wrn)-(\d+)-(\d+)$")


def build_user(spec: str, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    """``py:module:Class``: a user's architecture (a class or function), called with those of
    ``num_classes`` and ``in_channels`` it takes as parameters (and ``kwargs``); from sys.path or
    the current directory (``bench.core.pyspec``)."""
    import inspect

    from bench.core import pyspec

    make = pyspec.resolve(spec, "architecture", "py:module:Class")
    try:
        params = inspect.signature(make).parameters
    except (TypeError, ValueError):
        params = {}
    given = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels)) if k in params}
    try:
        net = make(**given, **kwargs)
    except Exception as e:
        raise BenchError(f"architecture {spec!r} raised {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(net, nn.Module):
        raise BenchError(f"architecture {spec!r} returned {type(net).__name__}, expected an nn.Module")
    return net


def register(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Add an architecture; ``constructor(num_classes=, in_channels=, **kwargs)``."""
    _REGISTRY[name] = constructor


def names() -> list[str]:
    return ["wrn-28-10", "wrn-D-W", "jem-wrn-28-10", "jem-wrn-D-W"] + [
        n for n in _REGISTRY if n not in ("wrn", "jem-wrn")
    ]


def parse(name: str) -> tuple[str, dict]:
    """Arch name -> (registry key, arguments encoded in the name)."""
    m = _DEPTH_WIDTH.match(name)
    if m:
        return m.group(1), {"depth": int(m.group(2)), "widen_factor": int(m.group(3))}
    if name in _REGISTRY and name not in ("wrn", "jem-wrn"):
        return name, {}
    raise BenchError(f"unknown architecture {name!r}; known: {', '.join(names())}")


def build(name: str, num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    if name.startswith("py:"):
        return build_user(name, num_classes, in_channels, **kwargs)
    key, named = parse(name)
    try:
        return _REGISTRY[key](num_classes=num_classes, in_channels=in_channels, **named, **kwargs)
    except (TypeError, ValueError) as e:
        raise BenchError(f"cannot build {name!r} with {kwargs}: {e}") from None

"""Small shared pieces of the architectures."""

from torch import nn


def activation(name: str) -> nn.Module:
    acts = {
        "relu": lambda: nn.ReLU(),
        "leaky_relu": lambda: nn.LeakyReLU(0.2),  # JEM's choice
        "silu": lambda: nn.SiLU(),
        "softplus": lambda: nn.Softplus(),
        "elu": lambda: nn.ELU(),
    }
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(acts)}")
    return acts[name]()


def norm2d(kind: str | None, channels: int) -> nn.Module:
    if kind in (None, "none"):
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    raise ValueError(f"unknown norm {kind!r}; expected batch, group or none")

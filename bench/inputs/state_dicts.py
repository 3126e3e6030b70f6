"""A state dict against a network: unwrapping what checkpoints save around it, JEM's architecture
from its keys, and loading it with every key, shape and dtype checked (one ``BenchError`` line for
a mismatch, never a silent cast or a missing tensor).  Used by ``bench.inputs.checkpoints``."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from bench.core.errors import BenchError


def unwrap(obj: dict, path: Path) -> dict:
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            state[re.sub(r"^(module\.|_orig_mod\.)+", "", k)] = v
    if not state:
        raise BenchError(f"{path}: not a checkpoint (no tensors found)")
    return state


def jem_arch(state: dict) -> str:
    n_blocks = len({k.split(".")[2] for k in state if k.startswith("f.layer1.")})
    width = state["f.layer1.0.conv1.weight"].shape[0] // 16
    return f"jem-wrn-{6 * n_blocks + 4}-{width}"


def load_state(net: nn.Module, state: dict, where: str, arch: str) -> None:
    own = net.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise BenchError(f"{where}: does not match arch {arch!r}: {'; '.join(parts)}")
    bad = [k for k in state if state[k].shape != own[k].shape]
    if bad:
        k = bad[0]
        raise BenchError(f"{where}: shape mismatch for {arch!r} at {k}: file {tuple(state[k].shape)},"
                         f" model {tuple(own[k].shape)} ({len(bad)} tensors differ)")
    cast = [k for k in state if own[k].is_floating_point() and not state[k].is_floating_point()]
    if cast:  # a quantised or integer tensor would be cast to float silently, and evaluate wrongly
        k = cast[0]
        raise BenchError(f"{where}: tensor {k} is {state[k].dtype}, but {arch!r} needs floats there ({own[k].dtype}); "
                         f"refusing to cast it ({len(cast)} such tensors; dequantise the checkpoint first)")
    net.load_state_dict(state, strict=False)


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")

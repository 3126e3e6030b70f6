"""GPU fast paths for the classifier's forward pass, each behind its own setting (all off by default).

- ``channels_last``: the network's weights and every input in channels-last memory format (NHWC),
  which cuDNN's tensor-core convolutions prefer.  Numbers change only by floating-point
  summation order.
- ``amp = "bf16"``: bfloat16 autocast for forward passes that take **no gradient** (clean
  predictions, the final classification of adversarial examples, calibration probabilities).
  Every forward pass under which autograd records a graph (attack steps, SGLD, Fisher scores,
  AutoAttack's gradient steps) stays float32, always: an attack's gradient is never silently
  computed in reduced precision.  Logits come back as float32.  The energy landscape runs in
  float32 too (``without_amp``): bf16 rounding moved the position of its minimum beyond
  tolerance in the check against the plain path.
- ``compile``: the network through ``torch.compile``; a compilation failure is a one-line error
  (run without ``--compile``), never a silent fallback.  Fisher scores never use it
  (torch.compile has no double backward, and the Taylor-mode trace needs the eager network): they
  run inside ``EnergyModel.plain()``.

``tests/test_fastpath.py`` checks each path against the plain one (logits, attack gradients, and
``bench check`` of a fast run against a plain run); ``benchmarks/bench_fastpaths.py`` prints each
path's speed ratio against the plain path and its logit and PGD changes.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from bench.core.errors import BenchError
from bench.core.settings import AMP_CHOICES, FASTPATH_SETTINGS

SETTINGS = FASTPATH_SETTINGS  # the names live in bench.core.settings, without torch


@dataclass(frozen=True)
class FastPath:
    channels_last: bool = False
    amp: str = "off"
    compile: bool = False

    @classmethod
    def from_settings(cls, s: dict) -> FastPath:
        amp = s.get("amp") or "off"
        if amp not in AMP_CHOICES:
            raise BenchError(f"unknown amp {amp!r}; expected one of {', '.join(AMP_CHOICES)}")
        return cls(bool(s.get("channels_last")), amp, bool(s.get("compile")))

    @property
    def active(self) -> bool:
        return self.channels_last or self.amp != "off" or self.compile


class Forward:
    """What ``EnergyModel.logits`` calls instead of the bare network when a fast path is on."""

    def __init__(self, net: nn.Module, fp: FastPath, compiled: nn.Module | None = None):
        self.fp = fp
        if fp.channels_last:
            net.to(memory_format=torch.channels_last)
        self.net = net
        self.compiled = (compiled or torch.compile(net)) if fp.compile else None

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if self.fp.channels_last and z.dim() == 4:
            z = z.contiguous(memory_format=torch.channels_last)
        if self.fp.amp == "bf16" and not torch.is_grad_enabled():
            with torch.autocast(z.device.type, dtype=torch.bfloat16):
                return self._net(z).float()
        return self._net(z)

    def _net(self, z: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.net(z)
        try:
            return self.compiled(z)
        except Exception as e:
            self.net(z)  # an error of the network itself is raised as it is
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise BenchError(f"torch.compile failed ({type(e).__name__}: {first}); "
                             "run without --compile") from None


@contextmanager
def without_amp(model):
    """bf16 autocast off inside the block, the other fast paths kept: for metrics built on small
    energy differences between nearby inputs (the landscape's minimum over a grid), which bf16
    rounding moves beyond their tolerance (measured: ``landscape_min_offset``)."""
    fwd = model.fast_path
    if fwd is None or fwd.fp.amp == "off":
        yield model
        return
    model.set_fast_path(Forward(fwd.net, replace(fwd.fp, amp="off"), fwd.compiled))
    try:
        yield model
    finally:
        model.set_fast_path(fwd)


def apply(model, fp: FastPath):
    """Turn the fast paths of ``fp`` on for an EnergyModel (in place; returns it)."""
    model.set_fast_path(Forward(model.net, fp) if fp.active else None)
    return model

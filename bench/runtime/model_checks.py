"""Checks of the model itself, once per run, before any group: is it deterministic?  Two forward
passes of the same few test images in eval mode (torch.no_grad), compared exactly; a model whose
logits differ (noise in forward, dropout left on, a randomised defence) is stochastic, which attacks
without EOT (expectation over transformation) do not handle: its robustness is overestimated, and
the robust groups' run-time checks may fail (bench.run.compute turns that into nulls with the reason).

The global random state is saved and restored around the passes (``torch.random.fork_rng``), so a
stochastic model's draws here shift no later random draw of the run."""

from __future__ import annotations

import torch

N_IMAGES = 8  # the first test images, passed twice

WARNING = ("warning: the model is not deterministic: two forward passes of the same images differ by up to "
           "{diff:.4g} in the logits (dropout in training mode, or a randomised defence?); attacks without EOT "
           "overestimate its robustness")


def determinism(model, x: torch.Tensor) -> dict:
    """``run.model_checks`` of results.json: ``deterministic`` (the two passes' logits are equal),
    ``max_logit_difference`` (the largest absolute difference; NaN in the same place counts as
    equal) and ``n`` (how many images)."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        a, b = model.logits(x), model.logits(x)
    diff = (a.double() - b.double()).abs()
    same_nan = torch.isnan(a) & torch.isnan(b)
    diff = torch.where(same_nan, torch.zeros_like(diff), diff)
    worst = float(diff.max()) if diff.numel() else 0.0
    if worst != worst:  # NaN in one pass only: differs, by no number
        return {"deterministic": False, "max_logit_difference": None, "n": int(len(x))}
    return {"deterministic": worst == 0.0, "max_logit_difference": worst, "n": int(len(x))}


def check(model, x: torch.Tensor, log) -> dict:
    """``determinism`` on the first ``N_IMAGES`` of ``x``, with the warning line where it fails."""
    rec = determinism(model, x[:N_IMAGES])
    if not rec["deterministic"]:
        diff = rec["max_logit_difference"]
        log(WARNING.format(diff=diff if diff is not None else float("nan")))
    return rec

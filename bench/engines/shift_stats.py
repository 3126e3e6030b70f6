"""The maths of the shift suite (``bench.metrics.shift``, docs/CORRUPTIONS.md "The shift suite"):
the corruptions a run evaluates, the logits of models on the corrupted first n_eval test points,
and the per-point quantities and corruption errors computed from them, on tensors.

Every corrupted image is ``bench.engines.corruptions.corrupt(x, c, k, seed, index)`` with the
run's seed and the point's index in the test split, so a point is corrupted the same whatever
batch or process it falls in, and two models evaluated on it (the model and its reference) see
the same image.
"""

from __future__ import annotations

import torch

from bench.core.errors import BenchError
from bench.engines import corruptions

SEVERITIES = (1, 2, 3, 4, 5)
CLEAN = "clean"  # the key of the uncorrupted points' logits


def chosen(spec: str | None, shape) -> tuple[str, ...]:
    """The corruptions of ``--shift-corruptions`` (a comma list; None or empty: all those defined
    at this image shape), in the release's order.  An unknown name, or one not defined at this
    size (glass blur below 16 px), is one ``BenchError`` line naming the choices."""
    here = corruptions.available(shape)
    if spec is None or not str(spec).strip():
        return here
    asked = [p.strip() for p in str(spec).split(",") if p.strip()]
    for p in asked:
        if p not in corruptions.REGISTRY:
            raise BenchError(f"--shift-corruptions: unknown corruption {p!r}; expected some of {', '.join(here)}")
        if p not in here:
            raise BenchError(f"--shift-corruptions: {p} is not defined on {shape[-2]}x{shape[-1]} images "
                             f"({corruptions.NOT_SMALL.get(p, 'too small')}); expected some of {', '.join(here)}")
    return tuple(c for c in here if c in asked)


def keys(names) -> list:
    """``CLEAN`` and every (corruption, severity), in order."""
    return [CLEAN, *((c, k) for c in names for k in SEVERITIES)]


def shifted_logits(models: list, x: torch.Tensor, names, seed: int, execution, num_classes: int,
                   desc: str = "shift") -> list[dict]:
    """Per model, {``CLEAN`` or (corruption, severity): (n, K) float64 logits on CPU} of the points
    ``x`` (the first n test points), each batch corrupted once per (corruption, severity) on the
    execution's device and given to every model; sharded batches are gathered back in order."""
    bs = execution.batch_size
    mine = execution.my_batches(len(x))
    want = keys(names)
    parts = [{key: [] for key in want} for _ in models]
    for i in execution.iterate(mine, desc, total=len(mine)):
        xb = x[i * bs:(i + 1) * bs].to(execution.on(x))
        index = torch.arange(i * bs, i * bs + len(xb))
        for key in want:
            xk = xb if key == CLEAN else corruptions.corrupt(xb, key[0], key[1], seed=seed, index=index)
            with torch.no_grad():
                for m, p in zip(models, parts, strict=True):
                    p[key].append(m.logits(xk).double().cpu())
    empty = torch.zeros(0, num_classes, dtype=torch.float64)
    return [{key: execution.collect(p[key], empty) for key in want} for p in parts]


def point_stats(z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per point of logits ``z`` with labels ``y``: ``correct`` (argmax = y), ``conf`` (max
    softmax), ``nll`` (-log softmax_y, nats), ``px`` (logsumexp f = -E(x)) and ``py`` (max softmax,
    the score whose negation is the shift score)."""
    z = z.double()
    y = torch.as_tensor(y).long().view(-1)
    logp = torch.log_softmax(z, dim=1)
    conf = logp.exp().amax(dim=1)
    return {"correct": z.argmax(1) == y, "conf": conf, "nll": -logp.gather(1, y.view(-1, 1)).squeeze(1),
            "px": torch.logsumexp(z, dim=1), "py": conf}


def corruption_errors(err: dict, err_clean: float, ref: dict, ref_clean: float, names) -> dict:
    """Hendrycks & Dietterich (2019), the reference model in AlexNet's role, from top-1 error rates
    ``err[(c, k)]`` and ``ref[(c, k)]`` and the clean errors: per corruption
    ``ce[c]`` = sum_k err / sum_k ref and ``relative[c]`` = sum_k (err - err_clean) / sum_k (ref -
    ref_clean); a ratio whose denominator is not positive is None with ``why[c]`` saying so."""
    out = {"ce": {}, "relative": {}, "why": {}}
    for c in names:
        e = sum(err[(c, k)] for k in SEVERITIES)
        r = sum(ref[(c, k)] for k in SEVERITIES)
        de = sum(err[(c, k)] - err_clean for k in SEVERITIES)
        dr = sum(ref[(c, k)] - ref_clean for k in SEVERITIES)
        out["ce"][c] = e / r if r > 0 else None
        out["relative"][c] = de / dr if dr > 0 else None
        if r <= 0:
            out["why"][c] = f"the reference makes no error under {c} at any severity (CE divides by its errors)"
        elif dr <= 0:
            out["why"][c] = (f"the reference's error under {c} does not exceed its clean error ({ref_clean:.4g}) "
                             "summed over the severities (relative CE divides by that excess)")
    return out

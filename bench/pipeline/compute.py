"""Compute one metric group safely: under torchrun on every rank (sharded groups) or on rank 0
(the others, results broadcast); retried at half the batch size after running out of memory; with
non-finite logits of the model counted through a forward hook and reported as nulls with their
count, never as a number; with a failed run-time check of the group's numbers (``CheckFailed``:
robust accuracy above clean accuracy) as nulls with its message; and with a group's results checked against the metrics it declared."""

from __future__ import annotations

from dataclasses import replace

import torch

from bench.core import progress
from bench.core.errors import BenchError
from bench.core.results import Result
from bench.engines import defense
from bench.metrics import Context, Group
from bench.metrics.context import with_generated
from bench.metrics.registry import CheckFailed, UndeclaredSetting
from bench.runtime import distributed


def compute(g: Group, ctx: Context) -> tuple[dict[str, Result], bool]:
    """``_compute`` in one process; under torchrun a sharded group runs on every rank (each on its
    share, results gathered), any other group on rank 0 with its results broadcast.  Groups on
    generated images first make the generated set together (sharded over chain blocks).  ``ctx``
    is the run's context, never changed: the group computes on its own (``group_context``), whose
    ``settings`` are its ``SettingsView`` (``bench.metrics.registry``): reading a setting it does
    not declare is an error, not a stale cache."""
    ctx = group_context(g, ctx)
    if not distributed.active():
        return _compute_halving(g, ctx)
    if "generated" in g.needs:  # every rank makes the set together, before the group runs anywhere
        ctx = with_generated(ctx)
    if g.sharded:
        return _compute(g, ctx)
    got = _compute(g, ctx) if distributed.is_main() else None
    return distributed.broadcast(got)


def group_context(g: Group, run: Context) -> Context:
    """The group's context, made from the run's: its settings view, the defended model for a group
    that declares the defence settings (``bench.engines.defense.defended``, its noise seeded by
    (seed, ``defense/<group>``); the others see the plain model, so their numbers and caches ignore
    the defence), and ``sharded`` for a sharded group under torchrun."""
    ctx = g.viewed(run)
    if "defense" in g.settings:
        ctx = replace(ctx, model=defense.defended(ctx.model, ctx.settings, ctx.generator(f"defense/{g.name}")))
    return replace(ctx, sharded=g.sharded and distributed.active())


def _compute_halving(g: Group, ctx: Context) -> tuple[dict[str, Result], bool]:
    """``_compute``, retried with half the batch size after an out-of-memory error, down to 1,
    each attempt on a context of its own batch size (``ctx`` is not changed).  The batch sizes
    that ran out of memory, and the one that worked, go into every metric's ``details`` in
    results.json (a smaller batch changes no metric beyond its per-batch random streams: PGD
    starts and denoising noise are drawn per batch)."""
    used = ctx.settings["batch_size"]
    failed = []
    while True:
        attempt = ctx if not failed else replace(ctx, settings=g.view({**ctx.settings.full, "batch_size": used}))
        results, cacheable = _compute(g, attempt)
        if cacheable or used <= 1:
            break
        failed.append(used)
        used = max(1, used // 2)
        if ctx.progress is not None:
            progress.say(f"[{g.suite}] {g.name}: out of memory at batch size {failed[-1]}; retrying with {used}")
    if failed:
        for r in results.values():
            r.details["out_of_memory_at_batch_sizes"] = failed + ([] if cacheable else [used])
            if cacheable:
                r.details["batch_size_used"] = used
            else:
                r.reason += f" (at every batch size down to {used})"
    return results, cacheable


def _compute(g: Group, ctx: Context) -> tuple[dict[str, Result], bool]:
    """-> (results, cacheable).  Out of memory gives nulls with the reason (not cached: a rerun,
    say with a smaller --batch-size, retries); non-finite logits of the model on finite inputs give
    nulls with their count, and the run goes on.  Groups on generated samples (needs=("generated",))
    count diverged chains themselves and are not watched.  A failed run-time check of the group's
    numbers (``bench.metrics.registry.CheckFailed``, e.g. a stochastic model's robust accuracy above its
    clean accuracy) gives nulls with its message (cached: the same model and code fail it again)."""
    watch = None if "generated" in g.needs else _NonFiniteLogits(ctx.model)
    error = None
    try:
        out = g.fn(ctx)  # a group on generated images gets the run's set there (registry: made once per run)
    except (BenchError, UndeclaredSetting):
        raise
    except torch.cuda.OutOfMemoryError as e:  # torch.OutOfMemoryError (CUDA, MPS)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {m: Result.missing(f"out of memory: {str(e).splitlines()[0][:160] if str(e) else 'no message'}")
                for m in g.metrics}, False
    except Exception as e:  # re-raised below unless non-finite logits explain it
        error = e
    finally:
        bad, rows = watch.close() if watch else (0, 0)
        failed = int(isinstance(error, CheckFailed))
        if ctx.sharded:  # every rank must take the same branch below
            bad, rows, failed = (int(v) for v in distributed.gather(torch.tensor([[bad, rows, failed]])).sum(0))
    if bad:
        reason = (f"the model returned non-finite logits (NaN or inf) for {bad} of the {rows} finite inputs "
                  f"this metric gave it")
        n = {m: (out[m].n if error is None and m in out else 0) for m in g.metrics}
        return {m: Result.missing(reason, n[m], non_finite_logits=bad, inputs=rows) for m in g.metrics}, True
    if failed:
        reason = (f"run-time check failed: {error}" if isinstance(error, CheckFailed)
                  else "run-time check failed on another process of this run")
        return {m: Result.missing(reason, check_failed=True) for m in g.metrics}, True
    if error is not None:
        raise error
    missing = [m for m in g.metrics if m not in out]
    if missing:
        raise RuntimeError(f"metric group {g.name} did not return {missing}")
    undeclared = [m for m in out if m not in g.metrics]
    if undeclared:  # every metric declares its facts at registration (bench.metrics.register)
        raise RuntimeError(f"metric group {g.name} returned undeclared metric(s) {undeclared}")
    return {m: out[m] for m in g.metrics}, True


class _NonFiniteLogits:
    """Counts, through a forward hook on the network, the finite input rows whose logits are not
    all finite (kept on the device until read: no synchronisation per forward).  Calls inside
    torch.func transforms (vmap, jvp) are skipped: their values are not plain tensors."""

    def __init__(self, model: torch.nn.Module):
        self.bad = self.rows = 0
        net = getattr(model, "net", model)
        self.handle = net.register_forward_hook(self._hook)

    def _hook(self, module, args, out) -> None:
        if not (isinstance(out, torch.Tensor) and out.ndim == 2 and args and isinstance(args[0], torch.Tensor)
                and len(args[0]) == len(out)) or _wrapped(out) or _wrapped(args[0]):
            return
        with torch.no_grad():
            ok_in = torch.isfinite(args[0].detach().flatten(1)).all(1)
            self.bad = self.bad + (ok_in & ~torch.isfinite(out.detach()).all(1)).sum()
            self.rows = self.rows + ok_in.sum()

    def close(self) -> tuple[int, int]:
        self.handle.remove()
        return int(self.bad), int(self.rows)


def _wrapped(t: torch.Tensor) -> bool:
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(check and check(t))

"""The run's plan: before the first group runs, what each group will cost on this device.

Each group declares its work (``@register(cost=...)``, ``bench.core.cost.Work``: images and calls
of the model's forward, forward+backward and second-order passes, images through the FID
extractor, SSIM pairs).  ``probe`` times those passes here: a few forward, forward+backward and
(when a group needs them) second-order passes of the model at growing batch sizes up to the run's
(a call's fixed cost and a per-image cost, fitted), the feature extractor on a few images and SSIM
on a block of pairs, each only when an uncached group needs it; a second or two for a small model.
The estimate of a group is its work times those unit times; a group that declares no cost says
"cost unknown", a cached one "cached".  ``fit_batch`` lowers the batch size to what the free
memory holds (``peak_per_image``: the peak of a forward+backward pass per image, measured).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.core import cost
from bench.core.cost import Sizes, Work
from bench.pipeline.timing_probe import (  # noqa: F401  (re-exported: the plan's probe, tests)
    ACCURACY_POINTS,
    Probe,
    _chart_unit,
    _extractor_unit,
    _figure_unit,
    _ssim_unit,
    _stats_unit,
    fit_batch,
    free_memory,
    peak_per_image,
    probe,
    time_kind,
)

CUTS = ("n_aa", "n_eval", "n_gen", "n_ref", "n_judge_ref", "n_score", "gen_steps", "denoise_images")


@dataclass
class Line:
    group: str
    suite: str
    work: Work | None  # None: cost unknown
    seconds: float | None
    cached: bool = False


def estimate(groups, s: dict, sizes: Sizes, p: Probe, cached: set, generation: Work | None) -> list[Line]:
    """One line per group (the generated set's own line before the first uncached group that needs it)."""
    lines, gen_done = [], generation is None
    for g in groups:
        if g.name in cached:
            lines.append(Line(g.name, g.suite, None, 0.0, True))
            continue
        if not gen_done and "generated" in g.needs:
            lines.append(Line("(generated set)", g.suite, generation, p.seconds_for(generation)))
            gen_done = True
        w = g.cost(s, sizes) if g.cost is not None else None
        lines.append(Line(g.name, g.suite, w, p.seconds_for(w) if w is not None else None))
    return lines


def total(lines: list[Line]) -> float:
    return sum(li.seconds or 0.0 for li in lines)


def cuts(groups, s: dict, sizes: Sizes, p: Probe, cached: set, generation, gen_cost) -> list[tuple]:
    """The settings that cut the estimate most: -> [(setting, half its value, seconds saved)], largest first."""
    base, out = total(estimate(groups, s, sizes, p, cached, generation)), []
    for k in CUTS:
        v = sizes.n_test if k == "n_eval" and s.get(k) is None else s.get(k)  # n_eval unset: all test points
        if not isinstance(v, int) or v < 2:
            continue
        s2 = dict(s, **{k: v // 2})
        gen2 = gen_cost(s2) if generation is not None else None
        saved = base - total(estimate(groups, s2, sizes, p, cached, gen2))
        if saved > 0.05 * base and saved > 1:
            out.append((k, v // 2, saved))
    return sorted(out, key=lambda t: -t[2])[:3]


def format_lines(lines: list[Line], p: Probe, device, batch: int) -> list[str]:
    units = ", ".join(f"{k} {1e3 * p.unit[k]:.3g} ms/image" for k in ("forward", "backward", "second", "extractor")
                      if k in p.unit)
    timed = "probe of an earlier run" if p.cached else f"probe {p.seconds:.1f} s"
    out = [f"plan on {device}, batch {batch} ({timed}: {units})"]
    width = max((len(f"[{li.suite}] {li.group}") for li in lines), default=0)
    for li in lines:
        head = f"  {f'[{li.suite}] {li.group}':<{width}}"
        if li.cached:
            out.append(f"{head}  cached")
        elif li.work is None:
            out.append(f"{head}  cost unknown")
        else:
            note = f"  ({li.work.note})" if li.work.note else ""
            out.append(f"{head}  {duration(li.seconds):>9}  {li.work.summary()}{note}")
    return out


def duration(sec: float) -> str:
    if sec < 60:
        return f"{sec:.1f} s"
    if sec < 3600:
        return f"{sec / 60:.1f} min"
    if sec < 2 * 86400:
        return f"{sec / 3600:.1f} h"
    return f"{sec / 86400:.1f} days"


def needed_kinds(lines_work: list[Work | None]) -> set:
    return {k for w in lines_work if w is not None for k in cost.KINDS if w.images(k)}



def model_probe(model, ds, s: dict, device: torch.device, groups, log, weights: str | None = None) -> Probe:
    """Before the cache keys are made: time the model's passes the groups need (or read them from
    an earlier run's probe of the same ``weights`` digest here: ``bench.pipeline.probe_cache``) and
    lower ``s['batch_size']`` (in place) to what the free memory holds, saying so in one line."""
    from bench.pipeline import probe_cache
    from bench.runtime import distributed

    sizes = sizes_of(ds, s, None, None)
    kinds = needed_kinds([g.cost(s, sizes) if g.cost is not None else None for g in groups])
    model_kinds = (kinds & set(cost.MODEL_KINDS)) | {"forward", "backward"}
    k = probe_cache.key(device, weights, s, ds)
    earlier = probe_cache.load(k)
    if earlier is not None and model_kinds <= set(earlier["unit"]):
        p = Probe(**earlier, cached=True)
    else:
        p = probe(model, ds, s, device, model_kinds)
        probe_cache.store(k, p)
    p.key = k
    free, where = free_memory(device)
    batch = distributed.broadcast(fit_batch(cost.batch(s), p.peak_per_image, free))
    if batch < cost.batch(s):
        log(f"note: batch size lowered from {cost.batch(s)} to {batch}: a forward+backward pass needs about "
            f"{p.peak_per_image / 2**20:.3g} MB per image ({p.peak_source}), {free / 2**30:.3g} GB {where}")
        s["batch_size"] = batch
    return p


def sizes_of(ds, s: dict, accuracy: float | None, reference_cached: bool | None) -> Sizes:
    return Sizes(len(ds.test), len(ds.train), ds.num_classes, tuple(ds.input_shape), reference_cached, accuracy,
                 getattr(ds, "name", None))


def show(groups, ctx, s: dict, p: Probe, cached: set, log) -> list[Line]:
    """Print the plan: a line per group (its work and estimated time, cached, or cost unknown), the
    total, and the settings that cut it most.  Probes the extractor and SSIM first if an uncached
    group needs them."""
    from bench.engines import generation

    todo = [g for g in groups if g.name not in cached]
    ext, ref_cached = _reference(todo, ctx, s)
    sizes = sizes_of(ctx.data, s, p.accuracy, ref_cached)
    kinds = needed_kinds([g.cost(s, sizes) if g.cost is not None else None for g in todo])
    unit_before = set(p.unit)
    if "figure" in kinds and "figure" not in p.unit:
        p.unit["figure"], p.call["figure"] = _figure_unit(ctx.data.train.x)
    if "chart" in kinds and "chart" not in p.unit:
        p.unit["chart"], p.call["chart"] = _chart_unit()
    if "stats" in kinds and "stats" not in p.unit:
        p.unit["stats"] = _stats_unit()
    if "ssim" in kinds and "ssim" not in p.unit:
        p.unit["ssim"] = _ssim_unit(ctx.data.train.x, ctx.device)
    if "extractor" in kinds and ext is not None and "extractor" not in p.unit:
        p.unit["extractor"], p.call["extractor"] = _extractor_unit(ctx.data.train.x, ext, ctx.device)
    if set(p.unit) != unit_before:
        from bench.pipeline import probe_cache

        probe_cache.store(p.key, p)  # the figure, statistics, SSIM and extractor timings join the entry

    def gen_cost(st):
        return generation.generation_cost(st, ctx.data.num_classes)

    npz = generation.samples_dir(ctx.out) / "samples.npz"
    needs_gen = any("generated" in g.needs for g in todo)
    gen = gen_cost(s) if needs_gen and generation.load_samples(npz, generation.generation_key(ctx.settings, ctx.data)) is None else None
    lines = estimate(groups, s, sizes, p, cached, gen)
    for line in format_lines(lines, p, ctx.device, cost.batch(s)):
        log(line)
    unknown = sum(1 for li in lines if li.work is None and not li.cached)
    log(f"  total about {duration(total(lines))}" + (f" (+ {unknown} group(s) of unknown cost)" if unknown else ""))
    best = cuts(groups, s, sizes, p, cached, gen, gen_cost)
    if best:
        log("  cut most by: " + ", ".join(f"--{k.replace('_', '-')} {n} (saves {duration(v)})" for k, n, v in best))
    return lines


def _reference(todo, ctx, s: dict):
    """(the FID extractor, whether the reference features are at hand) for an uncached is_fid."""
    g = next((g for g in todo if g.name == "is_fid"), None)
    if g is None:
        return None, None
    from bench.engines import features, refstats
    from bench.metrics.generative import resolve

    try:
        ext = resolve(s)
    except features.ExtractorUnavailable:
        return None, None
    ref = ctx.data.train.subset(s.get("n_ref"))
    return ext, refstats.reference_at_hand(ref.x, ext, ctx.data.name, "train")

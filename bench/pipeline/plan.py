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

import time
from dataclasses import dataclass, field

import torch

from bench.core import cost
from bench.core.cost import Sizes, Work

PROBE_SECONDS = 0.25  # a probe's batch stops growing once one pass takes this long
MARGIN = 0.2  # of the available CPU memory, left to everything else (and at least MARGIN_BYTES)
MARGIN_BYTES = 1 << 30
# the peak of a forward+backward pass over the bytes autograd saves for it, on a CPU: measured 1.35
# (WRN-28-10, batch 16: 23.9 MB per image of resident-set growth, 17.6 MB saved) to 1.7 (batch 4)
SAVED_TO_PEAK = 2.0
ACCURACY_POINTS = 32  # fewer probe points (a large model on a CPU): the accuracy is not estimated (taken as 1)
CUTS = ("n_aa", "n_eval", "n_gen", "n_ref", "n_judge_ref", "n_score", "gen_steps", "denoise_images")


@dataclass
class Probe:
    """Seconds per image and per call of each kind of pass (``unit``, ``call``), the clean accuracy
    on the probe's points, the measured peak memory of a forward+backward pass per image and how
    long the probe took."""

    unit: dict = field(default_factory=dict)
    call: dict = field(default_factory=dict)
    accuracy: float | None = None
    peak_per_image: float | None = None
    peak_source: str = ""
    seconds: float = 0.0
    cached: bool = False  # read from an earlier run (bench.pipeline.probe_cache), not timed now
    key: str | None = None  # its probe_cache entry

    def seconds_for(self, w: Work) -> float:
        return sum(w.images(k) * self.unit.get(k, 0.0) + w.calls.get(k, 0) * self.call.get(k, 0.0)
                   for k in cost.KINDS)


def _pass(model, x: torch.Tensor, kind: str) -> None:
    if kind == "forward":
        with torch.no_grad():
            model.logits(x)
        return
    x = x.detach().clone().requires_grad_(True)
    f = model.logits(x)
    e = -torch.logsumexp(f, 1).sum()
    (g,) = torch.autograd.grad(e, x, create_graph=kind == "second")
    if kind == "second":  # a Hessian-vector product: the double backward of a Hutchinson probe
        torch.autograd.grad((g * torch.ones_like(g)).sum(), x)


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def time_kind(model, x: torch.Tensor, kind: str, batch: int, device: torch.device) -> tuple[float, float, int]:
    """-> (seconds per image, seconds per call, the largest batch timed): passes of 1, 8, 64, ...
    images up to ``batch`` (stopping once one takes ``PROBE_SECONDS``), each size once untimed and then
    the best of three (the least disturbed by other processes; once for a pass over ``PROBE_SECONDS``);
    per image and per call from the smallest and the largest batch timed."""
    times, n = {}, 1
    while True:
        xb = x[:n].to(device)
        first = _timed(lambda xb=xb: _pass(model, xb, kind), device)  # a new shape: kernels chosen, memory allocated
        reps = 3 if first < PROBE_SECONDS else 1  # a slow pass (a large model on a CPU) is timed once
        times[n] = min(_timed(lambda xb=xb: _pass(model, xb, kind), device) for _ in range(reps))
        if n >= min(batch, len(x)) or times[n] > PROBE_SECONDS:
            break
        n = min(8 * n, batch, len(x))
    big = max(times)
    if big == 1:
        return times[1], 0.0, 1
    unit = max(0.0, (times[big] - times[1]) / (big - 1))
    return unit, max(0.0, times[1] - unit), big


def peak_per_image(model, x: torch.Tensor, kind: str, device: torch.device) -> tuple[float | None, str]:
    """The peak memory of one pass of ``kind`` over x, per image, and how it was measured: on a GPU
    ``torch.cuda.max_memory_allocated`` above what was allocated before; elsewhere the bytes of the
    tensors autograd saves for the backward pass (``saved_tensors_hooks``, each storage once, the
    weights left out), times ``SAVED_TO_PEAK`` for the backward's own buffers on top."""
    n = len(x)
    x = x.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _pass(model, x, kind)
        return (torch.cuda.max_memory_allocated(device) - base) / n, "torch.cuda.max_memory_allocated"
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _pass(model, x, kind)
    return SAVED_TO_PEAK * sum(seen.values()) / n, f"{SAVED_TO_PEAK:g} x the tensors saved for the backward"


def free_memory(device: torch.device) -> tuple[float | None, str]:
    """Bytes a run may use: the GPU's free memory, or the available RAM (MemAvailable) less
    ``MARGIN`` of it (at least ``MARGIN_BYTES``); None where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free), "free GPU memory"
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None, "unknown"
    return avail - max(MARGIN * avail, MARGIN_BYTES), "available RAM less a margin"


def fit_batch(batch: int, per_image: float | None, free: float | None) -> int:
    """The largest batch size up to ``batch`` whose estimated peak (``per_image`` x size) fits in ``free``."""
    if not per_image or free is None:
        return batch
    return max(1, min(batch, int(free // per_image)))


def probe(model, ds, s: dict, device: torch.device, kinds: set) -> Probe:
    """Time the kinds of pass the plan needs (``kinds``) on the first test points."""
    t0 = time.perf_counter()
    p, batch = Probe(), cost.batch(s)
    x, y = ds.test.x[:batch], ds.test.y[:batch]
    was = model.training
    model.eval()
    try:
        for kind in ("forward", "backward", "second"):
            if kind in kinds or kind in ("forward", "backward"):
                p.unit[kind], p.call[kind], n = time_kind(model, x, kind, batch, device)
                if kind == "backward":
                    p.peak_per_image, p.peak_source = peak_per_image(model, x[:n], kind, device)
                if kind == "forward" and n >= ACCURACY_POINTS:  # as many points as the probe passed
                    with torch.no_grad():
                        p.accuracy = float((model.logits(x[:n].to(device)).argmax(1).cpu() == y[:n]).float().mean())
    finally:
        model.train(was)
    if "ssim" in kinds:
        p.unit["ssim"] = _ssim_unit(ds.train.x, device)
    p.seconds = time.perf_counter() - t0
    return p


def _ssim_unit(x: torch.Tensor, device: torch.device) -> float:
    from bench.engines.ssim import WIN, ssim_matrix

    if min(x.shape[-2:]) < WIN:
        return 0.0
    m = min(len(x), 256)
    ssim_matrix(x[:4], x[:4], device=device)
    return _timed(lambda: ssim_matrix(x[:m], x[:m], device=device), device) / (m * m)


def _extractor_unit(x: torch.Tensor, ext, device: torch.device) -> tuple[float, float]:
    """(seconds per image, per call) of the extractor: calls of 2 and of 8 (CPU) or 64 images."""
    from bench.engines import features
    from bench.runtime.execution import Execution

    n = 6 if device.type == "cpu" else 64
    u8 = features.to_uint8_rgb(x[:n])
    features.extract_features(u8[:2], ext, Execution(device, 2))  # loads the network
    t = {k: _timed(lambda k=k: features.extract_features(u8[:k], ext, Execution(device, k)), device) for k in (2, n)}
    unit = max(0.0, (t[n] - t[2]) / (n - 2))
    return unit, max(0.0, t[2] - 2 * unit)


def _figure_unit(x: torch.Tensor) -> tuple[float, float]:
    """(seconds per panel, per figure): figures of 1 and of 4 image panels drawn and saved
    (``bench.engines.plots``, as the groups draw theirs), after one untimed, each the best of two.
    Panels count: on a loaded 2-core CPU one panel took about 0.13 s more, so ssim_nn's 88-panel
    neighbour grid took 12 s where the 4-panel probe figure took 1.1 s."""
    import tempfile

    from bench.engines import plots

    img = x[0].permute(1, 2, 0).squeeze(-1).numpy()

    def draw(path, n: int) -> None:
        fig, axes = plots.panel_grid(n, 4, 1.5, 1.5, "probe")
        for ax in axes:
            ax.imshow(img, cmap="gray")
        plots.save(fig, path)

    with tempfile.TemporaryDirectory() as d:
        draw(f"{d}/w.png", 4)
        t = {n: min(_timed(lambda k=k, n=n: draw(f"{d}/{n}-{k}.png", n), torch.device("cpu")) for k in range(2))
             for n in (1, 4)}
    unit = max(0.0, (t[4] - t[1]) / 3)
    return unit, max(0.0, t[1] - unit)


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
    return Sizes(len(ds.test), len(ds.train), ds.num_classes, tuple(ds.input_shape), reference_cached, accuracy)


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
    if "ssim" in kinds and "ssim" not in p.unit:
        p.unit["ssim"] = _ssim_unit(ctx.data.train.x, ctx.device)
    if "extractor" in kinds and ext is not None and "extractor" not in p.unit:
        p.unit["extractor"], p.call["extractor"] = _extractor_unit(ctx.data.train.x, ext, ctx.device)
    if set(p.unit) != unit_before:
        from bench.pipeline import probe_cache

        probe_cache.store(p.key, p)  # the figure, SSIM and extractor timings join the entry

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

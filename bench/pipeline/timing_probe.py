"""The timing probe of a run's plan (``bench.pipeline.plan``): a few forward, forward+backward and
(when a group needs them) second-order passes of the model at growing batch sizes up to the run's,
fitted as a call's fixed cost plus a per-image cost (``time_kind``); the peak memory of a
forward+backward pass per image and the batch size the free memory holds (``peak_per_image``,
``free_memory``, ``fit_batch``); the unit costs of SSIM pairs, of the feature extractor, of the
statistics' multiply-adds and of a figure panel (an image and a chart panel).  The probe only times: it never moves a metric."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from bench.core import cost
from bench.core.cost import Work

PROBE_SECONDS = 0.25  # a probe's batch stops growing once one pass takes this long
MARGIN = 0.2  # of the available CPU memory, left to everything else (and at least MARGIN_BYTES)
MARGIN_BYTES = 1 << 30
# the peak of a forward+backward pass over the bytes autograd saves for it, on a CPU: measured 1.35
# (WRN-28-10, batch 16: 23.9 MB per image of resident-set growth, 17.6 MB saved) to 1.7 (batch 4)
SAVED_TO_PEAK = 2.0
ACCURACY_POINTS = 32  # fewer probe points (a large model on a CPU): the accuracy is not estimated (taken as 1)


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


def _stats_unit() -> float:
    """Seconds per float32 multiply-add of a matrix product the size of KID's kernels (512 x 128
    by 128 x 512, through numpy as torch-fidelity's KID; the best of five after one)."""
    import numpy as np

    a = np.random.default_rng(0).random((512, 128), dtype=np.float32)
    a @ a.T
    return min(_timed(lambda: a @ a.T, torch.device("cpu")) for _ in range(5)) / (512 * 512 * 128)


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
    """(seconds per image panel, per figure): figures of 1 and of 4 image panels (no ticks, as the
    sample, neighbour and denoising grids draw theirs: ``plots._image``) drawn and saved."""
    from bench.engines import plots

    img = x[0]

    def draw(path, n: int) -> None:
        fig, axes = plots.panel_grid(n, 4, 1.0, 1.1, "probe")
        for ax in axes:
            plots._image(ax, img, "SSIM 0.50")
        plots.save(fig, path)

    return _per_panel(draw, 4)


def _chart_unit() -> tuple[float, float]:
    """(seconds per chart panel, per figure): figures of 1 and of 3 chart panels drawn and saved,
    each panel a 20-bin histogram and a line with axis labels, ticks, a title and a legend, as the
    calibration, OOD, landscape and shift groups draw theirs.  A chart panel costs several image
    panels (here 0.07 s a panel and 0.06 s a figure against 0.013 s an image panel), so
    ``_figure_unit``'s image panels underestimated those groups' figures by 2-5x.  Against the
    groups' own figures: reliability diagram 1.0x, two OOD histograms 0.8x, a contour with its
    colour bar 1.05x, four of them 1.2x, the three severity curves 1.55x."""
    import numpy as np

    from bench.engines import plots

    a = np.random.default_rng(0).normal(size=500)

    def draw(path, n: int) -> None:
        fig, axes = plots.panel_grid(n, 3, 2.6, 2.4, "probe")
        for ax in axes:
            ax.hist(a, bins=20, alpha=0.55, label="scores")
            ax.plot([-4, 4], [0, 40], ls="--", lw=1, label="line")
            ax.set_xlabel("score", fontsize=7)
            ax.set_ylabel("count", fontsize=7)
            ax.set_title("probe", fontsize=8)
            ax.tick_params(labelsize=6)
            ax.legend(fontsize=7, loc="upper right")
        plots.save(fig, path)

    return _per_panel(draw, 3)


def _per_panel(draw, many: int) -> tuple[float, float]:
    """(seconds per panel, per figure) of ``draw(path, n)``: figures of 1 and of ``many`` panels,
    after one untimed, each the best of three with the garbage collector held (a figure takes
    0.02-0.3 s, so one collection or other slow draw would move the split between panel and figure)."""
    import gc
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        draw(f"{d}/w.png", many)
        t = {}
        for n in (1, many):
            times = []
            for k in range(3):
                gc.collect()
                gc.disable()
                try:
                    times.append(_timed(lambda k=k, n=n: draw(f"{d}/{n}-{k}.png", n), torch.device("cpu")))
                finally:
                    gc.enable()
            t[n] = min(times)
    unit = max(0.0, (t[many] - t[1]) / (many - 1))
    return unit, max(0.0, t[1] - unit)

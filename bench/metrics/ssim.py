"""Batched SSIM and exact SSIM nearest neighbours (suite ``memorization``; paper Fig. 7).

SSIM here is scikit-image's ``structural_similarity(a, b, data_range=1, channel_axis=0,
win_size=7, gaussian_weights=False, use_sample_covariance=True)``, computed in torch, batched,
on any device:

- local statistics over every win x win window that lies wholly inside the image (scikit-image
  filters the whole image, then crops a border of (win - 1) // 2, which leaves exactly those
  windows: 26 x 26 of them for 32 x 32 images, 2 x 2 for 8 x 8 digits);
- mean u = window mean; sample variance and covariance with the factor NP / (NP - 1),
  NP = win^2, i.e. v_x = sum_w (x_w - u_x)^2 / (NP - 1) and v_xy = sum_w (x_w - u_x)(y_w - u_y) / (NP - 1);
- S = (2 u_x u_y + C1)(2 v_xy + C2) / ((u_x^2 + u_y^2 + C1)(v_x + v_y + C2)), C1 = (0.01 R)^2,
  C2 = (0.03 R)^2 with R = data_range = 1;
- the mean of S over the windows of each channel, then over channels.

Variances and covariances are computed from centred windows rather than scikit-image's
E[xy] - E[x]E[y], which is the same number without the cancellation, so float32 agrees with
scikit-image's float64 to about 1e-7.

All pairs.  ``ssim_matrix(a, b)`` (A x B) centres every window of every image once (``unfold``);
the only term that couples a pair, sum_w x_w y_w over centred windows, is then one batched matrix
product per window position, (A, NP) @ (NP, B); the rest of S is elementwise on (windows, A, B).
Work is blocked under two memory budgets (window statistics held at once; elements of one
elementwise block), and ``nearest_neighbours`` keeps a running top-k per generated image while it
sweeps the whole training set: neighbours are exact, not approximate.

Metric ``ssim_nn``: the mean over generated images of the SSIM to their nearest training image
(over all of the training split); ``std`` is the standard error of that mean (sd / sqrt(n));
details hold the median, maximum, the fraction above 0.9 and the mean SSIM to the k-th neighbour.
The figure ``figures/ssim_neighbours.png`` shows, for ``ssim_n_show`` generated images (classes
taken in turn), the image and its ``ssim_k`` nearest training images with their SSIM (Fig. 7).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from bench import distributed
from bench.data import TRAIN_IS_TEST
from bench.execution import Execution
from bench.metrics import DRIFTING, Context, Metric, Result, absolute, mean_se, register
from bench.settings import GEN_SETTINGS

K1, K2 = 0.01, 0.03
WIN = 7
STD_NOTE = "standard error of the mean over generated images, sd / sqrt(n)"
GRID = "samples/grid.png"  # the generated set's grid (bench.generation.generated), relative to the run's folder
# elements of one (windows, A-rows, B-rows) block of the elementwise SSIM (about 4 such live at
# once): small blocks stay in cache, which makes them faster than large ones
BLOCK_ELEMENTS = 1 << 22
# elements of window statistics (centred windows, means, variances) held at once per side
STATS_ELEMENTS = 1 << 26


def _check(x: torch.Tensor, win: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"SSIM expects images (N, C, H, W), got shape {tuple(x.shape)}")
    if win % 2 != 1 or win < 1:
        raise ValueError(f"win_size must be odd, got {win}")
    if min(x.shape[-2:]) < win:
        raise ValueError(f"win_size {win} exceeds the image extent {tuple(x.shape[-2:])}")


def window_stats(x: torch.Tensor, win: int = WIN, dtype=torch.float32):
    """Per-window statistics of images (N, C, H, W).

    Returns ``(mean, var, centred)``: window means (C*P, N), sample variances (C*P, N) and centred
    windows (C*P, N, win*win), P = (H - win + 1)(W - win + 1) windows per channel, channel-major."""
    _check(x, win)
    x = x.to(dtype)
    n, c, h, w = x.shape
    ph, pw = h - win + 1, w - win + 1
    windows = x.unfold(2, win, 1).unfold(3, win, 1)  # (N, C, Ph, Pw, win, win), a view
    mean = F.avg_pool2d(x, win, stride=1).permute(1, 2, 3, 0)  # (C, Ph, Pw, N)
    # centre while copying into the layout of the batched matrix products: (C, Ph, Pw, N, win, win)
    centred = torch.empty((c, ph, pw, n, win, win), dtype=dtype, device=x.device)
    torch.sub(windows.permute(1, 2, 3, 0, 4, 5), mean[..., None, None], out=centred)
    centred = centred.view(c * ph * pw, n, win * win)
    var = torch.linalg.vector_norm(centred, dim=2).square_().div_(win * win - 1)
    return mean.reshape(c * ph * pw, n), var, centred


def _consts(data_range: float) -> tuple[float, float]:
    return (K1 * data_range) ** 2, (K2 * data_range) ** 2


def ssim(a: torch.Tensor, b: torch.Tensor, win_size: int = WIN, data_range: float = 1.0,
         dtype=torch.float32) -> torch.Tensor:
    """SSIM of each pair (a[i], b[i]): images (N, C, H, W) -> (N,), as scikit-image (module doc)."""
    if a.shape != b.shape:
        raise ValueError(f"SSIM of images of different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    c1, c2 = _consts(data_range)
    ua, va, pa = window_stats(a, win_size, dtype)
    ub, vb, pb = window_stats(b, win_size, dtype)
    cov = (pa * pb).sum(2) / (win_size * win_size - 1)
    s = (2 * ua * ub + c1) * (2 * cov + c2) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    return s.mean(0)


def _ssim_block(sa, sb, c1: float, c2: float, np_: int, work: torch.Tensor | None = None) -> torch.Tensor:
    """SSIM of all pairs of two blocks of window statistics -> (A, B).

    ``work``: an optional flat buffer of at least 2 * CP * A * B elements, reused from block to
    block (fresh large CPU allocations cost page faults that dominate the arithmetic)."""
    ua, va, pa = sa
    ub, vb, pb = sb
    cp, na, nb = pa.shape[0], pa.shape[1], pb.shape[1]
    size = cp * na * nb
    if work is None or work.numel() < 2 * size:
        work = torch.empty(2 * size, dtype=pa.dtype, device=pa.device)
    s = work[:size].view(cp, na, nb)
    t = work[size:2 * size].view(cp, na, nb)
    ua, ub = ua.unsqueeze(2), ub.unsqueeze(1)
    torch.bmm(pa, pb.transpose(1, 2), out=s)  # sum_w of centred products: one product per window
    s.mul_(2 / (np_ - 1)).add_(c2)  # 2 v_xy + C2
    torch.mul(ua, ub, out=t)
    s.mul_(t.mul_(2).add_(c1))  # * (2 u_x u_y + C1)
    torch.add(ua * ua, ub * ub, out=t)
    s.div_(t.add_(c1))  # / (u_x^2 + u_y^2 + C1)
    torch.add(va.unsqueeze(2), vb.unsqueeze(1), out=t)
    s.div_(t.add_(c2))  # / (v_x + v_y + C2)
    return s.mean(0)


def _chunks(n: int, size: int):
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def _block_sizes(cp: int, na: int, nb: int, budget: int) -> tuple[int, int]:
    """Rows of A and of B per block so that cp * rows_a * rows_b <= budget (square-ish blocks)."""
    per = max(1, budget // max(1, cp))
    ra = max(1, min(na, math.isqrt(per)))
    rb = max(1, min(nb, per // ra))
    if rb == nb:  # all of B fits: spend the rest on A
        ra = max(1, min(na, per // nb))
    return ra, rb


def _rows(stats, i0: int, i1: int):
    return tuple(t[:, i0:i1] for t in stats)


def _pair_blocks(a: torch.Tensor, b: torch.Tensor, win: int, data_range: float, dtype, device,
                 budget: int, stats_budget: int, progress=None, desc: str = "ssim"):
    """Yield (i0, i1, j0, j1, SSIM of a[i0:i1] x b[j0:j1] as (i1 - i0, j1 - j0)) over all pairs.

    Window statistics are held for at most ``stats_budget`` elements per side: a's once for all
    when they fit (else per chunk), b's chunk by chunk, each computed once per pass; each
    (windows, rows, rows) block of the elementwise part has at most ``budget`` elements, small
    enough to stay in cache."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"SSIM of images of different shapes {tuple(a.shape[1:])} and {tuple(b.shape[1:])}")
    _check(a, win)
    c1, c2 = _consts(data_range)
    np_ = win * win
    cp = a.shape[1] * (a.shape[2] - win + 1) * (a.shape[3] - win + 1)
    per_image = cp * (np_ + 2)
    sa_rows = max(1, min(len(a), stats_budget // per_image))
    sb_rows = max(1, min(len(b), stats_budget // per_image))
    ra, rb = _block_sizes(cp, len(a), len(b), budget)
    a_chunks, b_chunks = _chunks(len(a), sa_rows), _chunks(len(b), sb_rows)
    sa_all = window_stats(a.to(device), win, dtype) if len(a_chunks) == 1 else None
    work = torch.empty(2 * cp * ra * rb, dtype=dtype, device=device)
    it = progress(b_chunks, desc=desc, total=len(b_chunks)) if progress else b_chunks
    for j0, j1 in it:
        sb_chunk = window_stats(b[j0:j1].to(device), win, dtype)
        for i0, i1 in a_chunks:
            sa_chunk = sa_all if sa_all is not None else window_stats(a[i0:i1].to(device), win, dtype)
            for k0, k1 in _chunks(i1 - i0, ra):
                sa = _rows(sa_chunk, k0, k1)
                for l0, l1 in _chunks(j1 - j0, rb):
                    yield i0 + k0, i0 + k1, j0 + l0, j0 + l1, _ssim_block(sa, _rows(sb_chunk, l0, l1), c1, c2, np_, work)


def ssim_matrix(a: torch.Tensor, b: torch.Tensor, win_size: int = WIN, data_range: float = 1.0,
                dtype=torch.float32, device=None, budget: int = BLOCK_ELEMENTS,
                stats_budget: int = STATS_ELEMENTS) -> torch.Tensor:
    """SSIM of every pair: images a (A, C, H, W), b (B, C, H, W) -> (A, B) on ``device``
    (default a's); ``budget`` and ``stats_budget`` bound the working memory (see module doc)."""
    device = torch.device(device) if device is not None else a.device
    out = torch.empty(len(a), len(b), dtype=dtype, device=device)
    for i0, i1, j0, j1, block in _pair_blocks(a, b, win_size, data_range, dtype, device, budget, stats_budget):
        out[i0:i1, j0:j1] = block
    return out


def nearest_neighbours(gen: torch.Tensor, train: torch.Tensor, k: int = 10, win_size: int = WIN,
                       data_range: float = 1.0, dtype=torch.float32, run: Execution = Execution(),
                       budget: int = BLOCK_ELEMENTS, stats_budget: int = STATS_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` training images of highest SSIM to each generated image, exactly (every training
    image is compared).  -> (ssim values (G, k), training indices (G, k)), best first, on CPU.
    A running top-k per generated image is merged block by block; the (G, T) matrix is never held.
    ``run`` (``bench.execution.Execution``): the device (default: the images'), the progress over
    the training blocks, and under torchrun (``run.sharded``) each rank takes its contiguous share of
    the generated images, the results gathered in order (blocks are sized by the budgets, not by
    ``run.batch_size``)."""
    if run.sharded:
        mine = distributed.shard(len(gen))
        kk = min(int(k), len(train))
        if len(mine):
            vals, idx = nearest_neighbours(gen[mine.start:mine.stop], train, k, win_size, data_range, dtype,
                                           replace(run, sharded=False), budget, stats_budget)
        else:  # more processes than generated images
            vals, idx = torch.zeros(0, kk, dtype=dtype), torch.zeros(0, kk, dtype=torch.long)
        return distributed.gather(vals), distributed.gather(idx)
    if gen.shape[1:] != train.shape[1:]:
        raise ValueError(f"generated images {tuple(gen.shape[1:])} and training images "
                         f"{tuple(train.shape[1:])} differ in shape")
    k = min(int(k), len(train))
    if k < 1 or len(gen) == 0:
        raise ValueError("nearest_neighbours needs k >= 1, generated images and a non-empty training set")
    device = run.on(gen)
    best_v = torch.full((len(gen), k), -math.inf, dtype=dtype, device=device)
    best_i = torch.full((len(gen), k), -1, dtype=torch.long, device=device)
    for i0, i1, j0, j1, block in _pair_blocks(gen, train, win_size, data_range, dtype, device, budget,
                                              stats_budget, run.progress, "ssim neighbours"):
        idx = torch.arange(j0, j1, device=device).expand(i1 - i0, -1)
        cand_v = torch.cat([best_v[i0:i1], block], 1)
        cand_i = torch.cat([best_i[i0:i1], idx], 1)
        top = cand_v.topk(k, dim=1)
        best_v[i0:i1] = top.values
        best_i[i0:i1] = cand_i.gather(1, top.indices)
    return best_v.cpu(), best_i.cpu()


def show_order(y: torch.Tensor, n: int) -> list[int]:
    """Indices of up to n images taking the classes in turn (first of each class, then second...)."""
    y = y.cpu()
    per_class = [torch.nonzero(y == c).flatten().tolist() for c in torch.unique(y).tolist()]
    order, r = [], 0
    while len(order) < min(n, len(y)):
        for lst in per_class:
            if r < len(lst) and len(order) < n:
                order.append(lst[r])
        r += 1
    return order


@register("ssim_nn", "memorization", metrics=(Metric("ssim_nn", "ssim", column="SSIM NN", tolerance=absolute(0.02), range=2.0, portable=DRIFTING,
                                        bounds=(-1.0, 1.0)),),
          settings=(*GEN_SETTINGS, "ssim_k", "ssim_n_show"), sharded=True, needs=("generated",))
def ssim_group(ctx: Context) -> dict[str, Result]:
    """SSIM of each generated image to its nearest training image (whole training split), and the
    Fig. 7 neighbour grid."""
    from bench import plots
    from bench.generation import generated

    s = ctx.settings
    if ctx.data.train_is_test:  # the nearest "training" images would be the evaluated images themselves
        return {"ssim_nn": Result.missing(f"refused: {TRAIN_IS_TEST}")}
    gen = generated(ctx)
    gx, gy = gen.x, gen.y
    gx = gx.detach().cpu()
    finite = torch.isfinite(gx.flatten(1)).all(1)
    if not finite.any():
        return {"ssim_nn": Result.missing("no finite generated images", n=len(gx), grid=GRID)}
    gx, gy = gx[finite], gy.cpu()[finite]
    train = ctx.data.train.x
    if min(train.shape[-2:]) < WIN:
        return {"ssim_nn": Result.missing(f"SSIM needs images of at least {WIN}x{WIN} (win_size {WIN}); "
                                          f"these are {tuple(train.shape[-2:])}", n=len(gx), grid=GRID)}
    k = int(s["ssim_k"])
    vals, idx = nearest_neighbours(gx, train, k, run=ctx.execution)  # torchrun: a share of the queries each
    nn = vals[:, 0].double()
    n = len(nn)
    mean, se, sd = mean_se(nn)
    details = {
        "median": nn.median().item(),
        "max": nn.max().item(),
        "min": nn.min().item(),
        "frac_above_0.9": (nn > 0.9).double().mean().item(),
        "mean_kth": vals[:, -1].double().mean().item(),
        "k": int(vals.shape[1]),
        "n_train": len(train),
        "dropped_nonfinite": int((~finite).sum()),
        "sd": sd,
        "std": STD_NOTE,
        "ssim": {"win_size": WIN, "data_range": 1.0, "gaussian_weights": False, "use_sample_covariance": True},
        "grid": GRID,  # generated(ctx) wrote it: the report finds it here
    }
    n_show = int(s.get("ssim_n_show") or 0)
    if n_show > 0:
        rows = show_order(gy, n_show)
        fig = ctx.figure("ssim_neighbours.png")
        path = fig.path
        plots.ssim_neighbours_grid(gx[rows], train[idx[rows]], vals[rows], path,
                                   title=f"Generated images (left) and their {vals.shape[1]} nearest training "
                                         f"images by SSIM ({ctx.data.name})")
        details["figure"] = fig.rel
        details["shown"] = {"generated": rows, "neighbours": idx[rows].tolist(),
                            "ssim": [[round(v, 5) for v in r] for r in vals[rows].tolist()]}
    return {"ssim_nn": Result(mean, se, n, details=details)}

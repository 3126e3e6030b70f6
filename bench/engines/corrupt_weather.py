"""Weather and digital corruptions of ``make_cifar_c.py`` on batches (snow, frost, fog, brightness,
contrast, elastic, pixelate, JPEG), in the conventions of ``corrupt_noise_blur``: float64
(N, C, H, W) on the 0..255 scale in, 0..255 out; C is 3 (RGB) or 1 (grey)."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import torch

from bench.core.errors import BenchError
from bench.engines.corrupt_noise_blur import motion
from bench.engines.corrupt_ops import (
    Stream,
    apply_rows_cols,
    clipped_zoom_matrix,
    gaussian_filter,
    pil_box_resize,
    sample_bilinear,
)

CV2_GRAY = (0.299, 0.587, 0.114)  # cv2.COLOR_RGB2GRAY, as make_cifar_c.py's snow converts
RGB2GRAY = (0.2989, 0.5870, 0.1140)  # imagecorruptions' rgb2gray, for frost on grey images
FROST_FILES = tuple(f"frost{i}.png" for i in range(1, 6))


def _grey(x: torch.Tensor, weights) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return sum(wt * x[:, i:i + 1] for i, wt in enumerate(weights))


def snow(x: torch.Tensor, rng: Stream, c: tuple) -> torch.Tensor:
    """A snow layer (normal field, clipped zoom, threshold, uint8, motion blur at -135..-45 degrees,
    rounded as its PNG) added twice (as is and turned 180 degrees) to the image blended towards
    max(x, 1.5 grey + 0.5)."""
    loc, scale, zoom, threshold, radius, sigma, blend = c
    n, _, h, w = x.shape
    layer = loc + scale * rng.normal(0, (h, w))
    layer = apply_rows_cols(layer, clipped_zoom_matrix(h, zoom), clipped_zoom_matrix(w, zoom))
    layer = torch.floor(torch.where(layer < threshold, 0.0, layer).clamp(0, 1) * 255.0)
    angle = -135.0 + 90.0 * rng.uniform(1, ())
    layer = torch.round(motion(layer[:, None], radius, sigma, angle).clamp(0, 255)) / 255.0
    x = x / 255.0
    x = blend * x + (1 - blend) * torch.maximum(x, _grey(x, CV2_GRAY) * 1.5 + 0.5)
    return (x + layer + layer.flip(-2, -1)).clamp(0, 1) * 255.0


@functools.lru_cache(maxsize=1)
def frost_textures() -> tuple[torch.Tensor, torch.Tensor]:
    """The five shipped frost textures (models/frost, RGB, already at make_cifar_c.py's 0.2x),
    zero-padded into one (5, 3, H, W) float64 tensor, and their (5, 2) sizes."""
    from PIL import Image

    from bench.inputs import zoo

    # the installed package's models/, else this source tree's (an editable install of another checkout)
    places = [zoo.models_dir() / "frost", Path(__file__).resolve().parents[2] / "models" / "frost"]
    folder = next((p for p in places if all((p / f).is_file() for f in FROST_FILES)), None)
    if folder is None:
        raise BenchError(f"frost textures {', '.join(FROST_FILES)} not found in {places[0]}")
    arrays = [np.asarray(Image.open(folder / f).convert("RGB")) for f in FROST_FILES]
    hm, wm = max(a.shape[0] for a in arrays), max(a.shape[1] for a in arrays)
    tex = torch.zeros(len(arrays), 3, hm, wm, dtype=torch.float64)
    for i, a in enumerate(arrays):
        tex[i, :, : a.shape[0], : a.shape[1]] = torch.from_numpy(a.astype(np.float64)).permute(2, 0, 1)
    return tex, torch.tensor([a.shape[:2] for a in arrays])


def frost_crops(rng: Stream, h: int, w: int) -> torch.Tensor:
    """Each image's frost: a texture drawn from the five, an HxW crop at a random corner, RGB."""
    tex, sizes = frost_textures()
    if h >= int(sizes[:, 0].min()) or w >= int(sizes[:, 1].min()):
        raise BenchError(f"frost is defined on images smaller than its textures ({int(sizes[:, 0].min())}x"
                         f"{int(sizes[:, 1].min())} at make_cifar_c.py's 0.2x), not on {h}x{w}")
    dev = rng.key.device
    tex, sizes = tex.to(dev), sizes.to(dev)
    pick = rng.integers(0, 0, len(FROST_FILES))
    top = rng.integers(1, 0, sizes[pick, 0] - h)
    left = rng.integers(2, 0, sizes[pick, 1] - w)
    rows = (top[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    return tex[pick[:, None, None, None], torch.arange(3, device=dev)[None, :, None, None], rows, cols]


def frost(x: torch.Tensor, rng: Stream, c: tuple) -> torch.Tensor:
    """a x + b frost (0..255); on grey images the frost crop in grey."""
    crop = frost_crops(rng, x.shape[2], x.shape[3])
    return (c[0] * x + c[1] * _grey(crop, RGB2GRAY) if x.shape[1] == 1 else c[0] * x + c[1] * crop).clamp(0, 255)


def plasma(rng: Stream, mapsize: int, decay: float) -> torch.Tensor:
    """Hendrycks' ``plasma_fractal`` (diamond-square) per image: (N, mapsize, mapsize) in [0, 1].
    The uniforms of step s are fields 3s (squares), 3s + 1 and 3s + 2 (the two diamond sets)."""
    a = torch.zeros(rng.n, mapsize, mapsize, dtype=torch.float64, device=rng.key.device)
    step, wibble, s = mapsize, 100.0, 0

    def wibbled(arr, field):
        return arr / 4 + wibble * (-wibble + 2 * wibble * rng.uniform(field, arr.shape[1:]))

    while step >= 2:
        h2 = step // 2
        corner = a[:, 0::step, 0::step]
        sq = corner + corner.roll(-1, 1)
        sq = sq + sq.roll(-1, 2)
        a[:, h2::step, h2::step] = wibbled(sq, 3 * s)
        dr, ul = a[:, h2::step, h2::step], a[:, 0::step, 0::step]
        a[:, 0::step, h2::step] = wibbled(dr + dr.roll(1, 1) + ul + ul.roll(-1, 2), 3 * s + 1)
        a[:, h2::step, 0::step] = wibbled(dr + dr.roll(1, 2) + ul + ul.roll(-1, 1), 3 * s + 2)
        step, wibble, s = step // 2, wibble / decay, s + 1
    a = a - a.amin((1, 2), keepdim=True)
    return a / a.amax((1, 2), keepdim=True)


def fog(x: torch.Tensor, rng: Stream, c: tuple) -> torch.Tensor:
    """x + a plasma, rescaled by max(x) / (max(x) + a); the fractal on a 32x32 map (the next power of
    two for a larger image), its top-left HxW."""
    n, _, h, w = x.shape
    size = max(32, 1 << (max(h, w) - 1).bit_length())
    x = x / 255.0
    top = x.amax((1, 2, 3), keepdim=True)
    x = x + c[0] * plasma(rng, size, c[1])[:, None, :h, :w]
    return (x * top / (top + c[0])).clamp(0, 1) * 255.0


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """skimage's ``rgb2hsv`` on (N, 3, H, W) in [0, 1], the same operations in the same order (so
    the same rounding); hue in [0, 1), and 0 with saturation 0 where the pixel is grey."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = x.amax(1)
    delta = v - x.amin(1)
    safe = torch.where(delta == 0, 1.0, delta)
    s = torch.where(delta == 0, 0.0, delta / torch.where(v == 0, 1.0, v))
    h = torch.zeros_like(v)
    h = torch.where(r == v, (g - b) / safe, h)  # later maxima win ties, as in skimage
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = torch.where(delta == 0, 0.0, torch.remainder(h / 6.0, 1.0))
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """skimage's ``hsv2rgb``: sector floor(6 h) picks (v, t, p), (q, v, p), ... of p = v (1 - s),
    q = v (1 - f s), t = v (1 - (1 - f) s)."""
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    sector = (hi.long() % 6)[:, None]
    table = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    out = torch.zeros(hsv.shape, dtype=hsv.dtype, device=hsv.device)
    for k, rgb in enumerate(table):
        out = torch.where(sector == k, torch.stack(rgb, 1), out)
    return out


def brightness(x: torch.Tensor, rng: Stream, c: float) -> torch.Tensor:
    """V + c in HSV (skimage's rgb2hsv and hsv2rgb); a grey image is x + c (V is x itself)."""
    x = x / 255.0
    if x.shape[1] == 1:
        return (x + c).clamp(0, 1) * 255.0
    hsv = rgb_to_hsv(x)
    hsv = torch.cat([hsv[:, :2], (hsv[:, 2:] + c).clamp(0, 1)], 1)
    return hsv_to_rgb(hsv).clamp(0, 1) * 255.0


def contrast(x: torch.Tensor, rng: Stream, c: float) -> torch.Tensor:
    """(x - m) c + m with m each channel's mean over the image."""
    x = x / 255.0
    m = x.mean((2, 3), keepdim=True)
    return ((x - m) * c + m).clamp(0, 1) * 255.0


def elastic_affine(rng: Stream, h: int, w: int, shift: float) -> torch.Tensor:
    """The random affine of make_cifar_c.py's elastic transform, inverted as ``cv2.warpAffine`` uses
    it (dst -> src): three points at the centre +- a third of the side, each moved uniformly within
    +- shift; (N, 2, 3) float64."""
    centre = np.float32([h, w]) // 2
    side = min(h, w) // 3
    pts1 = np.float32([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    moved = (-shift + 2 * shift * rng.uniform(0, (3, 2))).float()
    pts2 = (torch.from_numpy(pts1).to(moved) + moved).double()
    a = torch.cat([torch.from_numpy(pts1).double(), torch.ones(3, 1, dtype=torch.float64)], 1).to(pts2)
    m = torch.linalg.solve(a, pts2).transpose(1, 2)  # pts2 = M [pts1; 1]
    lin, off = m[:, :, :2], m[:, :, 2:]
    inv = torch.linalg.inv(lin)
    return torch.cat([inv, -inv @ off], 2)


def warp_affine(x: torch.Tensor, minv: torch.Tensor) -> torch.Tensor:
    """``cv2.warpAffine(x, M, (W, H), borderMode=BORDER_REFLECT_101)`` of a float image, bilinear at
    the exact source coordinates minv @ (x, y, 1), as OpenCV 4.x/5.x computes them for float images
    (OpenCV 3 rounded them to 1/32 pixel first, a shift of at most 1/64 pixel)."""
    n, _, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=torch.float64)[None, :, None]
    xs = torch.arange(w, device=x.device, dtype=torch.float64)[None, None, :]

    def coord(row):
        m = minv[:, row, :, None, None]
        return m[:, 0] * xs + m[:, 1] * ys + m[:, 2]

    return sample_bilinear(x, coord(1), coord(0), "mirror")


def elastic_transform(x: torch.Tensor, rng: Stream, c: tuple) -> torch.Tensor:
    """A random affine (``elastic_affine``), then a displacement field: uniform(-1, 1) noise smoothed
    by a Gaussian (sigma, reflect, truncate 3) times alpha, sampled bilinearly (scipy's
    ``map_coordinates(order=1, mode='reflect')``)."""
    alpha, sigma, shift = c
    n, _, h, w = x.shape
    x = warp_affine(x / 255.0, elastic_affine(rng, h, w, shift))
    dx = gaussian_filter(2 * rng.uniform(1, (h, w)) - 1, sigma, "reflect", truncate=3.0) * alpha
    dy = gaussian_filter(2 * rng.uniform(2, (h, w)) - 1, sigma, "reflect", truncate=3.0) * alpha
    ys = torch.arange(h, device=x.device, dtype=torch.float64)[None, :, None]
    xs = torch.arange(w, device=x.device, dtype=torch.float64)[None, None, :]
    return sample_bilinear(x, ys + dy.float().double(), xs + dx.float().double(), "reflect").clamp(0, 1) * 255.0


def pixelate(x: torch.Tensor, rng: Stream, c: float) -> torch.Tensor:
    """Pillow BOX down to int(c H) x int(c W), BOX back up, on the image rounded to uint8."""
    h, w = x.shape[2:]
    return pil_box_resize(pil_box_resize(torch.round(x).clamp(0, 255), int(h * c), int(w * c)), h, w)


def jpeg_compression(x: torch.Tensor, rng: Stream, quality: int) -> torch.Tensor:
    """Pillow's JPEG at ``quality`` and back, per image on the CPU (the one round trip off the
    device): RGB images as RGB, grey ones as mode L."""
    from PIL import Image

    u8 = torch.round(x).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty(u8.shape, dtype=np.uint8)
    for i, a in enumerate(u8):
        buf = io.BytesIO()
        Image.fromarray(a if a.shape[2] == 3 else a[:, :, 0], "RGB" if a.shape[2] == 3 else "L").save(
            buf, "JPEG", quality=int(quality))
        out[i] = np.asarray(Image.open(buf)).reshape(a.shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x)

"""The 15 CIFAR-10-C corruptions (bench.engines.corruptions) against independent references:
Hendrycks' make_cifar_c.py formulas computed here with numpy/scipy/skimage/OpenCV/Pillow on the same
random draws, the PyPI package imagecorruptions where its definitions coincide, scipy's Poisson
quantiles, and distribution tests where only the random stream differs; then determinism per seed
and per point, shapes, ranges and errors."""

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage, stats

from bench.core.errors import BenchError
from bench.engines import corrupt_noise_blur as nb
from bench.engines import corrupt_weather as we
from bench.engines.corrupt_ops import Stream, pil_box_resize, poisson
from bench.engines.corruptions import CORRUPTIONS, PARAMETERS, available, corrupt


def _cv2():
    return pytest.importorskip("cv2")


def _ic():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("imagecorruptions.corruptions")


def cifar_like(n=3, c=3, side=32, seed=0):
    """Smooth-ish uint8 images (k / 255) with edges, like photographs rather than white noise."""
    g = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(g.uniform(0, 255, (n, c, side, side)), (0, 0, 1.5, 1.5))
    img = np.clip((base - base.mean()) * 4 + 128, 0, 255).round().astype(np.uint8)
    return torch.from_numpy(img).double()


def hwc(t):  # (C, H, W) tensor -> (H, W, C) array
    return t.permute(1, 2, 0).numpy()


def rng_for(n=3, tag="t"):
    return Stream(0, torch.arange(n), tag)


def hendrycks_clipped_zoom(img, zoom):
    """make_cifar_c.py's clipped_zoom (square images), with scipy."""
    h = img.shape[0]
    ch = int(np.ceil(h / zoom))
    top = (h - ch) // 2
    img = ndimage.zoom(img[top:top + ch, top:top + ch], (zoom, zoom, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim:trim + h, trim:trim + h]


# ---------------------------------------------------------------- noise

def test_poisson_is_scipys_quantile_of_the_same_uniforms():
    rate = torch.tensor([0.0, 0.3, 2.0, 17.5, 60.0, 250.0, 499.0]).double().repeat(50)
    u = Stream(3, torch.arange(1), "p").uniform(0, rate.shape)[0]
    u[:7], u[7:14] = 1e-9, 1 - 1e-9  # the tails, far from the first guess
    want = stats.poisson.ppf(u.numpy(), rate.numpy())
    assert np.array_equal(poisson(rate, u).numpy(), want)


@pytest.mark.parametrize("name,severity", [("gaussian_noise", 1), ("shot_noise", 1), ("impulse_noise", 2)])
def test_noise_has_imagecorruptions_distribution(name, severity):
    """imagecorruptions draws with numpy's generator, so images differ; the distributions of a flat
    grey image's corrupted pixels must agree (its severity's parameter, here on both sides)."""
    ic = _ic()
    x = np.full((64, 64, 3), 100, dtype=np.uint8)
    np.random.seed(0)
    theirs = np.uint8(getattr(ic, name)(x, severity)).ravel()
    c = {"gaussian_noise": [.08, .12, .18, .26, .38], "shot_noise": [60, 25, 12, 5, 3],
         "impulse_noise": [.03, .06, .09, .17, .27]}[name][severity - 1]
    xt = torch.from_numpy(x).permute(2, 0, 1)[None].double()
    ours = torch.floor(getattr(nb, name)(xt, rng_for(1), c)).numpy().ravel()
    assert stats.ks_2samp(ours, theirs).pvalue > 0.01
    if name == "impulse_noise":  # salt and pepper each with probability c / 2
        for v in (0, 255):
            assert abs((ours == v).mean() - c / 2) < 4 * (c / 2 / len(ours)) ** 0.5
            assert abs((theirs == v).mean() - c / 2) < 4 * (c / 2 / len(ours)) ** 0.5
    else:
        assert abs(ours.mean() - theirs.mean()) < 0.5 and abs(ours.std() - theirs.std()) / theirs.std() < 0.03


def test_gaussian_noise_moments_at_cifar_severity():
    x = torch.full((4, 3, 32, 32), 0.5)
    d = (corrupt(x, "gaussian_noise", 5) - 0.5).double() * 255 + 0.5  # undo the truncation's mean
    assert abs(d.mean().item()) < 0.3 and abs(d.std().item() / (0.10 * 255) - 1) < 0.03


# ---------------------------------------------------------------- blur

@pytest.mark.parametrize("severity", range(1, 6))
def test_defocus_is_cv2_filter2d_with_hendrycks_disk(severity):
    cv2 = _cv2()
    ic = _ic()
    r, a = PARAMETERS["defocus_blur"][severity - 1]
    x = cifar_like()
    ours = nb.defocus_blur(x, None, (r, a))
    k = ic.disk(r, a)
    for i in range(len(x)):
        ref = np.stack([cv2.filter2D(ch / 255.0, -1, k) for ch in x[i].numpy()])
        assert np.abs(ours[i].numpy() - np.clip(ref, 0, 1) * 255).max() < 1e-3


def test_defocus_matches_imagecorruptions_at_its_parameters():
    ic = _ic()
    x = cifar_like(n=1)
    for sev, c in ((1, (3, 0.1)), (5, (10, 0.5))):
        theirs = ic.defocus_blur(hwc(x[0]).astype(np.uint8), sev)
        assert np.abs(hwc(nb.defocus_blur(x, None, c)[0]) - theirs).max() < 1e-3


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_glass_blur_batched_swaps_equal_the_sequential_loop(severity):
    """The wavefront swaps against make_cifar_c.py's pixel-by-pixel loop on the same shifts."""
    from skimage.filters import gaussian

    sigma, delta, iterations = PARAMETERS["glass_blur"][severity - 1]
    x, rng = cifar_like(), rng_for()
    ours = nb.glass_blur(x, rng, (sigma, delta, iterations))
    shifts = [nb.glass_shifts(rng, i, 32, 32) for i in range(iterations)]
    for n in range(len(x)):
        img = np.uint8(gaussian(hwc(x[n]) / 255.0, sigma=sigma, channel_axis=-1) * 255)
        for dx, dy in shifts:
            for h in range(32 - delta, delta, -1):
                for w in range(32 - delta, delta, -1):
                    hp, wp = h + int(dy[n, h, w]), w + int(dx[n, h, w])
                    img[h, w], img[hp, wp] = img[hp, wp].copy(), img[h, w].copy()
        ref = np.clip(gaussian(img / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255
        assert np.abs(hwc(ours[n]) - ref).max() < 1e-6


def test_glass_shifts_are_numpys_randint_minus_one_one():
    dx, dy = nb.glass_shifts(rng_for(4), 0, 32, 32)
    assert set(dx.unique().tolist()) == {-1, 0} and set(dy.unique().tolist()) == {-1, 0}
    assert abs(dx.double().mean().item() + 0.5) < 0.02


@pytest.mark.parametrize("severity", [1, 5])
def test_motion_blur_is_imagecorruptions_imagemagick_kernel(severity):
    """imagecorruptions' _motion_blur re-implements ImageMagick's MotionBlurImage (which
    make_cifar_c.py calls through Wand); at CIFAR's radius and sigma and the same angle."""
    ic = _ic()
    radius, sigma = PARAMETERS["motion_blur"][severity - 1]
    x = cifar_like()
    angles = torch.tensor([-44.0, 3.7, 30.2])
    ours = nb.motion(x, radius, sigma, angles)
    for i, a in enumerate(angles.tolist()):
        theirs = ic._motion_blur(hwc(x[i]), radius=radius, sigma=sigma, angle=a)
        assert np.abs(hwc(ours[i]) - theirs).max() < 1e-3


@pytest.mark.parametrize("severity", [1, 5])
def test_zoom_blur_is_hendrycks_clipped_zoom_with_scipy(severity):
    zooms = PARAMETERS["zoom_blur"][severity - 1]
    assert np.allclose(zooms, np.arange(1, [1.06, 1.11, 1.16, 1.21, 1.26][severity - 1], 0.01))
    x = cifar_like(n=2)
    ours = nb.zoom_blur(x, None, zooms)
    for i in range(2):
        img = (hwc(x[i]) / 255.0).astype(np.float32)
        out = np.zeros_like(img)
        for z in zooms:
            out += hendrycks_clipped_zoom(img, z)
        ref = np.clip((img + out) / (len(zooms) + 1), 0, 1) * 255
        assert np.abs(hwc(ours[i]) - ref).max() < 1e-3


# ---------------------------------------------------------------- weather

@pytest.mark.parametrize("severity", [1, 3, 5])
def test_snow_matches_make_cifar_c_on_the_same_draws(severity):
    cv2 = _cv2()
    ic = _ic()
    c = PARAMETERS["snow"][severity - 1]
    x, rng = cifar_like(n=2), rng_for(2)
    ours = we.snow(x, rng, c)
    field = c[0] + c[1] * rng.normal(0, (32, 32))
    angles = -135 + 90 * rng.uniform(1, ())
    for i in range(2):
        layer = hendrycks_clipped_zoom(field[i].numpy()[..., None], c[2])
        layer[layer < c[3]] = 0
        layer = (np.clip(layer.squeeze(), 0, 1) * 255).astype(np.uint8).astype(np.float64)
        layer = np.round(np.clip(ic._motion_blur(layer, c[4], c[5], float(angles[i])), 0, 255)) / 255.0
        layer = layer[..., None]
        img = (hwc(x[i]) / 255.0).astype(np.float32)
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
        img = c[6] * img + (1 - c[6]) * np.maximum(img, grey * 1.5 + 0.5)
        ref = np.clip(img + layer + np.rot90(layer, k=2), 0, 1) * 255
        assert np.abs(hwc(ours[i]) - ref).max() < 1e-3


def test_frost_crops_the_shipped_textures_as_cv2_resizes_the_originals():
    cv2 = _cv2()
    ic = _ic()
    from pathlib import Path

    files = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"]
    rng = rng_for(6)
    crops = we.frost_crops(rng, 32, 32)
    pick = rng.integers(0, 0, 5)
    tex, sizes = we.frost_textures()
    top, left = rng.integers(1, 0, sizes[pick, 0] - 32), rng.integers(2, 0, sizes[pick, 1] - 32)
    for i in range(6):
        frost = cv2.imread(str(Path(ic.__file__).parent / "frost" / files[int(pick[i])]))
        frost = cv2.resize(frost, (0, 0), fx=0.2, fy=0.2)
        t, l_ = int(top[i]), int(left[i])
        assert np.array_equal(hwc(crops[i]), frost[t:t + 32, l_:l_ + 32][..., [2, 1, 0]])
    x = cifar_like(n=6)
    a, b = PARAMETERS["frost"][4]
    assert torch.allclose(we.frost(x, rng, (a, b)), (a * x + b * crops).clamp(0, 255))


def hendrycks_plasma(uniforms, mapsize=32, wibbledecay=3):
    """make_cifar_c.py's plasma_fractal, np.random.uniform(-w, w, shape) replaced by given draws."""
    draws = iter(uniforms)
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize, wibble = mapsize, 100

    def wibbledmean(array):
        return array / 4 + wibble * (-wibble + 2 * wibble * next(draws))

    while stepsize >= 2:
        s2 = stepsize // 2
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[s2:mapsize:stepsize, s2:mapsize:stepsize] = wibbledmean(squareaccum)
        drgrid = maparray[s2:mapsize:stepsize, s2:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = drgrid + np.roll(drgrid, 1, axis=0) + ulgrid + np.roll(ulgrid, -1, axis=1)
        maparray[0:mapsize:stepsize, s2:mapsize:stepsize] = wibbledmean(ltsum)
        ttsum = drgrid + np.roll(drgrid, 1, axis=1) + ulgrid + np.roll(ulgrid, -1, axis=0)
        maparray[s2:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


@pytest.mark.parametrize("severity", [1, 5])
def test_fog_is_hendrycks_plasma_on_the_same_draws(severity):
    a, decay = PARAMETERS["fog"][severity - 1]
    x, rng = cifar_like(n=2), rng_for(2)
    ours = we.fog(x, rng, (a, decay))
    for i in range(2):
        draws, s, step = [], 0, 32
        while step >= 2:
            k = 32 // step
            draws += [rng.uniform(3 * s + j, (k, k))[i].numpy() for j in range(3)]
            s, step = s + 1, step // 2
        img = hwc(x[i]) / 255.0
        top = img.max()
        img = img + a * hendrycks_plasma(draws, 32, decay)[:32, :32][..., None]
        assert np.abs(hwc(ours[i]) - np.clip(img * top / (top + a), 0, 1) * 255).max() < 1e-6


# ---------------------------------------------------------------- digital

@pytest.mark.parametrize("severity", [1, 5])
def test_brightness_is_skimage_hsv(severity):
    from skimage import color

    c = PARAMETERS["brightness"][severity - 1]
    x = cifar_like()
    x[0, :, :4, :4] = 0  # black pixels: V = 0
    x[1, :, :4, :4] = 77  # grey pixels: S = 0
    ours = we.brightness(x, None, c)
    for i in range(len(x)):
        hsv = color.rgb2hsv(hwc(x[i]) / 255.0)
        hsv[:, :, 2] = np.clip(hsv[:, :, 2] + c, 0, 1)
        assert np.abs(hwc(ours[i]) - np.clip(color.hsv2rgb(hsv), 0, 1) * 255).max() < 1e-9


def test_brightness_and_contrast_match_imagecorruptions_at_their_parameters():
    ic = _ic()
    x = cifar_like(n=1)
    img = hwc(x[0]).astype(np.uint8)
    assert np.abs(hwc(we.brightness(x, None, 0.3)[0]) - ic.brightness(img, 3)).max() < 1e-9
    assert np.abs(hwc(we.contrast(x, None, 0.2)[0]) - ic.contrast(img, 3)).max() < 1e-9


@pytest.mark.parametrize("severity", [1, 2, 5])
def test_elastic_is_cv2_affine_then_scipy_map_coordinates(severity):
    cv2 = _cv2()
    from skimage.filters import gaussian

    alpha, sigma, shift = (v * 32 for v in PARAMETERS["elastic_transform"][severity - 1])
    x, rng = cifar_like(), rng_for()
    ours = we.elastic_transform(x, rng, (alpha, sigma, shift))
    moved = (-shift + 2 * shift * rng.uniform(0, (3, 2))).float().numpy()
    ux, uy = 2 * rng.uniform(1, (32, 32)) - 1, 2 * rng.uniform(2, (32, 32)) - 1
    centre, side = np.float32([32, 32]) // 2, 32 // 3
    pts1 = np.float32([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    worst = []
    for i in range(len(x)):
        img = (hwc(x[i]) / 255.0).astype(np.float32)
        m = cv2.getAffineTransform(pts1, pts1 + moved[i])
        img = cv2.warpAffine(img, m, (32, 32), borderMode=cv2.BORDER_REFLECT_101)
        dx = (gaussian(ux[i].numpy(), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)[..., None]
        dy = (gaussian(uy[i].numpy(), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)[..., None]
        xx, yy, zz = np.meshgrid(np.arange(32), np.arange(32), np.arange(3))
        idx = np.reshape(yy + dy, (-1, 1)), np.reshape(xx + dx, (-1, 1)), np.reshape(zz, (-1, 1))
        ref = np.clip(ndimage.map_coordinates(img, idx, order=1, mode="reflect").reshape(img.shape), 0, 1) * 255
        worst.append(np.abs(hwc(ours[i]) - ref).max())
    assert max(worst) < 1e-3


@pytest.mark.parametrize("severity", range(1, 6))
def test_pixelate_is_pillow_box_box(severity):
    c = PARAMETERS["pixelate"][severity - 1]
    x = cifar_like(n=2)
    ours = we.pixelate(x, None, c)
    for i in range(2):
        im = Image.fromarray(hwc(x[i]).astype(np.uint8))
        ref = im.resize((int(32 * c), int(32 * c)), Image.BOX).resize((32, 32), Image.BOX)
        assert np.array_equal(hwc(ours[i]), np.asarray(ref).astype(np.float64))


def test_pillow_box_resize_on_odd_sizes():
    x = cifar_like(n=1, c=1, side=28)
    for h, w in ((19, 23), (7, 5), (40, 33)):
        ref = Image.fromarray(x[0, 0].numpy().astype(np.uint8)).resize((w, h), Image.BOX)
        assert np.array_equal(pil_box_resize(x, h, w)[0, 0].numpy(), np.asarray(ref).astype(np.float64))


@pytest.mark.parametrize("severity", [1, 5])
def test_jpeg_is_pillow_at_the_official_quality(severity):
    q = PARAMETERS["jpeg_compression"][severity - 1]
    x = cifar_like(n=2)
    ours = we.jpeg_compression(x, None, q)
    for i in range(2):
        buf = io.BytesIO()
        Image.fromarray(hwc(x[i]).astype(np.uint8)).save(buf, "JPEG", quality=q)
        assert np.array_equal(hwc(ours[i]), np.asarray(Image.open(buf)).astype(np.float64))


# ---------------------------------------------------------------- the public function

def _official_uint8(name, img, c):
    """np.uint8 of make_cifar_c.py's deterministic corruptions, on an (H, W, 3) uint8 array."""
    from skimage import color

    a = img / 255.0
    if name == "zoom_blur":
        a, out = a.astype(np.float32), np.zeros(img.shape, np.float32)
        for z in c:
            out += hendrycks_clipped_zoom(a, z)
        return np.uint8(np.clip((a + out) / (len(c) + 1), 0, 1) * 255)
    if name == "brightness":
        hsv = color.rgb2hsv(a)
        hsv[:, :, 2] = np.clip(hsv[:, :, 2] + c, 0, 1)
        return np.uint8(np.clip(color.hsv2rgb(hsv), 0, 1) * 255)
    if name == "contrast":
        m = a.mean((0, 1), keepdims=True)
        return np.uint8(np.clip((a - m) * c + m, 0, 1) * 255)
    im = Image.fromarray(img)
    if name == "pixelate":
        return np.asarray(im.resize((int(32 * c),) * 2, Image.BOX).resize((32, 32), Image.BOX))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=c)
    return np.asarray(Image.open(buf))


@pytest.mark.parametrize("name", ["zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"])
def test_deterministic_corruptions_give_the_official_uint8_images(name):
    """corrupt() on float32 images read from uint8, end to end, against np.uint8 of the official
    code's result: the same images, bit for bit."""
    x = cifar_like(n=4, seed=7)
    for severity in (1, 3, 5):
        ours = torch.round(corrupt(x.float() / 255, name, severity).double() * 255)
        for i in range(len(x)):
            want = _official_uint8(name, hwc(x[i]).astype(np.uint8), PARAMETERS[name][severity - 1])
            assert np.array_equal(hwc(ours[i]), want.astype(np.float64)), (name, severity)



def test_a_point_is_corrupted_the_same_in_any_batch_and_dtype():
    x = cifar_like(n=6).float() / 255
    for name in CORRUPTIONS:
        whole = corrupt(x, name, 3, seed=5)
        part = corrupt(x[[4, 1]], name, 3, seed=5, index=torch.tensor([4, 1]))
        assert torch.equal(part, whole[[4, 1]]), name
        assert torch.equal(corrupt(x.double(), name, 3, seed=5).float(), whole), name


def test_the_documented_examples_run():
    import doctest

    from bench.engines import corruptions

    assert doctest.testmod(corruptions).failed == 0


def test_seeds_and_points_draw_differently():
    x = torch.full((2, 3, 32, 32), 0.5)
    a, b = corrupt(x, "gaussian_noise", 2, seed=0), corrupt(x, "gaussian_noise", 2, seed=1)
    assert not torch.equal(a, b) and not torch.equal(a[0], a[1])


@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (3, 1, 28, 28), (3, 1, 8, 8)])
def test_every_corruption_keeps_shape_range_and_grid(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    names = available(shape[1:])
    assert ("glass_blur" in names) == (shape[-1] != 8) and len(names) >= 14
    for name in names:
        for severity in (1, 5):
            y = corrupt(x, name, severity)
            assert y.shape == x.shape and y.dtype == x.dtype and 0 <= y.min() and y.max() <= 1, name
            assert (torch.round(y.double() * 255) - y.double() * 255).abs().max() < 1e-4, name  # k / 255


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_device_changes_no_draw():
    """The draws are integer hashes, the same on any device; float kernels differ in rounding only,
    so at most a pixel here and there moves by one step of the uint8 grid."""
    x = cifar_like(n=4).float() / 255
    for name in CORRUPTIONS:
        a, b = corrupt(x, name, 4, seed=2), corrupt(x.cuda(), name, 4, seed=2).cpu()
        assert b.device.type == "cpu" and (a - b).abs().max() <= 1 / 255 + 1e-6, name
        assert (a != b).double().mean() < 0.01, name


def test_small_images_run_spatial_corruptions_on_upsampled_blocks():
    """8x8: the image as 4x4 blocks at 32x32, corrupted there, blocks averaged back."""
    x = cifar_like(n=2, c=1, side=8).float() / 255
    up = x.repeat_interleave(4, 2).repeat_interleave(4, 3)
    want = torch.nn.functional.avg_pool2d(corrupt(up, "zoom_blur", 4).double(), 4)
    got = corrupt(x, "zoom_blur", 4).double()
    assert (got - want).abs().max() <= 1 / 255 + 1e-6  # each side truncated to the uint8 grid once


def test_increasing_severity_moves_images_further():
    x = cifar_like(n=4).float() / 255
    for name in ("gaussian_noise", "defocus_blur", "contrast", "pixelate", "jpeg_compression", "fog"):
        d = [(corrupt(x, name, s) - x).abs().mean().item() for s in (1, 5)]
        assert d[1] > d[0], name


@pytest.mark.parametrize("bad,message", [
    (dict(name="blur"), "unknown corruption 'blur'"),
    (dict(severity=0), "severity must be an integer from 1 to 5"),
    (dict(severity=2.0), "severity must be an integer from 1 to 5"),
    (dict(images=torch.rand(2, 2, 32, 32)), "C = 1 or 3"),
    (dict(images=torch.rand(2, 3, 32, 32) * 2), "images in [0, 1]"),
    (dict(images=torch.rand(2, 1, 8, 8), name="glass_blur"), "glass_blur is not defined on 8x8"),
    (dict(index=torch.arange(3)), "index has 3 entries for 2 images"),
    (dict(images=torch.rand(1, 3, 64, 64), name="frost"), "frost is defined on images smaller than its textures"),
])
def test_bad_input_is_one_clear_error(bad, message):
    args = dict(images=torch.rand(2, 3, 32, 32), name="fog", severity=1) | bad
    with pytest.raises(BenchError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        corrupt(**args)

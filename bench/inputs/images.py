"""Image files: the one reader of image folders, used by ``folder:`` data sets (``bench.inputs.data``),
``--ood folder:`` sets (``bench.inputs.ood_data``) and ``bench samples`` (``bench.pipeline.samples_command``).

Every image becomes an 8-bit array, (H, W) grey or (H, W, 3) RGB, by its mode:

    L, RGB          as stored
    1               grey (0 or 255)
    P (palette)     looked up in its palette: grey when every palette entry is grey, else RGB
    CMYK, YCbCr     RGB
    LA, RGBA, PA    refused by name (so is a palette with transparency): an alpha channel has no place in a classifier's input
    anything else   (16-bit or float modes, I;16, I, F) refused by name

Broken symbolic links in a folder are skipped, counted and reported as one warning line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.core.errors import BenchError

ALPHA_MODES = ("LA", "RGBA", "PA", "La", "RGBa")
TO_RGB = ("CMYK", "YCbCr", "RGBX", "HSV", "LAB")


def image_files(folder: Path, suffixes: tuple[str, ...] | None = None, recursive: bool = False
                ) -> tuple[list[Path], int]:
    """(the files under ``folder``, sorted, with one of ``suffixes`` (any when None), the number
    of broken symbolic links among the candidates), one level or ``recursive``."""
    entries = sorted(folder.rglob("*") if recursive else folder.iterdir())
    keep = [p for p in entries if suffixes is None or p.suffix.lower() in suffixes]
    broken = sum(1 for p in keep if p.is_symlink() and not p.exists())
    return [p for p in keep if p.is_file()], broken


def warn_broken(where, broken: int) -> None:
    if broken:
        from bench.core import progress

        progress.say(f"warning: {where}: skipped {broken} broken symbolic link{'s' if broken != 1 else ''} "
                     "(their targets are missing)")


def to_array(im, where) -> np.ndarray:
    """One PIL image -> (H, W) or (H, W, 3) uint8 (module docstring); a one-line error otherwise."""
    mode = im.mode
    if mode == "P" and "transparency" in im.info:
        mode = "P with transparency"
    if mode in ALPHA_MODES or mode == "P with transparency":
        raise BenchError(f"{where}: image has an alpha channel (mode {mode}); save it without alpha, as "
                         "grey (L) or RGB")
    if mode == "1":
        im = im.convert("L")
    elif mode == "P":
        palette = np.asarray(im.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
        grey = bool((palette[:, :1] == palette).all())
        im = im.convert("L" if grey else "RGB")
    elif mode in TO_RGB:
        im = im.convert("RGB")
    elif mode not in ("L", "RGB"):
        raise BenchError(f"{where}: image mode {mode} is not supported; save 8-bit grey (L), RGB or palette "
                         "images")
    return np.asarray(im)


def read_image(path: Path) -> np.ndarray:
    """One image file -> (H, W) or (H, W, 3) uint8; an unreadable file is a one-line error."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return to_array(im, path)
    except BenchError:
        raise
    except Exception as e:
        raise BenchError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None


def read_images(files: list[Path], where) -> np.ndarray:
    """Images of one size and kind stacked: (N, H, W) grey or (N, H, W, 3) RGB uint8."""
    arrays = [read_image(f) for f in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise BenchError(f"{where}: images differ in size or mode {sorted(shapes)[:3]}")
    return np.stack(arrays)

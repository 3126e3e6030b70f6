"""Writes models/frost/frost{1..5}.png, the frost textures ``bench.engines.corruptions`` overlays.

Hendrycks' ``make_cifar_c.py`` reads frost1..frost6 (it draws from the first five only), shrinks
each with ``cv2.resize(frost, (0, 0), fx=0.2, fy=0.2)`` (bilinear) and crops 32x32 from it.  This
script does that shrink once, on the same images as the PyPI package ``imagecorruptions`` ships
them (Apache-2.0, the images of github.com/hendrycks/robustness, also Apache-2.0), and stores the
uint8 result losslessly as PNG, RGB order: the shipped textures are exactly what the official
code crops from.  Needs ``pip install imagecorruptions opencv-python``.

    python tools/make_frost_textures.py
"""

from pathlib import Path

import cv2
import imagecorruptions

SRC = Path(imagecorruptions.__file__).parent / "frost"
OUT = Path(__file__).resolve().parents[1] / "models" / "frost"
FILES = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(FILES, 1):
        bgr = cv2.resize(cv2.imread(str(SRC / name)), (0, 0), fx=0.2, fy=0.2)
        cv2.imwrite(str(OUT / f"frost{i}.png"), bgr)  # cv2 writes BGR arrays as RGB PNGs
        print(OUT / f"frost{i}.png", bgr.shape)


if __name__ == "__main__":
    main()

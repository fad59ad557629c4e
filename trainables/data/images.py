"""What every reader of image files shares: which files are images, how one is opened, and the
error a data problem raises.

The bottom of the data side. `folder_walk` (listing a class folder), `image_cache` (decoding
once) and `data` (scan, split, load) all import from here and nothing here imports them, so
their imports go one way. `open_rgb` is the one decoder: training, the cache and prediction
see the same pixels for the same file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DataError(ValueError):
    """A data problem the user must fix; the message names the folder, class or file."""


def open_rgb(path: str | Path, size: int):
    """Any image as a size×size RGB PIL image, upright: EXIF orientation applied (phone photos),
    16-bit scaled to 8, grayscale/palette/CMYK converted, alpha laid on white, first frame of
    an animation."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # huge JPEGs decode at reduced scale, never at full size
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit PNG/TIFF: 0..65535, not 0..255
            arr = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(arr / 257.0, 0, 255).round().astype(np.uint8), "L")
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(canvas, im)
        return im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)

"""Reading image files for the folder-based data modules (faces, images): PIL in, uint8 arrays out.

:func:`to_rgb` is the one conversion of any PIL mode to 8-bit RGB that every data path uses (these
modules and ``laion``'s shards), so a 16-bit, palette, CMYK or transparent image reads alike everywhere.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from latentbench.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".pgm", ".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
Color = Literal["grayscale", "rgb"]
PIL_MODES = {"grayscale": "L", "rgb": "RGB"}
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
WHITE = (255, 255, 255, 255)


def image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def open_image(path: Path) -> Image.Image:
    """Open and fully decode ``path``; a missing, truncated or non-image file is a one-line ConfigError."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ConfigError(f"{path}: cannot read as an image ({type(error).__name__}: {error})") from None


def deep_grey_to_l(image: Image.Image) -> Image.Image:
    """A 16-bit (``I;16*``), 32-bit integer (``I``) or float (``F``) grey image as 8-bit ``L`` in [0, 255].

    16-bit values are divided by 257 (0 -> 0, 32768 -> 128, 65535 -> 255; PIL's own conversion clips
    them at 255, turning most 16-bit pictures white). ``I`` images whose values lie in [0, 65535]
    are 16-bit data (how older Pillows open 16-bit PNGs) and are scaled the same way; ``F`` images
    in [0, 1] are multiplied by 255. Any other ``I``/``F`` image has no standard white, so its own
    range is stretched to [0, 255] (min -> 0, max -> 255; a constant image becomes 0).
    """
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and 0 <= lo and hi <= 65535):
        values = values / 257
    elif image.mode == "F" and 0 <= lo and hi <= 1:
        values = values * 255
    else:
        values = (values - lo) * (255 / (hi - lo) if hi > lo else 0.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit ``RGB`` (3 channels, [0, 255]), the model's input.

    - ``I;16``/``I;16B``/``I``/``F`` (16-bit, 32-bit, float grey): scaled to 8 bits by
      :func:`deep_grey_to_l`, then grey in all three channels.
    - Transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, and ``P``/``L``/``RGB`` with a transparent
      colour): composited onto a **white** background, so a fully transparent pixel reads (255, 255, 255).
    - ``P`` (palette), ``CMYK`` (e.g. CMYK JPEGs; PIL's plain formula, no ICC profile), ``L``, ``1``
      (bilevel: 0 or 255), ``YCbCr``, ``HSV``: PIL's ``convert("RGB")``.
    """
    if image.mode in (*SIXTEEN_BIT_MODES, "I", "F"):
        image = deep_grey_to_l(image)
    if {"A", "a"} & set(image.getbands()) or "transparency" in image.info:
        return Image.alpha_composite(Image.new("RGBA", image.size, WHITE), image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def to_array(image: Image.Image, color: Color, size: int, crop: bool) -> np.ndarray:
    """``PIL image -> uint8 (C, size, size)``, C = 1 (grayscale) or 3 (rgb), any mode (see :func:`to_rgb`).

    ``crop``: centre-crop to a square before resizing (keeps the aspect ratio); otherwise the
    whole image is resized (faces stay whole, slightly stretched when not square).
    """
    image = to_rgb(image).convert(PIL_MODES[color])  # to_rgb: every mode alike; RGB -> L is exact for grey
    if image.size != (size, size):
        if crop:
            image = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
        else:
            image = image.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def images_to_arrays(images: list[Image.Image], color: Color, size: int, crop: bool, source: str) -> np.ndarray:
    """Convert a list of PIL images to one uint8 ``(N, C, size, size)`` array, logging what was
    converted (modes) and resized (sizes), so mixed inputs are never silently changed."""
    sizes = Counter(image.size for image in images)
    modes = Counter(image.mode for image in images)
    target_mode = PIL_MODES[color]
    if set(sizes) != {(size, size)}:
        described = ", ".join(f"{n} of {w}x{h}" for (w, h), n in sizes.most_common(5))
        log.info("%s: resized %d images (%s) to %dx%d%s", source, len(images), described, size, size,
                 " after a centre crop" if crop else "")
    if set(modes) != {target_mode}:
        described = ", ".join(f"{n} {mode}" for mode, n in modes.most_common())
        log.info("%s: converted image modes (%s) to %s", source, described, target_mode)
    return np.stack([to_array(image, color, size, crop) for image in images])

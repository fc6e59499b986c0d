"""Reading image files for the folder-based data modules (faces, images): PIL in, uint8 arrays out."""

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


def to_array(image: Image.Image, color: Color, size: int, crop: bool) -> np.ndarray:
    """``PIL image -> uint8 (C, size, size)``, C = 1 (grayscale) or 3 (rgb).

    ``crop``: centre-crop to a square before resizing (keeps the aspect ratio); otherwise the
    whole image is resized (faces stay whole, slightly stretched when not square).
    """
    image = image.convert(PIL_MODES[color])
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

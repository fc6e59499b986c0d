"""``shapes``: an embedded procedural image-caption set, no download, captions exactly verifiable.

Every example is one filled shape on a plain background, drawn from a seed::

    caption: "a large red circle on a blue background, top left"
    label:   index of the shape in SHAPES (0 = circle, ...)

The shape's colour, background colour (always a different one), size and position (a 3x3 grid
of named places with a little jitter) are drawn independently, so a caption names everything
that is in the picture and nothing else. The pixel at the shape's centre always has the shape's
colour (no anti-aliasing), which the tests check.
"""

from __future__ import annotations

import numpy as np
from typing import Literal

from datasets import DatasetDict
from PIL import Image, ImageDraw

from latentbench.data.image_text import CaptionedImageDataModule, captioned_dataset

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
}
# place name -> (row, column) in a 3x3 grid
POSITIONS = {
    "top left": (0, 0), "top": (0, 1), "top right": (0, 2),
    "left": (1, 0), "centre": (1, 1), "right": (1, 2),
    "bottom left": (2, 0), "bottom": (2, 1), "bottom right": (2, 2),
}
# size name -> half-extent of the shape as a fraction of the image size
SIZES = {"small": 0.09, "large": 0.15}
SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}
# what ``label`` holds (label_by) -> the names of its classes
LABEL_CLASSES = {"shape": SHAPES, "colour": tuple(COLOURS), "background": tuple(COLOURS),
                 "position": tuple(POSITIONS), "size": tuple(SIZES)}


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices of ``shape`` centred at ``(cx, cy)`` with half-extent ``r`` (None for the circle)."""
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":  # apex up; the centre lies inside, between apex and base
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "cross":
        t = r / 3
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                (cx - r, cy - t), (cx - t, cy - t)]
    return None


def render_shape(shape: str, colour: str, background: str, position: str, size: str, image_size: int,
                 jitter: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, tuple[int, int]]:
    """Draw one example; returns the uint8 image ``(3, S, S)`` and the shape's centre pixel ``(x, y)``.

    ``jitter`` (fractions of a grid cell, each in [-0.5, 0.5]) moves the centre within its cell so
    the shape stays inside the image.
    """
    s = image_size
    r = SIZES[size] * s
    row, col = POSITIONS[position]
    cell = s / 3
    margin = max(0.0, cell / 2 - r)  # how far the centre may move and keep the shape in the image
    cx = int(round((col + 0.5) * cell + jitter[0] * 2 * margin))
    cy = int(round((row + 0.5) * cell + jitter[1] * 2 * margin))
    cx = min(max(cx, int(np.ceil(r))), s - 1 - int(np.ceil(r)))
    cy = min(max(cy, int(np.ceil(r))), s - 1 - int(np.ceil(r)))
    image = Image.new("RGB", (s, s), COLOURS[background])
    draw = ImageDraw.Draw(image)
    fill = COLOURS[colour]
    polygon = shape_polygon(shape, cx, cy, r)
    if polygon is None:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(polygon, fill=fill)
    image.putpixel((cx, cy), fill)  # a tiny shape at low resolution still shows its colour at the centre
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy(), (cx, cy)


def caption_for(shape: str, colour: str, background: str, position: str, size: str) -> str:
    """``"a large red circle on a blue background, top left"``."""
    return f"a {size} {colour} {shape} on a {background} background, {position}"


def generate_shapes(count: int, image_size: int, seed: int) -> dict[str, np.ndarray | list]:
    """``count`` examples drawn from ``seed``: ``image`` uint8 ``(N, 3, S, S)``, ``label`` int64 ``(N,)``,
    ``caption`` list of str, and the drawn attributes (``colour``, ``background``, ``position``,
    ``size``, ``centre`` (N, 2) as x, y) for checks."""
    rng = np.random.default_rng(seed)
    colours, positions, sizes = list(COLOURS), list(POSITIONS), list(SIZES)
    images = np.empty((count, 3, image_size, image_size), dtype=np.uint8)
    out: dict[str, list] = {"label": [], "caption": [], "colour": [], "background": [], "position": [], "size": [], "centre": []}
    for i in range(count):
        label = int(rng.integers(len(SHAPES)))
        fg = int(rng.integers(len(colours)))
        bg = (fg + 1 + int(rng.integers(len(colours) - 1))) % len(colours)  # any colour but the shape's
        position = positions[int(rng.integers(len(positions)))]
        size = sizes[int(rng.integers(len(sizes)))]
        jitter = tuple(rng.uniform(-0.5, 0.5, size=2))
        images[i], centre = render_shape(SHAPES[label], colours[fg], colours[bg], position, size, image_size, jitter)
        for key, value in (("label", label), ("caption", caption_for(SHAPES[label], colours[fg], colours[bg], position, size)),
                           ("colour", colours[fg]), ("background", colours[bg]), ("position", position),
                           ("size", size), ("centre", centre)):
            out[key].append(value)
    return {"image": images, **{k: np.asarray(v) if k in ("label", "centre") else v for k, v in out.items()}}


def zero_shot_templates(label_by: str) -> list[str]:
    """Caption-like prompts with ``{}`` in the place of the ``label_by`` class, over the other
    attributes (averaged by zero-shot classification: prompt ensembling)."""
    if label_by == "shape":
        return [f"a {size} {colour} {{}}" for size in SIZES for colour in COLOURS]
    if label_by == "colour":
        return [f"a {size} {{}} {shape}" for size in SIZES for shape in SHAPES]
    if label_by == "background":
        return [f"a {size} {colour} {shape} on a {{}} background" for size in SIZES for colour in COLOURS for shape in SHAPES]
    if label_by == "size":
        return [f"a {{}} {colour} {shape}" for colour in COLOURS for shape in SHAPES]
    return [f"a {colour} {shape} on a {background} background, {{}}" for colour in COLOURS for shape in SHAPES
            for background in COLOURS if background != colour]


class ShapesDataModule(CaptionedImageDataModule):
    """Procedural shapes with exact captions; labels are shape classes (see ``class_names``).

    Args:
        num_train (`int`): training examples.
        num_val (`int`): validation examples (drawn separately, not carved out of train).
        num_test (`int`): test examples.
        image_size (`int`): side S of the square RGB images ``(3, S, S)``; at least 16.
        seed (`int`): seed of the whole set; the same seed gives the same images and captions.
        label_by (`str`): what ``label`` is the class index of: ``shape`` (default), ``colour``
            (of the shape), ``background``, ``position`` or ``size``; ``class_names`` follow.
        caption_dropout (`float`): probability that a training caption is replaced by ``""``
            (classifier-free guidance training); validation and test captions are never dropped.
        **kwargs: see :class:`~latentbench.data.base.ImageDataModule` (``val_size`` is unused).

    Batches: ``{"image": (B, 3, S, S) float in [0, 1], "label": (B,) int64, "caption": list[str]}``.
    """

    def __init__(self, num_train: int = 10000, num_val: int = 1000, num_test: int = 1000, image_size: int = 64,
                 seed: int = 0, label_by: Literal["shape", "colour", "background", "position", "size"] = "shape",
                 caption_dropout: float = 0.0, **kwargs):
        super().__init__(caption_dropout=caption_dropout, **kwargs)
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {value}")
        if image_size < 16:
            raise ValueError(f"image_size: must be at least 16 pixels, got {image_size}")
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        if label_by not in LABEL_CLASSES:
            raise ValueError(f"label_by: must be one of {', '.join(LABEL_CLASSES)}, got {label_by!r}")
        self.image_size, self.seed, self.label_by = image_size, seed, label_by

    @property
    def source_image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int:
        return len(LABEL_CLASSES[self.label_by])

    @property
    def class_names(self) -> list[str]:
        return list(LABEL_CLASSES[self.label_by])

    @property
    def zero_shot_templates(self) -> list[str]:
        """Prompts for zero-shot classification of ``label``, phrased like the captions."""
        return zero_shot_templates(self.label_by)

    def load_splits(self) -> DatasetDict:
        splits = {}
        for name, count in self.counts.items():
            if self.limit is not None:
                count = min(count, self.limit)  # draw no more than will be used
            data = generate_shapes(count, self.image_size, self.seed * 3 + SPLIT_OFFSETS[name])
            if self.label_by == "shape":
                labels = data["label"]
            else:
                labels = np.asarray([LABEL_CLASSES[self.label_by].index(v) for v in data[self.label_by]])
            splits[name] = captioned_dataset(data["image"], labels, data["caption"])
        return DatasetDict(splits)

"""Corruptions of the model input: the data adds ``batch["input"]``, the target ``batch["image"]`` stays clean.

Every corruption maps images ``(B, C, H, W)`` in [0, 1] to the same shape and range (``Grayscale``
gives ``C = 1``), drawing its randomness from an optional ``torch.Generator``. The data modules
call :func:`corrupt_batch`: training batches get fresh noise from the global RNG (seeded by the
run's ``seed``), validation and test batches get noise seeded by the example's index, so every run
(and every loader) sees exactly the same corrupted evaluation inputs.

Picked with the ``corruption`` config group: ``corruption=masking corruption.fraction=0.5``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

# Seeds of the evaluation splits lie far apart, so that val example i and test example i differ.
SPLIT_SEED_OFFSETS = {"val": 1_000_003, "test": 2_000_006}


class Corruption:
    """Base: ``corruption(images, generator) -> corrupted``, ``(B, C, H, W) -> (B, C', H, W)`` in [0, 1]."""

    random = True  # False for deterministic corruptions (no generator needed)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _check_fraction(name: str, value: float, low_open: bool = True) -> None:
    if not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
        raise ValueError(f"{name}: must lie in {'(0, 1]' if low_open else '[0, 1]'}, got {value}")


def _uniform(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


class GaussianNoise(Corruption):
    """Additive white noise ``x + sigma * N(0, 1)``, clipped to [0, 1] when ``clip``.

    Args:
        sigma (`float`): standard deviation of the noise, in pixel units (images in [0, 1]).
        clip (`bool`): clip the noisy image back to [0, 1].
    """

    def __init__(self, sigma: float = 0.3, clip: bool = True):
        if sigma <= 0:
            raise ValueError(f"sigma: must be positive, got {sigma}")
        self.sigma, self.clip = sigma, clip

    def __call__(self, images, generator=None):
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        noisy = images + self.sigma * noise
        return noisy.clamp(0.0, 1.0) if self.clip else noisy


class Masking(Corruption):
    """Masking noise of Vincent et al. 2010: a random ``fraction`` of the pixels set to zero
    (all channels of a chosen pixel together).

    Args:
        fraction (`float`): probability that a pixel is zeroed, in [0, 1]; 0 zeroes none (the plain
            autoencoder's input: the baseline row of a masking-level sweep).
    """

    def __init__(self, fraction: float = 0.25):
        _check_fraction("fraction", fraction, low_open=False)
        self.fraction = fraction

    def __call__(self, images, generator=None):
        b, _, h, w = images.shape
        keep = _uniform((b, 1, h, w), images, generator) >= self.fraction
        return images * keep


class SaltPepper(Corruption):
    """Salt-and-pepper noise: a random ``fraction`` of the pixels set to 0 or 1 (equally likely).

    Args:
        fraction (`float`): probability that a pixel is replaced, in (0, 1].
    """

    def __init__(self, fraction: float = 0.1):
        _check_fraction("fraction", fraction)
        self.fraction = fraction

    def __call__(self, images, generator=None):
        b, _, h, w = images.shape
        hit = _uniform((b, 1, h, w), images, generator) < self.fraction
        salt = (_uniform((b, 1, h, w), images, generator) < 0.5).to(images.dtype)
        return torch.where(hit, salt.expand_as(images), images)


Shape = Literal["rectangle", "line", "blob"]


class Occlusion(Corruption):
    """Obstacles: random filled rectangles, thick lines or elliptic blobs painted over the image
    until they cover at least ``coverage`` of its pixels.

    Each shape's size is drawn relative to the image (rectangles and blobs span 10-40 % of a side,
    lines are 5-10 % thick), so ``coverage`` means the same at every resolution; the last shape may
    overshoot it by at most one shape's area.

    Args:
        coverage (`float`): share of the pixels to cover, in (0, 1].
        shapes (`list[str]`): kinds of obstacle to draw from: ``rectangle``, ``line``, ``blob``.
        fill (`float`, *optional*): grey value of the obstacles; null draws a random grey per shape.
        max_shapes (`int`): stop after this many shapes even if ``coverage`` is not reached.
    """

    def __init__(self, coverage: float = 0.2, shapes: list[Shape] = ("rectangle", "line", "blob"),
                 fill: float | None = None, max_shapes: int = 64):
        _check_fraction("coverage", coverage)
        shapes = list(shapes)
        if not shapes or any(s not in ("rectangle", "line", "blob") for s in shapes):
            raise ValueError(f"shapes: a non-empty list of rectangle, line, blob; got {shapes}")
        if fill is not None and not 0.0 <= fill <= 1.0:
            raise ValueError(f"fill: must lie in [0, 1] or be null (random grey), got {fill}")
        if max_shapes <= 0:
            raise ValueError(f"max_shapes: must be positive, got {max_shapes}")
        self.coverage, self.shapes, self.fill, self.max_shapes = coverage, shapes, fill, max_shapes

    def _shape_mask(self, kind: str, ys: torch.Tensor, xs: torch.Tensor, h: int, w: int, generator) -> torch.Tensor:
        """Boolean ``(H, W)`` mask of one random shape; ``ys``, ``xs`` are pixel-centre grids in [0, 1]."""
        r = torch.rand(6, generator=generator, device=ys.device).tolist()
        if kind == "rectangle":
            height, width = 0.1 + 0.3 * r[0], 0.1 + 0.3 * r[1]
            top, left = r[2] * (1 - height), r[3] * (1 - width)
            return (ys >= top) & (ys < top + height) & (xs >= left) & (xs < left + width)
        if kind == "blob":
            ry, rx = 0.05 + 0.15 * r[0], 0.05 + 0.15 * r[1]
            cy, cx = r[2], r[3]
            return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0
        # a thick segment between two random points: pixels closer to it than half the thickness
        thickness = max(0.05 + 0.05 * r[0], 1.5 / min(h, w))
        y0, x0, y1, x1 = r[1], r[2], r[3], r[4]
        dy, dx = y1 - y0, x1 - x0
        t = (((ys - y0) * dy + (xs - x0) * dx) / max(dy * dy + dx * dx, 1e-8)).clamp(0.0, 1.0)
        return (ys - (y0 + t * dy)) ** 2 + (xs - (x0 + t * dx)) ** 2 <= (thickness / 2) ** 2

    def obstacle_masks(self, b: int, h: int, w: int, device, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 1, H, W)`` boolean covered pixels and ``(B, 1, H, W)`` fill values."""
        ys = ((torch.arange(h, device=device) + 0.5) / h)[:, None].expand(h, w)
        xs = ((torch.arange(w, device=device) + 0.5) / w)[None, :].expand(h, w)
        covered = torch.zeros(b, 1, h, w, dtype=torch.bool, device=device)
        values = torch.zeros(b, 1, h, w, device=device)
        for i in range(b):
            for _ in range(self.max_shapes):
                if covered[i].float().mean() >= self.coverage:
                    break
                pick = int(torch.randint(len(self.shapes), (1,), generator=generator, device=device))
                mask = self._shape_mask(self.shapes[pick], ys, xs, h, w, generator)
                value = self.fill if self.fill is not None else float(torch.rand(1, generator=generator, device=device))
                values[i, 0][mask] = value
                covered[i, 0] |= mask
        return covered, values

    def __call__(self, images, generator=None):
        b, _, h, w = images.shape
        covered, values = self.obstacle_masks(b, h, w, images.device, generator)
        return torch.where(covered, values.to(images.dtype).expand_as(images), images)


class Downsample(Corruption):
    """Low resolution: area-downsample by ``factor``, then upsample back to full size, so the model
    learns super-resolution (input and target have the same shape).

    Args:
        factor (`int`): downsampling factor (2 turns 28x28 into 14x14).
        upsample_mode (`str`): how the small image is brought back: ``nearest``, ``bilinear`` or ``bicubic``.
    """

    random = False

    def __init__(self, factor: int = 2, upsample_mode: Literal["nearest", "bilinear", "bicubic"] = "bilinear"):
        if factor < 2:
            raise ValueError(f"factor: must be an integer >= 2, got {factor}")
        if upsample_mode not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(f"upsample_mode: must be nearest, bilinear or bicubic, got {upsample_mode!r}")
        self.factor, self.upsample_mode = factor, upsample_mode

    def __call__(self, images, generator=None):
        h, w = images.shape[-2:]
        small = F.interpolate(images, size=(max(1, math.ceil(h / self.factor)), max(1, math.ceil(w / self.factor))),
                              mode="area")
        kwargs = {} if self.upsample_mode == "nearest" else {"align_corners": False}
        return F.interpolate(small, size=(h, w), mode=self.upsample_mode, **kwargs).clamp(0.0, 1.0)


class Grayscale(Corruption):
    """Colour -> grey: ``(B, 3, H, W) -> (B, 1, H, W)`` Rec. 601 luma (kornia's ``rgb_to_grayscale``,
    the same weights as the Y of ``rgb_to_ycbcr``); grey images pass unchanged. The colorizer's input."""

    random = False

    def __call__(self, images, generator=None):
        if images.shape[1] == 1:
            return images
        if images.shape[1] != 3:
            raise ValueError(f"grayscale: expected 1 or 3 channels, got {images.shape[1]}")
        from kornia.color import rgb_to_grayscale

        return rgb_to_grayscale(images)


class Compose(Corruption):
    """Several corruptions one after the other, e.g. downsample then gaussian noise.

    Args:
        steps (`list`): corruption objects (``_target_`` configs), applied in order.
    """

    def __init__(self, steps: list):
        if not steps:
            raise ValueError("steps: needs at least one corruption")
        self.steps = list(steps)
        self.random = any(step.random for step in self.steps)

    def __call__(self, images, generator=None):
        for step in self.steps:
            images = step(images, generator)
        return images


def example_generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def corrupt_images(corruption: Corruption, images: torch.Tensor, indices: torch.Tensor | list[int] | None = None,
                   seed: int | None = None) -> torch.Tensor:
    """Corrupt ``(B, C, H, W)`` images: fresh noise when ``seed`` is None (training), else each
    example with its own generator seeded by ``seed + index`` (evaluation: the same every time)."""
    if seed is None or not corruption.random:
        return corruption(images)
    indices = torch.as_tensor(indices).tolist()
    return torch.cat([
        corruption(images[i : i + 1], example_generator(images.device, seed + int(index)))
        for i, index in enumerate(indices)
    ])


def evaluation_seed(split: str, base_seed: int = 0) -> int | None:
    """Seed of a split's per-example corruption generators: None (fresh noise) for ``train``."""
    if split not in SPLIT_SEED_OFFSETS:
        return None
    return base_seed + SPLIT_SEED_OFFSETS[split]

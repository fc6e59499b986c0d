"""``moving_digits``: procedural clips of MNIST digits moving and bouncing, with exact captions.

Every clip is drawn from its own seed ``(seed, split, index)``, so the same split, index and seed
give the same clip whatever ``limit`` or ``num_train`` are::

    clip:    (T, 1, S, S) uint8; each digit (an MNIST image resized to digit_size) moves
             `speed` pixels per frame along one of 8 directions and bounces off the borders;
             where two digits overlap the brighter pixel wins
    caption: "a 3 moving left then right and a 7 moving up and right"
             (each direction the digit takes within the clip, in order: a bounce adds a "then")
    label:   the class of the first digit; digit_labels (N, max digits) all of them, -1 padded

The source digits of the splits are disjoint: train clips use MNIST training images 0..54,999,
val clips 55,000..59,999, test clips the official test images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from latentbench.data.base import image_and_label_arrays
from latentbench.data.clips import SPLITS, ClipDataModule, Clips
from latentbench.data.mnist import MNISTDataModule

# direction name -> (dx, dy) in image coordinates (y grows downwards)
DIRECTIONS = {
    "right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1),
    "up and right": (1, -1), "up and left": (-1, -1), "down and right": (1, 1), "down and left": (-1, 1),
}
DIRECTION_NAMES = {**{vector: name for name, vector in DIRECTIONS.items()}, (0, 0): "nowhere"}  # nowhere: only in tiny frames
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
VAL_DIGITS = 5000  # the last MNIST training images are the val clips' digits


def direction_name(dx: int, dy: int) -> str:
    """``(-2, 0) -> "left"``, ``(1, -3) -> "up and right"``: the name of a step's direction."""
    return DIRECTION_NAMES[(int(np.sign(dx)), int(np.sign(dy)))]


def bounce_track(start: tuple[int, int], velocity: tuple[int, int], frames: int, max_position: int) -> tuple[np.ndarray, list[str]]:
    """Top-left positions ``(frames, 2)`` (x, y) of a digit moving by ``velocity`` per frame inside
    ``[0, max_position]`` on both axes, reflected at the borders, and the directions it is seen to
    take, in order (see :func:`seen_directions`)."""
    position, velocity = np.array(start, dtype=np.int64), np.array(velocity, dtype=np.int64)
    track = [position.copy()]
    for _ in range(frames - 1):
        position = position + velocity
        for axis in range(2):
            if position[axis] < 0:
                position[axis], velocity[axis] = -position[axis], -velocity[axis]
            elif position[axis] > max_position:
                position[axis], velocity[axis] = 2 * max_position - position[axis], -velocity[axis]
        track.append(position.copy())
    track = np.stack(track)
    return track, seen_directions(track)


def seen_directions(track: np.ndarray) -> list[str]:
    """The direction names a viewer sees along a track ``(T, 2)``, one per straight stretch, in order.

    A bounce can leave a frame step without motion on an axis, or moving on the old way still (the
    digit reached the border and came back part of the way): per axis the direction is the sign of
    the last step that moved on it (before any, the first to come; 0 if it never moves), so a
    caption names no direction that the frames do not show, and every one they show.
    """
    steps = np.sign(np.diff(track, axis=0))
    states = np.zeros_like(steps)
    for axis in range(2):
        moved = steps[:, axis][steps[:, axis] != 0]
        current = moved[0] if len(moved) else 0
        for index, sign in enumerate(steps[:, axis]):
            current = sign if sign != 0 else current
            states[index, axis] = current
    names: list[str] = []
    for dx, dy in states:
        name = direction_name(dx, dy)
        if not names or names[-1] != name:
            names.append(name)
    return names


def caption_for(labels: list[int], directions: list[list[str]]) -> str:
    """``"a 3 moving left then right and a 7 moving up"``."""
    return " and ".join(f"a {label} moving {' then '.join(names)}" for label, names in zip(labels, directions))


def render_clip(digits: list[np.ndarray], tracks: list[np.ndarray], image_size: int) -> np.ndarray:
    """Paste each ``(d, d)`` uint8 digit at its track's top-left positions: ``(T, 1, S, S)`` uint8 (max where they overlap)."""
    frames = len(tracks[0])
    clip = np.zeros((frames, 1, image_size, image_size), dtype=np.uint8)
    for digit, track in zip(digits, tracks):
        size = digit.shape[-1]
        for t, (x, y) in enumerate(track):
            window = clip[t, 0, y : y + size, x : x + size]
            np.maximum(window, digit, out=window)
    return clip


def resize_digits(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 digits ``(N, 28, 28)`` -> ``(N, size, size)`` (antialiased bilinear; unchanged at 28)."""
    if size == images.shape[-1]:
        return images
    resized = F.interpolate(torch.from_numpy(images).float()[:, None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def generate_clips(digits: np.ndarray, digit_labels: np.ndarray, count: int, split: str, seed: int, frames: int,
                   image_size: int, digit_size: int, num_digits: list[int], speeds: list[int]) -> Clips:
    """``count`` clips of ``split`` from the pool ``digits`` ``(P, 28, 28)`` uint8 with labels ``(P,)``,
    each digit resized to ``digit_size``.

    Clip i is drawn from ``default_rng((seed, split id, i))`` alone. Extras: ``digit_labels``
    ``(N, max(num_digits))`` (-1 padded) and ``digit_positions`` ``(N, max(num_digits), T, 2)`` (x, y
    of each digit's top-left corner per frame; -1 padded).
    """
    size = digit_size
    most = max(num_digits)
    clips = np.zeros((count, frames, 1, image_size, image_size), dtype=np.uint8)
    labels_out = np.full((count, most), -1, dtype=np.int64)
    positions = np.full((count, most, frames, 2), -1, dtype=np.int16)
    captions = []
    names = list(DIRECTIONS)
    for i in range(count):
        rng = np.random.default_rng((seed, SPLIT_IDS[split], i))
        how_many = int(num_digits[rng.integers(len(num_digits))])
        picks = rng.integers(len(digits), size=how_many)
        tracks, directions = [], []
        for _ in range(how_many):
            start = tuple(int(v) for v in rng.integers(0, image_size - size + 1, size=2))
            speed = int(speeds[rng.integers(len(speeds))])
            dx, dy = DIRECTIONS[names[rng.integers(len(names))]]
            track, taken = bounce_track(start, (dx * speed, dy * speed), frames, image_size - size)
            tracks.append(track)
            directions.append(taken)
        clips[i] = render_clip(list(resize_digits(digits[picks], digit_size)), tracks, image_size)
        labels_out[i, :how_many] = digit_labels[picks]
        positions[i, :how_many] = np.stack(tracks)
        captions.append(caption_for([int(digit_labels[p]) for p in picks], directions))
    return Clips(clips, labels_out[:, 0].copy(), captions, {"digit_labels": labels_out, "digit_positions": positions})


class MovingDigitsDataModule(ClipDataModule):
    """Moving MNIST digits with exact captions (see the module docstring).

    Args:
        root (`str`, *optional*): folder with the four MNIST IDX files; null downloads MNIST from
            the hub dataset ``hub_name`` (as ``data=mnist`` does).
        hub_name (`str`): Hugging Face dataset used when ``root`` is null.
        num_train, num_val, num_test (`int`): clips per split.
        num_frames (`int`): frames per clip T (at least 2).
        image_size (`int`): side S of the square grey frames ``(1, S, S)``.
        digit_size (`int`): side of a digit in the frame (MNIST's 28x28 resized); at most ``image_size``.
        num_digits (`int` or `list[int]`): digits per clip, or the choices drawn from per clip (``[1, 2]``).
        speeds (`list[int]`): pixels per frame (along each moving axis), drawn per digit.
        seed (`int`): the same seed gives the same clips.
        frames_as_images, caption_dropout, batch_size, num_workers, limit: see
            :class:`~latentbench.data.clips.ClipDataModule`.

    Batches: ``{"image": (B, T, 1, S, S) float in [0, 1], "label": (B,) int64 (first digit),
    "digit_labels": (B, max digits) int64, "digit_positions": (B, max digits, T, 2) int16,
    "caption": list[str]}``; with ``frames_as_images`` ``image`` is ``(B, 1, S, S)``.
    """

    def __init__(self, root: str | None = None, hub_name: str = "ylecun/mnist", num_train: int = 10000, num_val: int = 500,
                 num_test: int = 500, num_frames: int = 8, image_size: int = 32, digit_size: int = 16,
                 num_digits: int | list[int] = 1, speeds: list[int] = (1, 2, 3), seed: int = 0, **kwargs):
        super().__init__(num_frames=num_frames, **kwargs)
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {value}")
        if not 4 <= digit_size <= image_size:
            raise ValueError(f"digit_size: must lie in [4, image_size={image_size}], got {digit_size}")
        num_digits = [num_digits] if isinstance(num_digits, int) else list(num_digits)
        if not num_digits or any(n not in (1, 2) for n in num_digits):
            raise ValueError(f"num_digits: 1, 2 or a list of them (e.g. [1, 2]), got {num_digits}")
        speeds = list(speeds)
        if not speeds or any(s <= 0 or s > image_size - digit_size for s in speeds):
            raise ValueError(f"speeds: pixels per frame, each in [1, image_size - digit_size = {image_size - digit_size}], got {speeds}")
        self.mnist = MNISTDataModule(root=root, hub_name=hub_name)  # checks root now, reads it at setup
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        self.image_size, self.digit_size, self.num_digits, self.speeds, self.seed = image_size, digit_size, num_digits, speeds, seed

    @property
    def source_image_shape(self) -> tuple[int, int, int]:
        return (1, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def class_names(self) -> list[str]:
        return [str(digit) for digit in range(10)]

    @property
    def has_captions(self) -> bool:
        return True

    def prepare_data(self) -> None:
        self.mnist.prepare_data()

    def digit_pools(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per split, the source digits ``(P, 28, 28)`` uint8 and their labels ``(P,)``: disjoint."""
        mnist = self.mnist.load_splits()
        train_images, train_labels = image_and_label_arrays(mnist["train"])
        test_images, test_labels = image_and_label_arrays(mnist["test"])
        cut = len(train_images) - VAL_DIGITS
        pools = {"train": (train_images[:cut], train_labels[:cut]), "val": (train_images[cut:], train_labels[cut:]),
                 "test": (test_images, test_labels)}
        return {name: (images[:, 0], labels) for name, (images, labels) in pools.items()}

    def load_clips(self) -> dict[str, Clips]:
        pools = self.digit_pools()
        clips = {}
        for split in SPLITS:
            count = self.counts[split] if self.limit is None else min(self.counts[split], self.limit)
            digits, labels = pools[split]
            clips[split] = generate_clips(digits, labels, count, split, self.seed, self.num_frames, self.image_size,
                                          self.digit_size, self.num_digits, self.speeds)
        return clips

"""``video_clips``: real video clips from a folder or WebDataset shards, for users with their own video.

A clip is any of:

- a folder of frame images (``clip_007/000.png, 001.png, ...``, read in name order);
- a video file (``.mp4``, ``.webm``, ``.mov``, ``.avi``, ``.mkv`` decoded by PyAV through imageio;
  ``.gif`` through Pillow);
- a WebDataset sample in a ``*.tar`` shard: ``KEY.mp4`` (or another video suffix) + ``KEY.txt``.

Beside a clip, ``<name>.txt`` holds its caption and ``<name>.cls`` its integer class (the
WebDataset names ``KEY.txt`` / ``KEY.cls`` in a shard). ``root`` holds ``train/``, ``val/`` and
``test/`` folders (each of clips or shards), or the clips themselves: then ``val_size`` and
``test_size`` clips are carved out with ``split_seed``. Every clip gives its first ``num_frames``
frames taken every ``frame_stride``-th, each resized (shorter side) and centre-cropped to
``image_size``, as ``grayscale`` or ``rgb``.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from latentbench.data.clips import SPLITS, ClipDataModule, Clips
from latentbench.data.image_files import image_files, open_image
from latentbench.errors import ConfigError

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif")
CHANNELS = {"grayscale": 1, "rgb": 3}


def decode_video(source: Path | bytes, suffix: str, where: str) -> list[Image.Image]:
    """All frames of a video file (or its bytes) as PIL images; a file that cannot be decoded is a one-line ConfigError."""
    import imageio.v3 as iio

    try:
        frames = iio.imread(source, index=None, extension=suffix, **({} if suffix == ".gif" else {"plugin": "pyav"}))
    except Exception as error:  # noqa: BLE001 (the decoders raise many kinds)
        raise ConfigError(f"{where}: cannot decode as video ({type(error).__name__}: {str(error)[:120]})") from None
    return [Image.fromarray(frame) for frame in np.asarray(frames)]


def square_frame(image: Image.Image, size: int, color: str) -> np.ndarray:
    """A frame resized (shorter side) and centre-cropped to ``(C, size, size)`` uint8."""
    image = image.convert("L" if color == "grayscale" else "RGB")
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


class VideoClipsDataModule(ClipDataModule):
    """Clips from a folder of clips (frame folders or video files) or WebDataset shards.

    Args:
        root (`str`): the folder (see the module docstring).
        num_frames (`int`): frames per clip T; a shorter clip is an error naming it.
        frame_stride (`int`): take every n-th frame.
        image_size (`int`): side of the square frames.
        color (`str`): ``grayscale`` (1 channel) or ``rgb`` (3).
        num_classes (`int`, *optional*): classes of the ``.cls`` labels (class conditioning); null: labels are not classes.
        val_size, test_size (`int`): clips carved out of a root without split folders.
        split_seed (`int`): seed of that carve-out.
        frames_as_images, caption_dropout, batch_size, num_workers, limit: see
            :class:`~latentbench.data.clips.ClipDataModule`.

    Batches: ``{"image": (B, T, C, S, S) float in [0, 1], "label": (B,) int64 (-1 without .cls),
    "caption": list[str]}`` (``caption`` when every clip has one).
    """

    def __init__(self, root: str, num_frames: int = 8, frame_stride: int = 1, image_size: int = 32,
                 color: Literal["grayscale", "rgb"] = "grayscale", num_classes: int | None = None, val_size: int = 16,
                 test_size: int = 16, split_seed: int = 0, **kwargs):
        super().__init__(num_frames=num_frames, split_seed=split_seed, **kwargs)
        if color not in CHANNELS:
            raise ValueError(f"color: {color!r} is not allowed (allowed: grayscale, rgb)")
        if frame_stride <= 0 or image_size <= 0:
            raise ValueError(f"frame_stride and image_size: must be positive, got {frame_stride} and {image_size}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ConfigError(f"data.root: {self.root} does not exist or is not a folder (expected clips, or train/ val/ test/ folders of them)")
        self.frame_stride, self.image_size, self.color, self._num_classes = frame_stride, image_size, color, num_classes
        self.holdout = {"val": val_size, "test": test_size}
        self.sources = self._find_sources()
        self._has_captions = all(caption is not None for split in self.sources.values() for _, _, caption, _ in split)

    @property
    def source_image_shape(self) -> tuple[int, int, int]:
        return (CHANNELS[self.color], self.image_size, self.image_size)

    @property
    def num_classes(self) -> int | None:
        return self._num_classes

    @property
    def has_captions(self) -> bool:
        return self._has_captions

    # -- finding clips -----------------------------------------------------------------------
    def _find_sources(self) -> dict[str, list[tuple[str, object, str | None, int]]]:
        """Per split, ``(name, loader, caption, label)`` of every clip; nothing is decoded yet."""
        if all((self.root / split).is_dir() for split in ("train", "test")):
            found = {split: self._clips_in(self.root / split) for split in SPLITS if (self.root / split).is_dir()}
        else:
            found = {"train": self._clips_in(self.root)}
        for split, clips in found.items():
            if not clips:
                where = self.root / split if (self.root / split).is_dir() else self.root
                raise ConfigError(f"data.root: {where} holds no clips (frame folders, {', '.join(VIDEO_SUFFIXES)} files or .tar shards)")
        if "val" not in found or "test" not in found:
            found = self._carve(found)
        return found

    def _carve(self, found: dict[str, list]) -> dict[str, list]:
        train = found["train"]
        order = np.random.default_rng(self.split_seed).permutation(len(train))
        wanted = {split: (0 if split in found else self.holdout[split]) for split in ("val", "test")}
        if sum(wanted.values()) >= len(train):
            raise ConfigError(f"data.val_size/test_size: {wanted['val']} + {wanted['test']} clips leave none of the {len(train)} for training")
        start = 0
        for split in ("val", "test"):
            if split not in found:
                found[split] = [train[i] for i in sorted(order[start : start + wanted[split]])]
                start += wanted[split]
        found["train"] = [train[i] for i in sorted(order[start:])]
        return found

    def _clips_in(self, folder: Path) -> list[tuple[str, object, str | None, int]]:
        clips = []
        for path in sorted(folder.iterdir()):
            if path.is_dir() and image_files(path):
                clips.append((str(path), lambda p=path: [open_image(f) for f in image_files(p)], *self._sidecars(path)))
            elif path.suffix.lower() in VIDEO_SUFFIXES:
                clips.append((str(path), lambda p=path: decode_video(p, p.suffix.lower(), str(p)), *self._sidecars(path)))
            elif path.suffix == ".tar":
                clips += self._clips_in_shard(path)
        return clips

    @staticmethod
    def _sidecars(path: Path) -> tuple[str | None, int]:
        base = path.with_suffix("") if path.is_file() else path
        caption_file, label_file = base.with_name(base.name + ".txt"), base.with_name(base.name + ".cls")
        caption = caption_file.read_text().strip() if caption_file.is_file() else None
        return caption, int(label_file.read_text().strip()) if label_file.is_file() else -1

    @staticmethod
    def _clips_in_shard(shard: Path) -> list[tuple[str, object, str | None, int]]:
        try:
            with tarfile.open(shard) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError) as error:
            raise ConfigError(f"{shard}: cannot read as a WebDataset tar ({type(error).__name__}: {error})") from None
        clips = []
        for name, data in sorted(members.items()):
            key, suffix = name.rsplit(".", 1)[0], "." + name.rsplit(".", 1)[-1].lower()
            if suffix not in VIDEO_SUFFIXES:
                continue
            caption = members.get(f"{key}.txt")
            label = members.get(f"{key}.cls")
            where = f"{shard}: sample {key}"
            clips.append((where, lambda d=data, s=suffix, w=where: decode_video(d, s, w),
                          caption.decode("utf-8").strip() if caption is not None else None, int(label) if label is not None else -1))
        return clips

    # -- decoding ----------------------------------------------------------------------------
    def _clip(self, where: str, frames: list[Image.Image]) -> np.ndarray:
        chosen = frames[:: self.frame_stride][: self.num_frames]
        if len(chosen) < self.num_frames:
            raise ConfigError(f"{where}: {len(frames)} frames give {len(chosen)} at frame_stride {self.frame_stride}; "
                              f"data.num_frames is {self.num_frames}")
        return np.stack([square_frame(frame, self.image_size, self.color) for frame in chosen])

    def load_clips(self) -> dict[str, Clips]:
        splits = {}
        for split, sources in self.sources.items():
            if self.limit is not None:
                sources = sources[: self.limit]
            clips = np.stack([self._clip(where, load()) for where, load, _, _ in sources])
            captions = [caption for _, _, caption, _ in sources] if self.has_captions else None
            splits[split] = Clips(clips, np.array([label for *_, label in sources], dtype=np.int64), captions)
        return splits

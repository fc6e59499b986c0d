"""Shared behaviour of the video-clip data modules (``moving_digits``, ``video_clips``).

A subclass says where its clips come from (:meth:`ClipDataModule.load_clips`: per split, uint8
clips ``(N, T, C, H, W)``, labels and captions); this base holds each split as one tensor and
serves the batches of the image-text modules with a frame axis::

    {"image": (B, T, C, H, W) float in [0, 1], "label": (B,) int64 (-1 when none),
     "caption": list[str], ...extra per-clip tensors of the source (moving digits: "digit_labels")}

With ``frames_as_images: true`` every frame is served as an image of its own, ``(B, C, H, W)``
with its clip's label and caption: the data of a first stage (``model=ae_kl``) or of the frame
classifier behind per-frame FID, trained on exactly the frames the video model will see.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from latentbench.data.base import ImageDataModule, TensorSplit
from latentbench.data.image_text import drop_captions
from latentbench.errors import ConfigError

SPLITS = ("train", "val", "test")


@dataclass
class Clips:
    """One split as arrays: ``clips`` uint8 ``(N, T, C, H, W)``, ``labels`` int64 ``(N,)``, ``captions``
    (N strings, or None), ``extras`` per-clip arrays of any shape ``(N, ...)`` served by name."""

    clips: np.ndarray
    labels: np.ndarray
    captions: list[str] | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.clips.ndim != 5 or self.clips.dtype != np.uint8:
            raise ValueError(f"clips must be uint8 (N, T, C, H, W), got {self.clips.dtype} {self.clips.shape}")
        if len(self.labels) != len(self.clips) or (self.captions is not None and len(self.captions) != len(self.clips)):
            raise ValueError(f"{len(self.clips)} clips, {len(self.labels)} labels and {len(self.captions or [])} captions differ in number")

    def head(self, count: int) -> Clips:
        """The first ``count`` clips."""
        return Clips(self.clips[:count], self.labels[:count], None if self.captions is None else self.captions[:count],
                     {k: v[:count] for k, v in self.extras.items()})

    def as_frames(self) -> Clips:
        """Every frame as a 1-frame clip ``(N*T, 1, C, H, W)``, with its clip's label, caption and extras."""
        n, t = self.clips.shape[:2]
        captions = None if self.captions is None else [c for c in self.captions for _ in range(t)]
        return Clips(self.clips.reshape(n * t, 1, *self.clips.shape[2:]), np.repeat(self.labels, t), captions,
                     {k: np.repeat(v, t, axis=0) for k, v in self.extras.items()})


class ClipSplit(TensorSplit):
    """One split of clips held as tensors; indexed by a list of indices, it returns a whole batch.

    ``frames_as_images`` drops the (length 1) frame axis: batches of ``(B, C, H, W)`` images.
    """

    def __init__(self, data: Clips, frames_as_images: bool = False, caption_dropout: float = 0.0):
        images = torch.from_numpy(np.ascontiguousarray(data.clips))
        if frames_as_images:
            images = images[:, 0]
        super().__init__(images, torch.from_numpy(np.asarray(data.labels, dtype=np.int64)), 255.0, flatten=False)
        self.captions, self.caption_dropout = data.captions, caption_dropout
        self.extras = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in data.extras.items()}

    def __getitem__(self, indices: list[int]) -> dict[str, Any]:
        batch = super().__getitem__(indices)
        index = torch.as_tensor(indices)
        for name, value in self.extras.items():
            batch[name] = value[index]
        if self.captions is not None:
            batch["caption"] = drop_captions([self.captions[i] for i in indices], self.caption_dropout)
        return batch


class ClipDataModule(ImageDataModule):
    """Base of the clip data modules: splits of ``num_frames``-frame clips, or their frames.

    Args:
        num_frames (`int`): frames per clip, T.
        frames_as_images (`bool`): serve every frame as an image ``(B, C, H, W)`` instead of clips.
        caption_dropout (`float`): probability in [0, 1) that a training caption becomes ``""``.
        batch_size, num_workers, limit: see :class:`~latentbench.data.base.ImageDataModule`
            (``limit``: the first N clips of each split). Clips are never flattened, padded or
            corrupted: ``flatten``, ``pad_to`` and a corruption are refused.
    """

    def __init__(self, num_frames: int = 8, frames_as_images: bool = False, caption_dropout: float = 0.0, **kwargs):
        if kwargs.get("flatten"):
            raise ValueError("flatten: clips are served as (B, T, C, H, W); flatten must be false")
        if kwargs.get("pad_to") is not None:
            raise ValueError("pad_to: not supported for clips (choose the frame size of the source instead)")
        if kwargs.get("corruption") is not None:
            raise ConfigError("corruption: the clip data modules do not corrupt their inputs (use corruption=none)")
        super().__init__(**kwargs)
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 2:
            raise ValueError(f"num_frames: a clip needs at least 2 frames, got {num_frames!r}")
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(f"caption_dropout: must lie in [0, 1), got {caption_dropout}")
        self.num_frames, self.frames_as_images, self.caption_dropout = num_frames, frames_as_images, caption_dropout

    @abstractmethod
    def load_clips(self) -> dict[str, Clips]:
        """``{"train": Clips, "val": Clips, "test": Clips}`` of ``num_frames``-frame clips."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(T, C, H, W)`` of one clip, or ``(C, H, W)`` with ``frames_as_images``."""
        return tuple(self.image_shape) if self.frames_as_images else (self.num_frames, *self.image_shape)

    def load_splits(self):  # the HF-datasets path of ImageDataModule is not used: see setup
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for name, data in self.load_clips().items():
            if self.limit is not None:
                data = data.head(self.limit)
            if self.frames_as_images:
                data = data.as_frames()
            self.splits[name] = ClipSplit(data, self.frames_as_images, self.caption_dropout if name == "train" else 0.0)

"""Shared behaviour of the image data modules: splits, limits, batching.

A subclass only says where its images come from (:meth:`ImageDataModule.load_splits`, returning
HF ``datasets`` with an ``image`` column of uint8 ``(C, H, W)`` arrays and a ``label`` column) and
what shape they have. This base carves the validation split out of train with a fixed seed,
applies ``limit``, holds each split as one tensor and serves batches as dicts::

    {"image": (B, C, H, W) float in [0, 1]  (or (B, C*H*W) when flatten=true),
     "label": (B,) int64}
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from datasets import Array3D, Dataset, DatasetDict, DatasetInfo, Features, Value
from datasets.features.features import Array3DExtensionType
from datasets.table import InMemoryTable
from torch.utils.data import DataLoader, Sampler

from latentbench.corruptions import Corruption, corrupt_images, evaluation_seed
from latentbench.devices import to_device_without_sync
from latentbench.errors import ConfigError


def image_features(shape: tuple[int, int, int]) -> Features:
    """HF features of the common schema: ``image`` uint8 (C, H, W), ``label`` int64."""
    return Features({"image": Array3D(shape=shape, dtype="uint8"), "label": Value("int64")})


def arrays_to_dataset(images: np.ndarray, labels: np.ndarray) -> Dataset:
    """Wrap uint8 images ``(N, C, H, W)`` and integer labels ``(N,)`` as an HF Dataset."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
    features = image_features(tuple(int(s) for s in images.shape[1:]))
    return dataset_from_columns({"image": image_column(images), "label": np.asarray(labels, dtype=np.int64)}, features)


def image_column(images: np.ndarray) -> pa.ExtensionArray:
    """uint8 images ``(N, C, H, W)`` as one Arrow array of HF's ``Array3D`` type, built from the buffer
    in one go (``Dataset.from_dict`` converts row by row and leaves one Arrow chunk per image, which
    takes seconds for MNIST and makes every later read slow)."""
    storage = pa.array(np.ascontiguousarray(images).reshape(-1))
    rows = images.size
    for size in reversed(images.shape[1:]):  # Array3D's storage: lists of lists of lists
        rows //= size
        storage = pa.ListArray.from_arrays(pa.array(np.arange(0, rows * size + 1, size, dtype=np.int32)), storage)
    shape = tuple(int(s) for s in images.shape[1:])
    return pa.ExtensionArray.from_storage(Array3DExtensionType(shape=shape, dtype=str(images.dtype)), storage)


def dataset_from_columns(columns: dict, features: Features) -> Dataset:
    """An in-memory HF Dataset of the given features from Arrow arrays, numpy arrays or lists."""
    table = pa.table({name: columns[name] for name in features}, schema=features.arrow_schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=features))


def image_and_label_arrays(split: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """A split's ``image`` column (``Array3D`` uint8) as a writable numpy array ``(N, C, H, W)`` and its
    ``label`` column ``(N,)`` int64, read from Arrow directly: HF's numpy formatting is several times
    slower and widens the images to int64, and its gather through a split's indices mapping (from
    ``train_test_split`` / ``select``) goes row by row, so the rows are picked here with numpy."""
    table = split.data.table
    column = table.column("image").combine_chunks()
    storage = column.storage if isinstance(column, pa.ExtensionArray) else column
    shape = split.features["image"].shape
    for _ in shape:
        storage = storage.flatten()
    images = storage.to_numpy(zero_copy_only=False).reshape(len(table), *shape)
    labels = table.column("label").to_numpy()
    indices = getattr(split, "_indices", None)  # the indices mapping: None when the rows are the table's
    if indices is not None:
        rows = indices.column(0).to_numpy()
        images, labels = images[rows], labels[rows]
    return np.array(images, dtype=np.uint8), np.array(labels, dtype=np.int64)


class TensorSplit(torch.utils.data.Dataset):
    """One split held as tensors; indexed by a list of indices, it returns a whole batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pixel_scale: float, flatten: bool):
        self.images, self.labels = images, labels
        self.pixel_scale, self.flatten = pixel_scale, flatten
        # set by the data module: a training augmentation (applied to image and input alike) and
        # the input corruption, with the seed of its per-example generators (None: fresh noise)
        self.augment: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.corruption: Corruption | None = None
        self.corruption_seed: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = to_device_without_sync(torch.as_tensor(indices), self.images.device)
        image = self.images[index].float().div_(self.pixel_scale)
        if self.augment is not None:
            image = self.augment(image)
        batch = {"image": image, "label": self.labels[index]}
        if self.corruption is not None:  # in image shape, before flattening
            batch["input"] = corrupt_images(self.corruption, image, indices, self.corruption_seed)
        if self.flatten:
            batch = {k: v.flatten(1) if k in ("image", "input") else v for k, v in batch.items()}
        return batch


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of indices of one split, for one DDP rank, resumable in the middle of an epoch.

    Epoch ``e`` draws the permutation ``randperm(n, seed + e)`` (or ``0..n-1`` without shuffle), so
    the order is a pure function of the seed and the epoch: every rank draws the same one and keeps
    every ``world_size``-th index from ``rank``, and a resumed run draws it again. With
    ``equal_shards`` (training) every rank gets ``n // world_size`` indices, so that no rank takes an
    extra step and blocks the gradient all-reduce; without it (evaluation) nothing is dropped or
    repeated, so metrics reduced across ranks equal a single-process run's exactly.

    The epoch comes from the trainer (``set_epoch``, which Lightning calls before every training
    epoch, also on resume), not from counting iterations: a run resumed at an epoch boundary does
    not restore the loader's state (Lightning only does that mid-epoch), and a count would start
    again at epoch 0 and replay the first epoch's order.

    ``state_dict`` records the epoch being drawn and how many of its batches were consumed
    (``consumed()``, the trainer's count); ``load_state_dict`` makes the next ``iter`` of that
    same epoch skip them.

    With ``group`` K > 1 (fused steps) each item is K consecutive batches joined (the same batches,
    in the same order); ``consumed()`` then counts items, and the state records real batches.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 equal_shards: bool = False, consumed=None, group: int = 1):
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.group = group
        self.rank, self.world_size, self.equal_shards = rank, world_size, equal_shards
        self.consumed = consumed or (lambda: 0)
        self.epoch = 0  # epoch of the next iteration (set by the trainer)
        self.current_epoch = 0  # epoch of the iteration in progress
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches already consumed) from a checkpoint

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard_size(self) -> int:
        if self.equal_shards:
            return self.size // self.world_size
        return len(range(self.rank, self.size, self.world_size))

    def batches_per_epoch(self) -> int:
        return -(-self.shard_size() // self.batch_size)

    def __len__(self) -> int:
        return -(-self.batches_per_epoch() // self.group)

    def indices(self, epoch: int) -> torch.Tensor:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(self.size)
        return order[self.rank :: self.world_size][: self.shard_size()]

    def __iter__(self):
        self.current_epoch = self.epoch
        skip = 0
        if self.resume_at is not None and self.resume_at[0] == self.current_epoch:
            skip = self.resume_at[1]
        self.resume_at = None
        batches_per_item = self.batch_size * self.group
        for batch in self.indices(self.current_epoch)[skip * self.batch_size :].split(batches_per_item):
            yield batch.tolist()

    def state_dict(self) -> dict[str, int]:
        consumed = min(int(self.consumed()) * self.group, self.batches_per_epoch())
        return {"epoch": self.current_epoch, "batches_consumed": consumed, "group": self.group}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, consumed = int(state["epoch"]), int(state["batches_consumed"])
        saved_group = int(state.get("group", 1))
        if saved_group != self.group and 0 < consumed < self.batches_per_epoch():
            # the trainer's restored count is in items of the saved size
            raise ValueError(f"fused_steps: the checkpoint was saved mid-epoch with fused_steps={saved_group}; "
                             f"resume with fused_steps={saved_group} (this run has {self.group})")
        if consumed >= self.batches_per_epoch():  # saved at the end of an epoch: go on with the next one
            epoch, consumed = epoch + 1, 0
        self.epoch, self.resume_at = epoch, (epoch, consumed)


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position Lightning saves in checkpoints and restores on resume."""

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


class ImageDataModule(pl.LightningDataModule):
    """Base of the in-memory image data modules (digits, MNIST, faces).

    Args:
        batch_size (`int`): images per batch.
        num_workers (`int`): DataLoader worker processes; 0 loads in the main process.
        limit (`int`, *optional*): keep only the first N examples of every split, for fast runs.
        val_size (`int` or `float`): validation examples carved out of train (a count, or a fraction).
        split_seed (`int`): seed of that carve-out, fixed so runs are comparable.
        flatten (`bool`): serve images as vectors ``(B, C*H*W)`` instead of ``(B, C, H, W)``.
        on_device (`bool`): hold the splits on the training device (GPU) and slice batches there,
            so that the loader is never the bottleneck of a small model; needs ``num_workers: 0``.
        corruption (`Corruption`, *optional*): corrupts the model input (``batch["input"]``) while
            ``batch["image"]`` stays clean; passed in by ``latentbench train`` from the
            ``corruption`` config group. Training draws fresh noise, val/test the same noise every run.
        corrupt_splits (`list[str]`): the splits whose inputs ``corruption`` corrupts (default all);
            ``[train]`` trains on corrupted inputs and evaluates clean reconstruction (input noise
            as a regulariser rather than a denoising task).
        pad_to (`int`, *optional*): zero-pad every image, centred, to ``pad_to x pad_to`` (MNIST
            28x28 -> 32x32, as in LeNet and DDPM's MNIST setups, so that factors up to 8 divide it).
            Applied once when the split tensors are built (no per-step cost); ``image_shape`` and
            ``input_shape`` report the padded shape. Null: the images' own size.

    ``batch_size`` is per process: under DDP each rank draws ``batch_size`` examples from its shard.
    """

    pixel_scale: float = 255.0  # uint8 value that maps to 1.0
    supports_fused_steps = True  # the training loader groups batches (fused_steps); a streaming one does not

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        limit: int | None = None,
        val_size: int | float = 0.1,
        split_seed: int = 0,
        flatten: bool = False,
        on_device: bool = False,
        corruption: Corruption | None = None,
        pad_to: int | None = None,
        corrupt_splits: list[str] | tuple[str, ...] = ("train", "val", "test"),
    ):
        super().__init__()
        if on_device and num_workers > 0:
            raise ValueError(f"on_device: true needs num_workers: 0 (workers cannot share device tensors), got num_workers={num_workers}")
        if batch_size <= 0:
            raise ValueError(f"batch_size: must be a positive integer, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers: must be >= 0, got {num_workers}")
        if limit is not None and limit <= 0:
            raise ValueError(f"limit: must be a positive integer or null, got {limit}")
        if isinstance(val_size, float) and not 0.0 < val_size < 1.0:
            raise ValueError(f"val_size: a fraction must lie in (0, 1), got {val_size}")
        if isinstance(val_size, int) and val_size <= 0:
            raise ValueError(f"val_size: a count must be positive, got {val_size}")
        self.batch_size, self.num_workers, self.limit = batch_size, num_workers, limit
        self.val_size, self.split_seed, self.flatten, self.on_device = val_size, split_seed, flatten, on_device
        if pad_to is not None and (isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to <= 0):
            raise ValueError(f"pad_to: must be a positive image side (e.g. 32) or null, got {pad_to!r}")
        unknown = [name for name in corrupt_splits if name not in ("train", "val", "test")]
        if unknown or isinstance(corrupt_splits, str):
            raise ValueError(f"corrupt_splits: expected a list of 'train', 'val', 'test', got {corrupt_splits!r}")
        self.corruption, self.pad_to, self.corrupt_splits = corruption, pad_to, tuple(corrupt_splits)
        self.splits: dict[str, TensorSplit] = {}
        # K > 1: each training item is K consecutive batches (set by `latentbench train` from fused_steps)
        self.fused_steps = 1

    def padded_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """``(C, H, W)`` of the source images -> ``(C, pad_to, pad_to)`` with ``pad_to``, else unchanged."""
        pad_to = getattr(self, "pad_to", None)
        if pad_to is None:
            return tuple(shape)
        c, h, w = shape
        if pad_to < max(h, w):
            raise ConfigError(f"data.pad_to: {pad_to} is smaller than the {h}x{w} images (padding cannot shrink them; use null or >= {max(h, w)})")
        return (c, pad_to, pad_to)

    def pad(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, pad_to, pad_to)``: zeros around the centred image (identity without pad_to)."""
        if self.pad_to is None:
            return images
        h, w = images.shape[-2:]
        self.padded_shape((images.shape[1], h, w))  # the size check
        top, left = (self.pad_to - h) // 2, (self.pad_to - w) // 2
        return F.pad(images, (left, self.pad_to - w - left, top, self.pad_to - h - top))

    @property
    @abstractmethod
    def source_image_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image as the source gives it, known without loading any data."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one served image: the source's, padded to ``pad_to`` when set."""
        return self.padded_shape(self.source_image_shape)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one model input: ``(C, H, W)``, or ``(C*H*W,)`` when flatten=true."""
        c, h, w = self.image_shape
        return (c * h * w,) if self.flatten else (c, h, w)

    @property
    def num_classes(self) -> int | None:
        """Number of label classes, or None when the labels are not classes."""
        return None

    @property
    def has_captions(self) -> bool:
        """True when batches carry a ``caption`` list (image-text data)."""
        return False

    @abstractmethod
    def load_splits(self) -> DatasetDict:
        """Return HF datasets ``train`` and ``test`` (and ``val`` if the source has one)."""

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        raw = self.load_splits()
        train = raw["train"]
        if "val" in raw:
            val = raw["val"]
        else:
            if isinstance(self.val_size, int) and self.val_size >= len(train):
                raise ConfigError(f"data.val_size: {self.val_size} leaves no training examples (train has {len(train)})")
            carved = train.train_test_split(test_size=self.val_size, seed=self.split_seed, shuffle=True)
            train, val = carved["train"], carved["test"]
        for name, split in (("train", train), ("val", val), ("test", raw["test"])):
            if self.limit is not None:
                split = split.select(range(min(self.limit, len(split))))
            self.splits[name] = self._to_tensors(split)
            self.splits[name].corruption = self.corruption if name in self.corrupt_splits else None
            self.splits[name].corruption_seed = evaluation_seed(name)
        self.splits["train"].augment = self.train_augmentation()

    def train_augmentation(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``(B, C, H, W) -> (B, C, H, W)`` random augmentation of training batches, or None."""
        return None

    def _to_tensors(self, split: Dataset) -> TensorSplit:
        images, labels = (torch.from_numpy(array) for array in image_and_label_arrays(split))
        images = self.pad(images)
        device = self._storage_device()
        return TensorSplit(images.to(device), labels.to(device), self.pixel_scale, self.flatten)

    def _storage_device(self) -> torch.device:
        if self.on_device and self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _batches_consumed(self) -> int:
        """Training batches of the current epoch the trainer has finished (saved in checkpoints)."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        split = self.splits[name]
        rank, world_size = self._rank_and_world()
        batches = ResumableBatchSampler(
            len(split), self.batch_size, shuffle,
            # the run's seed (set by seed_everything), so that `seed` changes the order
            seed=torch.initial_seed() % 2**62,
            rank=rank, world_size=world_size, equal_shards=shuffle,
            consumed=self._batches_consumed if shuffle else None,
            group=self.fused_steps if shuffle else 1,
        )
        return ResumableDataLoader(
            split,
            sampler=batches,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # Every start of a loader draws its workers' base seed; from the global RNG, that draw would shift
            # the training noise (corruptions, dropout, model=sdae's masking) of a resumed run, which starts
            # its loaders at other points of the RNG stream than the uninterrupted run did.
            generator=torch.Generator().manual_seed(batches.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

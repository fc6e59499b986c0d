"""MNIST from the four original IDX files in a local folder, or from the Hugging Face hub."""

from __future__ import annotations

import functools
import gzip
import struct
from pathlib import Path

import numpy as np
from datasets import DatasetDict, load_dataset

from latentbench.data.base import ImageDataModule, arrays_to_dataset
from latentbench.errors import ConfigError

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_DTYPES = {0x08: np.uint8}


def find_idx_file(root: Path, stem: str) -> Path | None:
    """The IDX file ``stem`` in ``root``, gzipped or not, or None."""
    for name in (stem, f"{stem}.gz"):
        if (root / name).is_file():
            return root / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into an array of its declared shape.

    Raises ConfigError naming the file when it is truncated, corrupt or not IDX.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise ConfigError(f"{path}: cannot read ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ConfigError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise ConfigError(f"{path}: IDX header declares {expected} values but the file holds {len(raw) - header} (truncated or corrupt)")
    return np.frombuffer(raw, dtype=IDX_DTYPES[raw[2]], offset=header).reshape(shape)


def read_idx_cached(path: Path) -> np.ndarray:
    """:func:`read_idx`, remembered per file and modification time: sweeps and tests in one process
    (Hydra multirun, notebooks) decompress the 50 MB only once."""
    stat = path.stat()
    return _read_idx_cached(path.resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: Path, mtime_ns: int, size: int) -> np.ndarray:
    array = read_idx(path)
    array.setflags(write=False)
    return array


class MNISTDataModule(ImageDataModule):
    """MNIST: 60,000 train (validation carved out of it) + the official 10,000 test images, 28x28 grey.

    Args:
        root (`str`, *optional*): folder with the four IDX files (``train-images-idx3-ubyte[.gz]``, ...).
            When null, the data is downloaded from the hub dataset ``hub_name``.
        hub_name (`str`): Hugging Face dataset used when ``root`` is null.
        **kwargs: see :class:`~latentbench.data.base.ImageDataModule`.
    """

    def __init__(self, root: str | None = None, hub_name: str = "ylecun/mnist", **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root).expanduser() if root else None
        self.hub_name = hub_name
        if self.root is not None:
            self.idx_paths = self._check_root(self.root)

    @staticmethod
    def _check_root(root: Path) -> dict[str, Path]:
        if not root.is_dir():
            raise ConfigError(f"data.root: {root} does not exist or is not a folder (expected the four MNIST IDX files)")
        paths = {key: find_idx_file(root, stem) for key, stem in IDX_FILES.items()}
        missing = [IDX_FILES[key] for key, path in paths.items() if path is None]
        if missing:
            raise ConfigError(f"data.root: {root} has no MNIST IDX files {', '.join(m + '[.gz]' for m in missing)}")
        return paths

    @property
    def source_image_shape(self) -> tuple[int, int, int]:
        return (1, 28, 28)

    @property
    def num_classes(self) -> int:
        return 10

    def prepare_data(self) -> None:
        if self.root is None:
            self._load_hub()  # download once, on rank zero

    def _load_hub(self, split: str | None = None):
        try:
            return load_dataset(self.hub_name, split=split)
        except Exception as error:  # network, auth or name errors all mean the same to the user
            raise ConfigError(
                f"data.root: null, so MNIST comes from the hub dataset '{self.hub_name}', which failed "
                f"({type(error).__name__}); set data.root=<folder with the four IDX files> to read it locally"
            ) from None

    def load_splits(self) -> DatasetDict:
        if self.root is not None:
            return DatasetDict({split: self._read_local(split) for split in ("train", "test")})
        return DatasetDict({split: self._read_hub(split) for split in ("train", "test")})

    def _read_local(self, split: str):
        images = read_idx_cached(self.idx_paths[f"{split}_images"])
        labels = read_idx_cached(self.idx_paths[f"{split}_labels"])
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
            raise ConfigError(
                f"{self.idx_paths[f'{split}_images']}: expected (N, 28, 28) images with N labels, "
                f"got images {images.shape} and labels {labels.shape}"
            )
        return arrays_to_dataset(images[:, None], labels)

    def _read_hub(self, split: str):
        hub = self._load_hub(split)
        images = np.stack([np.asarray(image, dtype=np.uint8) for image in hub["image"]])[:, None]
        return arrays_to_dataset(images, np.asarray(hub["label"]))

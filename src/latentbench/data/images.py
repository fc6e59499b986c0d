"""Generic colour images (for the colorizer): an image folder, WebDataset shards, or a hub dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from datasets import DatasetDict

from latentbench.data.base import ImageDataModule, arrays_to_dataset
from latentbench.data.image_files import IMAGE_SUFFIXES, images_to_arrays, open_image
from latentbench.errors import ConfigError

Source = Literal["folder", "webdataset", "hub"]
IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image")  # WebDataset extensions / hub column names
TEST_SHARD_PREFIXES = ("val", "test")


class ImagesDataModule(ImageDataModule):
    """RGB images centre-cropped and resized to ``image_size``; training batches are randomly
    flipped left-right (``random_flip``). Labels are 0 (no classes).

    Args:
        source (`str`): ``webdataset``: ``root`` holds ``*.tar`` shards (``KEY.jpg`` ...); shards named
            ``val-*.tar`` or ``test-*.tar`` are the test split, the others train (with no such shards,
            ``test_size`` of the images are held out). ``folder``: every image under ``root``
            (recursively), ``test_size`` held out. ``hub``: the Hugging Face dataset ``hub_name``
            (its ``test`` or ``validation`` split, else ``test_size`` held out).
        root (`str`, *optional*): the folder of ``webdataset`` and ``folder``.
        hub_name (`str`, *optional*): dataset name for ``source: hub``.
        image_size (`int`): side of the square images after the centre crop.
        random_flip (`bool`): flip training images left-right with probability 0.5.
        test_size (`float`): share of the images held out for test when the source has no test split.
        **kwargs: see :class:`~latentbench.data.base.ImageDataModule`.
    """

    def __init__(
        self,
        source: Source = "webdataset",
        root: str | None = None,
        hub_name: str | None = None,
        image_size: int = 64,
        random_flip: bool = True,
        test_size: float = 0.2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if source not in ("folder", "webdataset", "hub"):
            raise ValueError(f"source: must be folder, webdataset or hub, got {source!r}")
        if image_size <= 0:
            raise ValueError(f"image_size: must be positive, got {image_size}")
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size: must lie in (0, 1), got {test_size}")
        if source in ("folder", "webdataset") and not root:
            raise ValueError(f"root: source '{source}' needs data.root=<folder>")
        if source == "hub" and not hub_name:
            raise ValueError("hub_name: source 'hub' needs data.hub_name=<Hugging Face dataset>")
        self.source, self.hub_name = source, hub_name
        self.root = Path(root).expanduser() if root else None
        self.image_size, self.random_flip, self.test_size = image_size, random_flip, test_size
        if self.root is not None:
            self.files = self._check_root(self.root)

    def _check_root(self, root: Path) -> list[Path]:
        if not root.is_dir():
            raise ConfigError(f"data.root: {root} does not exist or is not a folder")
        if self.source == "webdataset":
            shards = sorted(root.glob("*.tar"))
            if not shards:
                raise ConfigError(f"data.root: {root} has no WebDataset shards (*.tar holding KEY.jpg, KEY.txt, ...)")
            return shards
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"data.root: {root} has no images ({', '.join(IMAGE_SUFFIXES)})")
        return files

    @property
    def source_image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def train_augmentation(self):
        if not self.random_flip:
            return None
        from kornia.augmentation import RandomHorizontalFlip

        return RandomHorizontalFlip(p=0.5)

    def _to_arrays(self, images: list, source: str):
        arrays = images_to_arrays(images, "rgb", self.image_size, True, source)
        return arrays_to_dataset(arrays, np.zeros(len(arrays), np.int64))

    def _hold_out(self, split) -> DatasetDict:
        held_out = split.train_test_split(test_size=self.test_size, seed=self.split_seed, shuffle=True)
        return DatasetDict(train=held_out["train"], test=held_out["test"])

    def _read_webdataset(self) -> DatasetDict:
        from datasets import load_dataset

        test = [str(s) for s in self.files if s.name.startswith(TEST_SHARD_PREFIXES)]
        train = [str(s) for s in self.files if str(s) not in test]
        if not train:
            raise ConfigError(f"data.root: {self.root} has only val/test shards; training needs other *.tar shards")
        data_files = {"train": train, **({"test": test} if test else {})}
        try:
            shards = load_dataset("webdataset", data_files=data_files)
        except Exception as error:
            raise ConfigError(f"data.root: cannot read the WebDataset shards in {self.root} ({type(error).__name__}: {error})") from None
        splits = {name: self._to_arrays(self._image_column(split, str(self.root)), f"{self.root} ({name})")
                  for name, split in shards.items()}
        return DatasetDict(splits) if "test" in splits else self._hold_out(splits["train"])

    @staticmethod
    def _image_column(split, where: str) -> list:
        for column in IMAGE_COLUMNS:
            if column in split.column_names:
                return list(split[column])
        raise ConfigError(f"data.root: {where} has no image column ({'/'.join(IMAGE_COLUMNS)}); columns: {split.column_names}")

    def _read_folder(self) -> DatasetDict:
        return self._hold_out(self._to_arrays([open_image(p) for p in self.files], str(self.root)))

    def _read_hub(self) -> DatasetDict:
        from datasets import load_dataset

        try:
            hub = load_dataset(self.hub_name)
        except Exception as error:
            raise ConfigError(
                f"data.hub_name: loading the hub dataset '{self.hub_name}' failed ({type(error).__name__}); "
                f"offline, use data.source=webdataset or folder with data.root=<local path>"
            ) from None
        train = self._to_arrays(self._image_column(hub["train"], self.hub_name), self.hub_name)
        for name in ("test", "validation"):
            if name in hub:
                return DatasetDict(train=train, test=self._to_arrays(self._image_column(hub[name], self.hub_name), self.hub_name))
        return self._hold_out(train)

    def load_splits(self) -> DatasetDict:
        reader = {"webdataset": self._read_webdataset, "folder": self._read_folder, "hub": self._read_hub}[self.source]
        return reader()

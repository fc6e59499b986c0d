"""scikit-learn's embedded 8x8 digits: the offline default, no download needed."""

from __future__ import annotations

import numpy as np
from datasets import DatasetDict
from sklearn.datasets import load_digits

from latentbench.data.base import ImageDataModule, arrays_to_dataset


class DigitsDataModule(ImageDataModule):
    """1,797 grey 8x8 digits (values 0..16, served in [0, 1]), labels 0-9.

    The set has no official test split: ``test_size`` images are held out with ``split_seed``,
    then validation is carved from the rest like every other module.

    Args:
        test_size (`float`): fraction of all images held out for test.
        **kwargs: see :class:`~latentbench.data.base.ImageDataModule`.
    """

    pixel_scale = 16.0

    def __init__(self, test_size: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size: must lie in (0, 1), got {test_size}")
        self.test_size = test_size

    @property
    def source_image_shape(self) -> tuple[int, int, int]:
        return (1, 8, 8)

    @property
    def num_classes(self) -> int:
        return 10

    def load_splits(self) -> DatasetDict:
        digits = load_digits()
        images = digits.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
        full = arrays_to_dataset(images, digits.target)
        held_out = full.train_test_split(test_size=self.test_size, seed=self.split_seed, shuffle=True)
        return DatasetDict(train=held_out["train"], test=held_out["test"])

"""Data modules read real data: the shared MNIST IDX files and scikit-learn's digits."""

from __future__ import annotations

import numpy as np
import pytest

from latentbench.data.digits import DigitsDataModule
from latentbench.data.mnist import MNISTDataModule, read_idx
from latentbench.errors import ConfigError
from tests.conftest import MNIST_ROOT, needs_mnist


@needs_mnist
def test_mnist_idx_sanity_figures():
    images = read_idx(MNIST_ROOT / "train-images-idx3-ubyte.gz")
    labels = read_idx(MNIST_ROOT / "train-labels-idx1-ubyte.gz")
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert images.mean() / 255 == pytest.approx(0.1307, abs=1e-4)
    assert (images / 255).std() == pytest.approx(0.3081, abs=1e-4)


@needs_mnist
def test_mnist_splits_and_batches():
    datamodule = MNISTDataModule(root=str(MNIST_ROOT), val_size=5000, batch_size=32)
    datamodule.setup()
    assert [len(datamodule.splits[s]) for s in ("train", "val", "test")] == [55000, 5000, 10000]
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (32, 1, 28, 28) and batch["label"].shape == (32,)
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    test_mean = float(datamodule.splits["test"].images.float().mean() / 255)
    assert test_mean == pytest.approx(0.1325, abs=1e-4)


@needs_mnist
def test_val_split_is_fixed_by_split_seed_and_limit_takes_first_examples():
    first = MNISTDataModule(root=str(MNIST_ROOT), val_size=100, limit=50)
    second = MNISTDataModule(root=str(MNIST_ROOT), val_size=100, limit=50)
    other = MNISTDataModule(root=str(MNIST_ROOT), val_size=100, limit=50, split_seed=1)
    for dm in (first, second, other):
        dm.setup()
    assert len(first.splits["val"]) == 50
    assert np.array_equal(first.splits["val"].labels, second.splits["val"].labels)
    assert not np.array_equal(first.splits["val"].images, other.splits["val"].images)


def test_digits_flatten_and_scale():
    datamodule = DigitsDataModule(flatten=True, batch_size=16)
    datamodule.setup()
    assert datamodule.input_shape == (64,)
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["image"].shape == (16, 64)
    assert float(batch["image"].max()) == 1.0  # 16/16
    total = sum(len(datamodule.splits[s]) for s in ("train", "val", "test"))
    assert total == 1797


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"hello world, not idx")
    with pytest.raises(ConfigError, match="bad magic number"):
        read_idx(path)


def test_image_arrays_read_from_arrow_equal_hf_formatting_through_an_indices_mapping():
    from latentbench.data.base import arrays_to_dataset, image_and_label_arrays

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 3, 4, 5), dtype=np.uint8)
    dataset = arrays_to_dataset(images, np.arange(50))
    assert dataset.data.table.column("image").num_chunks == 1
    carved = dataset.train_test_split(test_size=10, seed=0, shuffle=True)["train"].select(range(3, 30))
    got_images, got_labels = image_and_label_arrays(carved)
    expected = carved.with_format("numpy")[:]
    np.testing.assert_array_equal(got_labels, expected["label"])
    np.testing.assert_array_equal(got_images, expected["image"])
    np.testing.assert_array_equal(got_images, images[got_labels])  # labels are the original row numbers
    assert got_images.dtype == np.uint8 and got_images.flags.writeable

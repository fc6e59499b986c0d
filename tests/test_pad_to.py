"""data.pad_to: the in-memory image modules zero-pad their images, centred (MNIST 28x28 -> 32x32)."""

from __future__ import annotations

import pytest
import torch

from latentbench.data.digits import DigitsDataModule
from latentbench.data.mnist import MNISTDataModule
from latentbench.errors import ConfigError
from latentbench.train import train
from tests.conftest import MNIST_ROOT, needs_mnist


@needs_mnist
def test_mnist_pad_to_32_centres_the_digit_in_zeros():
    plain = MNISTDataModule(root=str(MNIST_ROOT), val_size=8, limit=16, batch_size=16)
    padded = MNISTDataModule(root=str(MNIST_ROOT), val_size=8, limit=16, batch_size=16, pad_to=32)
    assert plain.image_shape == (1, 28, 28) and padded.image_shape == padded.input_shape == (1, 32, 32)
    for dm in (plain, padded):
        dm.setup()
    assert padded.splits["train"].images.dtype == torch.uint8  # padded once, stored as uint8
    small = next(iter(plain.test_dataloader()))["image"]
    big = next(iter(padded.test_dataloader()))["image"]
    assert big.shape == (16, 1, 32, 32)
    assert torch.equal(big[:, :, 2:30, 2:30], small)
    border = big.clone()
    border[:, :, 2:30, 2:30] = 0
    assert float(border.abs().max()) == 0.0 and float(small.max()) == 1.0  # digits reach 255, the frame is 0


def test_pad_to_with_flatten_and_odd_margins():
    # 8x8 digits padded to 11: margins 1 (top/left) and 2 (bottom/right), then flattened to 121
    dm = DigitsDataModule(pad_to=11, flatten=True, batch_size=4, limit=4)
    plain = DigitsDataModule(batch_size=4, limit=4)
    assert dm.input_shape == (121,)
    for d in (dm, plain):
        d.setup()
    flat = next(iter(dm.test_dataloader()))["image"]
    image = flat.reshape(4, 1, 11, 11)
    assert torch.equal(image[:, :, 1:9, 1:9], next(iter(plain.test_dataloader()))["image"])
    assert float(image[:, :, 9:].abs().sum() + image[:, :, :, 9:].abs().sum()) == 0.0


@pytest.mark.parametrize(
    ("pad_to", "message"),
    [(0, "data.pad_to: must be a positive image side (e.g. 32) or null, got 0"),
     ("abc", "data.pad_to: expected int or null, got 'abc' (str)"),  # the config checker: a base-class key (through **kwargs)
     (20, "data.pad_to: 20 is smaller than the 28x28 images (padding cannot shrink them; use null or >= 28)")],
)
@needs_mnist
def test_bad_pad_to_is_one_line(cfg_factory, pad_to, message):
    cfg = cfg_factory("model=ae_conv", "data=mnist", f"data.root={MNIST_ROOT}", "data.limit=16", f"data.pad_to={pad_to}")
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert str(error.value) == message

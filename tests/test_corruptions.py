"""Corruptions change the model input as specified, leave the target clean, and are reproducible at eval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kornia.color import rgb_to_grayscale

from latentbench.corruptions import (
    Compose, Downsample, GaussianNoise, Grayscale, Masking, Occlusion, SaltPepper, corrupt_images,
)
from latentbench.data.digits import DigitsDataModule
from latentbench.data.mnist import MNISTDataModule
from latentbench.train import train
from tests.conftest import MNIST_ROOT, needs_mnist


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gaussian_noise_has_the_configured_sigma():
    images = torch.full((16, 1, 32, 32), 0.5)
    noisy = GaussianNoise(sigma=0.1)(images, seeded())
    assert (noisy - images).std().item() == pytest.approx(0.1, rel=0.03)
    assert (noisy - images).mean().abs().item() < 0.005
    clipped = GaussianNoise(sigma=1.0)(images, seeded())
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_masking_zeroes_the_configured_fraction_of_pixels(fraction):
    images = torch.rand(32, 3, 32, 32) * 0.9 + 0.1  # no zero pixels before masking
    masked = Masking(fraction)(images, seeded())
    zero = masked == 0
    assert zero.float().mean().item() == pytest.approx(fraction, abs=0.01)
    assert (zero.all(dim=1) == zero.any(dim=1)).all()  # a masked pixel loses all its channels
    assert torch.equal(masked[~zero], images[~zero])  # the rest is untouched


def test_salt_and_pepper_replaces_the_configured_fraction_with_black_and_white():
    images = torch.full((32, 1, 32, 32), 0.5)
    noisy = SaltPepper(0.2)(images, seeded())
    hit = noisy != 0.5
    assert hit.float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert set(noisy[hit].unique().tolist()) == {0.0, 1.0}
    assert (noisy[hit] == 1.0).float().mean().item() == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("shapes", [["rectangle"], ["line"], ["blob"], ["rectangle", "line", "blob"]])
def test_occlusion_covers_the_configured_share(shapes):
    occlusion = Occlusion(coverage=0.3, shapes=shapes, fill=0.0)
    images = torch.ones(8, 1, 32, 32)
    covered = (occlusion(images, seeded()) == 0).flatten(1).float().mean(1)
    assert (covered >= 0.3).all(), covered
    assert (covered <= 0.3 + 0.2).all(), covered  # overshoot by at most about one obstacle


def test_occlusion_is_reproducible_with_a_seeded_generator_and_random_without():
    occlusion = Occlusion(coverage=0.2)
    images = torch.rand(4, 3, 32, 32)
    assert torch.equal(occlusion(images, seeded(7)), occlusion(images, seeded(7)))
    assert not torch.equal(occlusion(images, seeded(7)), occlusion(images, seeded(8)))
    assert not torch.equal(occlusion(images), occlusion(images))


def high_frequency_energy(images: torch.Tensor) -> float:
    """Energy of the spatial frequencies above half the Nyquist frequency."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(images - images.mean((-2, -1), keepdim=True)), dim=(-2, -1)).abs() ** 2
    h, w = images.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    high = (ys.abs() > h // 4) | (xs.abs() > w // 4)
    return float(spectrum[..., high].sum())


def test_downsample_loses_high_frequencies_and_keeps_the_size():
    images = torch.rand(8, 1, 32, 32)
    low = Downsample(factor=4)(images)
    assert low.shape == images.shape
    assert high_frequency_energy(low) < 0.05 * high_frequency_energy(images)
    # the 8x8 content survives: area-downsampling the corrupted image gives back the same 8x8 image
    small = torch.nn.functional.interpolate(images, size=(8, 8), mode="area")
    assert torch.nn.functional.interpolate(Downsample(factor=4, upsample_mode="nearest")(images), size=(8, 8), mode="area").allclose(small, atol=1e-6)
    smooth = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(Downsample(factor=2)(smooth), smooth, atol=1e-6)


def test_grayscale_gives_one_channel_of_rec601_luma():
    images = torch.rand(4, 3, 16, 16)
    grey = Grayscale()(images)
    assert grey.shape == (4, 1, 16, 16)
    assert torch.allclose(grey, 0.299 * images[:, :1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:], atol=1e-6)
    assert torch.allclose(grey, rgb_to_grayscale(images))
    assert torch.equal(Grayscale()(grey), grey)


def test_compose_applies_steps_in_order():
    images = torch.rand(4, 3, 16, 16)
    both = Compose([Grayscale(), Masking(0.5)])
    out = corrupt_images(both, images, [0, 1, 2, 3], seed=5)
    assert out.shape == (4, 1, 16, 16)
    assert torch.equal(out, corrupt_images(both, images, [0, 1, 2, 3], seed=5))


@pytest.mark.parametrize("bad, message", [
    (lambda: Masking(1.5), "fraction: must lie in [0, 1]"),
    (lambda: GaussianNoise(sigma=0), "sigma: must be positive"),
    (lambda: Occlusion(shapes=["star"]), "shapes: a non-empty list of rectangle, line, blob"),
    (lambda: Downsample(factor=1), "factor: must be an integer >= 2"),
])
def test_bad_arguments_say_what_is_allowed(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        bad()


def first_batch(loader) -> dict:
    return next(iter(loader))


def test_data_module_corrupts_the_input_and_keeps_the_target_clean():
    clean = DigitsDataModule(batch_size=32)
    clean.setup()
    noisy = DigitsDataModule(batch_size=32, corruption=Masking(0.5))
    noisy.setup()
    for name in ("train", "val", "test"):
        loader = getattr(noisy, f"{name}_dataloader")()
        batch = first_batch(loader)
        reference = first_batch(getattr(clean, f"{name}_dataloader")()) if name != "train" else None
        assert set(batch) == {"image", "label", "input"}
        assert batch["input"].shape == batch["image"].shape
        assert not torch.equal(batch["input"], batch["image"])
        if reference is not None:
            assert torch.equal(batch["image"], reference["image"])  # the target is the clean image
        nonzero = batch["image"] > 0
        assert ((batch["input"] == 0) & nonzero).sum() > 0.3 * nonzero.sum()


def test_eval_corruption_is_identical_across_loaders_and_runs_and_training_noise_is_fresh():
    def make():
        module = DigitsDataModule(batch_size=50, corruption=Occlusion(coverage=0.25))
        module.setup()
        return module

    first, second = make(), make()
    torch.manual_seed(0)
    for name in ("val", "test"):
        a = first_batch(getattr(first, f"{name}_dataloader")())["input"]
        b = first_batch(getattr(first, f"{name}_dataloader")())["input"]
        c = first_batch(getattr(second, f"{name}_dataloader")())["input"]
        assert torch.equal(a, b) and torch.equal(a, c)
    # training: a different draw every time an example is seen
    train_split = first.splits["train"]
    assert not torch.equal(train_split[[0, 1, 2]]["input"], train_split[[0, 1, 2]]["input"])


def test_flattened_data_is_corrupted_in_image_shape_then_flattened():
    module = DigitsDataModule(batch_size=16, flatten=True, corruption=Downsample(factor=2, upsample_mode="nearest"))
    module.setup()
    batch = first_batch(module.test_dataloader())
    assert batch["input"].shape == batch["image"].shape == (16, 64)
    images = batch["image"].view(16, 1, 8, 8)
    expected = Downsample(factor=2, upsample_mode="nearest")(images).flatten(1)
    assert torch.allclose(batch["input"], expected)


def test_cli_dae_with_flattened_dense_autoencoder_trains(cfg_factory):
    metrics = train(cfg_factory("model=ae", "corruption=salt_pepper", "data.flatten=true", "trainer.fast_dev_run=true"))
    assert metrics["status"] == "finished"


def test_dae_logs_triplet_grids(cfg_factory, tmp_path):
    metrics = train(cfg_factory("model=dae", "corruption=occlusion", "trainer.max_steps=3", "data.limit=64"))
    assert metrics["status"] == "finished"
    grids = sorted((tmp_path / "images").glob("val_reconstructions_*.png"))
    assert grids
    from PIL import Image

    picture = Image.open(grids[-1])
    # 3 rows (corrupted input, output, clean target) of 8x8 digits blown up to 32 px, 1 px padding
    assert picture.height == 3 * 32 + 4


@pytest.mark.slow  # about a minute of CPU (150 conv steps); run with -m slow
@needs_mnist
def test_dae_with_masking_beats_the_identity_map_on_mnist(cfg_factory):
    overrides = [
        "model=dae", "corruption=masking", "corruption.fraction=0.5", "data=mnist", f"data.root={MNIST_ROOT}",
        "data.limit=2000", "data.val_size=128", "data.batch_size=64", "model.channels=[16,32]", "model.latent_dim=64",
        "model.optimizer.lr=0.003", "trainer.max_steps=150", "trainer.max_epochs=100", "callbacks=none",
    ]
    metrics = train(cfg_factory(*overrides))
    module = MNISTDataModule(root=str(MNIST_ROOT), limit=2000, val_size=128, batch_size=500, corruption=Masking(0.5))
    module.setup()
    errors = [((b["input"] - b["image"]) ** 2).mean() * len(b["image"]) for b in module.test_dataloader()]
    identity_mse = float(sum(errors) / len(module.splits["test"]))
    assert identity_mse == pytest.approx(0.5 * float((module.splits["test"].images.float() / 255).pow(2).mean()), rel=0.05)
    assert metrics["test/mse"] < 0.8 * identity_mse, (metrics["test/mse"], identity_mse)


def test_composed_corruption_from_config(cfg_factory):
    from latentbench.train import build_run

    cfg = cfg_factory("model=dae", "corruption=noisy_lowres", "corruption.steps.1.sigma=0.05", "data.limit=40")
    corruption = build_run(cfg)["datamodule"].corruption
    assert isinstance(corruption, Compose)
    assert [type(step) for step in corruption.steps] == [Downsample, GaussianNoise]
    assert corruption.steps[1].sigma == 0.05


@needs_mnist
def test_vincent2010_experiment_runs(cfg_factory):
    metrics = train(cfg_factory("experiment=vincent2010_masking", "corruption.fraction=0.4", "trainer.fast_dev_run=true",
                                "data.limit=256", "data.val_size=64", f"data.root={MNIST_ROOT}"))
    assert metrics["status"] == "finished" and np.isfinite(metrics["test/mse"])


def test_corrupt_splits_train_only_evaluates_clean_reconstruction(cfg_factory):
    """data.corrupt_splits=[train]: noisy inputs in training (a regulariser), clean val/test inputs,
    so val/test metrics measure plain reconstruction; a bad split name is one line."""
    module = DigitsDataModule(batch_size=16, corruption=GaussianNoise(sigma=0.2), corrupt_splits=["train"])
    module.setup()
    assert "input" in first_batch(module.train_dataloader())
    assert "input" not in first_batch(module.val_dataloader()) and "input" not in first_batch(module.test_dataloader())
    metrics = train(cfg_factory("corruption=gaussian", "data.corrupt_splits=[train]", "trainer.fast_dev_run=true"))
    assert np.isfinite(metrics["test/mse"])
    with pytest.raises(ValueError, match=r"corrupt_splits: expected a list of 'train', 'val', 'test', got \['training'\]"):
        DigitsDataModule(corrupt_splits=["training"])

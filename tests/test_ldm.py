"""Latent diffusion: the first stage (ae_kl), the LDM on top of it, sampling and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from latentbench.errors import ConfigError
from latentbench.models.ae_kl import AutoencoderKL
from latentbench.models.ldm import LatentDiffusion
from latentbench.train import train
from tests.conftest import FAST, MNIST_ROOT, MNIST_SLICE, make_cfg

TINY_AE = ["model.layers_per_block=1", "model.norm_num_groups=4"]
CHANNELS = {1: "[8]", 2: "[8,16]", 4: "[8,16,16]", 8: "[8,8,16,16]"}


def ae_kl_overrides(factor: int, *extra: str) -> list[str]:
    return ["model=ae_kl", f"model.factor={factor}", f"model.channels={CHANNELS[factor]}", *TINY_AE, *extra]


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_ae_kl_trains_and_round_trips_shapes(cfg_factory, factor):
    metrics = train(cfg_factory(*ae_kl_overrides(factor), "data.limit=64", "data.batch_size=32"))
    assert np.isfinite(metrics["test/recon_sse"]) and metrics["test/recon_sse"] > 0
    model = AutoencoderKL.load_from_checkpoint(metrics["checkpoint"], weights_only=True)
    x = torch.rand(3, 1, 8, 8)
    latents = model.encode_latents(x)
    assert latents.shape == (3, 4, 8 // factor, 8 // factor)
    assert model.decode_latents(latents).shape == x.shape


def test_ae_kl_loss_falls(cfg_factory):
    cfg = cfg_factory(*ae_kl_overrides(2), "trainer.max_epochs=6", "data.limit=512", "model.optimizer.lr=0.003")
    metrics = train(cfg)
    first = AutoencoderKL(input_shape=[1, 8, 8], factor=2, channels=[8, 16], norm_num_groups=4)
    # an untrained model reconstructs at chance; training must take the error well below it
    from latentbench.data.digits import DigitsDataModule

    data = DigitsDataModule(limit=512)
    data.setup()
    images = data.splits["test"].images.float() / 16.0
    with torch.no_grad():
        untrained_sse = ((first(images) - images) ** 2).flatten(1).sum(1).mean().item()
    assert metrics["test/recon_sse"] < 0.5 * untrained_sse


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.factor=3"], "model.factor: must be one of 1, 2, 4, 8, got 3"),
        (ae_kl_overrides(8, "data=mnist", f"data.root={MNIST_ROOT}"), "model.factor: image size 28x28 is not divisible by factor 8"),
        (["model=ae_kl", "model.factor=2"], "model.channels: factor 2 needs 2 levels"),
    ],
)
def test_ae_kl_config_errors(cfg_factory, overrides, message):
    if overrides[0] != "model=ae_kl":
        overrides = ["model=ae_kl", *overrides]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        train(cfg_factory(*overrides))


# -- latent diffusion ----------------------------------------------------------------------------
TINY_LDM = ["model=ldm", "model.unet.block_out_channels=[16,32]", "model.sampling.steps=4", "model.sampling.per_condition=2",
            "data.limit=64", "data.batch_size=32", "model.latent_std_batches=2"]


@pytest.fixture(scope="module")
def first_stage_checkpoint(tmp_path_factory) -> str:
    """A tiny ae_kl (factor 2) trained for one epoch on digits: latents 4x4x4."""
    output = tmp_path_factory.mktemp("ae_kl")
    metrics = train(make_cfg([*FAST, *ae_kl_overrides(2), "data.limit=128", "data.batch_size=32"], output))
    GlobalHydra.instance().clear()
    return str(output)  # the run directory: stands for its best checkpoint


@pytest.mark.parametrize("conditioning", ["none", "class"])
def test_ldm_trains_on_first_stage_latents(cfg_factory, tmp_path, first_stage_checkpoint, conditioning):
    cfg = cfg_factory(*TINY_LDM, f"model.conditioning={conditioning}", f"model.first_stage.checkpoint={first_stage_checkpoint}")
    metrics = train(cfg)
    assert np.isfinite(metrics["test/loss"]) and np.isfinite(metrics["test/first_stage/psnr"])
    model = LatentDiffusion.load_from_checkpoint(metrics["checkpoint"], weights_only=True)
    assert model.latent_shape == (4, 4, 4)
    assert 0.0 < float(model.latent_std) != 1.0  # measured at fit start and saved
    samples = sorted((tmp_path / "images").glob("val_samples_*.png"))
    assert samples, "no sample grid was logged"
    rows = 10 if conditioning == "class" else 1
    height = np.asarray(Image.open(samples[0])).shape[0]
    assert height == rows * 32 + rows + 1  # 8x8 digits shown at 32 px, one row per class


def test_pixel_space_ldm_trains_on_mnist(cfg_factory):
    pytest.importorskip("latentbench.data.mnist")
    if not MNIST_ROOT.is_dir():
        pytest.skip("no MNIST")
    metrics = train(cfg_factory(*TINY_LDM, *MNIST_SLICE[:2], "data.limit=64", "data.val_size=32", "model.conditioning=class",
                                "model.unet.attention=[false,false]", "model.sampling.every_n_epochs=0"))
    assert np.isfinite(metrics["test/loss"])
    model = LatentDiffusion.load_from_checkpoint(metrics["checkpoint"], weights_only=True)
    assert model.first_stage is None and model.latent_shape == (1, 28, 28)

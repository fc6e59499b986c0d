"""KL-regularised convolutional autoencoder: the first stage of latent diffusion.

The encoder and decoder are diffusers' ``AutoencoderKL`` configured small: ``log2(factor)``
stride-2 stages map an image ``(B, C, H, W)`` to a spatial latent ``(B, latent_channels, H/f, W/f)``
(a diagonal Gaussian: mean and log-variance), and the decoder mirrors it. With ``kl_weight > 0``
the loss is ``reconstruction + kl_weight * KL(q(z|x) || N(0, I))`` on a sampled latent (a VAE with
a weak prior, as in Rombach et al. 2022); with ``kl_weight = 0`` it is a plain autoencoder on the
latent mean.
"""

from __future__ import annotations

import math

import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL

from latentbench.models.ae import Loss
from latentbench.models.base import ReconstructionModel, check_positive, log_training_values
from latentbench.models.blocks import OutputActivation, output_layer, reconstruction_loss

FACTORS = (1, 2, 4, 8)


class AutoencoderKL(ReconstructionModel):
    """First-stage autoencoder with a spatial latent and optional KL regularisation.

    Args:
        factor (`int`): spatial downsampling factor f, one of 1, 2, 4, 8; H and W must be divisible by it.
        latent_channels (`int`): channels c of the latent.
        channels (`list[int]`): width of each encoder level; ``len(channels)`` must be
            ``log2(factor) + 1`` (one level per downsampling, plus the first).
        layers_per_block (`int`): ResNet blocks per level.
        norm_num_groups (`int`): GroupNorm groups; must divide every entry of ``channels``.
        mid_block_attention (`bool`): self-attention in the bottleneck block.
        kl_weight (`float`): weight of the KL term; 0 trains a plain (deterministic) autoencoder.
        output_activation (`str`): ``sigmoid`` keeps reconstructions in [0, 1]; ``none`` leaves them unbounded.
        loss (`str`): reconstruction loss ``mse``, ``l1`` or ``bce``.
        input_shape, optimizer, scheduler: see :class:`ReconstructionModel`; input_shape is ``(C, H, W)``.

    Shapes: ``encode_latents: (B, C, H, W) in [0, 1] -> (B, c, H/f, W/f)`` (posterior mean);
    ``decode_latents: (B, c, H/f, W/f) -> (B, C, H, W)``; ``encode``/``decode`` are the same on
    flattened codes ``(B, c*H/f*W/f)`` so that the harness's grids and embedding plots work.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] | list[int],
        factor: int = 4,
        latent_channels: int = 4,
        channels: list[int] = (32, 64, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        mid_block_attention: bool = False,
        kl_weight: float = 1e-6,
        output_activation: OutputActivation = "sigmoid",
        loss: Loss = "mse",
        **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        if len(self.input_shape) != 3:
            raise ValueError(f"input_shape: ae_kl needs (C, H, W) images, got {self.input_shape} (set data.flatten=false)")
        if factor not in FACTORS:
            raise ValueError(f"factor: must be one of {', '.join(map(str, FACTORS))}, got {factor}")
        in_channels, height, width = self.input_shape
        if height % factor or width % factor:
            side = -(-max(height, width) // factor) * factor  # the next multiple of the factor
            raise ValueError(f"factor: image size {height}x{width} is not divisible by factor {factor} "
                             f"(allowed: a factor dividing both sides, or pad the images: data.pad_to={side})")
        levels = int(math.log2(factor)) + 1
        if len(channels) != levels:
            raise ValueError(f"channels: factor {factor} needs {levels} levels (log2(factor) + 1), got {len(channels)}: {list(channels)}")
        for width_ in channels:
            check_positive("channels", width_)
        check_positive("latent_channels", latent_channels)
        check_positive("layers_per_block", layers_per_block)
        check_positive("norm_num_groups", norm_num_groups)
        if any(width_ % norm_num_groups for width_ in channels):
            raise ValueError(f"norm_num_groups: {norm_num_groups} must divide every entry of channels {list(channels)}")
        if kl_weight < 0:
            raise ValueError(f"kl_weight: must be >= 0, got {kl_weight}")
        if loss == "bce" and output_activation != "sigmoid":
            raise ValueError(f"loss: 'bce' needs output_activation 'sigmoid', got {output_activation!r}")
        self.factor, self.latent_channels, self.kl_weight, self.loss_name = factor, latent_channels, kl_weight, loss
        self.latent_shape = (latent_channels, height // factor, width // factor)
        self.autoencoder = DiffusersAutoencoderKL(
            in_channels=in_channels,
            out_channels=in_channels,
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(channels),
            layers_per_block=layers_per_block,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            sample_size=height,
            mid_block_add_attention=mid_block_attention,
        )
        self.output = output_layer(output_activation)

    # -- the latent interface latent diffusion uses ------------------------------------------
    def posterior(self, x: torch.Tensor):
        """``q(z | x)`` for images ``(B, C, H, W)`` in [0, 1]: a diffusers ``DiagonalGaussianDistribution``."""
        return self.autoencoder.encode(x * 2.0 - 1.0).latent_dist

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in [0, 1] -> posterior mean ``(B, c, H/f, W/f)``."""
        return self.posterior(x).mean

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, c, H/f, W/f)`` -> images ``(B, C, H, W)`` (in [0, 1] with the sigmoid output)."""
        return self.output(self.autoencoder.decode(z).sample)

    # -- ReconstructionModel interface ---------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_latents(x).flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_latents(z.reshape(len(z), *self.latent_shape))

    def training_loss(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(self.loss_name, reconstruction, target)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        posterior = self.posterior(self.model_input(batch))
        z = posterior.sample() if self.kl_weight > 0 else posterior.mean
        reconstruction = self.decode_latents(z)
        loss = self.training_loss(reconstruction, batch["image"])
        logged = {}
        if self.kl_weight > 0:
            kl = posterior.kl().mean() / math.prod(self.input_shape)  # per pixel, like the reconstruction loss
            logged["train/kl"] = kl
            loss = loss + self.kl_weight * kl
        log_training_values(self, {"train/loss": loss, **logged}, len(z))
        return loss

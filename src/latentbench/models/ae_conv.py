"""Convolutional autoencoder for images of any size the data module produces."""

from __future__ import annotations

import torch
from torch import nn

from latentbench.models.ae import Loss
from latentbench.models.base import ReconstructionModel, check_code_and_loss, check_positive
from latentbench.models.blocks import OutputActivation, conv_down, conv_up, output_layer, reconstruction_loss


class ConvAutoEncoder(ReconstructionModel):
    """Stride-2 conv encoder, a linear bottleneck, and a mirrored upsample+conv decoder.

    Each encoder stage halves the spatial size (rounding up); the decoder upsamples back to the
    exact sizes it recorded, so odd sizes (28 -> 14 -> 7 -> 4) come back unchanged.

    Args:
        channels (`list[int]`): output channels of each encoder stage, e.g. ``[32, 64]``.
        latent_dim (`int`): size of the code vector.
        activation (`str`): a ``torch.nn`` activation class name.
        output_activation (`str`): ``sigmoid`` or ``none``.
        loss (`str`): ``mse``, ``bce`` or ``l1``.
        input_shape, optimizer, scheduler: see :class:`ReconstructionModel`; input_shape must be ``(C, H, W)``.

    Shapes: ``encode: (B, C, H, W) -> (B, latent_dim)``; ``decode: (B, latent_dim) -> (B, C, H, W)``.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] | list[int],
        channels: list[int] = (32, 64),
        latent_dim: int = 16,
        activation: str = "ReLU",
        output_activation: OutputActivation = "sigmoid",
        loss: Loss = "mse",
        **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        if len(self.input_shape) != 3:
            raise ValueError(f"input_shape: a conv autoencoder needs (C, H, W) images, got {self.input_shape} (set data.flatten=false)")
        if not channels:
            raise ValueError("channels: needs at least one stage, got []")
        for width in channels:
            check_positive("channels", width)
        check_code_and_loss(latent_dim, self.input_dim, loss, output_activation)
        self.loss_name = loss
        in_channels, height, width = self.input_shape
        sizes = [(height, width)]
        for _ in channels:
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
        stages = [in_channels, *channels]
        self.encoder_convs = nn.Sequential(*(conv_down(a, b, activation) for a, b in zip(stages[:-1], stages[1:])))
        self.bottleneck_shape = (channels[-1], *sizes[-1])
        flat = channels[-1] * sizes[-1][0] * sizes[-1][1]
        self.to_code = nn.Linear(flat, latent_dim)
        self.from_code = nn.Sequential(nn.Linear(latent_dim, flat), nn.Unflatten(1, self.bottleneck_shape))
        up_stages = [
            conv_up(stages[i + 1], stages[i] if i > 0 else stages[1], sizes[i], activation) for i in reversed(range(len(channels)))
        ]
        self.decoder_convs = nn.Sequential(
            *up_stages, nn.Conv2d(stages[1], in_channels, kernel_size=3, padding=1), output_layer(output_activation)
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.encoder_convs(x).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder_convs(self.from_code(z))

    def training_loss(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(self.loss_name, reconstruction, target)

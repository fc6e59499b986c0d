"""Dense (fully connected) autoencoder, e.g. the Hinton & Salakhutdinov 2006 784-1000-500-250-30 net."""

from __future__ import annotations

from typing import Literal

import torch

from latentbench.models.base import ReconstructionModel, check_code_and_loss, check_positive
from latentbench.models.blocks import OutputActivation, mlp, output_layer, reconstruction_loss

Loss = Literal["mse", "bce", "l1"]


class AutoEncoder(ReconstructionModel):
    """Encoder ``D -> hidden... -> latent_dim`` (linear code), mirrored decoder back to ``D``.

    Args:
        hidden (`list[int]`): widths of the hidden layers of the encoder, e.g. ``[1000, 500, 250]``.
        latent_dim (`int`): size of the code layer.
        activation (`str`): a ``torch.nn`` activation class name used between layers.
        output_activation (`str`): ``sigmoid`` (pixels in [0, 1]) or ``none``.
        loss (`str`): ``mse``, ``bce`` (needs ``output_activation: sigmoid``) or ``l1``.
        dropout (`float`): dropout after every hidden activation of encoder and decoder (0: none), a
            regulariser against the deep AE's overfitting (train 2.4 vs test 4.2 squared error per image).
        init (`str`): weight initialisation of every linear layer, ``default`` (PyTorch's) or ``xavier``
            (Glorot, with the activation's gain; what saturating units such as Tanh need to train).
        input_shape, optimizer, scheduler: see :class:`ReconstructionModel`.

    Shapes: ``encode: (B, *input_shape) -> (B, latent_dim)``; ``decode: (B, latent_dim) -> (B, *input_shape)``.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] | list[int],
        hidden: list[int] = (1000, 500, 250),
        latent_dim: int = 30,
        activation: str = "ReLU",
        output_activation: OutputActivation = "sigmoid",
        loss: Loss = "mse",
        dropout: float = 0.0,
        init: str = "default",
        **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        for width in hidden:
            check_positive("hidden", width)
        check_code_and_loss(latent_dim, self.input_dim, loss, output_activation)
        self.loss_name = loss
        sizes = [self.input_dim, *hidden, latent_dim]
        self.encoder = mlp(sizes, activation, dropout=dropout, init=init)
        self.decoder = mlp(sizes[::-1], activation, last=output_layer(output_activation), dropout=dropout, init=init)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.input_shape)

    def training_loss(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(self.loss_name, reconstruction, target)

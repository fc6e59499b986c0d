"""Building blocks reused by several models."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

OutputActivation = Literal["sigmoid", "none"]


def activation_layer(name: str) -> nn.Module:
    """An activation from ``torch.nn`` by class name, e.g. ``"ReLU"``, ``"Sigmoid"``, ``"GELU"``."""
    layer = getattr(nn, name, None)
    if not (isinstance(layer, type) and issubclass(layer, nn.Module)):
        raise ValueError(f"activation: {name!r} is not a torch.nn activation (e.g. ReLU, Sigmoid, GELU, SiLU, Tanh)")
    return layer()


def output_layer(name: OutputActivation) -> nn.Module:
    """The last layer of a decoder: ``sigmoid`` keeps pixels in [0, 1], ``none`` leaves them unbounded."""
    if name not in ("sigmoid", "none"):
        raise ValueError(f"output_activation: {name!r} is not allowed (allowed: sigmoid, none)")
    return nn.Sigmoid() if name == "sigmoid" else nn.Identity()


def mlp(sizes: list[int], activation: str, last: nn.Module | None = None, dropout: float = 0.0,
        init: str = "default") -> nn.Sequential:
    """Linear layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``, ``activation`` between them.

    The last linear layer is followed by ``last`` (linear output when None). With ``dropout > 0``
    each hidden activation is followed by ``nn.Dropout(dropout)`` (none is added at 0, so the layer
    indices, and checkpoints, of a net without dropout stay as they were). ``init`` is the weight
    initialisation: see :func:`init_linear`.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: must be in [0, 1), got {dropout}")
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        hidden = index < len(sizes) - 2
        layers.append(init_linear(nn.Linear(fan_in, fan_out), init, activation if hidden else None))
        if hidden:
            layers.append(activation_layer(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    if last is not None:
        layers.append(last)
    return nn.Sequential(*layers)


INITS = ("default", "xavier")
# nn.init.calculate_gain's names for the activations it knows; others get gain 1.
_GAIN_NAMES = {"ReLU": "relu", "Tanh": "tanh", "SELU": "selu", "LeakyReLU": "leaky_relu"}
# calculate_gain says 1 for the logistic, whose slope at 0 is 1/4: Glorot & Bengio use 4.
_LOGISTIC_GAIN = 4.0


def init_linear(layer: nn.Linear, init: str, activation: str | None) -> nn.Linear:
    """Initialises ``layer`` in place and returns it.

    ``default`` keeps PyTorch's (uniform in +-1/sqrt(fan_in)): it shrinks the signal at every layer,
    which a deep net of saturating units (Sigmoid, Tanh) barely recovers from without pre-training.
    ``xavier`` is Glorot & Bengio (2010): uniform with variance ``gain^2 * 2 / (fan_in + fan_out)``,
    the gain of the ``activation`` that follows (1 for a linear code or output layer), biases zero.
    """
    if init not in INITS:
        raise ValueError(f"init: {init!r} is not allowed (allowed: {', '.join(INITS)})")
    if init == "xavier":
        if activation == "Sigmoid":
            gain = _LOGISTIC_GAIN
        elif activation in _GAIN_NAMES:
            gain = nn.init.calculate_gain(_GAIN_NAMES[activation])
        else:
            gain = 1.0
        nn.init.xavier_uniform_(layer.weight, gain=gain)
        nn.init.zeros_(layer.bias)
    return layer


def conv_down(in_channels: int, out_channels: int, activation: str) -> nn.Sequential:
    """3x3 conv with stride 2: ``(B, in, H, W) -> (B, out, ceil(H/2), ceil(W/2))``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1),
        activation_layer(activation),
    )


def conv_up(in_channels: int, out_channels: int, size: tuple[int, int], activation: str | None) -> nn.Sequential:
    """Nearest upsampling to exactly ``size`` then a 3x3 conv: ``(B, in, h, w) -> (B, out, *size)``.

    Upsampling to a recorded size (not by a factor) restores odd sizes such as 7 -> 14 -> 28 or 5 -> 9.
    """
    layers: list[nn.Module] = [nn.Upsample(size=size, mode="nearest"), nn.Conv2d(in_channels, out_channels, 3, padding=1)]
    if activation is not None:
        layers.append(activation_layer(activation))
    return nn.Sequential(*layers)


def reconstruction_loss(name: str, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-element loss, a float32 scalar: ``mse``, ``l1`` or ``bce`` (bce expects reconstructions in [0, 1]).

    Computed in float32 with autocast off: CUDA autocast refuses ``binary_cross_entropy`` on
    probabilities, and a bf16 sum over 784 pixels would round the loss anyway.
    """
    reconstruction, target = reconstruction.float(), target.float()
    with torch.autocast(reconstruction.device.type, enabled=False):
        if name == "mse":
            return nn.functional.mse_loss(reconstruction, target)
        if name == "l1":
            return nn.functional.l1_loss(reconstruction, target)
        return nn.functional.binary_cross_entropy(reconstruction.clamp(1e-6, 1 - 1e-6), target)

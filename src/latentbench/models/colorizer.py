"""Colorizer: a U-Net-style conv encoder-decoder that colours grey images, in RGB, YCbCr or LAB."""

from __future__ import annotations

from typing import Literal

import torch
from kornia.color import lab_to_rgb, rgb_to_grayscale, rgb_to_lab, rgb_to_ycbcr, ycbcr_to_rgb
from torch import nn

from latentbench.models.base import EvalOutput, ReconstructionModel, check_positive, log_training_values
from latentbench.models.blocks import activation_layer

ColorSpace = Literal["rgb", "ycbcr", "lab"]
LAB_L_MAX = 100.0  # L* lies in [0, 100]
LAB_AB_SCALE = 110.0  # a*, b* of sRGB colours lie within about [-110, 110] (kornia's rgb_to_lab)


def split_luminance(rgb: torch.Tensor, color_space: ColorSpace) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RGB ``(B, 3, H, W)`` in [0, 1] -> normalised luminance ``(B, 1, H, W)`` in [0, 1] and chroma
    ``(B, 2, H, W)`` of ``color_space`` (None for ``rgb``, whose luminance is Rec. 601 luma).

    ycbcr: Y, Cb, Cr from kornia, all in [0, 1]. lab: L / 100 and (a, b) / 110, so that chroma lies
    roughly in [-1, 1].
    """
    if color_space == "ycbcr":
        ycbcr = rgb_to_ycbcr(rgb)
        return ycbcr[:, :1], ycbcr[:, 1:]
    if color_space == "lab":
        lab = rgb_to_lab(rgb)
        return lab[:, :1] / LAB_L_MAX, lab[:, 1:] / LAB_AB_SCALE
    return rgb_to_grayscale(rgb), None


def merge_luminance(luminance: torch.Tensor, chroma: torch.Tensor, color_space: ColorSpace) -> torch.Tensor:
    """Inverse of :func:`split_luminance` for ``ycbcr`` / ``lab``: ``(B, 1, H, W)`` + ``(B, 2, H, W)``
    -> RGB ``(B, 3, H, W)``, not yet clipped (colours outside the sRGB gamut leave [0, 1])."""
    if color_space == "ycbcr":
        return ycbcr_to_rgb(torch.cat([luminance, chroma], dim=1))
    lab = torch.cat([luminance * LAB_L_MAX, chroma * LAB_AB_SCALE], dim=1)
    return lab_to_rgb(lab, clip=False)


def conv_block(in_channels: int, out_channels: int, activation: str, stride: int = 1) -> nn.Sequential:
    """Two 3x3 convs (the first with ``stride``): ``(B, in, H, W) -> (B, out, ceil(H/stride), ceil(W/stride))``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1), activation_layer(activation),
        nn.Conv2d(out_channels, out_channels, 3, padding=1), activation_layer(activation),
    )


class Colorizer(ReconstructionModel):
    """Grey image -> colour image, with U-Net skips (encoder features concatenated into the decoder).

    ``color_space``:
        ``rgb``: the net sees the grey image and predicts the 3 RGB channels (sigmoid);
        ``ycbcr`` / ``lab``: the net sees the luminance (Y, or L / 100) and predicts only the two chroma
        channels (Cb, Cr by sigmoid; a, b / 110 by tanh); the output is the input luminance merged with
        the predicted chroma, converted back to RGB by kornia. The luminance is never re-predicted.

    The input is the grey image of the ``grayscale`` corruption (``model=colorizer`` picks it), i.e.
    Rec. 601 luma, which is exactly Y; for ``lab``, L is that of the grey image. A 3-channel input is
    reduced to the luminance of ``color_space`` first. The loss is the MSE in the model's own space
    (RGB, or normalised chroma); the metrics (recon_sse, mse, psnr, ssim) are always in RGB.

    Args:
        color_space (`str`): ``rgb``, ``ycbcr`` or ``lab``.
        channels (`list[int]`): feature channels per level; each level after the first halves the size.
        activation (`str`): a ``torch.nn`` activation class name.
        input_shape, optimizer, scheduler: see :class:`ReconstructionModel`; ``input_shape`` is the
            data's image shape and must be ``(3, H, W)``.

    Shapes: ``forward: (B, 1 or 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1]``;
    ``encode: (B, 1 or 3, H, W) -> (B, channels[-1])`` (the average-pooled bottleneck, for embeddings).
    """

    accepts_grey_input = True  # the grayscale corruption's (B, 1, H, W) input; see train.check_corruption_fits_model


    def __init__(
        self,
        input_shape: tuple[int, ...] | list[int],
        color_space: ColorSpace = "lab",
        channels: list[int] = (32, 64, 128),
        activation: str = "ReLU",
        **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        if color_space not in ("rgb", "ycbcr", "lab"):
            raise ValueError(f"color_space: must be rgb, ycbcr or lab, got {color_space!r}")
        if len(self.input_shape) != 3:
            raise ValueError(f"input_shape: the colorizer needs (C, H, W) images, got {self.input_shape} (set data.flatten=false)")
        if self.input_shape[0] != 3:
            raise ValueError(
                f"color_space: the colorizer needs RGB data, the data gives {self.input_shape[0]} channel"
                f"{'s' if self.input_shape[0] != 1 else ''} (input_shape {list(self.input_shape)}; use e.g. data=images)"
            )
        channels = list(channels)
        if not channels:
            raise ValueError("channels: needs at least one level, got []")
        for width in channels:
            check_positive("channels", width)
        self.color_space = color_space
        self.down = nn.ModuleList(
            conv_block(1 if i == 0 else channels[i - 1], width, activation, stride=1 if i == 0 else 2)
            for i, width in enumerate(channels)
        )
        self.up = nn.ModuleList(nn.Conv2d(channels[i], channels[i - 1], 3, padding=1) for i in range(len(channels) - 1, 0, -1))
        self.fuse = nn.ModuleList(conv_block(2 * channels[i - 1], channels[i - 1], activation) for i in range(len(channels) - 1, 0, -1))
        self.head = nn.Conv2d(channels[0], 3 if color_space == "rgb" else 2, kernel_size=1)
        self.head_activation = nn.Tanh() if color_space == "lab" else nn.Sigmoid()
        if color_space != "rgb":  # start from neutral chroma (tanh(0) = 0, sigmoid(0) = 0.5): the grey image
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    # -- colour spaces -----------------------------------------------------------------------
    def luminance(self, x: torch.Tensor) -> torch.Tensor:
        """The net's input: ``(B, 1 or 3, H, W) -> (B, 1, H, W)`` normalised luminance of ``color_space``."""
        if x.shape[1] == 3:
            return split_luminance(x, self.color_space)[0]
        if self.color_space == "lab":
            return rgb_to_lab(x.expand(-1, 3, -1, -1))[:, :1] / LAB_L_MAX
        return x  # grey luma is Y, and the rgb model's input

    def to_rgb(self, luminance: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """The output image ``(B, 3, H, W)`` in [0, 1] from the input luminance and the net's prediction."""
        if self.color_space == "rgb":
            return prediction
        return merge_luminance(luminance, prediction, self.color_space).clamp(0.0, 1.0)

    def target_of(self, rgb: torch.Tensor) -> torch.Tensor:
        """What the net should predict for a clean RGB target: RGB itself, or its normalised chroma."""
        return rgb if self.color_space == "rgb" else split_luminance(rgb, self.color_space)[1]

    # -- the network -------------------------------------------------------------------------
    def _features(self, luminance: torch.Tensor) -> list[torch.Tensor]:
        features = []
        h = luminance
        for block in self.down:
            h = block(h)
            features.append(h)
        return features

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x -> (rgb output, prediction in the model's space, bottleneck features)``."""
        luminance = self.luminance(x)
        features = self._features(luminance)
        h = features[-1]
        for up, fuse, skip in zip(self.up, self.fuse, reversed(features[:-1])):
            h = nn.functional.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = fuse(torch.cat([up(h), skip], dim=1))
        prediction = self.head_activation(self.head(h))
        return self.to_rgb(luminance, prediction), prediction, features[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)[0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(self.luminance(x))[-1].mean(dim=(-2, -1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("the colorizer decodes through its skip connections; use forward(x)")

    def training_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE in the model's own space: ``prediction`` from :meth:`predict`, ``target`` the clean RGB image."""
        return nn.functional.mse_loss(prediction, self.target_of(target))

    # -- steps: loss in the model's space, metrics in RGB -------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, prediction, _ = self.predict(self.model_input(batch))
        loss = self.training_loss(prediction, batch["image"])
        log_training_values(self, {"train/loss": loss}, len(prediction))
        return loss

    def evaluation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> EvalOutput:
        output, prediction, bottleneck = self.predict(self.model_input(batch))
        target = batch["image"]
        self.log(f"{stage}/loss", self.training_loss(prediction, target), prog_bar=stage == "val", batch_size=len(target))
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(output.detach().float(), target.float())
        self.log_dict(metrics, batch_size=len(target))
        return EvalOutput(reconstruction=output.detach(), codes=bottleneck.mean(dim=(-2, -1)).detach())

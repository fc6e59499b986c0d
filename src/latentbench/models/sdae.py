"""Stacked denoising autoencoder (Vincent et al. 2010, JMLR 11): logistic layers pre-trained greedily, one at a time.

Layer ``k`` maps the codes of the layer below, ``h_{k-1}`` (``h_0`` = the pixels), to
``h_k = sigmoid(W_k h_{k-1} + b_k)`` and is trained as a denoising autoencoder of its own: a
``masking`` fraction of its input units is set to zero, and the tied decoder
``sigmoid(W_k^T h_k + c_k)`` reconstructs the clean ``h_{k-1}`` (cross-entropy: pixels and codes both
lie in [0, 1]). The layers below stay frozen while layer ``k`` trains, the layers above are not
used yet. ``masking: 0`` gives the stacked plain autoencoders (SAE) of the paper's baseline rows.

The whole schedule is one Lightning fit: the layer trained at a step follows from the trainer's
epoch (``epochs_per_layer``) or global step (``steps_per_layer``) alone, so a run resumed anywhere in
the schedule continues exactly where it stopped. The pre-trained stack initialises a classifier
(``model=mlp_classifier model.pretrained=<this run>``), which is then fine-tuned with the labels.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from latentbench.corruptions import Masking
from latentbench.errors import ConfigError
from latentbench.models.base import EvalOutput, ReconstructionModel, check_positive, log_training_values
from latentbench.models.blocks import reconstruction_loss

LayerLoss = Literal["bce", "mse"]


class StackedDenoisingAutoEncoder(ReconstructionModel):
    """A stack ``D -> hidden[0] -> hidden[1] -> ...`` of logistic layers, each a denoising autoencoder
    with tied weights, trained greedily bottom-up.

    Args:
        input_shape (`list[int]`): ``(C, H, W)`` or ``(D,)`` of inputs in [0, 1]; filled in from the data.
        hidden (`list[int]`): widths of the stacked layers, bottom first (the paper: ``[1000, 1000, 1000]``).
        masking (`float`): fraction of a layer's input units set to zero while that layer trains, in
            [0, 1) (the paper's nu; 0.25 for SDAE-3 on MNIST); 0 = plain autoencoders (SAE).
        epochs_per_layer (`int`, *optional*): epochs spent on each layer: layer ``epoch // epochs_per_layer``.
        steps_per_layer (`int`, *optional*): or optimizer steps per layer: layer ``global_step // steps_per_layer``.
            Exactly one of the two is set; the fit must be long enough for every layer
            (``trainer.max_epochs >= len(hidden) * epochs_per_layer``); epochs beyond it train the top layer on.
        loss (`str`): reconstruction loss of every layer, ``bce`` (cross-entropy) or ``mse``.
        optimizer, scheduler: see :class:`ReconstructionModel` (one optimizer over the whole stack: a
            frozen layer gets no gradient, so no update).

    Shapes: ``encode: (B, *input_shape) -> (B, hidden[-1])`` codes in (0, 1) through every layer;
    ``decode: (B, hidden[-1]) -> (B, *input_shape)`` in (0, 1) through the tied decoders, top first;
    :meth:`layer_codes` ``(B, *input_shape) -> (B, sizes[k])``.

    ``layer_steps`` (a buffer, saved with the weights) counts the training steps each layer has had:
    a record, read by the fine-tuning classifier to refuse a stack whose upper layers never trained.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] | list[int],
        hidden: list[int] = (1000, 1000, 1000),
        masking: float = 0.25,
        epochs_per_layer: int | None = None,
        steps_per_layer: int | None = None,
        loss: LayerLoss = "bce",
        **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        if not hidden:
            raise ValueError("hidden: a stack needs at least one layer, got []")
        for width in hidden:
            check_positive("hidden", width)
        if not 0.0 <= masking < 1.0:
            raise ValueError(f"masking: must lie in [0, 1), got {masking}")
        if (epochs_per_layer is None) == (steps_per_layer is None):
            raise ValueError(f"epochs_per_layer: set exactly one of epochs_per_layer and steps_per_layer "
                             f"(got {epochs_per_layer} and {steps_per_layer})")
        for name, value in (("epochs_per_layer", epochs_per_layer), ("steps_per_layer", steps_per_layer)):
            if value is not None:
                check_positive(name, value)
        if loss not in ("bce", "mse"):
            raise ValueError(f"loss: {loss!r} is not allowed (allowed: bce, mse)")
        self.sizes = [self.input_dim, *(int(w) for w in hidden)]
        self.num_layers = len(hidden)
        self.masking, self.loss_name = float(masking), loss
        self.epochs_per_layer, self.steps_per_layer = epochs_per_layer, steps_per_layer
        self.noise = Masking(self.masking)
        self.encoders = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.sizes[:-1], self.sizes[1:]))
        self.decoder_biases = nn.ParameterList(nn.Parameter(torch.zeros(a)) for a in self.sizes[:-1])
        self.register_buffer("layer_steps", torch.zeros(self.num_layers, dtype=torch.long))

    # -- the schedule ------------------------------------------------------------------------------
    def layer_at(self, epoch: int, step: int) -> int:
        """The (0-based) layer trained at ``epoch`` / optimizer ``step`` of the fit."""
        done = epoch // self.epochs_per_layer if self.epochs_per_layer else step // self.steps_per_layer
        return min(done, self.num_layers - 1)

    def on_fit_start(self) -> None:
        """Refuse a fit too short to reach the top layer, and noise added by the data (this model adds its own)."""
        trainer = self.trainer
        if getattr(trainer.datamodule, "corruption", None) is not None:
            raise ConfigError("corruption: model=sdae masks each layer's input itself (model.masking); use corruption=none")
        n = self.num_layers
        if self.epochs_per_layer and 0 <= (trainer.max_epochs or 0) < n * self.epochs_per_layer:
            raise ConfigError(f"trainer.max_epochs: {trainer.max_epochs} is too short for the layer schedule: {n} layers x "
                              f"model.epochs_per_layer={self.epochs_per_layer} = {n * self.epochs_per_layer} epochs")
        if self.steps_per_layer and trainer.estimated_stepping_batches < n * self.steps_per_layer:
            raise ConfigError(f"trainer.max_epochs: the fit has {trainer.estimated_stepping_batches} steps, too few for the layer "
                              f"schedule: {n} layers x model.steps_per_layer={self.steps_per_layer} = {n * self.steps_per_layer} steps")

    # -- one layer ---------------------------------------------------------------------------------
    def encode_layer(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """``(B, sizes[k]) -> (B, sizes[k + 1])``: layer ``k``'s logistic codes."""
        return torch.sigmoid(self.encoders[k](h))

    def decode_layer(self, k: int, code: torch.Tensor) -> torch.Tensor:
        """``(B, sizes[k + 1]) -> (B, sizes[k])`` in (0, 1): layer ``k``'s tied decoder (``W_k^T``)."""
        return torch.sigmoid(F.linear(code, self.encoders[k].weight.t(), self.decoder_biases[k]))

    def layer_codes(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The input of layer ``k``: ``x`` through layers ``0 .. k-1``; ``(B, *input_shape) -> (B, sizes[k])``."""
        h = x.flatten(1)
        for below in range(k):
            h = self.encode_layer(below, h)
        return h

    def corrupt(self, h: torch.Tensor) -> torch.Tensor:
        """Masking noise on ``(B, D)`` units (fresh draws from the global RNG, seeded by the run)."""
        if self.masking == 0:
            return h
        return self.noise(h.view(len(h), 1, 1, -1)).view_as(h)

    # -- the stack as a reconstruction model -------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_codes(x, self.num_layers)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        for k in reversed(range(self.num_layers)):
            z = self.decode_layer(k, z)
        return z.view(-1, *self.input_shape)

    def training_loss(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(self.loss_name, reconstruction, target)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        k = self.layer_at(self.current_epoch, self.global_step)
        with torch.no_grad():  # the layers below are frozen: no gradient reaches them
            clean = self.layer_codes(batch["image"], k)
        reconstruction = self.decode_layer(k, self.encode_layer(k, self.corrupt(clean)))
        loss = self.training_loss(reconstruction, clean)
        self.layer_steps[k] += 1
        log_training_values(self, {"train/loss": loss, "train/layer": torch.tensor(k + 1.0)}, len(clean))
        return loss

    def evaluation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> EvalOutput:
        """The whole stack's reconstruction metrics (``<stage>/loss``, ``mse``, ...) and, per layer ``k``
        (1-based), ``<stage>/layer<k>_loss``: how well it reconstructs its own clean input."""
        output = super().evaluation_step(batch, batch_idx, stage)
        h = batch["image"].flatten(1)
        for k in range(self.num_layers):
            code = self.encode_layer(k, h)
            self.log(f"{stage}/layer{k + 1}_loss", self.training_loss(self.decode_layer(k, code), h), batch_size=len(h))
            h = code
        return output

"""A fully connected classifier, optionally started from a pre-trained stack (the fine-tuning of Vincent et al. 2010)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from latentbench.checkpoints import read_checkpoint
from latentbench.errors import ConfigError
from latentbench.models.base import EvalOutput, LatentbenchModule, check_positive, checked_shape, log_training_values, model_input
from latentbench.models.blocks import activation_layer, mlp
from latentbench.models.sdae import StackedDenoisingAutoEncoder
from latentbench.run_dir import resolve_checkpoint

STAGES = ("train", "val", "test")


class MLPClassifier(LatentbenchModule):
    """``D -> hidden[0] -> ... -> hidden[-1] -> num_classes``: dense layers with ``activation`` after
    each hidden one, a linear output layer, cross-entropy; e.g. the 784-1000-1000-1000-10 net of Vincent
    et al. 2010 (logistic units).

    Args:
        input_shape (`list[int]`): ``(C, H, W)`` or ``(D,)``; filled in from the data module.
        num_classes (`int`): number of label classes; filled in from the data module.
        hidden (`list[int]`): widths of the hidden layers, bottom first.
        activation (`str`): a ``torch.nn`` activation class name (``Sigmoid``: the stack's logistic units).
        dropout (`float`): dropout after every hidden activation but the last, in [0, 1).
        init (`str`): initialisation of the layers not pre-trained: ``default`` or ``xavier`` (see
            :func:`latentbench.models.blocks.init_linear`).
        pretrained (`str`, *optional*): a ``model=sdae`` checkpoint, or its run folder (the checkpoint it
            was tested with), whose layer ``k`` weights and biases become hidden layer ``k``'s; the output
            layer stays randomly initialised. Null: no pre-training. The stack must have this net's
            sizes and logistic units (``activation: Sigmoid``) and every layer trained.
        optimizer, scheduler (`dict`, *optional*): ``_target_`` configs, as for the autoencoders.

    Logs ``<stage>/loss`` and ``<stage>/err`` (classification error in %).

    Shapes: ``features: (B, *input_shape) -> (B, hidden[-1])``; ``forward: (B, *input_shape) -> (B, num_classes)`` logits.

    A saved checkpoint holds the fine-tuned weights; loading it never reads ``pretrained`` again
    (its hyperparameters keep ``pretrained: null`` and the source under ``pretrained_from``).
    """

    def __init__(
        self,
        input_shape: list[int] | tuple[int, ...],
        num_classes: int,
        hidden: list[int] = (1000, 1000, 1000),
        activation: str = "Sigmoid",
        dropout: float = 0.0,
        init: str = "default",
        pretrained: str | None = None,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.input_shape = checked_shape(input_shape)
        if num_classes is None or num_classes < 2:
            raise ValueError(f"num_classes: a classifier needs at least 2 classes, got {num_classes} (use labelled data, e.g. data=mnist)")
        if not hidden:
            raise ValueError("hidden: needs at least one hidden layer, got []")
        for width in hidden:
            check_positive("hidden", width)
        self.input_dim = int(torch.tensor(self.input_shape).prod())
        self.sizes = [self.input_dim, *(int(w) for w in hidden)]
        self.trunk = mlp(self.sizes, activation, last=activation_layer(activation), dropout=dropout, init=init)
        self.head = nn.Linear(self.sizes[-1], int(num_classes))
        self.errors = nn.ModuleDict({f"{stage}_err": MeanMetric() for stage in STAGES})
        self.pretrained_from = self.load_pretrained(pretrained) if pretrained else None

    def hidden_layers(self) -> list[nn.Linear]:
        """The trunk's linear layers, bottom first (what a pre-trained stack's layers map onto)."""
        return [m for m in self.trunk if isinstance(m, nn.Linear)]

    @torch.no_grad()
    def load_pretrained(self, path: str) -> str:
        """Copy the encoder weights of the ``model=sdae`` checkpoint (or run folder) ``path`` into the
        hidden layers; returns the checkpoint file. ``ConfigError("model.pretrained: ...")`` when it cannot serve."""
        key = "model.pretrained"
        file = resolve_checkpoint(path)
        checkpoint = read_checkpoint(file, key, expected=StackedDenoisingAutoEncoder)
        hparams, weights = checkpoint.get("hyper_parameters", {}), checkpoint["state_dict"]
        stack = [int(torch.tensor(hparams["input_shape"]).prod()), *(int(w) for w in hparams["hidden"])]
        if stack != self.sizes:
            raise ConfigError(f"{key}: {file} holds a {'-'.join(map(str, stack))} stack; this classifier's hidden layers "
                              f"are {'-'.join(map(str, self.sizes))} (set model.hidden={stack[1:]})")
        if self.hparams.activation != "Sigmoid":
            raise ConfigError(f"model.activation: {self.hparams.activation!r} with a pre-trained stack of logistic units "
                              f"({key}); use Sigmoid")
        untrained = [k + 1 for k, steps in enumerate(weights["layer_steps"].tolist()) if steps == 0]
        if untrained:
            raise ConfigError(f"{key}: {file}: layer(s) {', '.join(map(str, untrained))} of its {len(stack) - 1} were never trained "
                              f"(a checkpoint from before the end of its layer schedule?)")
        for k, layer in enumerate(self.hidden_layers()):
            layer.weight.copy_(weights[f"encoders.{k}.weight"])
            layer.bias.copy_(weights[f"encoders.{k}.bias"])
        return file

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The weights are in the checkpoint: loading it must not need the pre-trained stack again."""
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], "pretrained": None}
        checkpoint["pretrained_from"] = self.pretrained_from

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Top hidden layer: ``(B, *input_shape) -> (B, hidden[-1])``."""
        return self.trunk(x.flatten(1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes for the embedding views: same as :meth:`features`."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: ``(B, *input_shape) -> (B, num_classes)``."""
        return self.head(self.features(x))

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, labels = model_input(batch), batch["label"]
        codes = self.features(x)
        logits = self.head(codes)
        loss = nn.functional.cross_entropy(logits, labels)
        wrong = 100.0 * (logits.detach().argmax(1) != labels).float()
        self.errors[f"{stage}_err"].update(wrong)
        if stage == "train":
            log_training_values(self, {"train/loss": loss}, len(x))
            self.log("train/err", self.errors[f"{stage}_err"], on_step=False, on_epoch=True, batch_size=len(x))
        else:
            self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=len(x))
            self.log(f"{stage}/err", self.errors[f"{stage}_err"], prog_bar=stage == "val", batch_size=len(x))
        return loss, codes

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def evaluation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> EvalOutput:
        return EvalOutput(codes=self._step(batch, stage)[1].detach())

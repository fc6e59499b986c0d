"""A small image classifier: the ``domain`` feature extractor for FID/KID and embedding views."""

from __future__ import annotations


import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from latentbench.models.base import EvalOutput, LatentbenchModule, check_positive, model_input
from latentbench.models.blocks import activation_layer, conv_down


class ImageClassifier(LatentbenchModule):
    """Stride-2 conv stages (or none for flat inputs), a hidden layer of ``feature_dim`` units, and
    a linear layer to ``num_classes`` logits; trained with cross-entropy.

    The hidden layer is the penultimate layer: :meth:`features` returns it, and it serves as the
    feature space of ``metrics.fid.features=domain`` (see :mod:`latentbench.evaluation.fid`).

    Args:
        input_shape (`list[int]`): ``(C, H, W)`` images or ``(D,)`` flat inputs; filled in from the
            data module by ``latentbench train``.
        num_classes (`int`): number of label classes; filled in from the data module.
        channels (`list[int]`): output channels of each conv stage (each halves H and W);
            ignored for flat inputs.
        feature_dim (`int`): width of the penultimate layer (the feature vector).
        activation (`str`): a ``torch.nn`` activation class name.
        dropout (`float`): dropout before the last layer, in [0, 1).
        optimizer, scheduler (`dict`, *optional*): ``_target_`` configs, as for the autoencoders.

    Shapes: ``features: (B, *input_shape) -> (B, feature_dim)``; ``forward: (B, *input_shape) -> (B, num_classes)``.
    """

    def __init__(
        self,
        input_shape: list[int] | tuple[int, ...],
        num_classes: int,
        channels: list[int] = (32, 64),
        feature_dim: int = 128,
        activation: str = "ReLU",
        dropout: float = 0.0,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) not in (1, 3):
            raise ValueError(f"input_shape: expected (C, H, W) or (D,), got {self.input_shape}")
        for size in self.input_shape:
            check_positive("input_shape", size)
        if num_classes is None or num_classes < 2:
            raise ValueError(f"num_classes: a classifier needs at least 2 classes, got {num_classes} (use labelled data, e.g. data=mnist)")
        for width in channels:
            check_positive("channels", width)
        check_positive("feature_dim", feature_dim)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: must lie in [0, 1), got {dropout}")
        self.num_classes, self.feature_dim = int(num_classes), int(feature_dim)
        if len(self.input_shape) == 3 and channels:
            in_channels, height, width = self.input_shape
            stages = [in_channels, *channels]
            for _ in channels:
                height, width = (height + 1) // 2, (width + 1) // 2
            self.trunk = nn.Sequential(*(conv_down(a, b, activation) for a, b in zip(stages[:-1], stages[1:])), nn.Flatten(1))
            flat = channels[-1] * height * width
        else:
            self.trunk = nn.Flatten(1)
            flat = int(torch.tensor(self.input_shape).prod())
        self.feature_head = nn.Sequential(nn.Linear(flat, feature_dim), activation_layer(activation))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, self.num_classes))
        self.accuracy = nn.ModuleDict({f"{stage}_acc": MulticlassAccuracy(self.num_classes, average="micro") for stage in ("train", "val", "test")})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features: ``(B, *input_shape) -> (B, feature_dim)``."""
        return self.feature_head(self.trunk(x.reshape(-1, *self.input_shape)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's codes for embedding views: same as :meth:`features`."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: ``(B, *input_shape) -> (B, num_classes)``."""
        return self.classifier(self.features(x))

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = model_input(batch)
        codes = self.features(x)
        logits = self.classifier(codes)
        loss = nn.functional.cross_entropy(logits, batch["label"])
        accuracy = self.accuracy[f"{stage}_acc"]
        accuracy.update(logits.detach(), batch["label"])
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", batch_size=len(x))
        self.log(f"{stage}/acc", accuracy, prog_bar=stage == "val", batch_size=len(x))
        return loss, codes

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def evaluation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> EvalOutput:
        return EvalOutput(codes=self._step(batch, stage)[1].detach())

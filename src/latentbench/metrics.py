"""Reconstruction metrics shared by every model (all reduce correctly across DDP ranks)."""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchmetrics.regression import MeanSquaredError

HINTON2006_MNIST_PCA30_SSE = 13.87  # Hinton & Salakhutdinov, Science 2006, Fig. 2 (PCA, 30 components)
HINTON2006_MNIST_AE30_SSE = 3.00  # same figure, the 784-1000-500-250-30 deep autoencoder


class ReconstructionSSE(Metric):
    """Mean over images of the sum over pixels of squared error (the Hinton & Salakhutdinov 2006 metric).

    ``update(reconstruction, target)`` takes ``(B, ...)`` tensors with pixels in [0, 1].
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("sse_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, reconstruction: torch.Tensor, target: torch.Tensor) -> None:
        per_image = (reconstruction.double() - target.double()).pow(2).flatten(1).sum(dim=1)
        self.sse_sum += per_image.sum()
        self.count += per_image.numel()

    def compute(self) -> torch.Tensor:
        return (self.sse_sum / self.count).float()


def reconstruction_metrics(prefix: str, image_shaped: bool) -> MetricCollection:
    """``recon_sse``, ``mse``, ``psnr`` (and ``ssim`` for (B, C, H, W) images), keys prefixed ``val/``/``test/``."""
    metrics = {
        "recon_sse": ReconstructionSSE(),
        "mse": MeanSquaredError(),
        "psnr": PeakSignalNoiseRatio(data_range=1.0),
    }
    if image_shaped:
        metrics["ssim"] = StructuralSimilarityIndexMeasure(data_range=1.0)
    return MetricCollection(metrics, prefix=prefix)

"""PCA baseline, fitted exactly in one pass over the training split (no gradient steps)."""

from __future__ import annotations

import torch

from latentbench.models.base import ReconstructionModel, check_positive


class PCA(ReconstructionModel):
    """Principal component analysis as a reconstruction model.

    Training accumulates the sum and the scatter matrix of the flattened training images in
    float64 (reduced across DDP ranks), then eigendecomposes the covariance at the end of the
    first epoch and stops: the fit is exact and independent of batch size and order.

    Args:
        n_components (`int`): number of principal components kept (the code size).
        input_shape, optimizer, scheduler: see :class:`ReconstructionModel` (no optimizer is used).

    Shapes: ``encode: (B, *input_shape) -> (B, n_components)``, ``decode`` the reverse.
    """

    def __init__(self, input_shape: tuple[int, ...] | list[int], n_components: int = 30, **kwargs):
        super().__init__(input_shape, **kwargs)
        check_positive("n_components", n_components)
        if n_components > self.input_dim:
            raise ValueError(f"n_components: {n_components} is larger than the input size {self.input_dim}")
        self.n_components = n_components
        self.automatic_optimization = False
        self.register_buffer("mean", torch.zeros(self.input_dim))
        self.register_buffer("components", torch.zeros(n_components, self.input_dim))
        self.register_buffer("explained_variance", torch.zeros(n_components))
        self._reset_statistics()

    def _reset_statistics(self) -> None:
        self._sum = torch.zeros(self.input_dim, dtype=torch.float64)
        self._scatter = torch.zeros(self.input_dim, self.input_dim, dtype=torch.float64)
        self._count = torch.zeros((), dtype=torch.float64)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - self.mean) @ self.components.T

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.components + self.mean).view(-1, *self.input_shape)

    def training_loss(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(reconstruction, target)

    def on_train_epoch_start(self) -> None:
        self._reset_statistics()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x = batch["image"].flatten(1).double().cpu()
        self._sum += x.sum(dim=0)
        self._scatter += x.T @ x
        self._count += x.shape[0]

    def on_train_epoch_end(self) -> None:
        strategy = self.trainer.strategy
        total = strategy.reduce(self._count.to(self.device), reduce_op="sum").cpu()
        total_sum = strategy.reduce(self._sum.to(self.device), reduce_op="sum").cpu()
        scatter = strategy.reduce(self._scatter.to(self.device), reduce_op="sum").cpu()
        mean = total_sum / total
        covariance = (scatter - total * torch.outer(mean, mean)) / (total - 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending order
        order = torch.argsort(eigenvalues, descending=True)[: self.n_components]
        self.mean.copy_(mean.to(self.mean))
        self.components.copy_(eigenvectors[:, order].T.to(self.components))
        self.explained_variance.copy_(eigenvalues[order].to(self.explained_variance))
        self.log("train/explained_variance_ratio", (eigenvalues[order].sum() / eigenvalues.sum()).float())
        self.trainer.should_stop = True  # the fit is exact after one pass

    def configure_optimizers(self) -> None:
        return None

"""PCA baseline, fitted exactly in one pass over the training split (no gradient steps)."""

from __future__ import annotations

import torch

from latentbench.models.base import ReconstructionModel, check_positive


class PCA(ReconstructionModel):
    """Principal component analysis as a reconstruction model.

    Training accumulates the sum and the scatter matrix of the flattened training images in
    float64 (reduced across DDP ranks), then eigendecomposes the covariance once the pass is over
    and stops after one epoch: the fit is exact and independent of batch size and order.

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
        # Lightning counts steps (and decides when to checkpoint) by optimizer steps, and DDP refuses
        # a module without trainable parameters: PCA steps a zero-lr optimizer on one dummy weight.
        self.step_counter = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("mean", torch.zeros(self.input_dim))
        self.register_buffer("components", torch.zeros(n_components, self.input_dim))
        self.register_buffer("explained_variance", torch.zeros(n_components))
        self.explained_variance_ratio = float("nan")
        self._reset_statistics()

    def _reset_statistics(self) -> None:
        self._sum = torch.zeros(self.input_dim, dtype=torch.float64)
        self._scatter = torch.zeros(self.input_dim, self.input_dim, dtype=torch.float64)
        self._count = torch.zeros((), dtype=torch.float64)
        self._pending = False

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
        self._pending = True
        self.manual_backward(self.step_counter.sum() * 0.0)
        self.optimizers().step()

    def on_validation_epoch_start(self) -> None:
        self.fit_components()  # Lightning validates before on_train_epoch_end: fit first

    def on_train_epoch_end(self) -> None:
        self.fit_components()
        self.log("train/explained_variance_ratio", self.explained_variance_ratio)
        self.trainer.should_stop = True  # the fit is exact after one pass

    def fit_components(self) -> None:
        """Eigendecompose the covariance of the statistics gathered so far (all ranks together)."""
        if not self._pending:
            return
        self._pending = False
        strategy = self.trainer.strategy
        count, total, scatter = (
            strategy.reduce(t.to(self.device), reduce_op="sum").cpu() for t in (self._count, self._sum, self._scatter)
        )
        mean = total / count
        covariance = (scatter - count * torch.outer(mean, mean)) / (count - 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending order
        order = torch.argsort(eigenvalues, descending=True)[: self.n_components]
        self.mean.copy_(mean.to(self.mean))
        self.components.copy_(eigenvectors[:, order].T.to(self.components))
        self.explained_variance.copy_(eigenvalues[order].to(self.explained_variance))
        self.explained_variance_ratio = (eigenvalues[order].sum() / eigenvalues.sum()).item()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.step_counter], lr=0.0)

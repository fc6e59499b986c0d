"""The skeleton every reconstruction model shares: steps, metrics, optimizer from config.

A subclass defines :meth:`encode`, :meth:`decode` and :meth:`training_loss`. A batch is a dict
``{"image": clean target, "label": ...}``, optionally with ``"input"``: a corrupted copy of the
image that the model sees instead (denoising, obstacle removal, ...). Validation and test steps
return ``{"reconstruction", "codes"}`` so that callbacks can log grids and embeddings.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from latentbench.metrics import reconstruction_metrics

DEFAULT_OPTIMIZER = {"_target_": "torch.optim.Adam", "lr": 1e-3}


def optimizer_and_scheduler(optimizer_cfg: dict, scheduler_cfg: dict | None, params: Any) -> Any:
    """What ``configure_optimizers`` returns: the optimizer built from its ``_target_`` config with
    ``params`` (parameters or parameter groups), plus an LR scheduler when one is configured
    (stepped every epoch unless its config says ``interval: step``)."""
    optimizer = instantiate({**optimizer_cfg, "_partial_": True})(params)
    if not scheduler_cfg:
        return optimizer
    scheduler_cfg = dict(scheduler_cfg)
    interval = scheduler_cfg.pop("interval", "epoch")
    scheduler = instantiate(scheduler_cfg, optimizer=optimizer)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}


def log_training_values(module: pl.LightningModule, values: dict[str, torch.Tensor], batch_size: int) -> None:
    """``module.log`` the per-step training values (the first on the progress bar), but only on the
    steps whose logs Lightning writes (every ``trainer.log_every_n_steps``, or when it is stopping).

    Every ``self.log`` call does Lightning's bookkeeping (among others it moves the stored result to
    the value's device), which shows on models whose step takes a few milliseconds; values logged in
    between would only be overwritten, so skipping them changes no logged number.
    """
    trainer = module._trainer
    # the very test Lightning makes before it writes a step's logs (logger_connector.update_train_step_metrics)
    if trainer is not None and not (trainer._logger_connector.should_update_logs or trainer.fast_dev_run):
        return
    for index, (name, value) in enumerate(values.items()):
        module.log(name, value, prog_bar=index == 0, batch_size=batch_size)


def check_positive(name: str, value: int | float) -> None:
    """Raise ``ValueError("name: must be positive, got value")`` unless value > 0."""
    if value <= 0:
        raise ValueError(f"{name}: must be positive, got {value}")


def check_code_and_loss(latent_dim: int, input_dim: int, loss: str, output_activation: str) -> None:
    """An autoencoder's code must be smaller than its input, and BCE needs outputs in (0, 1)."""
    check_positive("latent_dim", latent_dim)
    if latent_dim > input_dim:
        raise ValueError(f"latent_dim: {latent_dim} is larger than the input size {input_dim}")
    if loss == "bce" and output_activation != "sigmoid":
        raise ValueError(f"loss: 'bce' needs output_activation 'sigmoid', got {output_activation!r}")


class ReconstructionModel(pl.LightningModule):
    """Base of PCA and the autoencoders.

    Args:
        input_shape (`tuple[int, ...]`): shape of one input, ``(C, H, W)`` or ``(D,)``; filled in
            from the data module by ``latentbench train``.
        optimizer (`dict`, *optional*): a ``_target_`` config built with the model's parameters,
            defaults to Adam with lr 1e-3.
        scheduler (`dict`, *optional*): a ``_target_`` config of an LR scheduler built with the
            optimizer; stepped every epoch unless it has ``interval: step``.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] | list[int],
        optimizer: dict | None = None,
        scheduler: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        for size in self.input_shape:
            check_positive("input_shape", size)
        self.input_dim = int(torch.tensor(self.input_shape).prod())
        image_shaped = len(self.input_shape) == 3
        self.val_metrics = reconstruction_metrics("val/", image_shaped)
        self.test_metrics = reconstruction_metrics("test/", image_shaped)

    # -- what a subclass defines -------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, *input_shape) -> (B, latent_dim)`` codes."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, latent_dim) -> (B, *input_shape)`` reconstructions."""
        raise NotImplementedError

    def training_loss(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- shared behaviour --------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x``: ``(B, *input_shape) -> (B, *input_shape)``."""
        return self.decode(self.encode(x))

    @staticmethod
    def model_input(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the model sees: the corrupted ``input`` when the data adds one, else the clean image."""
        return batch.get("input", batch["image"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        reconstruction = self(self.model_input(batch))
        loss = self.training_loss(reconstruction, batch["image"])
        log_training_values(self, {"train/loss": loss}, len(reconstruction))
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        codes = self.encode(self.model_input(batch))
        reconstruction = self.decode(codes)
        target = batch["image"]
        self.log(f"{stage}/loss", self.training_loss(reconstruction, target), prog_bar=stage == "val", batch_size=len(target))
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(reconstruction.detach().float(), target.float())
        self.log_dict(metrics, batch_size=len(target))
        return {"reconstruction": reconstruction.detach(), "codes": codes.detach()}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def configure_optimizers(self) -> Any:
        return optimizer_and_scheduler(self.hparams.optimizer or DEFAULT_OPTIMIZER, self.hparams.scheduler, self.parameters())

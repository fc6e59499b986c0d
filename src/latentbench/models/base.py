"""The contract every model keeps, and the skeleton the reconstruction models share.

Every model is a :class:`LatentbenchModule`: its optimizer and LR scheduler come from config
(``model.optimizer``, ``model.scheduler``), and validation and test run one
:meth:`~LatentbenchModule.evaluation_step` that returns an :class:`EvalOutput`, the typed record
callbacks read (reconstruction grids and FID, embedding views).

A batch is a dict ``{"image": clean target, "label": ...}``, optionally with ``"input"``: a
corrupted copy of the image that the model sees instead (denoising, obstacle removal, ...).
A reconstruction model (:class:`ReconstructionModel`) defines :meth:`encode`, :meth:`decode` and
:meth:`training_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from latentbench.metrics import reconstruction_metrics

DEFAULT_OPTIMIZER = {"_target_": "torch.optim.Adam", "lr": 1e-3}


FUSABLE = ("torch.optim.Adam", "torch.optim.AdamW")


# what a config may say that a fused update does not combine with, or that asks for another implementation
NOT_FUSED_WITH = ("fused", "foreach", "differentiable")


def fusable(params: list[Any]) -> bool:
    """Whether every parameter (of parameters or parameter groups) is a floating-point tensor and all
    live on CUDA devices or all on the CPU: where torch's fused Adam/AdamW run."""
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    on_one_kind = all(t.is_cuda for t in tensors) or all(t.device.type == "cpu" for t in tensors)
    return bool(tensors) and on_one_kind and all(t.is_floating_point() for t in tensors)


def optimizer_and_scheduler(optimizer_cfg: dict, scheduler_cfg: dict | None, params: Any) -> Any:
    """What ``configure_optimizers`` returns: the optimizer built from its ``_target_`` config with
    ``params`` (parameters or parameter groups), plus an LR scheduler when one is configured
    (stepped every epoch unless its config says ``interval: step``). Adam and AdamW run fused, on
    CUDA and on the CPU, unless their config sets ``fused``, ``foreach`` or ``differentiable``."""
    params = list(params)
    optimizer_cfg = {**optimizer_cfg}
    chosen = any(key in optimizer_cfg for key in NOT_FUSED_WITH)
    if optimizer_cfg.get("_target_") in FUSABLE and not chosen and fusable(params):
        # one pass over each tensor for the whole update instead of ~10 (a few kernels per tensor on CUDA;
        # on the CPU torch's default loops tensor by tensor: 18 ms against 2.5 for the 2.8 M of ae_hinton)
        optimizer_cfg["fused"] = True
    optimizer = instantiate({**optimizer_cfg, "_partial_": True})(params)
    if not scheduler_cfg:
        return optimizer
    scheduler_cfg = dict(scheduler_cfg)
    interval = scheduler_cfg.pop("interval", "epoch")
    scheduler = instantiate(scheduler_cfg, optimizer=optimizer)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}


@dataclass(frozen=True)
class EvalOutput:
    """What a validation or test step returns, for the callbacks.

    Attributes:
        reconstruction: ``(B, *input_shape)`` in [0, 1], the model's output for the batch's images
            (reconstruction grids and reconstruction FID); None for models that do not reconstruct.
        codes: ``(B, D)`` one vector per image (embedding views, kNN accuracy, linear probe); None
            for models without codes.
    """

    reconstruction: torch.Tensor | None = None
    codes: torch.Tensor | None = None


def eval_output(outputs: Any) -> EvalOutput:
    """A step's outputs as :class:`EvalOutput` (an empty one for a step that returned nothing)."""
    return outputs if isinstance(outputs, EvalOutput) else EvalOutput()


def model_input(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What the model sees: the corrupted ``input`` when the data adds one, else the clean image."""
    return batch.get("input", batch["image"])


class LatentbenchModule(pl.LightningModule):
    """Base of every model: optimizer/scheduler from config and one evaluation step for val and test.

    A subclass saves ``optimizer`` and ``scheduler`` among its hyperparameters (``_target_``
    configs: the optimizer is built with :meth:`optimizer_parameters`, the scheduler with the
    optimizer, stepped every epoch unless its config says ``interval: step``), and defines
    ``training_step`` and :meth:`evaluation_step`.
    """

    default_optimizer: dict[str, Any] = DEFAULT_OPTIMIZER

    def evaluation_step(self, batch: dict[str, Any], batch_idx: int, stage: str) -> EvalOutput:
        """Log the ``<stage>/...`` metrics of a batch (``stage``: ``val`` or ``test``) and return what callbacks use."""
        raise NotImplementedError

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> EvalOutput:
        return self.evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> EvalOutput:
        return self.evaluation_step(batch, batch_idx, "test")

    def optimizer_parameters(self) -> Any:
        """The parameters (or parameter groups) the optimizer trains: all of them by default."""
        return self.parameters()

    def configure_optimizers(self) -> Any:
        return optimizer_and_scheduler(self.hparams.get("optimizer") or self.default_optimizer, self.hparams.get("scheduler"),
                                       self.optimizer_parameters())


@torch.compiler.disable  # Lightning's bookkeeping, not the step's maths: a compiled step would guard on (and
# so be compiled again for) every value of the step counter that should_update_logs reads
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
        if not update_logged_step_value(module, name, value, batch_size):
            module.log(name, value, prog_bar=index == 0, batch_size=batch_size)


def update_logged_step_value(module: pl.LightningModule, name: str, value: torch.Tensor, batch_size: int) -> bool:
    """Store a new value of a step-only training value that ``module.log`` registered earlier in this
    hook, as ``module.log`` would, and return True; False (nothing done) when ``module.log`` must run.

    What it skips is ``module.log``'s per-call work once the entry exists: argument checks and a move
    of the stored result to the value's device that walks the whole result object, ~0.7 ms a call on
    a CPU (bench/README.md), a fifth of a small model's step. Only the plain case takes this path: a
    float tensor on the stored result's device, logged on_step only, in the hook Lightning is in, with
    no pending reset of that hook's results (an epoch's first logged step goes through ``module.log``).
    """
    trainer, fx = module._trainer, module._current_fx_name
    results = getattr(trainer, "_results", None)
    metric = results.get(f"{fx}.{name}") if results is not None and fx is not None else None
    if (metric is None or not metric.is_tensor or not metric.meta.on_step or metric.meta.on_epoch
            or trainer._logger_connector._current_fx != fx or trainer._logger_connector.should_reset_tensors(fx)
            or not isinstance(value, torch.Tensor) or value.dtype not in (torch.float32, torch.float64)
            or value.device != metric.value.device):
        return False
    results.update_metrics(f"{fx}.{name}", value.detach(), batch_size)
    return True


def check_positive(name: str, value: int | float) -> None:
    """Raise ``ValueError("name: must be positive, got value")`` unless value > 0."""
    if value <= 0:
        raise ValueError(f"{name}: must be positive, got {value}")


def checked_shape(input_shape: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """``input_shape`` as a tuple of ints; ``ValueError("input_shape: must be positive, ...")`` for a size <= 0."""
    shape = tuple(int(s) for s in input_shape)
    for size in shape:
        check_positive("input_shape", size)
    return shape


def check_code_and_loss(latent_dim: int, input_dim: int, loss: str, output_activation: str) -> None:
    """An autoencoder's code must be smaller than its input, and BCE needs outputs in (0, 1)."""
    check_positive("latent_dim", latent_dim)
    if latent_dim > input_dim:
        raise ValueError(f"latent_dim: {latent_dim} is larger than the input size {input_dim}")
    if loss == "bce" and output_activation != "sigmoid":
        raise ValueError(f"loss: 'bce' needs output_activation 'sigmoid', got {output_activation!r}")


class ReconstructionModel(LatentbenchModule):
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
        self.input_shape = checked_shape(input_shape)
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

    model_input = staticmethod(model_input)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        reconstruction = self(self.model_input(batch))
        loss = self.training_loss(reconstruction, batch["image"])
        log_training_values(self, {"train/loss": loss}, len(reconstruction))
        return loss

    def evaluation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> EvalOutput:
        codes = self.encode(self.model_input(batch))
        reconstruction = self.decode(codes)
        target = batch["image"]
        self.log(f"{stage}/loss", self.training_loss(reconstruction, target), prog_bar=stage == "val", batch_size=len(target))
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(reconstruction.detach().float(), target.float())
        self.log_dict(metrics, batch_size=len(target))
        return EvalOutput(reconstruction=reconstruction.detach(), codes=codes.detach())

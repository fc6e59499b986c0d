"""Fused steps: K optimizer steps per Lightning training step (Keras' ``steps_per_execution``).

A small model's step takes a few milliseconds, and Lightning's per-step machinery (hooks over every
callback, the optimizer closure, progress and result bookkeeping) adds a millisecond or more to
each. With ``fused_steps: K`` the data module serves K consecutive batches at once (the very
batches, in the very order, an unfused run sees) and the model's training step runs K optimizer
steps on them, one batch after another, so that Lightning's share is paid once per K steps.

Everything users count is still counted in real optimizer steps: ``trainer.global_step`` (and so
``max_steps``, checkpoints, the logger's x-axis), ``log_every_n_steps`` (a step's logs are written
at the step Lightning would have written them), step-interval LR schedulers, and the data position
saved for an exact resume. Epoch-interval schedulers step at the end of each epoch.
"""

from __future__ import annotations

from typing import Any, Callable

import pytorch_lightning as pl
import torch


def split_batch(batch: Any, batch_size: int) -> list[Any]:
    """A super-batch (dict/list/tuple of tensors with ``K * batch_size`` rows, fewer at the end of an
    epoch) as a list of batches of ``batch_size`` rows (the last one possibly shorter); non-tensor
    values (e.g. caption lists) are split the same way."""
    rows = _rows(batch)
    return [_take(batch, slice(start, start + batch_size)) for start in range(0, rows, batch_size)]


def _rows(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return len(batch)
    if isinstance(batch, dict):
        return _rows(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return _rows(batch[0]) if batch and isinstance(batch[0], (torch.Tensor, dict)) else len(batch)
    raise TypeError(f"fused_steps: cannot split a batch of type {type(batch).__name__}")


def _take(batch: Any, rows: slice) -> Any:
    if isinstance(batch, dict):
        return {key: _take(value, rows) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], (torch.Tensor, dict)):
        return type(batch)(_take(value, rows) for value in batch)
    return batch[rows]


class FusedTrainingStep:
    """Replaces a module's ``training_step``: up to ``steps`` optimizer steps on one super-batch.

    ``step_fn(batch, batch_idx) -> loss`` is the model's own (automatic-optimisation) training step;
    zero_grad, backward, gradient clipping, the optimizer and step-interval LR schedulers run here,
    in the order Lightning's automatic loop runs them, and the model's own ``on_train_batch_end``
    (an EMA update, a clamp) after every step. Callbacks see one batch per group: their
    ``on_train_batch_start/end`` once per K steps, and (in one process without a gradient scaler)
    no ``on_before_backward``, ``on_after_backward`` or ``on_before_optimizer_step``.
    """

    def __init__(self, module: pl.LightningModule, step_fn: Callable[[Any, int], torch.Tensor], steps: int, batch_size: int,
                 gradient_clip_val: float | None = None, gradient_clip_algorithm: str = "norm"):
        self.module, self.step_fn, self.steps, self.batch_size = module, step_fn, steps, batch_size
        self.gradient_clip_val, self.gradient_clip_algorithm = gradient_clip_val, gradient_clip_algorithm
        overridden = type(module).on_train_batch_end is not pl.LightningModule.on_train_batch_end
        self.after_each_step = module.on_train_batch_end if overridden else None
        self._direct_ok: bool | None = None
        self.kept: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss  # a loss kept until the group ends

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Returns the ``(k,)`` detached losses of the k steps taken (for the non-finite-loss guard)."""
        module, trainer = self.module, self.module.trainer
        epoch_loop = trainer.fit_loop.epoch_loop
        optimizer = module.optimizers()
        chunks = split_batch(batch, self.batch_size)
        if trainer.max_steps >= 0:  # never past max_steps (fast_dev_run sets it to 1)
            chunks = chunks[: max(trainer.max_steps - trainer.global_step, 0)]
        direct = self._direct(trainer)
        raw_optimizer = optimizer.optimizer  # zero_grad and step without LightningOptimizer's forwarding
        step_schedulers = self._schedulers("step")
        losses = []
        for index, chunk in enumerate(chunks):
            if index:
                # Lightning counts one logged step per training_step; count each real one, so that the
                # logger's step and the log_every_n_steps test see real optimizer steps
                epoch_loop._batches_that_stepped += 1
            loss = self.step_fn(chunk, batch_idx * self.steps + index)
            losses.append(self.kept(loss.detach()))
            raw_optimizer.zero_grad(set_to_none=True)
            if direct:
                self._direct_step(loss, optimizer, trainer)
            else:
                module.manual_backward(loss)
                self._clip(optimizer)
                optimizer.step()
            if step_schedulers:
                self._step(step_schedulers, trainer.global_step)
            if index < len(chunks) - 1:
                if self.after_each_step is not None:  # a model's per-step hook (EMA update, clamping)
                    self.after_each_step(None, chunk, batch_idx * self.steps + index)
                if trainer._logger_connector.should_update_logs:
                    # a step whose logs Lightning would write, inside the group: write them now (the
                    # group's last step is written by Lightning itself after this call)
                    trainer._logger_connector.update_train_step_metrics()
        if epoch_loop.batch_progress.is_last_batch or epoch_loop._num_ready_batches_reached():
            self._step(self._schedulers("epoch"), trainer.current_epoch + 1)
        return torch.stack(losses)

    def _direct(self, trainer: pl.Trainer) -> bool:
        """One process, no gradient scaler: backward and the optimizer run without Lightning's wrappers
        (whose per-step callback hooks cost what fusing saves). Else (DDP, FSDP, fp16) through them."""
        if self._direct_ok is None:
            single = isinstance(trainer.strategy, pl.strategies.SingleDeviceStrategy)
            self._direct_ok = single and getattr(trainer.precision_plugin, "scaler", None) is None
        return self._direct_ok

    def _direct_step(self, loss: torch.Tensor, optimizer, trainer: pl.Trainer) -> None:
        loss.backward()
        self._clip(optimizer)
        optimizer.optimizer.step()
        progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()  # what LightningOptimizer.step counts: trainer.global_step
        progress.increment_completed()

    def _clip(self, optimizer) -> None:
        if self.gradient_clip_val:
            self.module.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val,
                                       gradient_clip_algorithm=self.gradient_clip_algorithm)

    def _schedulers(self, interval: str) -> list:
        """The LR scheduler configs stepped every ``interval`` ("step" or "epoch") here."""
        return [config for config in self.module.trainer.lr_scheduler_configs
                if config.interval == interval and not config.reduce_on_plateau]

    @staticmethod
    def _step(configs: list, count: int) -> None:
        """Step the schedulers whose frequency divides ``count`` (the global step, or the epochs done)."""
        for config in configs:
            if count % config.frequency == 0:
                config.scheduler.step()


def fuse_training_steps(module: pl.LightningModule, steps: int, batch_size: int, gradient_clip_val: float | None = None,
                        gradient_clip_algorithm: str = "norm") -> None:
    """Make ``module`` run ``steps`` optimizer steps per Lightning training step on super-batches of
    ``steps * batch_size`` rows. ``module`` must use Lightning's automatic optimisation (one
    optimizer); Lightning's own gradient clipping must be off (pass it here instead)."""
    if not module.automatic_optimization:
        raise ValueError(f"fused_steps: {type(module).__name__} runs its own optimisation loop; use fused_steps=1")
    step_fn = module.training_step
    module.automatic_optimization = False
    fused = FusedTrainingStep(module, step_fn, steps, batch_size, gradient_clip_val, gradient_clip_algorithm)
    # an instance attribute (a bound method: Lightning compares its code with the base class's to see
    # that the hook is defined): Lightning looks the hook up on the instance, the class stays untouched
    module.training_step = fused.training_step


def compile_fused_step(module: pl.LightningModule, compiler: Callable[[Callable], Callable]) -> bool:
    """When ``module`` runs fused steps: compile its own training step (one optimizer step's forward
    and loss) with ``compiler`` and return True; else False. Lightning's way, compiling the module's
    ``training_step``, would trace the whole group: the optimizer, the schedulers and the logger."""
    fused = getattr(module.training_step, "__self__", None)
    if not isinstance(fused, FusedTrainingStep):
        return False
    fused.step_fn = compiler(fused.step_fn)
    # a CUDA-graphed step (mode=reduce-overhead) writes each call's loss where the last one was
    fused.kept = torch.clone
    return True

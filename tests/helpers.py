"""Callbacks that tests inject into real runs through the config (``+callbacks.x._target_=tests.helpers...``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch

KILLED_MARKER = ".killed-by-test"


def die_once(trainer: pl.Trainer) -> None:
    """SIGKILL this process, unless this run directory was killed before: a resumed run, whose
    config (the killer included) is the killed run's, then goes on to the end."""
    marker = Path(trainer.default_root_dir) / KILLED_MARKER
    if marker.exists():
        return
    marker.touch()
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtStep(pl.Callback):
    """SIGKILLs the training process right after training step ``step`` (no cleanup, like a crash), once."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            die_once(trainer)


class PoisonLossAtStep(pl.Callback):
    """Makes the model's weights NaN before step ``step``, so that its loss becomes NaN there."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.fill_(float("nan"))


class KillAfterSave(pl.Callback):
    """SIGKILLs the process right after its ``n``-th checkpoint write (1-based), whatever wrote it:
    the epoch-end best/last checkpoints, the periodic one, a save at an interruption."""

    def __init__(self, n: int):
        self.n, self.saves = n, 0

    def setup(self, trainer, pl_module, stage) -> None:
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def save_then_maybe_die(*args, **kwargs):
            save(*args, **kwargs)
            self.saves += 1
            if self.saves == self.n:
                die_once(trainer)

        io.save_checkpoint = save_then_maybe_die


class KillAtHook(pl.Callback):
    """SIGKILLs the process in hook ``hook`` (``train_epoch_start``, ``validation_batch_end``, ...)
    at its ``n``-th call (1-based; sanity checks not counted), counting only the calls in epoch
    ``epoch`` when one is given."""

    def __init__(self, hook: str, n: int, epoch: int | None = None):
        self.hook, self.n, self.epoch, self.calls = hook, n, epoch, 0
        setattr(self, f"on_{hook}", self._count)

    def _count(self, trainer, *args, **kwargs) -> None:
        if trainer.sanity_checking or (self.epoch is not None and trainer.current_epoch != self.epoch):
            return
        self.calls += 1
        if self.calls == self.n:
            die_once(trainer)


class SignalAtHook(KillAtHook):
    """Sends signal ``signum`` (a name: SIGTERM, SIGINT, SIGUSR1) to this process in hook ``hook``
    at its ``n``-th call, once per run directory, as a scheduler or Ctrl-C would."""

    def __init__(self, hook: str, n: int, signum: str, epoch: int | None = None):
        super().__init__(hook, n, epoch)
        self.signum = getattr(signal, signum)

    def _count(self, trainer, *args, **kwargs) -> None:
        if trainer.sanity_checking or (self.epoch is not None and trainer.current_epoch != self.epoch):
            return
        self.calls += 1
        marker = Path(trainer.default_root_dir) / KILLED_MARKER
        if self.calls == self.n and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), self.signum)


class FillDiskAtStep(pl.Callback):
    """Fills the filesystem of the run directory at training step ``step`` (a file of zeros until
    the disk says it is full), so that the next write fails with ENOSPC."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        chunk = b"\0" * (64 * 1024)
        with open(Path(trainer.default_root_dir) / "filler", "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(chunk)
            except OSError:
                pass
            try:
                while True:
                    handle.write(b"\0")
            except OSError:
                pass


class SaveWeightsAtEpochEnd(pl.Callback):
    """Writes the model's state_dict to ``<run>/weights/start.pt`` at the start of training and to
    ``<run>/weights/epoch<k>.pt`` at the end of each training epoch ``k``."""

    def _save(self, trainer, pl_module, name: str) -> None:
        folder = Path(trainer.default_root_dir) / "weights"
        folder.mkdir(exist_ok=True)
        torch.save({k: v.detach().clone() for k, v in pl_module.state_dict().items()}, folder / f"{name}.pt")

    def on_train_start(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, "start")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, f"epoch{trainer.current_epoch}")

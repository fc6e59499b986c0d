"""Stopping a run cleanly on a signal: SIGTERM (schedulers, ``kill``), SIGINT (Ctrl-C), SIGUSR1
(SLURM's warning before the time limit).

:class:`SaveOnInterrupt` (``callbacks.save_on_interrupt``) notes the signal with
:class:`InterruptSignals` and, at the end of the current training step, saves ``last.ckpt`` and
raises :class:`RunInterrupted`, which ``latentbench train`` turns into run status ``interrupted``
and the exit code 128 + signal.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from latentbench.errors import RunInterrupted  # defined with the errors: the launcher catches it without importing torch


INTERRUPT_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


class InterruptSignals:
    """While active, SIGTERM, SIGINT and SIGUSR1 only note that they arrived (``received``);
    :class:`SaveOnInterrupt` acts on it at the next safe point. The previous handlers come back on exit.

    Lightning adds its own SIGTERM handler during ``fit`` and calls this one from it.
    """

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _note(self, signum, frame) -> None:
        if self.received is None:
            print(f"{signal_name(signum)} received: saving last.ckpt at the end of this step", file=sys.stderr)
        self.received = signum

    def __enter__(self) -> "InterruptSignals":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in INTERRUPT_SIGNALS:
                signum = getattr(signal, name)
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


class SaveOnInterrupt(pl.Callback):
    """After a signal noted by :class:`InterruptSignals`: at the end of the current training step,
    save ``last.ckpt`` and stop with :class:`RunInterrupted`. During validation the run stops at
    the next batch; the checkpoint is then the one saved at the end of the last training step, so
    the resumed run repeats that validation. During test (training is over) it stops at once.

    ``latentbench train`` listens for the signals (``with callback.signals``) while it fits and tests.

    Args:
        dirpath (`str`): the run's checkpoint folder; the state goes to ``<dirpath>/last.ckpt``.
    """

    def __init__(self, dirpath: str):
        self.signals, self.path = InterruptSignals(), str(Path(dirpath) / "last.ckpt")

    def _stop(self, trainer: pl.Trainer, save: bool) -> None:
        signum = self.signals.received
        if signum is None:
            return
        if save:
            trainer.save_checkpoint(self.path)
        raise RunInterrupted(signum, f"interrupted by {signal_name(signum)} at step {trainer.global_step}")

    def on_train_start(self, trainer, pl_module) -> None:
        self._stop(trainer, save=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop(trainer, save=True)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop(trainer, save=False)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop(trainer, save=False)

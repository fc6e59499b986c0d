"""The run's logged history on disk, whatever the logger: ``history.csv`` beside ``metrics.json``.

:class:`History` records every value Lightning hands to the loggers, at the moment it does (a
training step every ``trainer.log_every_n_steps``, each validation, a training epoch's end, the
test), with the step and epoch, so a run logged to W&B offline, to CSV or to nothing has its
curves in one file of one format (``latentbench.curves`` defines and reads it; the report draws
it). The file is rewritten durably (rank zero only) at each validation end, before each
checkpoint, at the end of fit and of test, and when the run stops on an error: a handful of small
writes per epoch, none per step.

Resume: every checkpoint holds the number of rows recorded when it was saved, and the file is
written before the checkpoint. A resumed run keeps exactly that many rows of the file (rows
written after the checkpoint, which the resumed run logs again, are dropped), so the history of
a run killed anywhere and resumed is the uninterrupted run's: no step twice, none missing.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch

from latentbench.curves import history_csv, history_rows
from latentbench.errors import ConfigError, first_line
from latentbench.run_dir import RunDir, write_durably

log = logging.getLogger(__name__)


def scalar(value: Any) -> float | None:
    """A logged value as a float (one-element tensors included), None for anything else."""
    if isinstance(value, torch.Tensor):
        return float(value.item()) if value.numel() == 1 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


class History(pl.Callback):
    """Writes every logged scalar, by step, to the run's ``history.csv``
    (columns ``step``, ``epoch``, then one per logged key; see :mod:`latentbench.curves`).

    Args:
        run_dir (`str`): the run directory (``${paths.output_dir}``); the file is its
            :attr:`RunDir.history_file`.
    """

    def __init__(self, run_dir: str):
        self.run = RunDir(run_dir)
        self.rows: list[dict[str, Any]] = []
        self.active = False  # recording for this process: rank zero of a fit (not `latentbench eval`'s test)
        self.changed = False  # rows recorded or updated since the file was last written
        self.restored: int | None = None  # rows of the history the resumed checkpoint had seen
        self._tapped = None
        self._early: tuple[int, int] | None = None  # (step, row index) of a step's values recorded at a checkpoint

    # -- what is recorded ---------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            self.active = True
        connector = trainer._logger_connector
        if self.active and self._tapped is not connector:
            self._tap(trainer, connector)

    def _tap(self, trainer: pl.Trainer, connector) -> None:
        """Listen where Lightning hands logged values to the loggers (its logger connector's
        ``log_metrics``; it is called with logger=none too, and then logs to nobody), so that the
        history holds what a logger would get, at the same moments."""
        hand_on = connector.log_metrics

        def log_metrics(metrics, step=None):
            self._record(trainer, metrics)
            hand_on(metrics, step)

        connector.log_metrics = log_metrics
        self._tapped = connector

    def _record(self, trainer: pl.Trainer, metrics: dict[str, Any]) -> None:
        values = {k: v for k, v in ((k, scalar(v)) for k, v in metrics.items() if k not in ("step", "epoch")) if v is not None}
        if not values:
            return
        step = int(trainer.global_step)
        in_step = trainer.training and trainer._logger_connector._first_loop_iter is not None
        if self._early is not None and self._early[0] == step and in_step:
            self.rows[self._early[1]].update(values)  # this step's values, recorded at a checkpoint before they came
            self._early = None
        else:
            self.rows.append({"step": step, "epoch": int(trainer.current_epoch), **values})
        self.changed = True

    def _unlogged_step_values(self, trainer: pl.Trainer) -> dict[str, Any]:
        """The current training step's values when a checkpoint is saved in ``on_train_batch_end``
        (periodic, at an interruption): Lightning hands them to the loggers only after that hook,
        and a run resumed from that checkpoint does not take the step again."""
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        if not trainer.training or progress.processed <= progress.completed:
            return {}  # not between a step and its logs
        connector = trainer._logger_connector
        if trainer.fit_loop._should_accumulate() and trainer.lightning_module.automatic_optimization:
            return {}
        if not (connector.should_update_logs or trainer.fast_dev_run):  # the test Lightning makes before it logs a step
            return {}
        return connector.metrics["log"]

    # -- when it is written -------------------------------------------------------------------
    def write(self) -> None:
        """The rows to the file, durably, when they changed. A failed write (a full disk) is a
        warning: the run goes on, and the next write tries again."""
        if not (self.active and self.changed):
            return
        try:
            write_durably(self.run.history_file, history_csv(self.rows).encode())
        except ConfigError as error:
            log.warning("history not written: %s", first_line(error))
            return
        self.changed = False

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.active:
            return
        self.rows, self._early = [], None
        if self.restored:  # resumed: the rows logged up to the checkpoint, none after it
            try:
                kept = history_rows(self.run.history_file)[: self.restored] if self.run.history_file.is_file() else []
            except ConfigError as error:
                log.warning("history: %s; the resumed run's history starts at step %d", first_line(error), trainer.global_step)
                kept = []
            if 0 < len(kept) < self.restored:
                log.warning("history: %s has %d of the %d rows logged before the checkpoint", self.run.history_file, len(kept),
                            self.restored)
            self.rows = kept
        self.changed = True
        self.write()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.write()

    def on_train_end(self, trainer, pl_module) -> None:
        self.write()

    def on_test_end(self, trainer, pl_module) -> None:
        self.write()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.write()

    # -- resume ---------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if not self.active:
            return
        unlogged = self._unlogged_step_values(trainer)
        if unlogged and (self._early is None or self._early[0] != trainer.global_step):
            before = len(self.rows)
            self._record(trainer, unlogged)
            if len(self.rows) > before:
                self._early = (int(trainer.global_step), before)
        self.write()  # before the checkpoint: the file always holds the rows a checkpoint counts
        checkpoint.setdefault("callbacks", {})[self.state_key] = self.state_dict()

    def state_dict(self) -> dict[str, Any]:
        return {"rows": len(self.rows)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rows = state_dict.get("rows")
        self.restored = rows if isinstance(rows, int) else None

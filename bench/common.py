"""What every benchmark records beside its figures: machine, versions, commit."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import pytorch_lightning as pl
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_description(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def environment(device: str) -> dict:
    import pytorch_lightning

    from latentbench.tracking import git_commit

    return {
        "device": device_description(device),
        "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "python": platform.python_version(),
        # LATENTBENCH_COMMIT first: a copied tree (a lent GPU machine) may carry a stale .git
        "commit": os.environ.get("LATENTBENCH_COMMIT") or git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def spread(values: list[float]) -> dict:
    """min / median / max of repeated measurements."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "all": values}


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


class Timing:
    """Wall time of a training run split into its steady stream of steps and the rest.

    ``total`` is the whole call; ``steady`` runs from the end of the first step to the end of the
    last, with no start-up (W&B init, Lightning setup, first-step allocations) and no wind-down
    (final checkpoint, W&B finish); ``fixed = total - steady``. ``steady_steps`` counts the optimizer
    steps inside that window: ``steps - 1``, or ``steps - K`` when a Lightning step runs K fused ones.

    Every step end is kept (``ends``: ``(time, steps done)``), so that the steady window can also be
    cut into windows of a fixed number of steps (:meth:`window_seconds`).
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.ends: list[tuple[float, int]] = []
        self.group = 1  # optimizer steps between two step ends (a fused run's K)

    def step_ended(self, sync, steps_done: int) -> None:
        """Note the end of a step; ``steps_done``: optimizer steps taken so far, this one included."""
        sync()
        self.ends.append((time.perf_counter(), steps_done))

    def window_seconds(self, window: int) -> list[float]:
        """Seconds of each run of ``window`` optimizer steps after the first step, back to back: the
        windows end at the step ends whose count is the first one's plus a multiple of ``window``
        (so ``window`` must be a multiple of a fused run's K)."""
        first_count = self.ends[0][1]
        marks = [(time_, count) for time_, count in self.ends if (count - first_count) % window == 0]
        return [later[0] - earlier[0] for earlier, later in zip(marks, marks[1:]) if later[1] - earlier[1] == window]

    @property
    def steady_steps(self) -> int:
        return self.ends[-1][1] - self.ends[0][1]

    @property
    def steady(self) -> float:
        return self.ends[-1][0] - self.ends[0][0]

    def steady_rate(self, per_step: float = 1.0) -> float:
        """``per_step`` units (images: the batch size) a second over the steady window; NaN when
        the run had no step after its first (one group of fused steps: run more steps)."""
        return self.steady_steps * per_step / self.steady if self.steady_steps else math.nan


class StepClock(pl.Callback):
    """Feeds the end of every training step to a :class:`Timing`."""

    def __init__(self, timing: Timing, sync) -> None:
        self.timing, self.sync = timing, sync

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.timing.step_ended(self.sync, trainer.global_step)


@contextlib.contextmanager
def own_matmul_precision():
    """Put torch's float32 matmul precision back on exit: the latentbench side sets the run's
    (``matmul_precision``) for the whole process, and the plain loop that runs next keeps its own."""
    saved = torch.get_float32_matmul_precision()
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def synchronizer(device: str):
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def add_ab_arguments(parser, override_help: str, default_name: str) -> None:
    """``--override KEY=VALUE`` (repeatable extra Hydra overrides) and ``--name`` (result file name),
    for A/B runs of one setting."""
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help=override_help)
    parser.add_argument("--name", default=None, help=f"result file name (default: {default_name})")

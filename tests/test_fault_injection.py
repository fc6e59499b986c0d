"""Exact resume: a run SIGKILLed anywhere and resumed ends with the uninterrupted run's metrics, bit for bit.

The kill points are the classes of places a crash or a scheduler can stop a run: right after each
kind of checkpoint write (periodic mid-epoch, epoch-end best and last), during validation, at an
epoch boundary, in the first and in the last epoch. A few run in the default suite; ``-m slow``
sweeps every checkpoint write of the run. Runs are forked from a warm server (``tests/forked.py``).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

# Digits: 1,293 training images, 81 batches of 16 per epoch; 3 epochs = 243 steps. A periodic
# last.ckpt every 20 steps, an epoch-end best and last: 6 checkpoint writes per epoch. One optimizer
# step per Lightning step (fused_steps=1), so that a kill can land on any step (tests/test_fused_steps.py
# kills a fused run between its saves).
RUN = ["model=ae", "trainer=cpu", "fused_steps=1", "trainer.max_epochs=3", "deterministic=true", "data.batch_size=16", "logger=none",
       "callbacks.periodic_checkpoint.every_n_steps=20", "callbacks.embedding_plot.methods=[pca]"]
COMPARED = ("test/recon_sse", "test/mse", "test/ssim", "test/knn_acc", "best_val/loss", "global_step", "epochs")
WRITES = 18


def killer(name: str, **arguments) -> list[str]:
    return [f"+callbacks.killer._target_=tests.helpers.{name}", *(f"+callbacks.killer.{k}={v}" for k, v in arguments.items())]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    result = run_cli("train", *RUN, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((run_dir / "metrics.json").read_text())


def killed_then_resumed(run_dir, kill: list[str]) -> dict:
    killed = run_cli("train", *RUN, *kill, f"hydra.run.dir={run_dir}")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (run_dir / "metrics.json").exists()
    resumed = run_cli("train", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


def assert_same_result(resumed: dict, uninterrupted: dict) -> None:
    different = {k: (resumed.get(k), uninterrupted.get(k)) for k in COMPARED if resumed.get(k) != uninterrupted.get(k)}
    assert not different, f"resumed vs uninterrupted: {different}"


KILL_POINTS = {
    "epoch boundary, after epoch 0's checkpoints": killer("KillAtHook", hook="train_epoch_start", n=1, epoch=1),
    "during validation, last epoch": killer("KillAtHook", hook="validation_batch_end", n=3, epoch=2),
    "mid-epoch, 3 steps after a periodic save": killer("KillAtStep", step=103),
}
SLOW_KILL_POINTS = {
    **{f"right after checkpoint write {n}": killer("KillAfterSave", n=n) for n in range(1, WRITES + 1)},
    "first step": killer("KillAtStep", step=1),
    "first epoch, before any checkpoint": killer("KillAtStep", step=15),
    "last step": killer("KillAtStep", step=243),
    "last epoch's start": killer("KillAtHook", hook="train_epoch_start", n=1, epoch=2),
    "validation start, first epoch": killer("KillAtHook", hook="validation_epoch_start", n=1, epoch=0),
    "validation end, first epoch": killer("KillAtHook", hook="validation_epoch_end", n=1, epoch=0),
    "train epoch end, middle epoch": killer("KillAtHook", hook="train_epoch_end", n=1, epoch=1),
    "test start": killer("KillAtHook", hook="test_epoch_start", n=1),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_then_resume_gives_the_uninterrupted_metrics(uninterrupted, tmp_path, point):
    assert_same_result(killed_then_resumed(tmp_path / "run", KILL_POINTS[point]), uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("point", SLOW_KILL_POINTS)
def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_metrics(uninterrupted, tmp_path, point):
    assert_same_result(killed_then_resumed(tmp_path / "run", SLOW_KILL_POINTS[point]), uninterrupted)

"""Crash-safe resume, failure handling and what a failed run leaves behind."""

from __future__ import annotations

import json

import pytest
import torch

from latentbench.cli import main
from latentbench.train import train
from tests.conftest import run_cli

# Digits: 1,293 training images in 21 batches of 64 per epoch; 3 epochs = 63 steps.
RUN = ["model=ae", "trainer=cpu", "trainer.max_epochs=3", "deterministic=true", "callbacks.periodic_checkpoint.every_n_steps=5"]
COMPARED = ("test/recon_sse", "test/mse", "test/ssim", "best_val/loss", "global_step")


def killed_then_resumed(tmp_path, kill_step: int, logger: str = "none") -> dict:
    run_dir = tmp_path / f"killed_at_{kill_step}"
    killed = run_cli("train", *RUN, f"logger={logger}", f"hydra.run.dir={run_dir}",
                     "+callbacks.killer._target_=tests.helpers.KillAtStep", f"+callbacks.killer.step={kill_step}")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (run_dir / "metrics.json").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    # the resumed run must not kill itself again: drop the killer by overriding its step out of reach
    resumed = run_cli("train", f"resume={run_dir}", "callbacks.killer.step=-1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    result = run_cli("train", *RUN, "logger=none", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((run_dir / "metrics.json").read_text())


def test_sigkill_mid_epoch_then_resume_gives_the_same_metrics_and_wandb_run(uninterrupted, tmp_path):
    resumed = killed_then_resumed(tmp_path, 13, logger="wandb")  # last save at step 10: steps 11-13 are redone
    for key in COMPARED:
        assert resumed[key] == uninterrupted[key], key
    run_dir = tmp_path / "killed_at_13"
    first_id = resumed["wandb_run_id"]
    offline_runs = sorted((run_dir / "wandb").glob(f"offline-run-*-{first_id}"))
    assert len(offline_runs) == 2  # the killed run's files are kept for `wandb sync`, the resume logs to the same id
    assert all((run / f"run-{first_id}.wandb").is_file() for run in offline_runs)


@pytest.mark.slow
@pytest.mark.parametrize("kill_step", [3, 21, 22, 30, 47])
def test_sigkill_then_resume_gives_the_same_final_metrics(uninterrupted, tmp_path, kill_step):
    resumed = killed_then_resumed(tmp_path, kill_step)
    for key in COMPARED:
        assert resumed[key] == uninterrupted[key], key


def test_resume_auto_picks_the_unfinished_run(tmp_path):
    log_dir = tmp_path / "outputs"
    common = [*RUN, "logger=none", "trainer.max_epochs=1", f"paths.log_dir={log_dir}"]
    killed = run_cli("train", *common, "+callbacks.killer._target_=tests.helpers.KillAtStep", "+callbacks.killer.step=10")
    assert killed.returncode == -9
    (run_dir,) = [p for p in log_dir.iterdir() if p.is_dir()]
    resumed = run_cli("train", *common, "+callbacks.killer._target_=tests.helpers.KillAtStep", "+callbacks.killer.step=10", "resume=auto")
    # killed right after the periodic save at step 10: the resumed run starts after it, the killer stays quiet
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {run_dir}" in resumed.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 21


def test_resume_of_a_folder_that_is_not_a_run(capsys, tmp_path):
    assert main(["train", f"resume={tmp_path}"]) == 2
    assert f"error: resume: {tmp_path} is not a latentbench run directory (no .hydra/overrides.yaml)" in capsys.readouterr().err


def test_nan_loss_stops_the_run_and_records_why(cfg_factory, tmp_path, capsys):
    code = main(["train", "model=ae", "trainer=cpu", "logger=none", "trainer.max_epochs=2", "callbacks.periodic_checkpoint.every_n_steps=5",
                 f"hydra.run.dir={tmp_path}", "+callbacks.poison._target_=tests.helpers.PoisonLossAtStep", "+callbacks.poison.step=9"])
    assert code == 1
    err = capsys.readouterr().err
    assert "error: training failed: NonFiniteLossError: train/loss became nan at step 10" in err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "train/loss became nan" in metrics["error"]
    # step 10 went bad, and its periodic checkpoint was not written: the last good one is step 5's
    checkpoint = torch.load(metrics["checkpoint"], weights_only=True)
    assert checkpoint["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def test_checkpoints_load_with_weights_only(cfg_factory):
    metrics = train(cfg_factory("model=pca", "model.n_components=8"))
    checkpoint = torch.load(metrics["checkpoint"], weights_only=True)
    assert checkpoint["state_dict"]["components"].shape == (8, 64)

"""Crash-safe resume, failure handling and what a failed run leaves behind."""

from __future__ import annotations

import json
import os

import pytest
import torch

from latentbench.cli import main
from latentbench.train import train
from tests.conftest import run_cli

# Digits: 1,293 training images in 21 batches of 64 per epoch; 3 epochs = 63 steps.
RUN = ["model=ae", "trainer=cpu", "trainer.max_epochs=3", "deterministic=true", "callbacks.periodic_checkpoint.every_n_steps=5"]
COMPARED = ("test/recon_sse", "test/mse", "test/ssim", "best_val/loss", "global_step")


def killed_then_resumed(tmp_path, kill_step: int, logger: str = "none", extra: tuple[str, ...] = ()) -> dict:
    run_dir = tmp_path / f"killed_at_{kill_step}"
    killed = run_cli("train", *RUN, *extra, f"logger={logger}", f"hydra.run.dir={run_dir}",
                     "+callbacks.killer._target_=tests.helpers.KillAtStep", f"+callbacks.killer.step={kill_step}")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (run_dir / "metrics.json").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    resumed = run_cli("train", f"resume={run_dir}")  # the killer fires once per run directory
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    result = run_cli("train", *RUN, "logger=none", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture
def inherited_wandb_service(tmp_path):
    """Run W&B once in this process, so that child processes inherit its service (WANDB_SERVICE).

    That is what happens under a notebook or any launcher that used wandb itself, and what made
    resumes fail with "run ID ... is in use": the shared service kept the killed run's stream.
    """
    import wandb

    wandb.init(mode="offline", dir=str(tmp_path), project="inherited").finish()
    assert os.environ.get("WANDB_SERVICE")


def test_sigkill_mid_epoch_then_resume_gives_the_same_metrics_and_wandb_run(uninterrupted, inherited_wandb_service, tmp_path):
    resumed = killed_then_resumed(tmp_path, 13, logger="wandb", extra=["logger.wandb.flush_seconds=0.2"])  # last save at step 10: steps 11-13 are redone
    for key in COMPARED:
        assert resumed[key] == uninterrupted[key], key
    run_dir = tmp_path / "killed_at_13"
    first_id = resumed["wandb_run_id"]
    offline_runs = sorted((run_dir / "wandb").glob(f"offline-run-*-{first_id}"))
    assert len(offline_runs) == 2  # the killed run's files are kept for `wandb sync`, the resume logs to the same id
    assert all((run / f"run-{first_id}.wandb").is_file() for run in offline_runs)
    killed_record = (offline_runs[0] / f"run-{first_id}.wandb").read_bytes()
    assert b"optimized_metric" in killed_record  # what the killed run logged (its config) survived the kill


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
    assert metrics["checkpoint"] == "checkpoints/last.ckpt"  # relative to the run directory
    checkpoint = torch.load(tmp_path / metrics["checkpoint"], weights_only=True)
    assert checkpoint["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def test_nan_loss_read_back_lazily_still_stops_before_any_checkpoint_of_it(tmp_path, capsys, monkeypatch):
    """On a GPU the loss is read back every log_every_n_steps steps and before each checkpoint, not
    every step (defer=True, forced here on the CPU): the error names the first bad step, and the
    periodic checkpoint due after it is not written."""
    code = main(["train", "model=ae", "trainer=cpu", "logger=none", "trainer.max_epochs=2", "trainer.log_every_n_steps=10",
                 "callbacks.stop_on_non_finite_loss.defer=true",
                 "callbacks.periodic_checkpoint.every_n_steps=5", f"hydra.run.dir={tmp_path}",
                 "+callbacks.poison._target_=tests.helpers.PoisonLossAtStep", "+callbacks.poison.step=12"])
    assert code == 1
    assert "error: training failed: NonFiniteLossError: train/loss became nan at step 13 (epoch 0, batch 12)" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    checkpoint = torch.load(tmp_path / metrics["checkpoint"], weights_only=True)
    assert checkpoint["global_step"] == 10  # step 15's save found the bad step 13 and was not written
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())

def test_checkpoints_load_with_weights_only(cfg_factory):
    metrics = train(cfg_factory("model=pca", "model.n_components=8"))
    checkpoint = torch.load(metrics["checkpoint"], weights_only=True)
    assert checkpoint["state_dict"]["components"].shape == (8, 64)


def test_secrets_never_reach_logged_config_or_outputs(tmp_path):
    secret = "sk-test-0123456789abcdef"
    result = run_cli("train", "model=pca", "model.n_components=4", "trainer=cpu", "logger=wandb", "data.limit=200",
                     f"hydra.run.dir={tmp_path}", "+run_notes=${oc.env:WANDB_API_KEY}", env={"WANDB_API_KEY": secret})
    assert result.returncode == 0, result.stderr[-2000:]
    assert secret not in result.stdout + result.stderr
    leaked = [str(p) for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []
    # the config was logged, with the value replaced (offline runs keep it in their .wandb record)
    records = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert records and b"run_notes" in records[0].read_bytes() and b"***" in records[0].read_bytes()


def test_truncated_or_foreign_checkpoint_is_refused_by_name(tmp_path, capsys):
    from latentbench.checkpoints import read_checkpoint
    from latentbench.errors import ConfigError
    from latentbench.models.ae import AutoEncoder
    from latentbench.models.pca import PCA

    run_dir = tmp_path / "run"
    assert main(["train", "model=pca", "model.n_components=4", "trainer=cpu", "logger=none", "data.limit=200",
                 f"hydra.run.dir={run_dir}"]) == 0
    last = run_dir / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last, "x", expected=PCA)["state_dict"]["components"].shape == (4, 64)
    with pytest.raises(ConfigError, match=r"^model.first_stage.checkpoint: .*last.ckpt holds a latentbench.models.pca.PCA checkpoint, expected latentbench.models.ae.AutoEncoder$"):
        read_checkpoint(last, "model.first_stage.checkpoint", expected=AutoEncoder)
    with pytest.raises(ConfigError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.ckpt", "k")
    not_torch = tmp_path / "faces.mat"
    not_torch.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(ConfigError, match=r"^k: .*faces.mat is not a readable checkpoint \(not a torch checkpoint file\)$"):
        read_checkpoint(not_torch, "k")
    not_a_checkpoint = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, not_a_checkpoint)
    with pytest.raises(ConfigError, match="is not a Lightning checkpoint"):
        read_checkpoint(not_a_checkpoint, "k")
    # a checkpoint cut short (disk full, copy interrupted) refuses to resume, naming the file
    last.write_bytes(last.read_bytes()[:1000])
    assert main(["train", f"resume={run_dir}", "trainer.max_epochs=100"]) == 2  # extending the finished run needs last.ckpt
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: resume: ") and "last.ckpt is not a readable checkpoint" in err[-1]


def test_periodic_checkpoint_by_time_saves_when_the_clock_says(tmp_path, monkeypatch):
    """The default last.ckpt cadence is every 10 minutes of wall time (not every N steps): with a
    clock that advances 4 minutes a step, saves land on steps 3, 6, 9 (12, 24, 36 minutes)."""
    from types import SimpleNamespace

    import latentbench.callbacks as callbacks
    from latentbench.callbacks import PeriodicCheckpoint

    clock = {"now": 0.0}
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock["now"])
    periodic = PeriodicCheckpoint(dirpath=str(tmp_path))  # the defaults: every_minutes=10, no step cadence
    assert (periodic.every_n_steps, periodic.every_minutes) == (None, 10.0)
    saved = []
    trainer = SimpleNamespace(global_step=0, strategy=SimpleNamespace(broadcast=lambda value: value),
                              save_checkpoint=lambda path: saved.append(trainer.global_step))
    for step in range(1, 11):
        clock["now"] += 240.0
        trainer.global_step = step
        periodic.on_train_batch_end(trainer, None, None, None, step - 1)
    assert saved == [3, 6, 9]

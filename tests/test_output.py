"""What a user reads: progress lines in batch jobs, no third-party noise, one summary at the end."""

from __future__ import annotations

import re

from tests.conftest import run_cli

NOISE = ("litlogger", "anonymous setting", "LeafSpec", "Total FLOPs", "Total Flops", "Test metric", "Run history",
         "Restoring states", "module(s) in eval mode at the start", "model summary callbacks")


def test_a_run_outside_a_terminal_prints_epoch_lines_and_one_summary(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("train", "model=ae", "data=digits", "trainer.max_epochs=2", "logger=wandb", f"hydra.run.dir={run_dir}",
                     env={"WANDB_SILENT": "false"})
    assert result.returncode == 0, result.stderr[-2000:]
    printed = result.stdout + result.stderr
    epochs = re.findall(r"epoch (\d)/2  step (\d+)  train/loss ([\d.e-]+)  val/loss ([\d.e-]+)  \(\d+\.\d s\)", printed)
    assert [(e, s) for e, s, _, _ in epochs] == [("1", "21"), ("2", "42")], printed[-3000:]
    assert f"run finished: {run_dir} (2 epochs, 42 steps," in result.stdout
    assert "  best checkpoint: checkpoints/best-epoch=001.ckpt" in result.stdout
    assert f"  train it further: latentbench train resume={run_dir} trainer.max_epochs=<more>" in result.stdout
    assert printed.count("wandb sync") == 1 and f"wandb sync {run_dir}/wandb/offline-run-" in result.stdout
    assert [noise for noise in NOISE if noise in printed] == []

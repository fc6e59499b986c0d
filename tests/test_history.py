"""``history.csv``: every logged value by step beside ``metrics.json``, whatever the logger, exact across a kill and resume."""

from __future__ import annotations

import csv
import json

import pytest

from latentbench.curves import history_csv, history_rows, read_curve
from latentbench.run_dir import RunDir
from latentbench.train import train
from tests.conftest import run_cli

# Digits AE, 1 epoch of 21 batches (train logs at steps 10 and 20, validation at 21); a periodic
# last.ckpt every 5 steps, so the save at step 20 comes before that step's logged train loss.
RUN = ["model=ae", "trainer=cpu", "trainer.max_epochs=1", "deterministic=true", "logger=none",
       "callbacks.periodic_checkpoint.every_n_steps=5", "callbacks.embedding_plot.methods=[pca]"]


def csv_logger_rows(run_dir) -> list[dict]:
    (log,) = run_dir.glob("csv/version_*/metrics.csv")
    with log.open() as handle:
        return list(csv.DictReader(handle))


def test_a_run_writes_what_was_logged_by_step_beside_metrics_json(cfg_factory, tmp_path):
    cfg = cfg_factory("logger=csv", "trainer.max_epochs=2")
    metrics = train(cfg)
    run = RunDir(tmp_path)
    rows = history_rows(run.history_file)
    assert (run.history_file.parent, run.history_file.name) == (run.metrics_file.parent, "history.csv")
    header = run.history_file.read_text().splitlines()[0].split(",")
    assert header[:3] == ["step", "epoch", "train/loss"] and "val/loss" in header and "test/recon_sse" in header

    train_rows = [r for r in rows if "train/loss" in r]
    val_rows = [r for r in rows if "val/loss" in r]
    test_rows = [r for r in rows if "test/recon_sse" in r]
    assert [(r["step"], r["epoch"]) for r in train_rows] == [(10, 0), (20, 0), (30, 1), (40, 1)]  # every log_every_n_steps=10
    assert [(r["step"], r["epoch"]) for r in val_rows] == [(21, 0), (42, 1)]  # each epoch's validation
    assert [r["step"] for r in test_rows] == [metrics["global_step"]] == [42]

    # the same numbers as the CSV logger (which labels a step-wise value with the step before it) ...
    logged = csv_logger_rows(tmp_path)
    for key in ("train/loss", "val/loss", "val/psnr", "test/recon_sse"):
        assert [float(r[key]) for r in logged if r[key]] == [r[key] for r in rows if key in r], key
    assert [int(r["step"]) + 1 for r in logged if r["train/loss"]] == [r["step"] for r in train_rows]
    # ... and as metrics.json: the test metrics, and the best validation epoch
    assert {k: v for k, v in test_rows[0].items() if k.startswith("test/")} == {k: v for k, v in metrics.items() if k.startswith("test/")}
    assert metrics["best_val/loss"] == min(r["val/loss"] for r in val_rows)
    assert read_curve(tmp_path, "val/loss") == [(21, val_rows[0]["val/loss"]), (42, val_rows[1]["val/loss"])]


def test_history_text_reads_back_to_the_same_numbers(tmp_path):
    rows = [{"step": 10, "epoch": 0, "train/loss": 0.1234567890123}, {"step": 21, "epoch": 0, "val/psnr": 30.5, "val/loss": 1e-9},
            {"step": 21, "epoch": 1, "test/loss": float("inf")}]
    text = history_csv(rows)
    assert text.splitlines()[:2] == ["step,epoch,train/loss,val/loss,val/psnr,test/loss", "10,0,0.1234567890123,,,"]  # by stage, then name
    (tmp_path / "history.csv").write_text(text)
    assert history_rows(tmp_path / "history.csv") == rows


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run_cli("train", *RUN, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def test_a_run_killed_after_validation_and_resumed_has_the_uninterrupted_history(uninterrupted, tmp_path):
    """Killed after the validation of step 21 reached history.csv but before its checkpoint: the
    resume starts from the periodic save at step 20, drops the file's row of that validation (the
    resumed run validates again) and keeps step 20's train loss (logged after that save, never again)."""
    run_dir = tmp_path / "run"
    killed = run_cli("train", *RUN, "+callbacks.killer._target_=tests.helpers.KillAtHook", "+callbacks.killer.hook=validation_end",
                     "+callbacks.killer.n=1", f"hydra.run.dir={run_dir}")
    assert killed.returncode == -9, killed.stderr[-2000:]
    before = history_rows(run_dir / "history.csv")
    assert [(r["step"], "val/loss" in r) for r in before] == [(10, False), (20, False), (21, True)]

    resumed = run_cli("train", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = history_rows(run_dir / "history.csv")
    for key in ("train/loss", "val/loss", "test/loss"):
        steps = [r["step"] for r in rows if key in r]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {steps}"
    assert [r["step"] for r in rows] == [10, 20, 21, 21]  # train, train, validation, test
    # bit for bit the history of the run that was never stopped (deterministic=true on the CPU)
    assert (run_dir / "history.csv").read_text() == (uninterrupted / "history.csv").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["test/loss"] == rows[-1]["test/loss"]

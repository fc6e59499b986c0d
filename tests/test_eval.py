"""``latentbench eval checkpoint=<path>``: recomputed test metrics merged into the run's metrics.json."""

from __future__ import annotations

import json

import pytest

from latentbench.cli import main
from tests.test_fid import classifier_ckpt  # noqa: F401  (fixture: a classifier trained on digits)

COMMON = ["model=ae", "trainer=cpu", "trainer.max_epochs=1", "data.limit=300", "callbacks.embedding_plot.methods=[pca]"]


def test_eval_recomputes_test_metrics_and_adds_fid(tmp_path, classifier_ckpt):  # noqa: F811
    run = tmp_path / "run"
    assert main(["train", *COMMON, "logger=none", f"hydra.run.dir={run}"]) == 0
    original = json.loads((run / "metrics.json").read_text())
    assert "test/fid_domain" not in original
    assert original["checkpoint"] == "checkpoints/best-epoch=000.ckpt"  # relative to the run directory
    assert main(["eval", f"checkpoint={run / original['checkpoint']}", f"metrics.fid.checkpoint={classifier_ckpt}",
                 "metrics.fid.num_images=100"]) == 0
    merged = json.loads((run / "metrics.json").read_text())
    assert {k: v for k, v in merged.items() if k != "eval"} == original  # originals kept
    section = merged["eval"]
    assert section["test/recon_sse"] == pytest.approx(original["test/recon_sse"], rel=1e-5)  # same checkpoint, same data
    assert section["test/fid_domain"] > 0 and section["checkpoint"] == original["checkpoint"]


def test_eval_logs_to_the_runs_wandb_run(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *COMMON, "logger=wandb", f"hydra.run.dir={run}"]) == 0
    run_id = json.loads((run / "run.json").read_text())["wandb_run_id"]
    checkpoint = run / json.loads((run / "metrics.json").read_text())["checkpoint"]
    assert main(["eval", f"checkpoint={checkpoint}"]) == 0
    assert json.loads((run / "metrics.json").read_text())["eval"]["wandb_run_id"] == run_id
    assert len(list((run / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # the training and the eval session of one run


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["eval"]) == 0 and "usage: latentbench eval" in capsys.readouterr().out
    assert main(["eval", f"checkpoint={tmp_path / 'x.ckpt'}"]) == 2
    assert "checkpoint: " in capsys.readouterr().err
    stray = tmp_path / "stray.ckpt"
    stray.write_bytes(b"x")
    assert main(["eval", f"checkpoint={stray}"]) == 2
    assert "is not inside a latentbench run directory" in capsys.readouterr().err

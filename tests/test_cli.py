"""The command line: subcommands, Hydra's help, --cfg job, multirun."""

from __future__ import annotations

import json

import yaml

from latentbench.cli import main


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: latentbench <subcommand>" in out and "train" in out


def test_unknown_subcommand(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown subcommand 'frobnicate'" in capsys.readouterr().err


def test_train_help_shows_config_groups(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for group in ("model:", "data:", "trainer:", "precision:", "logger:", "callbacks:", "paths:", "experiment:"):
        assert group in out, group
    for choice in ("pca", "ae_hinton", "ae_conv", "mnist", "digits", "bf16-mixed", "wandb", "csv"):
        assert choice in out, choice


def test_cfg_job_prints_composed_config(capsys):
    assert main(["train", "model=pca", "data=mnist", "data.root=/some/where", "--cfg", "job"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["_target_"] == "latentbench.models.pca.PCA"
    assert cfg["data"]["root"] == "/some/where"
    assert cfg["seed"] == 1234


def test_multirun_runs_each_job_in_its_own_dir(tmp_path):
    code = main([
        "train", "-m", "model=pca,ae", "logger=none", "trainer=cpu", "data.limit=100", "trainer.max_epochs=1",
        f"hydra.sweep.dir={tmp_path}", "callbacks=none",
    ])
    assert code == 0
    jobs = sorted(p.parent.name for p in tmp_path.glob("*/metrics.json"))
    assert jobs == ["0", "1"]
    targets = [yaml.safe_load((tmp_path / j / ".hydra" / "config.yaml").read_text())["model"]["_target_"] for j in jobs]
    assert targets == ["latentbench.models.pca.PCA", "latentbench.models.ae.AutoEncoder"]
    assert all(json.loads((tmp_path / j / "metrics.json").read_text())["status"] == "finished" for j in jobs)

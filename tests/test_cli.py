"""The command line: subcommands, Hydra's help, --cfg job, multirun."""

from __future__ import annotations

import json

import pytest
import yaml

from latentbench.cli import main
from tests.conftest import REPO


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
    assert jobs == ["0_model=pca", "1_model=ae"]  # named by the swept override; the shared ones are left out
    targets = [yaml.safe_load((tmp_path / j / ".hydra" / "config.yaml").read_text())["model"]["_target_"] for j in jobs]
    assert targets == ["latentbench.models.pca.PCA", "latentbench.models.ae.AutoEncoder"]
    assert all(json.loads((tmp_path / j / "metrics.json").read_text())["status"] == "finished" for j in jobs)


def test_a_multirun_names_its_jobs_by_their_swept_overrides_and_prints_one_table(tmp_path):
    from tests.conftest import run_cli

    result = run_cli("train", "-m", "model=pca", "model.n_components=4,100", "+note=a/b,c/d", "logger=none", "trainer=cpu",
                     "data.limit=100", "trainer.max_epochs=1", "callbacks=none", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 2  # the 100-component jobs fail (more than 64 pixels); the others finish
    assert sorted(p.name for p in tmp_path.glob("[0-9]*")) == [  # a value holding "/" stays out of the name
        "0_model.n_components=4", "1_model.n_components=4", "2_model.n_components=100", "3_model.n_components=100"]
    table = result.stdout[result.stdout.index(f"multirun {tmp_path}: 2 of 4 jobs finished"):].splitlines()
    assert [line.split()[:2] for line in table[1:5]] == [
        ["0_model.n_components=4", "finished"], ["1_model.n_components=4", "finished"],
        ["2_model.n_components=100", "failed"], ["3_model.n_components=100", "failed"]]
    assert "test/recon_sse" in table[1] and "larger than the input size" in table[3]
    assert table[5] == f"table: latentbench report {tmp_path}"


def test_multirun_jobs_log_to_one_wandb_group_named_after_the_multirun(tmp_path):
    from tests.conftest import run_cli

    result = run_cli("train", "-m", "model=pca", "model.n_components=4,8", "logger=wandb", "trainer=cpu", "data.limit=100",
                     "trainer.max_epochs=1", "callbacks=none", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    for job in ("0_model.n_components=4", "1_model.n_components=8"):
        (init_log,) = (tmp_path / job / "wandb").glob("offline-run-*/logs/debug.log")  # what wandb.init was given
        assert f"'group': '{tmp_path}'" in init_log.read_text() and f"'name': '{job}'" in init_log.read_text()


@pytest.mark.parametrize(("args", "error"), [
    (["train", "--help"], None), (["train", "--cfg", "job"], None),
    (["train", "trainer.max_epoch=3"], "trainer.max_epoch: no such key in the config (did you mean trainer.max_epochs?)"),
    # the config checker's own errors: latentbench's signatures are read from source, not imported
    (["train", "model.latent_dim=abc"], "model.latent_dim: expected int, got 'abc' (str)"),
    (["train", "model=ae", "+model.widht=3"], "model.widht: unknown key for latentbench.models.ae.AutoEncoder (allowed: "
     "input_shape, hidden, latent_dim, activation, output_activation, loss, dropout, init, optimizer, scheduler)"),
    (["train", "data.batch_size=x"], "data.batch_size: expected int, got 'x' (str)"),  # a base class's key, through **kwargs
    (["train", "model.loss=foo"], "model.loss: expected one of 'mse', 'bce', 'l1', got 'foo' (str)"),  # an imported alias
])
def test_help_cfg_and_config_errors_answer_without_importing_torch(args, error):
    """What makes them answer in about a second (bench/startup.py): no torch, Lightning or W&B import."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "latentbench.cli", *args], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert result.returncode == (2 if error else 0), result.stderr[-1000:]
    if error:
        printed = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
        assert printed[-1].startswith(f"error: {error}"), printed[-3:]
    assert not imported & {"torch", "pytorch_lightning", "wandb"}

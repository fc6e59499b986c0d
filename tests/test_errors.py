"""Bad input gives one clear line naming the culprit, before training, and a non-zero exit code."""

from __future__ import annotations

import gzip
import shutil

import pytest

from latentbench.cli import main
from tests.conftest import MNIST_ROOT, REPO, needs_mnist, run_cli

QUICK = ["logger=none", "trainer=cpu", "trainer.fast_dev_run=true"]

MODEL_CHOICES = sorted(path.stem for path in (REPO / "conf" / "model").glob("*.yaml"))
CASES = {
    "unknown group choice": (["model=foo"], "model=foo: unknown choice (available: " + ", ".join(MODEL_CHOICES) + ")"),
    "unknown key": (["model.nope=3"], "model.nope: no such key in the config (to add a new key, write +model.nope=...)"),
    "misspelled key": (["trainer.max_epoch=3"],
                       "trainer.max_epoch: no such key in the config (did you mean trainer.max_epochs?) (to add a new key, write +trainer.max_epoch=...)"),
    "misspelled choice": (["model=aee"], "model=aee: unknown choice (did you mean ae?) (available: "),
    "misspelled model argument": (["+model.latent_dimm=3"], "model.latent_dimm: unknown key for latentbench.models.ae.AutoEncoder (did you mean latent_dim?)"),
    "misspelled callback argument": (["+callbacks.model_checkpoint.monitr=val/loss"],
                                     "callbacks.model_checkpoint.monitr: unknown key for latentbench.checkpoints.RunCheckpoint (did you mean monitor?)"),
    "wrong type": (["model=pca", "model.n_components=abc"], "model.n_components: expected int, got 'abc' (str)"),
    "wrong list item type": (["model.hidden=[a]"], "model.hidden: expected a list of int"),
    "wrong top-level type": (["seed=abc"], "seed: expected int, got 'abc' (str)"),
    "non-positive size": (["model.latent_dim=0"], "model.latent_dim: must be positive, got 0"),
    "non-positive batch size": (["data.batch_size=-1"], "data.batch_size: must be a positive integer, got -1"),
    "latent larger than input": (["model.latent_dim=100"], "model.latent_dim: 100 is larger than the input size 64"),
    "pca larger than input": (["model=pca", "model.n_components=65"], "model.n_components: 65 is larger than the input size 64"),
    "missing required value": (["model.loss=???"], "model.loss: missing required value"),
    "bad literal": (["model.loss=huber"], "model.loss: expected one of 'mse', 'bce', 'l1', got 'huber' (str)"),
    "bce without sigmoid": (["model.loss=bce", "model.output_activation=none"], "model.loss: 'bce' needs output_activation 'sigmoid'"),
    "unknown activation": (["model.activation=Foo"], "model.activation: 'Foo' is not a torch.nn activation"),
    "dropout out of range": (["model.dropout=1.5"], "model.dropout: must be in [0, 1), got 1.5"),
    "unknown init": (["model.init=he"], "model.init: 'he' is not allowed (allowed: default, xavier)"),
    "bad corrupt split": (["corruption=gaussian", "data.corrupt_splits=[training]"],
                          "data.corrupt_splits: expected a list of 'train', 'val', 'test', got ['training']"),
    "conv AE on flat data": (["model=ae_conv", "data.flatten=true"], "model.input_shape: a conv autoencoder needs (C, H, W) images"),
    "missing data folder": (["data=mnist", "data.root=/nonexistent/mnist"], "data.root: /nonexistent/mnist does not exist or is not a folder"),
    "grey input for an RGB autoencoder": (["model=ae_conv", "data=shapes", "corruption=grayscale"],
                                          "corruption: Grayscale turns the data's [3, 64, 64] images into [1, 64, 64], which ConvAutoEncoder cannot take as input"),
    "bad scheduler interval": (["model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,step_size:1,interval:batch}"],
                               "model.scheduler.interval: expected one of 'epoch', 'step', got 'batch'"),
    "GPU on a CPU machine": (["trainer=gpu"], "trainer.accelerator: 'gpu' asked for, but this machine has no CUDA GPU"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_is_one_line_before_training(case, capsys, tmp_path, monkeypatch):
    overrides, expected = CASES[case]
    if case == "GPU on a CPU machine":
        monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code = main(["train", *QUICK, *overrides, f"hydra.run.dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: " + expected), err[-1]
    assert not (tmp_path / "metrics.json").exists()
    assert not (tmp_path / "checkpoints").exists()


def test_folder_without_idx_files(capsys, tmp_path):
    (tmp_path / "mnist").mkdir()
    code = main(["train", *QUICK, "data=mnist", f"data.root={tmp_path / 'mnist'}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 2
    assert f"error: data.root: {tmp_path / 'mnist'} has no MNIST IDX files train-images-idx3-ubyte[.gz]" in capsys.readouterr().err


@needs_mnist
def test_truncated_idx_file_names_the_file(capsys, tmp_path):
    root = tmp_path / "mnist"
    shutil.copytree(MNIST_ROOT, root)
    broken = root / "t10k-images-idx3-ubyte.gz"
    with gzip.open(broken, "rb") as handle:
        data = handle.read()
    with gzip.open(broken, "wb") as handle:
        handle.write(data[:5000])
    code = main(["train", *QUICK, "data=mnist", f"data.root={root}", "data.limit=64", f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 2
    assert f"error: {broken}: IDX header declares 7840000 values but the file holds 4984 (truncated or corrupt)" in capsys.readouterr().err


def test_hub_failure_offline_says_what_to_set(capsys, tmp_path):
    code = main(["train", *QUICK, "data=mnist", "data.hub_name=no-such-user/no-such-mnist", f"hydra.run.dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: data.root: null, so MNIST comes from the hub dataset 'no-such-user/no-such-mnist', which failed" in err
    assert "set data.root=<folder with the four IDX files>" in err


def test_cli_error_has_exit_code_and_no_traceback():
    result = run_cli("train", "model=ae", "model.latent_dim=0", "logger=none")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: model.latent_dim: must be positive, got 0"
    assert "Traceback" not in result.stderr + result.stdout


def test_train_help_shows_examples(capsys):
    assert main(["train", "--help"]) == 0
    printed = capsys.readouterr().out
    assert "Examples:" in printed and "latentbench train -m model=pca,ae seed=1,2,3" in printed
    assert "latentbench train resume=outputs/<run>" in printed and "== Configuration groups ==" in printed


def test_umap_without_umap_learn_is_named_in_one_line(caplog):
    from latentbench.callbacks import EmbeddingPlot
    from latentbench.evaluation.embeddings import umap_installed

    if umap_installed():
        pytest.skip("umap-learn is installed here")
    EmbeddingPlot(methods=["pca", "umap"])
    assert [r.getMessage() for r in caplog.records] == [
        "callbacks.embedding_plot.methods: umap skipped: umap-learn is not installed (uv pip install umap-learn)"]
    caplog.clear()
    EmbeddingPlot()  # the default methods need nothing optional
    assert not caplog.records

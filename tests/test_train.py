"""Every model x data combination trains; metrics.json, W&B files and figures are what we promise."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA as SklearnPCA

from latentbench.data.mnist import MNISTDataModule
from latentbench.train import train
from tests.conftest import MNIST_ROOT, MNIST_SLICE, needs_mnist

MODELS = ["pca", "ae", "ae_hinton", "ae_conv"]


@pytest.mark.parametrize("model", MODELS)
def test_fast_dev_run_on_digits(cfg_factory, model):
    cfg = cfg_factory(f"model={model}", "trainer.fast_dev_run=true", *(["model.n_components=16"] if model == "pca" else []))
    metrics = train(cfg)
    assert np.isfinite(metrics["test/recon_sse"]) and metrics["test/recon_sse"] > 0


@needs_mnist
@pytest.mark.parametrize("model", MODELS)
def test_fast_dev_run_on_mnist_slice(cfg_factory, model):
    metrics = train(cfg_factory(f"model={model}", "trainer.fast_dev_run=true", *MNIST_SLICE))
    assert np.isfinite(metrics["test/recon_sse"])


def test_metrics_json_holds_named_keys(cfg_factory, tmp_path):
    cfg = cfg_factory("model=ae", "trainer.max_epochs=2", "data.limit=300")
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test/recon_sse", "test/mse", "test/psnr", "test/ssim", "best_val/loss", "best_val/recon_sse", "seed", "git_commit"):
        assert key in metrics, key
    assert metrics["seed"] == 1234
    assert metrics["status"] == "finished"
    assert metrics["checkpoint"].endswith(".ckpt")
    # recon_sse is mean-over-images of the per-image sum of squared error: 64 pixels x mse for 8x8 digits
    assert metrics["test/recon_sse"] == pytest.approx(64 * metrics["test/mse"], rel=1e-4)


def reference_pca_sse(train_x: np.ndarray, test_x: np.ndarray, n_components: int) -> float:
    reference = SklearnPCA(n_components=n_components, svd_solver="full").fit(train_x)
    recon = reference.inverse_transform(reference.transform(test_x))
    return float(((recon - test_x) ** 2).sum(axis=1).mean())


def split_arrays(datamodule, name: str) -> np.ndarray:
    split = datamodule.splits[name]
    return (split.images.double() / split.pixel_scale).flatten(1).numpy()


def test_pca_equals_sklearn_on_digits(cfg_factory):
    metrics = train(cfg_factory("model=pca", "model.n_components=10", "data.batch_size=50"))
    from latentbench.data.digits import DigitsDataModule

    datamodule = DigitsDataModule(batch_size=50)
    datamodule.setup()
    expected = reference_pca_sse(split_arrays(datamodule, "train"), split_arrays(datamodule, "test"), 10)
    assert metrics["test/recon_sse"] == pytest.approx(expected, rel=1e-5)


@needs_mnist
def test_pca_equals_sklearn_on_mnist(cfg_factory):
    overrides = [f"data=mnist", f"data.root={MNIST_ROOT}", "data.limit=3000", "data.val_size=500", "model=pca", "model.n_components=30"]
    metrics = train(cfg_factory(*overrides))
    datamodule = MNISTDataModule(root=str(MNIST_ROOT), limit=3000, val_size=500)
    datamodule.setup()
    expected = reference_pca_sse(split_arrays(datamodule, "train"), split_arrays(datamodule, "test"), 30)
    assert metrics["test/recon_sse"] == pytest.approx(expected, rel=1e-5)


@needs_mnist
def test_ae_loss_falls_on_mnist(cfg_factory, tmp_path):
    cfg = cfg_factory(
        "model=ae", *MNIST_SLICE[:2], "data.limit=6400", "data.val_size=1000", "data.batch_size=64",
        "trainer.max_steps=300", "trainer.max_epochs=10", "logger=csv", "trainer.log_every_n_steps=10",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "callbacks=none",
    )
    metrics = train(cfg)
    import csv

    rows = list(csv.DictReader(open(next(tmp_path.glob("csv/version_*/metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 20
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])
    assert metrics["global_step"] == 300


def test_offline_wandb_run_holds_images_and_embedding_table(cfg_factory, tmp_path):
    metrics = train(cfg_factory("model=ae", "logger=wandb", "trainer.max_epochs=2", "data.limit=200"))
    assert metrics["wandb_run_id"]
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    media = run_dir / "files" / "media"
    assert list((media / "images" / "val").glob("reconstructions_*.png"))
    assert list((media / "images" / "test").glob("embedding_*.png"))
    table_file = next((media / "table" / "test").glob("embedding_table_*.table.json"))
    table = json.loads(table_file.read_text())
    assert table["columns"][:3] == ["label", "x", "y"]
    assert len(table["data"]) == 200 and len(table["columns"]) == 3 + 16
    assert metrics["wandb_dir"] == str(run_dir)


def test_no_logger_saves_figures_to_run_dir(cfg_factory, tmp_path):
    train(cfg_factory("model=ae_conv", "data.limit=100"))
    assert list((tmp_path / "images").glob("val_reconstructions_*.png"))
    assert (tmp_path / "images").glob("test_embedding_*.png")
    header = (tmp_path / "tables" / "test_embedding_table.csv").read_text().splitlines()[0]
    assert header.startswith("label,x,y,z0")


def test_seed_makes_runs_reproducible(cfg_factory, tmp_path):
    first = train(cfg_factory("model=ae", "data.limit=200", "deterministic=true", "callbacks=none"))
    second = train(cfg_factory("model=ae", "data.limit=200", "deterministic=true", "callbacks=none"))
    other = train(cfg_factory("model=ae", "data.limit=200", "deterministic=true", "callbacks=none", "seed=7"))
    assert first["test/recon_sse"] == second["test/recon_sse"]
    assert first["test/recon_sse"] != other["test/recon_sse"]


def test_checkpoint_loads_without_hydra(cfg_factory):
    from latentbench.models.ae_conv import ConvAutoEncoder

    metrics = train(cfg_factory("model=ae_conv", "data.limit=100"))
    model = ConvAutoEncoder.load_from_checkpoint(metrics["checkpoint"], weights_only=True)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("interval, expected_steps", [("step", 6), ("epoch", 2)])
def test_lr_scheduler_steps_at_its_configured_interval(cfg_factory, tmp_path, interval, expected_steps):
    # 300 digits at batch 100 -> 3 optimizer steps an epoch, 2 epochs
    cfg = cfg_factory("model=ae", "trainer.max_epochs=2", "data.limit=300", "data.batch_size=100",
                      f"model.scheduler={{_target_:torch.optim.lr_scheduler.StepLR,step_size:1,gamma:0.5,interval:{interval}}}")
    metrics = train(cfg)
    state = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=False)
    assert state["lr_schedulers"][0]["last_epoch"] == expected_steps
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5**expected_steps)


def logged_train_losses(cfg_factory, tmp_path, every: int) -> dict[int, float]:
    import csv

    out = tmp_path / f"every{every}"
    cfg = cfg_factory("model=ae", "trainer.max_steps=20", "trainer.max_epochs=-1", "data.limit=400", "data.batch_size=50",
                      "logger=csv", f"trainer.log_every_n_steps={every}", "trainer.limit_val_batches=0", "callbacks=none",
                      f"paths.output_dir={out}", f"hydra.run.dir={out}")
    train(cfg)
    rows = csv.DictReader(open(next(out.glob("csv/version_*/metrics.csv"))))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def test_training_values_are_logged_only_on_the_steps_lightning_writes(cfg_factory, tmp_path, monkeypatch):
    import latentbench.models.base as base
    from latentbench.models.ae import AutoEncoder

    every_step = logged_train_losses(cfg_factory, tmp_path, every=1)
    calls = []
    original_log = AutoEncoder.log
    monkeypatch.setattr(AutoEncoder, "log", lambda self, name, *a, **k: (calls.append((name, self.global_step)), original_log(self, name, *a, **k)))
    every_fifth = logged_train_losses(cfg_factory, tmp_path / "fast", every=5)
    assert sorted(every_step) == list(range(20))
    assert sorted(every_fifth) == [4, 9, 14, 19]
    # the same numbers as when every step is logged: skipping the other steps changes nothing written
    assert every_fifth == pytest.approx({step: every_step[step] for step in every_fifth}, rel=1e-6)
    # self.log registers the value at the first logged step of each epoch (8 steps: 400 images at batch
    # 50); the epoch's later steps update it in place (update_logged_step_value)
    assert [step for name, step in calls if name == "train/loss"] == [4, 9, 19]

    # and what the in-place update writes is what self.log on every logged step writes
    calls.clear()
    monkeypatch.setattr(base, "update_logged_step_value", lambda *args: False)
    through_self_log = logged_train_losses(cfg_factory, tmp_path / "slow", every=5)
    assert [step for name, step in calls if name == "train/loss"] == [4, 9, 14, 19]
    assert through_self_log == every_fifth


def test_ae_dropout_regularises_in_training_only(cfg_factory):
    """model.dropout puts nn.Dropout after each hidden activation: training passes differ, evaluation
    passes are deterministic, and a net without dropout keeps its layer indices (old checkpoints load)."""
    from latentbench.models.ae import AutoEncoder

    plain = AutoEncoder(input_shape=[1, 8, 8], hidden=[32, 16], latent_dim=4)
    dropped = AutoEncoder(input_shape=[1, 8, 8], hidden=[32, 16], latent_dim=4, dropout=0.5)
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())
    assert [type(m).__name__ for m in dropped.encoder] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    x = torch.rand(16, 1, 8, 8)
    dropped.train()
    assert not torch.equal(dropped(x), dropped(x))
    dropped.eval()
    assert torch.equal(dropped(x), dropped(x))
    metrics = train(cfg_factory("model.dropout=0.2", "trainer.fast_dev_run=true"))
    assert math.isfinite(metrics["test/mse"])


@pytest.mark.parametrize("activation, gain", [("Tanh", 5 / 3), ("Sigmoid", 4.0), ("ReLU", 2 ** 0.5)])
def test_ae_xavier_init_scales_by_the_activation_and_keeps_the_code_alive(activation, gain):
    """model.init=xavier: Glorot-uniform weights with the following activation's gain (1 for the linear
    code layer), zero biases; on binary 784-pixel inputs the 30-d code of the 784-1000-500-250-30 net
    then varies across images, where PyTorch's default init all but flattens it for saturating units."""
    from latentbench.models.ae import AutoEncoder

    torch.manual_seed(0)
    x = torch.rand(256, 1, 28, 28).round()
    nets = {init: AutoEncoder(input_shape=[1, 28, 28], activation=activation, init=init) for init in ("default", "xavier")}
    first, code = nets["xavier"].encoder[0], nets["xavier"].encoder[-1]
    assert first.weight.var().item() == pytest.approx(gain ** 2 * 2 / (784 + 1000), rel=0.05)
    assert code.weight.var().item() == pytest.approx(2 / (250 + 30), rel=0.1)
    assert all(torch.count_nonzero(m.bias) == 0 for m in nets["xavier"].modules() if isinstance(m, torch.nn.Linear))
    spread = {init: net.encode(x).std(0).mean().item() for init, net in nets.items()}
    assert spread["xavier"] > 10 * spread["default"], spread


ALWAYS_ON = {"stop_on_non_finite_loss": "StopOnNonFiniteLoss", "save_on_interrupt": "SaveOnInterrupt",
             "model_checkpoint": "RunCheckpoint", "best_val_metrics": "BestValidationMetrics", "rng_state": "RngStateCheckpoint",
             "model_class": "ModelClassInCheckpoint", "channels_last": "ChannelsLast", "sample_grid": "SampleGrid",
             "history": "History", "model_summary": "ModelSummary", "cuda_checks": "CudaChecksFromTheRuntime"}


def test_every_callback_of_a_run_comes_from_its_config(cfg_factory):
    """No callback is added in code: each one the trainer runs is a node of callbacks/ or metrics/, so
    --cfg job shows the whole run, and callbacks=none leaves none of ours."""
    from latentbench.train import build_run

    objects = build_run(cfg_factory("model=ae"))
    ours = [type(c).__name__ for c in objects["trainer"].callbacks if type(c).__module__.startswith("latentbench")]
    assert set(ALWAYS_ON.values()) <= set(ours)
    assert sorted(ours) == sorted(type(c).__name__ for c in objects["callbacks"])  # Lightning moves checkpointing last
    composed = objects["trainer"].callbacks
    assert type(composed[0]).__name__ == "StopOnNonFiniteLoss" and type(composed[-1]).__name__ == "SaveOnInterrupt"
    bare = build_run(cfg_factory("model=ae", "callbacks=none"))["trainer"].callbacks
    assert not [c for c in bare if type(c).__module__.startswith("latentbench")]
    without_rng = build_run(cfg_factory("model=ae", "callbacks.rng_state=null"))["trainer"].callbacks
    assert "RngStateCheckpoint" not in [type(c).__name__ for c in without_rng]


def test_cfg_job_lists_every_callback(tmp_path):
    from tests.conftest import run_cli

    result = run_cli("train", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = result.stdout
    for name, cls in ALWAYS_ON.items():
        assert f"  {name}:\n" in printed and f".{cls}\n" in printed, name
    assert "latentbench.evaluation.fid.fid_callback" in printed and "latentbench.callbacks.progress_bar" in printed

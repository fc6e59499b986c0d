"""experiments/ldm_factor: curves of a logged metric against steps, and the quick experiment end to end."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from latentbench.curves import read_curve, write_curves
from latentbench.errors import ConfigError
from latentbench.models.ae_kl import AutoencoderKL
from latentbench.models.ldm import LatentDiffusion
from latentbench.train import train
from tests.conftest import FAST, MNIST_ROOT, make_cfg, needs_mnist


def write_log(run, rows: list[dict]) -> None:
    folder = run / "csv" / "version_0"
    folder.mkdir(parents=True)
    with (folder / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "step", "train/loss", "val/sample_fid_domain", "val/sample_class_acc"])
        writer.writeheader()
        writer.writerows(rows)


def test_curves_of_metrics_against_steps(tmp_path):
    sweep = tmp_path / "ldm"
    write_log(sweep / "f1", [{"epoch": 0, "step": 3, "train/loss": 0.5},
                             {"epoch": 0, "step": 3, "val/sample_fid_domain": 40.0, "val/sample_class_acc": 0.25},
                             {"epoch": 1, "step": 7, "val/sample_fid_domain": 30.5, "val/sample_class_acc": 0.5}])
    write_log(sweep / "f4", [{"epoch": 0, "step": 3, "val/sample_fid_domain": 20.25}])
    (sweep / "f4" / "notes").mkdir()
    assert read_curve(sweep / "f1", "val/sample_fid_domain") == [(3, 40.0), (7, 30.5)]
    curves = write_curves(sweep, "val/sample_fid_domain", tmp_path / "report", "ldm", "a title")
    assert curves == {"val/sample_fid_domain": {"f1": [(3, 40.0), (7, 30.5)], "f4": [(3, 20.25)]}}
    rows = list(csv.reader((tmp_path / "report" / "ldm_curves.csv").open()))
    assert rows == [["run", "step", "val/sample_fid_domain"], ["f1", "3", "40.0"], ["f1", "7", "30.5"], ["f4", "3", "20.25"]]
    table = (tmp_path / "report" / "ldm_curves.md").read_text()
    assert "| step | f1 | f4 |" in table and "| 3 | 40.000 | 20.250 |" in table and "| 7 | 30.500 |  |" in table
    assert (tmp_path / "report" / "ldm_curves.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match=r"^curves: no run under .* logged val/other to CSV"):
        write_curves(sweep, "val/other", tmp_path / "report", "ldm")
    # Fig. 6's two panels: FID and class accuracy of samples, one CSV column and one table each
    write_curves(sweep, ["val/sample_fid_domain", "val/sample_class_acc"], tmp_path / "both", "ldm")
    rows = list(csv.reader((tmp_path / "both" / "ldm_curves.csv").open()))
    assert rows == [["run", "step", "val/sample_fid_domain", "val/sample_class_acc"], ["f1", "3", "40.0", "0.25"],
                    ["f1", "7", "30.5", "0.5"], ["f4", "3", "20.25", ""]]
    tables = (tmp_path / "both" / "ldm_curves.md").read_text()
    assert "val/sample_class_acc against training steps" in tables and "| 7 | 0.500 |" in tables


@pytest.mark.slow
def test_quick_experiment_writes_fid_against_steps_per_factor(tmp_path):
    if not MNIST_ROOT.is_dir():
        pytest.skip("no MNIST")
    from latentbench.experiment import main

    assert main(["ldm_factor", "--quick", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "report" / "ldm_curves.csv").open()))
    assert {row["run"] for row in rows} == {"f1", "f4"}
    for factor in ("f1", "f4"):
        values = [float(row["val/sample_fid_domain"]) for row in rows if row["run"] == factor]
        assert len(values) == 3 and np.isfinite(values).all() and min(values) > 0  # one per LDM epoch
        accuracy = [float(row["val/sample_class_acc"]) for row in rows if row["run"] == factor]
        assert len(accuracy) == 3 and all(0 <= a <= 1 for a in accuracy)
    assert "test/sample_fid_domain" in (tmp_path / "report" / "ldm.md").read_text()


# -- f = 8 on MNIST zero-padded to 32x32 (data.pad_to=32) ------------------------------------------
PADDED_MNIST = ["data=mnist", f"data.root={MNIST_ROOT}", "data.pad_to=32", "data.limit=64", "data.val_size=32", "data.batch_size=32"]


@needs_mnist
def test_ae_kl_factor_8_on_mnist_padded_to_32(cfg_factory):
    overrides = ["model=ae_kl", "model.factor=8", "model.channels=[8,8,16,16]", "model.norm_num_groups=4", "trainer.max_steps=2",
                 "~callbacks.embedding_plot"]
    metrics = train(cfg_factory(*overrides, *PADDED_MNIST))
    assert np.isfinite(metrics["test/recon_sse"]) and metrics["test/recon_sse"] > 0
    model = AutoencoderKL.load_from_checkpoint(metrics["checkpoint"], weights_only=True)
    assert tuple(model.input_shape) == (1, 32, 32)
    images = torch.rand(4, 1, 32, 32)  # (the padded data itself: tests/test_pad_to.py)
    with torch.no_grad():
        latents = model.encode_latents(images)
        assert latents.shape == (4, 4, 4, 4)
        assert model.decode_latents(latents).shape == (4, 1, 32, 32)


@needs_mnist
def test_f8_experiment_configs_train_first_stage_then_ldm(tmp_path):
    """The experiment's own f = 8 configs: the first stage, then the LDM on its 4x4x4 latents (a few steps)."""
    few = [*FAST, *PADDED_MNIST[1:], "trainer.max_steps=2", "~callbacks.embedding_plot"]  # no t-SNE (most of the time)
    tiny = ["model.channels=[8,8,16,16]", "model.norm_num_groups=4"]  # the experiment's factor and data, a smaller network
    first = train(make_cfg(["experiment=ldm_factor_ae_f8", *few, *tiny], tmp_path / "first_stage" / "f8"))
    assert np.isfinite(first["test/psnr"])
    cfg = make_cfg(["experiment=ldm_factor_f8", *few, "logger=none", f"model.first_stage.checkpoint={tmp_path / 'first_stage' / 'f8'}",
                    "metrics.fid.enabled=false", "model.sampling.steps=2", "model.sampling.per_condition=1", "model.latent_std_batches=1"],
                   tmp_path / "ldm" / "f8")
    assert cfg.data.pad_to == 32 and list(cfg.model.unet.block_out_channels) == [64, 64]
    metrics = train(cfg)
    assert np.isfinite(metrics["test/loss"])
    ldm = LatentDiffusion.load_from_checkpoint(metrics["checkpoint"], weights_only=True)
    assert tuple(ldm.latent_shape) == (4, 4, 4) and ldm.unet.config.sample_size == 4

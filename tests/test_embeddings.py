"""Embedding views: 2-D maps, kNN accuracy, projector table, the side-by-side figure of two runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from latentbench.cli import main
from latentbench.evaluation.embeddings import knn_accuracy, project, umap_installed
from latentbench.train import train


def test_knn_accuracy_separates_clusters_from_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    clustered = rng.normal(size=(200, 8)) * 0.1 + labels[:, None]
    noise = rng.normal(size=(200, 8))
    assert knn_accuracy(clustered[::2], labels[::2], clustered[1::2], labels[1::2]) == 1.0
    assert knn_accuracy(noise[::2], labels[::2], noise[1::2], labels[1::2]) < 0.5


def test_projections_are_2d_and_2d_codes_stay_as_they_are():
    codes = np.random.default_rng(0).normal(size=(60, 5))
    assert project(codes, "pca").shape == (60, 2)
    assert project(codes, "tsne").shape == (60, 2)
    two = codes[:, :2]
    assert np.array_equal(project(two, "tsne"), two)
    with pytest.raises(ValueError, match="methods: 'lda' is not allowed"):
        project(codes, "lda")


def test_run_logs_views_table_with_thumbnails_and_knn(cfg_factory, tmp_path):
    metrics = train(cfg_factory("model=ae", "trainer.max_epochs=2", "callbacks.embedding_plot.thumbnails=20"))
    assert 0.3 < metrics["test/knn_acc"] <= 1.0  # digits codes of a briefly trained AE: far above chance (0.1)
    assert 0.1 < metrics["test/knn_acc_2d"] <= metrics["test/knn_acc"] + 0.05
    images = tmp_path / "images"
    assert list(images.glob("test_embedding_0*.png")) and list(images.glob("test_embedding_tsne_*.png"))
    assert bool(list(images.glob("test_embedding_umap_*.png"))) == umap_installed()
    rows = list(csv.reader((tmp_path / "tables" / "test_embedding_projector.csv").open()))
    assert rows[0][:3] == ["label", "thumbnail", "z0"] and len(rows[0]) == 2 + 16 and len(rows) == 1 + 20
    thumb = Image.open(tmp_path / rows[1][1])
    assert thumb.size == (32, 32)


def test_wandb_projector_table_holds_image_thumbnails(cfg_factory, tmp_path, monkeypatch):
    """W&B keeps a table's images in a staged artifact, so the logged object itself is checked."""
    import wandb

    logged = []
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", lambda self, data, *a, **k: logged.append(data))
    train(cfg_factory("model=ae", "logger=wandb", "data.limit=100", "callbacks.embedding_plot.thumbnails=10",
                      "callbacks.embedding_plot.methods=[pca]"))
    table = next(d["test/embedding_projector"] for d in logged if "test/embedding_projector" in d)
    assert isinstance(table, wandb.Table) and table.columns[:3] == ["label", "thumbnail", "z0"]
    assert len(table.data) == 10 and isinstance(table.data[0][1], wandb.Image)


def test_embeddings_subcommand_draws_two_runs_side_by_side(tmp_path):
    common = ["logger=none", "trainer=cpu", "trainer.max_epochs=1", "data.limit=300", "callbacks.embedding_plot.methods=[pca]"]
    assert main(["train", "model=pca", "model.n_components=2", *common, f"hydra.run.dir={tmp_path / 'pca'}"]) == 0
    assert main(["train", "model=ae", "model.latent_dim=2", *common, f"hydra.run.dir={tmp_path / 'ae'}"]) == 0
    out = tmp_path / "fig3.png"
    assert main(["embeddings", str(tmp_path / "pca"), str(tmp_path / "ae"), "--out", str(out)]) == 0
    width, height = Image.open(out).size
    assert width > 1.8 * height  # two panels side by side


def test_embeddings_subcommand_rejects_a_non_run(tmp_path, capsys):
    assert main(["embeddings", str(tmp_path), str(tmp_path)]) == 2
    assert "not a latentbench run directory (no .hydra/config.yaml)" in capsys.readouterr().err

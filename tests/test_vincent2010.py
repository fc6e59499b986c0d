"""Vincent et al. 2010 experiment: the linear probe on the learned codes and the masking-level sweep."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from hydra.utils import get_class, instantiate
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from latentbench.cli import main as cli_main
from latentbench.corruptions import Masking
from latentbench.evaluation.embeddings import linear_probe_error
from latentbench.train import train
from tests.conftest import MNIST_ROOT, needs_mnist


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_linear_probe_error_separates_clusters_from_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    clustered = rng.normal(size=(200, 8)) * 0.1 + labels[:, None]
    noise = rng.normal(size=(200, 8))
    assert linear_probe_error(clustered[::2], labels[::2], clustered[1::2], labels[1::2]) == 0.0
    assert linear_probe_error(noise[::2], labels[::2], noise[1::2], labels[1::2]) > 50.0  # chance: 75 %


@needs_mnist
def test_probe_error_on_clean_mnist_codes_equals_sklearn_on_the_same_codes(cfg_factory):
    """A masking DAE on a tiny MNIST slice: test/probe_err is the error of StandardScaler + LogisticRegression
    fitted on the clean train codes, scored on the clean test codes (here recomputed outside the callback)."""
    cfg = cfg_factory("experiment=vincent2010_masking", f"data.root={MNIST_ROOT}", "data.limit=400", "data.val_size=100",
                      "model.hidden=[64]", "model.latent_dim=32", "trainer.max_epochs=2", "callbacks.embedding_plot.methods=[pca]",
                      "callbacks.embedding_plot.thumbnails=0", "callbacks.embedding_plot.score_inputs=image",
                      "callbacks.embedding_plot.probe_train_points=250")
    metrics = train(cfg)
    error = metrics["test/probe_err"]
    assert 0.0 <= error < 60.0  # 10 digit classes: chance is 90 %

    model = get_class(cfg.model._target_).load_from_checkpoint(metrics["checkpoint"], map_location="cpu", weights_only=True).eval()
    data = instantiate(cfg.data)
    data.setup("test")
    splits = data.splits
    with torch.no_grad():
        train_batch = splits["train"][list(range(min(250, len(splits["train"]))))]
        test_batch = splits["test"][list(range(min(cfg.callbacks.embedding_plot.max_points, len(splits["test"]))))]
        train_codes = model.encode(train_batch["image"]).numpy()
        test_codes = model.encode(test_batch["image"]).numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200)).fit(train_codes, train_batch["label"].numpy())
    expected = 100.0 * (1.0 - probe.score(test_codes, test_batch["label"].numpy()))
    assert error == pytest.approx(expected, abs=1e-4)


def test_masking_fraction_zero_is_the_plain_autoencoder_input():
    images = torch.rand(4, 1, 8, 8)
    assert torch.equal(Masking(0.0)(images, torch.Generator().manual_seed(0)), images)
    with pytest.raises(ValueError, match=r"fraction: must lie in \[0, 1\], got -0.1"):
        Masking(-0.1)


@needs_mnist
def test_vincent2010_quick_mode_writes_one_row_per_masking_level_with_the_paper_column(tmp_path, capsys):
    """The documented experiment command, quick and tiny: the plain AE (fraction 0) and 25 % masking, one seed."""
    out = tmp_path / "vincent2010"
    assert cli_main(["experiment", "vincent2010", "--quick", "--out", str(out), f"data.root={MNIST_ROOT}", "data.limit=300",
                     "data.val_size=100", "model.hidden=[256]", "model.latent_dim=128"]) == 0
    rows = {float(r["corruption.fraction"]): r for r in read_csv(out / "report" / "table.csv")}
    assert set(rows) == {0.0, 0.25}
    paper = "test/probe_err (paper, fine-tuned 3-layer stack)"
    for level, value in ((0.0, 1.40), (0.25, 1.28)):
        row = rows[level]
        assert row["n"] == "1" and row["failed"] in ("", "0")
        assert 0.0 <= float(row["test/probe_err mean"]) < 60.0  # linear probe on 200 train codes; chance: 90 %
        assert 0.0 < float(row["test/mse mean"]) < 0.2 and 0.2 < float(row["test/knn_acc mean"]) <= 1.0
        assert float(row[paper]) == value
    assert float(rows[0.25]["test/mse mean"]) > float(rows[0.0]["test/mse mean"]) - 0.05  # masked inputs are not easier
    assert "Vincent et al., JMLR 11:3371 (2010), Table 3" in (out / "report" / "table.md").read_text()
    assert (out / "report" / "test_probe_err_vs_corruption.fraction.png").is_file()
    assert "table: " in capsys.readouterr().out

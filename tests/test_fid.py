"""The classifier (domain feature extractor), FID/KID with Inception or domain features, reconstruction FID."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentbench.models.classifier import ImageClassifier
from latentbench.train import train


def test_classifier_trains_on_digits_and_exposes_features(cfg_factory, tmp_path):
    metrics = train(cfg_factory("model=classifier", "data=digits", "trainer.max_epochs=3", "data.batch_size=64"))
    assert metrics["test/acc"] > 0.5  # 10 classes: chance is 0.1
    assert "best_val/acc" in metrics and metrics["checkpoint"].endswith(".ckpt")
    model = ImageClassifier.load_from_checkpoint(metrics["checkpoint"], weights_only=True)
    assert model.features(torch.rand(5, 1, 8, 8)).shape == (5, 128)
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)
    assert list((tmp_path / "images").glob("test_embedding_*.png"))  # codes = features
    assert not list((tmp_path / "images").glob("*reconstructions*"))


def test_classifier_needs_classes():
    with pytest.raises(ValueError, match="num_classes"):
        ImageClassifier(input_shape=[1, 8, 8], num_classes=None)

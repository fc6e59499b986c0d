"""The classifier (domain feature extractor), FID/KID with Inception or domain features, reconstruction FID."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentbench.models.classifier import ImageClassifier
from latentbench.train import train


def test_classifier_trains_on_digits_and_exposes_features(cfg_factory, tmp_path):
    metrics = train(cfg_factory("model=classifier", "data=digits", "trainer.max_epochs=3", "data.batch_size=64",
                                "callbacks.embedding_plot.methods=[pca]"))
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


# -- FID / KID ------------------------------------------------------------------------------------
import pytorch_lightning as pl
from scipy import linalg
from sklearn.datasets import load_digits

from latentbench.errors import ConfigError
from latentbench.evaluation.fid import DomainFeatures, InceptionFeatures, load_domain_model, make_fid


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    return torch.tensor(digits.images[:, None] / 16.0, dtype=torch.float32), torch.tensor(digits.target)


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> str:
    """A classifier trained for 80 steps on sklearn digits, saved as a Lightning checkpoint."""
    images, labels = digits_tensors()
    batches = [{"image": images[i : i + 64], "label": labels[i : i + 64]} for i in range(0, 1400, 64)]
    pl.seed_everything(0)
    model = ImageClassifier(input_shape=[1, 8, 8], num_classes=10, channels=[16], feature_dim=32)
    from latentbench.checkpoints import ModelClassInCheckpoint

    trainer = pl.Trainer(accelerator="cpu", max_steps=80, logger=False, enable_checkpointing=False, callbacks=[ModelClassInCheckpoint()],
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    path = tmp_path_factory.mktemp("clf") / "classifier.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


def test_domain_fid_of_a_set_with_itself_is_zero(classifier_ckpt):
    images, _ = digits_tensors()
    fid = make_fid("domain", checkpoint=classifier_ckpt, kid=True, kid_subset_size=100)
    fid.update(images[:400], images[:400])
    result = fid.compute()
    assert set(result) == {"fid_domain", "kid_domain", "kid_domain_std"}
    assert abs(result["fid_domain"]) < 1e-3
    assert abs(result["kid_domain"]) <= 3 * result["kid_domain_std"]  # unbiased estimate over random subsets: ~0
    fid.reset()
    fid.update(images[:400], (images[:400] + 0.4 * torch.randn(400, 1, 8, 8)).clamp(0, 1))
    noisy = fid.compute()
    assert noisy["kid_domain"] > abs(result["kid_domain"]) and noisy["fid_domain"] > 100 * abs(result["fid_domain"])


def test_domain_fid_grows_with_noise(classifier_ckpt):
    images, _ = digits_tensors()
    real = images[:500]
    fid = make_fid("domain", checkpoint=classifier_ckpt)
    generator = torch.Generator().manual_seed(0)
    values = []
    for sigma in (0.0, 0.05, 0.1, 0.2, 0.4):
        fid.reset()
        fid.update(real, (real + sigma * torch.randn(real.shape, generator=generator)).clamp(0, 1))
        values.append(fid.compute()["fid_domain"])
    assert values[0] < 1e-3
    assert all(a < b for a, b in zip(values, values[1:])), values


def reference_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to feature sets a, b (Heusel et al. 2017), with scipy."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_torchmetrics_fid_matches_scipy_reference(classifier_ckpt):
    images, _ = digits_tensors()
    real, fake = images[:600], images[600:1200].flip(-1)  # other digits, mirrored
    fid = make_fid("domain", checkpoint=classifier_ckpt)
    fid.update(real, fake)
    extractor = DomainFeatures(load_domain_model(classifier_ckpt))
    with torch.no_grad():
        expected = reference_frechet(extractor(real).double().numpy(), extractor(fake).double().numpy())
    assert expected > 0.1  # clearly different sets
    assert fid.compute()["fid_domain"] == pytest.approx(expected, rel=1e-3)


def test_domain_extractor_checks_image_shape(classifier_ckpt):
    fid = make_fid("domain", checkpoint=classifier_ckpt)
    with pytest.raises(ValueError, match=r"takes images of shape \(1, 8, 8\), got \(1, 28, 28\)"):
        fid.update(torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28))


def test_bad_classifier_checkpoints_are_one_line(tmp_path, classifier_ckpt):
    with pytest.raises(ConfigError, match=r"^metrics.fid.checkpoint: required when features=domain"):
        make_fid("domain")
    with pytest.raises(ConfigError, match=r"^metrics.fid.checkpoint: .*nope.ckpt does not exist$"):
        make_fid("domain", checkpoint=str(tmp_path / "nope.ckpt"))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(open(classifier_ckpt, "rb").read()[:5000])
    with pytest.raises(ConfigError, match=r"^metrics.fid.checkpoint: .*truncated.ckpt is not a readable checkpoint"):
        make_fid("domain", checkpoint=str(truncated))
    from latentbench.checkpoints import MODEL_CLASS_KEY
    from latentbench.models.ae import AutoEncoder

    other = tmp_path / "ae.ckpt"
    torch.save({"hyper_parameters": dict(AutoEncoder(input_shape=[1, 8, 8]).hparams), "state_dict": {},
                MODEL_CLASS_KEY: "latentbench.models.ae.AutoEncoder"}, other)
    with pytest.raises(ConfigError, match=r"ae.ckpt holds a latentbench.models.ae.AutoEncoder checkpoint, expected latentbench.models.classifier.ImageClassifier, latentbench.models.clip.CLIPModel$"):
        make_fid("domain", checkpoint=str(other))


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> str:
    """An InceptionV3 state dict of the exact architecture torchmetrics loads (random weights: no
    network here), saved like torch-fidelity's released file: proves the local-weights path."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    original_load, original_url = tf_inception.FeatureExtractorInceptionV3.load_state_dict, tf_inception.load_state_dict_from_url
    tf_inception.FeatureExtractorInceptionV3.load_state_dict = lambda self, state, *a, **k: None
    tf_inception.load_state_dict_from_url = lambda *a, **k: {}
    try:
        torch.manual_seed(0)
        network = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        tf_inception.FeatureExtractorInceptionV3.load_state_dict, tf_inception.load_state_dict_from_url = original_load, original_url
    path = tmp_path_factory.mktemp("inception") / "weights-inception.pth"
    torch.save(network.state_dict(), path)
    return str(path)


def test_inception_from_local_weights_takes_grey_images(inception_weights):
    fid = make_fid("inception", weights_path=inception_weights)
    images, _ = digits_tensors()
    real, fake = images[:2], images[2:4]
    fid.update(real, fake)  # grey 8x8 -> 3 x 299 x 299 inside
    extractor = fid.fid.inception
    assert isinstance(extractor, InceptionFeatures)
    with torch.no_grad():
        features = extractor(real[:1])
        assert features.shape == (1, 2048)
        assert torch.allclose(features, extractor(real[:1].expand(-1, 3, -1, -1)))
    assert fid.num_real == 2 and fid.num_fake == 2


@pytest.mark.slow
def test_inception_fid_from_local_weights_is_finite(inception_weights):
    """compute() takes an eigendecomposition of a 2048x2048 product: slow on a CPU."""
    fid = make_fid("inception", weights_path=inception_weights)
    images, _ = digits_tensors()
    fid.update(images[:3], images[3:6])
    result = fid.compute()
    assert list(result) == ["fid_inception"] and np.isfinite(result["fid_inception"])


def test_inception_offline_without_weights_is_one_line(monkeypatch):
    import urllib.error

    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_network)
    with pytest.raises(ConfigError, match=r"^metrics.fid.features=inception: could not download .*set metrics.fid.weights_path=.*features=domain"):
        make_fid("inception")


def test_inception_weights_path_errors(tmp_path, classifier_ckpt):
    with pytest.raises(ConfigError, match=r"^metrics.fid.weights_path: .*missing.pth does not exist$"):
        make_fid("inception", weights_path=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match=r"^metrics.fid.weights_path: .* is not an InceptionV3 state dict"):
        make_fid("inception", weights_path=classifier_ckpt)


# -- metrics.fid in runs ----------------------------------------------------------------------------
from latentbench.train import build_run  # noqa: E402
from tests.conftest import MNIST_SLICE, needs_mnist  # noqa: E402


@pytest.mark.parametrize("overrides, message", [
    (["metrics.fid.enabled=true"], r"^metrics.fid.checkpoint: required when features=domain"),
    (["metrics.fid.checkpoint=/nowhere/clf.ckpt"], r"^metrics.fid.checkpoint: /nowhere/clf.ckpt does not exist$"),
    (["metrics.fid.enabled=true", "metrics.fid.features=vgg"], r"^metrics.fid.features: 'vgg' is not allowed \(allowed: inception, domain\)"),
    (["metrics.fid.weights_path=/nowhere/inception.pth", "metrics.fid.features=inception"], r"^metrics.fid.weights_path: /nowhere/inception.pth does not exist$"),
])
def test_fid_config_is_checked_before_training(cfg_factory, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_run(cfg_factory("model=ae", *overrides))


@needs_mnist
def test_domain_classifier_must_match_the_data(cfg_factory, classifier_ckpt):
    with pytest.raises(ConfigError, match=r"^metrics.fid.checkpoint: the feature model takes images of shape \(1, 8, 8\), this run's data gives \(1, 28, 28\)"):
        build_run(cfg_factory("model=ae", *MNIST_SLICE, f"metrics.fid.checkpoint={classifier_ckpt}"))


def test_reconstruction_fid_on_digits_at_test_and_validation(cfg_factory, classifier_ckpt, tmp_path):
    metrics = train(cfg_factory("model=ae", "trainer.max_epochs=1", "callbacks.embedding_plot.methods=[pca]", f"metrics.fid.checkpoint={classifier_ckpt}",
                                "metrics.fid.every_n_val_epochs=1", "metrics.fid.kid=true", "metrics.fid.num_images=200"))
    assert metrics["test/fid_domain"] > 0 and np.isfinite(metrics["test/kid_domain"])
    assert metrics["best_val/fid_domain"] > 0  # logged at validation, before best-val metrics are recorded


@pytest.mark.slow
@needs_mnist
def test_end_to_end_classifier_then_ae_logs_fid_domain(tmp_path):
    from tests.conftest import make_cfg

    fast = ["trainer=cpu", "logger=none", "trainer.max_epochs=1", *MNIST_SLICE]
    clf = train(make_cfg([*fast, "model=classifier", "model.channels=[8,16]", "model.feature_dim=32",
                         "data.batch_size=32", "trainer.max_epochs=2"], tmp_path / "clf"))
    assert clf["test/acc"] > 0.3  # 32 steps on 512 images; chance is 0.1
    ae_dir = tmp_path / "ae"
    train(make_cfg([*fast, "model=ae", "metrics.fid.enabled=true", "metrics.fid.features=domain",
                    f"metrics.fid.checkpoint='{clf['checkpoint']}'",  # quoted: the file name holds '='
                    "metrics.fid.num_images=300"], ae_dir))
    written = json.loads((ae_dir / "metrics.json").read_text())
    assert written["test/fid_domain"] > 0 and np.isfinite(written["test/fid_domain"])

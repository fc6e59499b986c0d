"""FID and KID with a choice of feature extractor, named in every logged key.

Two feature extractors, whose numbers are **not comparable** with each other:

- ``inception``: the standard InceptionV3 (2048-d pool features) of torchmetrics / torch-fidelity.
  Its weights are downloaded when online, or read from a local file (``weights_path``, a plain
  state dict such as torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``). Grey images
  are repeated to 3 channels; the network resizes every image to 299x299 itself.
- ``domain``: the penultimate layer of a ``model=classifier`` checkpoint trained by this project
  (e.g. on MNIST), which works offline. Images are given in the classifier's training shape.

The public API, for reconstruction FID (real vs reconstructed) and sample FID (real vs generated)::

    from latentbench.evaluation.fid import make_fid

    fid = make_fid("domain", checkpoint="outputs/clf/checkpoints/best-epoch=004.ckpt", kid=True)
    fid.update(real, fake)        # (B, C, H, W) floats in [0, 1]; or update_real / update_fake
    fid.compute()                 # {"fid_domain": 12.3, "kid_domain": 0.01, "kid_domain_std": 0.002}
    fid.reset()

Both metrics are torchmetrics ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` given the
extractor as a custom ``feature`` module (a ``torch.nn.Module`` with ``num_features``), so their
states reduce across DDP ranks like every torchmetrics metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from latentbench.errors import ConfigError, first_line

Features = Literal["inception", "domain"]
FEATURES = ("inception", "domain")


class InceptionFeatures(nn.Module):
    """InceptionV3 pool features: ``(B, C, H, W)`` floats in [0, 1] -> ``(B, 2048)``.

    Grey (1-channel) images are repeated to 3 channels and every image is quantised to uint8, as
    the reference FID implementation expects; torchmetrics' network resizes to 299x299 itself.

    Args:
        weights_path (`str`, *optional*): a local InceptionV3 state dict; None downloads the
            standard weights (needs network).
        key (`str`): config key named in error messages.
    """

    num_features = 2048

    def __init__(self, weights_path: str | None = None, key: str = "metrics.fid"):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        hint = f"offline, set {key}.weights_path=<local InceptionV3 .pth> or use {key}.features=domain with {key}.checkpoint=<classifier ckpt>"
        if weights_path is not None:
            load_state_dict_file(weights_path, f"{key}.weights_path")  # a readable plain state dict, checked safely first
        try:
            self.inception = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=weights_path)
        except (OSError, RuntimeError, ValueError) as error:  # URLError is an OSError
            if weights_path is not None:
                raise ConfigError(f"{key}.weights_path: {weights_path} is not an InceptionV3 state dict ({first_line(error)[:160]})") from None
            raise ConfigError(f"{key}.features=inception: could not download the InceptionV3 weights ({first_line(error)[:120]}); {hint}") from None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        return self.inception(pixels)


class DomainFeatures(nn.Module):
    """A trained classifier's penultimate layer: ``(B, *input_shape)`` in [0, 1] -> ``(B, feature_dim)``.

    Always in eval mode and without gradients; ``num_features`` tells torchmetrics the width.
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_features = int(classifier.feature_dim)
        self.input_shape = tuple(classifier.input_shape)

    def train(self, mode: bool = True) -> DomainFeatures:
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images.float())


def load_state_dict_file(path: str, key: str) -> dict:
    """``torch.load(path, weights_only=True)`` with one-line errors for a missing or unreadable file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{key}: {path} does not exist")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, not a torch file, unsafe pickle ...
        raise ConfigError(f"{key}: cannot read {path} as a torch checkpoint ({type(error).__name__}: {first_line(error)[:160]})") from None


def load_classifier(checkpoint: str, key: str = "metrics.fid.checkpoint") -> nn.Module:
    """The :class:`~latentbench.models.classifier.ImageClassifier` saved in a ``model=classifier`` checkpoint.

    Loaded with ``torch.load(weights_only=True)``; a missing or truncated file, or a checkpoint of
    another model, is a one-line :class:`ConfigError` naming ``key``.
    """
    from latentbench.models.classifier import ImageClassifier

    state = load_state_dict_file(checkpoint, key)
    hparams = state.get("hyper_parameters") if isinstance(state, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in state:
        raise ConfigError(f"{key}: {checkpoint} is not a Lightning checkpoint (no hyper_parameters/state_dict)")
    if "num_classes" not in hparams or "feature_dim" not in hparams:
        raise ConfigError(f"{key}: {checkpoint} is not a model=classifier checkpoint (its hyper-parameters: {', '.join(sorted(hparams))})")
    try:
        model = ImageClassifier(**hparams)
        model.load_state_dict(state["state_dict"])
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(f"{key}: {checkpoint} does not match model=classifier ({first_line(error)[:160]})") from None
    return model.eval()


class FIDEvaluator(nn.Module):
    """FID (and optionally KID) of real vs fake images in one feature space, named ``name``.

    ``update(real, fake)`` / ``update_real`` / ``update_fake`` take ``(B, C, H, W)`` (or flat
    ``(B, D)``, reshaped to the extractor's input shape) floats in [0, 1]; ``compute()`` returns
    ``{"fid_<name>": ..., "kid_<name>": ..., "kid_<name>_std": ...}``. Move it with ``.to(device)``.

    Args:
        extractor (`nn.Module`): maps images to ``(B, num_features)``; has ``num_features``.
        name (`str`): the extractor's name in the keys (``inception`` or ``domain``).
        kid (`bool`): also compute KID (keeps every feature vector in memory).
        kid_subset_size (`int`): KID subset size, clipped to the number of images at compute.
        image_shape (`tuple`, *optional*): shape the extractor needs; inputs of another shape raise.
    """

    def __init__(self, extractor: nn.Module, name: str, kid: bool = False, kid_subset_size: int = 1000,
                 image_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.name, self.image_shape = name, image_shape
        self.fid = FrechetInceptionDistance(feature=extractor, reset_real_features=True)
        self.kid = KernelInceptionDistance(feature=extractor, subset_size=kid_subset_size, reset_real_features=True) if kid else None
        self.kid_subset_size = kid_subset_size

    @property
    def num_real(self) -> int:
        return int(self.fid.real_features_num_samples)

    @property
    def num_fake(self) -> int:
        return int(self.fid.fake_features_num_samples)

    def _prepare(self, images: torch.Tensor, which: str) -> torch.Tensor:
        images = images.detach().float()
        if self.image_shape is not None:
            if images[0].numel() != int(torch.tensor(self.image_shape).prod()):
                raise ValueError(f"{which}: the {self.name} feature extractor takes images of shape {tuple(self.image_shape)}, got {tuple(images.shape[1:])}")
            images = images.reshape(-1, *self.image_shape)
        elif images.dim() != 4:
            raise ValueError(f"{which}: expected (B, C, H, W) images, got shape {tuple(images.shape)}")
        return images

    @torch.no_grad()
    def update_real(self, real: torch.Tensor) -> None:
        real = self._prepare(real, "real")
        self.fid.update(real, real=True)
        if self.kid is not None:
            self.kid.update(real, real=True)

    @torch.no_grad()
    def update_fake(self, fake: torch.Tensor) -> None:
        fake = self._prepare(fake, "fake")
        self.fid.update(fake, real=False)
        if self.kid is not None:
            self.kid.update(fake, real=False)

    def update(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        """Add a batch of real and a batch of fake (reconstructed or generated) images."""
        self.update_real(real)
        self.update_fake(fake)

    @torch.no_grad()
    def compute(self) -> dict[str, float]:
        """``{"fid_<name>": ...}`` (plus ``kid_<name>``, ``kid_<name>_std``); needs >= 2 real and fake images."""
        if self.num_real < 2 or self.num_fake < 2:
            raise ValueError(f"fid_{self.name}: needs at least 2 real and 2 fake images, got {self.num_real} and {self.num_fake}")
        results = {f"fid_{self.name}": float(self.fid.compute())}
        if self.kid is not None:
            self.kid.subset_size = min(self.kid_subset_size, self.num_real, self.num_fake)
            mean, std = self.kid.compute()
            results[f"kid_{self.name}"], results[f"kid_{self.name}_std"] = float(mean), float(std)
        return results

    def reset(self) -> None:
        self.fid.reset()
        if self.kid is not None:
            self.kid.reset()


def make_fid(
    features: Features,
    checkpoint: str | None = None,
    weights_path: str | None = None,
    kid: bool = False,
    kid_subset_size: int = 1000,
    key: str = "metrics.fid",
) -> FIDEvaluator:
    """A :class:`FIDEvaluator` with the ``inception`` or ``domain`` feature extractor.

    Args:
        features: ``inception`` (``weights_path`` or download) or ``domain`` (``checkpoint`` of a
            ``model=classifier`` run).
        checkpoint: the classifier checkpoint, required for ``domain``.
        weights_path: a local InceptionV3 state dict for ``inception``; None downloads it.
        kid: also compute KID.
        kid_subset_size: KID subset size (clipped to the number of images).
        key: the config key prefix named in error messages.

    Raises:
        ConfigError: one line naming ``key`` when the extractor cannot be built.
    """
    if features == "domain":
        if not checkpoint:
            raise ConfigError(f"{key}.checkpoint: required when features=domain (a model=classifier run's .ckpt)")
        classifier = load_classifier(checkpoint, f"{key}.checkpoint")
        return FIDEvaluator(DomainFeatures(classifier), "domain", kid, kid_subset_size, image_shape=tuple(classifier.input_shape))
    if features == "inception":
        return FIDEvaluator(InceptionFeatures(weights_path, key), "inception", kid, kid_subset_size)
    raise ConfigError(f"{key}.features: {features!r} is not allowed (allowed: {', '.join(FEATURES)})")

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

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's class for each image: ``(B, *input_shape)`` (or flat) -> ``(B,)`` ids."""
        return self.classifier(images.float().reshape(-1, *self.input_shape)).argmax(dim=1)


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

    Read by :func:`latentbench.checkpoints.read_checkpoint` (``weights_only=True``): a missing or
    truncated file, or a checkpoint of another model, is a one-line :class:`ConfigError` naming ``key``.
    """
    from latentbench.checkpoints import read_checkpoint
    from latentbench.models.classifier import ImageClassifier

    state = read_checkpoint(checkpoint, key, expected=ImageClassifier)
    try:
        model = ImageClassifier(**state.get("hyper_parameters", {}))
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
        self.extractor = extractor
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


# -- reconstruction FID during training / testing -------------------------------------------------
import logging  # noqa: E402

import pytorch_lightning as pl  # noqa: E402

log = logging.getLogger(__name__)


class ReconstructionFID(pl.Callback):
    """FID (and KID) of real vs reconstructed images, logged as ``test/fid_<features>`` at test
    and ``val/fid_<features>`` every ``every_n_val_epochs`` validation epochs.

    Uses the ``reconstruction`` the model's validation/test step returns; models without one
    (classifiers) are skipped with a warning.

    Args:
        evaluator (`FIDEvaluator`): from :func:`make_fid`.
        num_images (`int`): images per evaluation (per process under DDP).
        every_n_val_epochs (`int`, *optional*): also on validation images every N epochs.
    """

    def __init__(self, evaluator: FIDEvaluator, num_images: int = 1000, every_n_val_epochs: int | None = None):
        self.evaluator, self.num_images, self.every_n_val_epochs = evaluator, num_images, every_n_val_epochs
        self.active = False
        self.warned = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.evaluator.to(pl_module.device)

    def _start(self, pl_module) -> None:
        self.evaluator.to(pl_module.device)
        self.evaluator.reset()
        self.active = True

    def _update(self, trainer, outputs, batch) -> None:
        if not self.active or self.evaluator.num_real >= self.num_images:
            return
        if not isinstance(outputs, dict) or "reconstruction" not in outputs:
            if not self.warned:
                log.warning("metrics.fid: the model returns no reconstructions; reconstruction FID skipped")
                self.warned = True
            self.active = False
            return
        shape = tuple(trainer.datamodule.image_shape)
        take = self.num_images - self.evaluator.num_real
        real = batch["image"][:take].reshape(-1, *shape)
        fake = outputs["reconstruction"][:take].reshape(-1, *shape)
        self.evaluator.update(real, fake.clamp(0, 1))

    def _finish(self, pl_module, stage: str) -> None:
        if not self.active:
            return
        self.active = False
        if self.evaluator.num_real < 2:
            log.warning("metrics.fid: fewer than 2 %s images; %s FID skipped", stage, stage)
            return
        for name, value in self.evaluator.compute().items():
            pl_module.log(f"{stage}/{name}", value)
        self.evaluator.reset()

    def _val_due(self, trainer) -> bool:
        n = self.every_n_val_epochs
        return bool(n) and not trainer.sanity_checking and (trainer.current_epoch + 1) % n == 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._val_due(trainer):
            self._start(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(trainer, outputs, batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._finish(pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(trainer, outputs, batch)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._finish(pl_module, "test")


def fid_enabled(node) -> bool:
    """``metrics.fid.enabled``, where null means: on when a checkpoint or weights_path is given."""
    if node is None:
        return False
    if node.get("enabled") is None:
        return bool(node.get("checkpoint") or node.get("weights_path"))
    return bool(node.enabled)


def check_fid_config(node, key: str = "metrics.fid") -> None:
    """One-line ConfigErrors for a bad ``metrics.fid`` node, before anything is loaded."""
    if node is None:
        return
    enabled = node.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise ConfigError(f"{key}.enabled: expected true, false or null, got {enabled!r}")
    if not fid_enabled(node):
        return
    if node.features not in FEATURES:
        raise ConfigError(f"{key}.features: {node.features!r} is not allowed (allowed: {', '.join(FEATURES)})")
    for name in ("num_images",):
        value = node.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 2:
            raise ConfigError(f"{key}.{name}: expected an integer >= 2, got {value!r}")
    every = node.get("every_n_val_epochs")
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every <= 0):
        raise ConfigError(f"{key}.every_n_val_epochs: expected a positive integer or null, got {every!r}")
    if not isinstance(node.get("kid", False), bool):
        raise ConfigError(f"{key}.kid: expected true or false, got {node.kid!r}")
    if node.features == "domain" and not node.get("checkpoint"):
        raise ConfigError(f"{key}.checkpoint: required when features=domain (the .ckpt of a model=classifier run)")
    for name in ("checkpoint", "weights_path"):
        path = node.get(name)
        if path and not Path(path).is_file():
            raise ConfigError(f"{key}.{name}: {path} does not exist")


def metric_callbacks(cfg, image_shape: tuple[int, ...] | None = None) -> list[pl.Callback]:
    """Callbacks for the run's ``metrics`` config group (validated first); ``[]`` when all are off.

    Loads the FID feature extractor now, so a bad checkpoint or missing weights fail before
    training; ``image_shape`` (the data's ``(C, H, W)``) must match a domain extractor's input.
    """
    from latentbench.evaluation.sample_clip_score import clip_score_callbacks

    metrics = cfg.get("metrics") if cfg is not None else None
    node = metrics.get("fid") if metrics else None
    check_fid_config(node)
    others = clip_score_callbacks(cfg)  # metrics.clip_score: text-conditioned samples vs their prompts
    if not fid_enabled(node):
        return others
    evaluator = make_fid(node.features, checkpoint=node.get("checkpoint"), weights_path=node.get("weights_path"),
                         kid=bool(node.get("kid", False)), kid_subset_size=max(2, min(1000, int(node.num_images) // 2)))
    if image_shape is not None and evaluator.image_shape is not None:
        needed, have = int(torch.tensor(evaluator.image_shape).prod()), int(torch.tensor(image_shape).prod())
        if needed != have:
            raise ConfigError(f"metrics.fid.checkpoint: the classifier takes images of shape {tuple(evaluator.image_shape)}, "
                              f"this run's data gives {tuple(image_shape)} (train a classifier on the same data)")
    log.info("metrics.fid: %s features on %d images%s", node.features, node.num_images,
             f", every {node.every_n_val_epochs} validation epochs" if node.get("every_n_val_epochs") else " at test")
    return [ReconstructionFID(evaluator, int(node.num_images), node.get("every_n_val_epochs")), *others]

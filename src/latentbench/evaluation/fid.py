"""FID and KID with a choice of feature extractor, named in every logged key.

Two feature extractors, whose numbers are **not comparable** with each other:

- ``inception``: the standard InceptionV3 (2048-d pool features) of torchmetrics / torch-fidelity.
  Its weights are downloaded when online, or read from a local file (``weights_path``, a plain
  state dict such as torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``). Grey images
  are repeated to 3 channels; the network resizes every image to 299x299 itself.
- ``domain``: a feature space trained by this project, which works offline: the penultimate layer
  of a ``model=classifier`` checkpoint (e.g. on MNIST), or the image embedding of a ``model=clip``
  checkpoint (colour images with captions but no class labels, e.g. coco-mini). Images are given in
  the model's training shape; the class accuracy of samples needs a classifier.

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

import logging
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from latentbench.callbacks import validation_due
from latentbench.errors import ConfigError, first_line
from latentbench.models.base import eval_output

log = logging.getLogger(__name__)

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
    """A trained model's ``features``: ``(B, *input_shape)`` in [0, 1] -> ``(B, feature_dim)``; a
    classifier's penultimate layer or CLIP's image embedding.

    Always in eval mode and without gradients; ``num_features`` tells torchmetrics the width;
    ``classifies`` whether :meth:`predict` can name classes (a classifier, not CLIP).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.classifier = model.eval().requires_grad_(False)
        self.num_features = int(model.feature_dim)
        self.input_shape = tuple(model.input_shape)
        self.classifies = hasattr(model, "num_classes")

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


def load_domain_model(checkpoint: str, key: str = "metrics.fid.checkpoint") -> nn.Module:
    """The feature model saved in a ``model=classifier`` (:class:`~latentbench.models.classifier.ImageClassifier`)
    or ``model=clip`` (:class:`~latentbench.models.clip.CLIPModel`) checkpoint.

    Read by :func:`latentbench.checkpoints.read_checkpoint` (``weights_only=True``): a missing or
    truncated file, or a checkpoint of another model, is a one-line :class:`ConfigError` naming ``key``.
    """
    from hydra.utils import get_class

    from latentbench.checkpoints import MODEL_CLASS_KEY, read_checkpoint
    from latentbench.models.classifier import ImageClassifier
    from latentbench.models.clip import CLIPModel

    state = read_checkpoint(checkpoint, key, expected=(ImageClassifier, CLIPModel))
    cls = get_class(state[MODEL_CLASS_KEY])
    name = "model=classifier" if issubclass(cls, ImageClassifier) else "model=clip"
    try:
        model = cls(**state.get("hyper_parameters", {}))
        model.load_state_dict(state["state_dict"])
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(f"{key}: {checkpoint} does not match {name} ({first_line(error)[:160]})") from None
    if model.input_shape is None:
        raise ConfigError(f"{key}: {checkpoint} does not record the image shape it was trained on (input_shape)")
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
            ``model=classifier`` or ``model=clip`` run).
        checkpoint: the classifier or CLIP checkpoint, required for ``domain``.
        weights_path: a local InceptionV3 state dict for ``inception``; None downloads it.
        kid: also compute KID.
        kid_subset_size: KID subset size (clipped to the number of images).
        key: the config key prefix named in error messages.

    Raises:
        ConfigError: one line naming ``key`` when the extractor cannot be built.
    """
    if features == "domain":
        if not checkpoint:
            raise ConfigError(f"{key}.checkpoint: required when features=domain (a model=classifier or model=clip run's .ckpt)")
        model = load_domain_model(checkpoint, f"{key}.checkpoint")
        return FIDEvaluator(DomainFeatures(model), "domain", kid, kid_subset_size, image_shape=tuple(model.input_shape))
    if features == "inception":
        return FIDEvaluator(InceptionFeatures(weights_path, key), "inception", kid, kid_subset_size)
    raise ConfigError(f"{key}.features: {features!r} is not allowed (allowed: {', '.join(FEATURES)})")


# -- FID of reconstructions or samples during training / testing (metrics.fid) ---------------------
KEY = "metrics.fid"
IMAGES = ("auto", "reconstructions", "samples")


def can_sample(pl_module) -> bool:
    """Whether a model generates images (a diffusion model's ``sample`` / ``sample_one_each``)."""
    return callable(getattr(pl_module, "sample_one_each", None))


class FID(pl.Callback):
    """FID (and KID) of real evaluation images vs the model's reconstructions or its samples.

    - ``reconstructions``: the ``reconstruction`` each validation/test step returns, against its
      batch's images; logged as ``<stage>/fid_<features>``. Models without reconstructions
      (classifiers) are skipped with a warning.
    - ``samples``: the first ``num_images`` evaluation images are kept with their classes/captions;
      at the epoch's end the model samples one image for each (its sampling defaults, fixed seeds:
      image i starts from noise ``sampling.seed + i``), logged as ``<stage>/sample_fid_<features>``.
      With class conditioning and domain features also ``<stage>/sample_class_acc``: the share of
      samples that the FID's classifier assigns to the class they were sampled for.
    - ``auto``: samples for models that sample (``model=ldm``), reconstructions otherwise.

    Clips (``model=video_ldm``) are measured frame by frame (per-frame FID, class accuracy of
    frames); ``num_images`` then counts clips.

    Runs at every test and every ``every_n_val_epochs`` validation epochs (null: test only).

    Args:
        evaluator (`FIDEvaluator`): from :func:`make_fid`.
        num_images (`int`): real images per evaluation (per process under DDP), and as many samples.
        every_n_val_epochs (`int`, *optional*): also at validation every N epochs.
        images (`str`): ``auto``, ``reconstructions`` or ``samples``.
        sample_batch_size (`int`): samples generated at once.
    """

    def __init__(self, evaluator: FIDEvaluator, num_images: int = 1000, every_n_val_epochs: int | None = None,
                 images: str = "auto", sample_batch_size: int = 64):
        self.evaluator, self.num_images, self.every_n_val_epochs = evaluator, num_images, every_n_val_epochs
        self.images, self.sample_batch_size = images, sample_batch_size
        self.of_samples = images == "samples"
        self.active = False
        self.warned = False
        self.real: list[torch.Tensor] = []
        self.requests: list | None = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.of_samples = self.images == "samples" or (self.images == "auto" and can_sample(pl_module))
        if self.of_samples and not can_sample(pl_module):
            raise ConfigError(f"{KEY}.images: samples asked for, but {type(pl_module).__name__} does not sample (use images=reconstructions)")
        self.evaluator.to(pl_module.device)

    @property
    def num_kept(self) -> int:
        return sum(len(images) for images in self.real) if self.of_samples else self.evaluator.num_real

    def _start(self, pl_module) -> None:
        self.evaluator.to(pl_module.device)
        self.evaluator.reset()
        self.real, self.requests = [], []
        self.active = True

    def _update(self, trainer, pl_module, outputs, batch) -> None:
        if not self.active or self.num_kept >= self.num_images:
            return
        take = self.num_images - self.num_kept
        if self.of_samples:
            self.real.append(batch["image"][:take].detach())
            requests = pl_module.requests_from_batch(batch)
            self.requests = None if requests is None else [*self.requests, *requests[:take]]
            return
        reconstruction = eval_output(outputs).reconstruction
        if reconstruction is None:
            if not self.warned:
                log.warning("%s: the model returns no reconstructions; reconstruction FID skipped", KEY)
                self.warned = True
            self.active = False
            return
        shape = tuple(trainer.datamodule.image_shape)
        real = batch["image"][:take].reshape(-1, *shape)
        fake = reconstruction[:take].reshape(-1, *shape)
        self.evaluator.update(real, fake.clamp(0, 1))

    def _add_samples(self, pl_module) -> dict[str, float]:
        """Sample one image per kept real image (same class/caption) and add both; ``{"class_acc": ...}`` where it applies.

        Clips (``(N, T, C, H, W)``, ``model=video_ldm``) are measured frame by frame: FID of all real vs
        all generated frames, and the share of generated frames put in their clip's class.
        """
        real = torch.cat(self.real)
        extractor = self.evaluator.extractor
        classifier = extractor if isinstance(extractor, DomainFeatures) and extractor.classifies else None
        by_class = self.requests is not None and all(isinstance(r, int) for r in self.requests)
        correct, judged = 0, 0
        for start in range(0, len(real), self.sample_batch_size):
            count = min(self.sample_batch_size, len(real) - start)
            requests = None if self.requests is None else self.requests[start : start + count]
            fake = pl_module.sample_one_each(requests, count, seed_offset=start)
            self.evaluator.update(frames_of(real[start : start + count]).to(fake.device), frames_of(fake))
            if classifier is not None and by_class:
                per_sample = frames_of(fake).shape[0] // count
                wanted = torch.tensor(requests, device=fake.device).repeat_interleave(per_sample)
                correct += int((classifier.predict(frames_of(fake)) == wanted).sum())
                judged += len(wanted)
        return {"class_acc": correct / judged} if classifier is not None and by_class else {}

    def _finish(self, pl_module, stage: str) -> None:
        if not self.active:
            return
        self.active = False
        if self.num_kept < 2:
            log.warning("%s: fewer than 2 %s images; %s FID skipped", KEY, stage, stage)
            return
        extra = self._add_samples(pl_module) if self.of_samples else {}
        prefix = f"{stage}/sample_" if self.of_samples else f"{stage}/"
        for name, value in {**self.evaluator.compute(), **extra}.items():
            pl_module.log(prefix + name, value)
        self.evaluator.reset()
        self.real = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if validation_due(trainer, self.every_n_val_epochs):
            self._start(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(trainer, pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._finish(pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(trainer, pl_module, outputs, batch)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._finish(pl_module, "test")


def frames_of(images: torch.Tensor) -> torch.Tensor:
    """Clips ``(N, T, C, H, W)`` as their frames ``(N*T, C, H, W)``; images ``(N, C, H, W)`` unchanged."""
    return images.reshape(-1, *images.shape[-3:]) if images.dim() == 5 else images


def positive_int(name: str, value, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{KEY}.{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def fid_callback(
    enabled: bool | None = None,
    images: str = "auto",
    features: str = "domain",
    checkpoint: str | None = None,
    weights_path: str | None = None,
    num_images: int = 1000,
    every_n_val_epochs: int | None = None,
    kid: bool = False,
    sample_batch_size: int = 64,
    image_shape: list[int] | None = None,
) -> FID | None:
    """The :class:`FID` callback of ``metrics.fid``, or None when it is off; checked and loaded now.

    ``enabled: null`` means on when a ``checkpoint`` (domain) or ``weights_path`` (inception) is
    given. The feature extractor is loaded here, so that a bad checkpoint or missing weights fail
    before training; ``image_shape`` (the data's ``(C, H, W)``, given by ``latentbench train``) must
    match a domain extractor's input.
    """
    if enabled is not None and not isinstance(enabled, bool):
        raise ConfigError(f"{KEY}.enabled: expected true, false or null, got {enabled!r}")
    if not (bool(checkpoint or weights_path) if enabled is None else enabled):
        return None
    if features not in FEATURES:
        raise ConfigError(f"{KEY}.features: {features!r} is not allowed (allowed: {', '.join(FEATURES)})")
    if images not in IMAGES:
        raise ConfigError(f"{KEY}.images: {images!r} is not allowed (allowed: {', '.join(IMAGES)})")
    positive_int("num_images", num_images, 2)
    positive_int("sample_batch_size", sample_batch_size)
    if every_n_val_epochs is not None:
        positive_int("every_n_val_epochs", every_n_val_epochs)
    if not isinstance(kid, bool):
        raise ConfigError(f"{KEY}.kid: expected true or false, got {kid!r}")
    if features == "domain" and not checkpoint:
        raise ConfigError(f"{KEY}.checkpoint: required when features=domain (the .ckpt of a model=classifier or model=clip run)")
    for name, path in (("checkpoint", checkpoint), ("weights_path", weights_path)):
        if path and not Path(path).exists():
            raise ConfigError(f"{KEY}.{name}: {path} does not exist")
    from latentbench.run_dir import resolve_checkpoint

    evaluator = make_fid(features, checkpoint=checkpoint and resolve_checkpoint(checkpoint), weights_path=weights_path,
                         kid=kid, kid_subset_size=max(2, min(1000, num_images // 2)), key=KEY)
    if image_shape is not None and evaluator.image_shape is not None:
        needed, have = int(torch.tensor(evaluator.image_shape).prod()), int(torch.tensor(image_shape).prod())
        if needed != have:
            raise ConfigError(f"{KEY}.checkpoint: the feature model takes images of shape {tuple(evaluator.image_shape)}, "
                              f"this run's data gives {tuple(image_shape)} (train it on the same data)")
    log.info("%s: %s features on %d images (%s)%s", KEY, features, num_images, images,
             f", every {every_n_val_epochs} validation epochs" if every_n_val_epochs else " at test")
    return FID(evaluator, num_images, every_n_val_epochs, images, sample_batch_size)

"""``clip``: contrastive image-text pre-training (CLIP) with open_clip's model, tokenizer and loss.

The image and text towers are ``open_clip.CLIP(**model_cfg)`` (a small ViT or ResNet and a small
text transformer, sized in ``conf/model/clip.yaml``), or any open_clip architecture with a
pretrained tag (``model_name`` + ``pretrained``, online). Images arrive in [0, 1] and are resized
to the tower's size and normalised with its mean/std here, so the data modules stay model-agnostic.

Checkpoints are plain Lightning checkpoints: ``hyper_parameters.model_cfg`` holds the
``open_clip.CLIP`` keyword arguments (or is null, with ``model_name``/``pretrained``), and the
``state_dict`` keys of the open_clip model start with ``model.``. :func:`load_clip` turns such a
checkpoint (or an open_clip name + tag) into ``(open_clip.CLIP, tokenizer)``, for the CLIP score
and for text conditioning of other models, without Hydra.
"""

from __future__ import annotations

import copy
import math
import zipfile
from pathlib import Path
from typing import Any, Callable

import open_clip
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.loss import ClipLoss

from latentbench.errors import ConfigError
from latentbench.models.base import log_training_values, optimizer_and_scheduler

Tokenizer = Callable[[list[str]], torch.Tensor]

DEFAULT_MODEL_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": None, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "lr": 5e-4, "weight_decay": 0.1}
MAX_LOGIT_SCALE = math.log(100.0)  # the temperature clamp of the CLIP paper


# --- using a CLIP model (also for models trained elsewhere) -----------------------------------


def clip_tokenizer(model: open_clip.CLIP, model_name: str | None = None) -> Tokenizer:
    """open_clip's tokenizer for ``model``: the named architecture's, or the BPE tokenizer with the
    text tower's context length. Call it on a list of strings: ``(N,) -> (N, context_length)`` int64."""
    context_length = int(getattr(model, "context_length", 77))
    if model_name:
        return open_clip.get_tokenizer(model_name, context_length=context_length)
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


def image_input_size(model: open_clip.CLIP) -> tuple[int, int]:
    size = getattr(model.visual, "image_size", 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def preprocess_images(model: open_clip.CLIP, images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` in [0, 1] (grey or RGB) -> the tower's input: RGB, resized, mean/std-normalised."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    size = image_input_size(model)
    if tuple(images.shape[-2:]) != size:
        images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(getattr(model.visual, "image_mean", None) or OPENAI_DATASET_MEAN, device=images.device)
    std = torch.tensor(getattr(model.visual, "image_std", None) or OPENAI_DATASET_STD, device=images.device)
    return (images - mean[:, None, None].to(images.dtype)) / std[:, None, None].to(images.dtype)


def image_features(model: open_clip.CLIP, images: torch.Tensor) -> torch.Tensor:
    """Unit-norm image embeddings ``(B, embed_dim)`` of images ``(B, C, H, W)`` in [0, 1]."""
    return model.encode_image(preprocess_images(model, images), normalize=True)


def text_features(model: open_clip.CLIP, tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """Unit-norm text embeddings ``(N, embed_dim)`` of N strings."""
    device = next(model.parameters()).device
    return model.encode_text(tokenizer(list(texts)).to(device), normalize=True)


def zero_shot_weights(model: open_clip.CLIP, tokenizer: Tokenizer, class_names: list[str],
                      templates: list[str]) -> torch.Tensor:
    """Class embeddings ``(K, embed_dim)``: each class name put into every template ("a photo of a
    {}."), embedded, averaged over templates (prompt ensembling) and renormalised."""
    weights = torch.stack([text_features(model, tokenizer, [t.format(name) for t in templates]).mean(0)
                           for name in class_names])
    return F.normalize(weights, dim=-1)


# --- loading -------------------------------------------------------------------------------


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict; weights-only unpickling first, full unpickling for our own runs' extras."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if isinstance(error, (EOFError, RuntimeError, zipfile.BadZipFile)) and "Weights only load failed" not in str(error):
            raise ConfigError(f"{path}: truncated or corrupt checkpoint ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    try:  # Lightning checkpoints may hold RNG states and loop objects outside the weights-only allowlist
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ConfigError(f"{path}: truncated or corrupt checkpoint ({type(error).__name__}: {str(error).splitlines()[0]})") from None


def build_open_clip(model_cfg: dict[str, Any] | None, model_name: str | None, pretrained: str | None) -> open_clip.CLIP:
    """``open_clip.CLIP(**model_cfg)``, or the architecture ``model_name`` with ``pretrained`` weights
    (a tag, downloaded, or a local file); one-line ConfigError when that fails."""
    if model_cfg is not None:
        return open_clip.CLIP(**copy.deepcopy(model_cfg))
    try:
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained or None)
    except Exception as error:
        where = f"'{model_name}' with pretrained '{pretrained}'" if pretrained else f"'{model_name}'"
        raise ConfigError(f"model_name: open_clip cannot build {where} ({type(error).__name__}: "
                          f"{str(error).splitlines()[0][:200]}); offline, use a local checkpoint of a `clip` run") from None
    return model


def load_clip(checkpoint: str | None = None, model_name: str | None = None,
              pretrained: str | None = None) -> tuple[open_clip.CLIP, Tokenizer]:
    """An open_clip model in eval mode and its tokenizer, from a ``clip`` run's checkpoint or from open_clip.

    Args:
        checkpoint (`str`, *optional*): ``.ckpt`` of a ``latentbench train model=clip`` run (offline).
        model_name (`str`, *optional*): open_clip architecture (``ViT-B-32``), when no checkpoint.
        pretrained (`str`, *optional*): its pretrained tag (``laion2b_s34b_b79k``, downloaded) or a
            local weights file.

    Raises ConfigError (one line naming the file) for a missing or truncated checkpoint, or one
    that is not from a ``clip`` run.
    """
    if checkpoint is None:
        if not model_name:
            raise ConfigError("load_clip: give a checkpoint of a `clip` run or an open_clip model_name (+ pretrained)")
        model = build_open_clip(None, model_name, pretrained)
        return model.eval(), clip_tokenizer(model, model_name)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint not found")
    state = _read_checkpoint(path)
    hparams = state.get("hyper_parameters") if isinstance(state, dict) else None
    weights = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(hparams, dict) or not isinstance(weights, dict) or "model_cfg" not in hparams \
            or not any(k.startswith("model.logit_scale") for k in weights):
        raise ConfigError(f"{path}: not a checkpoint of a `clip` run (no hyper_parameters.model_cfg / model.* CLIP weights)")
    model_cfg, name = hparams["model_cfg"], hparams.get("model_name")
    if model_cfg is None:  # a fine-tuned open_clip architecture: build it without downloading weights
        model = build_open_clip(None, name, None)
    else:
        model = build_open_clip(dict(model_cfg), None, None)
    own = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    try:
        model.load_state_dict(own)
    except RuntimeError as error:
        raise ConfigError(f"{path}: weights do not fit the CLIP described by its model_cfg ({str(error).splitlines()[0]})") from None
    return model.eval(), clip_tokenizer(model, name if model_cfg is None else None)


# --- the training module -------------------------------------------------------------------


class CLIPModel(pl.LightningModule):
    """CLIP pre-training on image-caption batches ``{"image": (B, 3, H, W) in [0, 1], "caption": list[str], "label": (B,)}``.

    Args:
        model_cfg (`dict`, *optional*): ``open_clip.CLIP`` keyword arguments: ``embed_dim``,
            ``vision_cfg`` (ViT: ``layers`` int, ``width``, ``patch_size``, ``head_width``; ResNet:
            ``layers`` a list of 4 ints, ``width``), ``text_cfg`` (``context_length``, ``vocab_size``,
            ``width``, ``heads``, ``layers``). ``vision_cfg.image_size: null`` takes the data's size.
            Null when ``model_name`` is given.
        model_name (`str`, *optional*): open_clip architecture to build instead (``ViT-B-32``).
        pretrained (`str`, *optional*): pretrained tag of ``model_name`` (online) or a local file.
        input_shape (`list[int]`, *optional*): ``(C, H, W)`` of the data, filled in by ``latentbench train``.
        has_captions (`bool`, *optional*): filled in from the data; false (no captions) is an error.
        zero_shot_templates (`list[str]`, *optional*): prompts for zero-shot classification, ``{}`` =
            class name, averaged over the list; used when the data module has ``class_names``
            (accuracy logged as ``<stage>/zero_shot_acc``). Null: the data module's
            ``zero_shot_templates`` when it has some (shapes), else ``["a photo of a {}."]``.
        optimizer (`dict`, *optional*): ``_target_`` config built with the parameters (AdamW 5e-4 by default).
        scheduler (`dict`, *optional*): ``_target_`` LR scheduler config (``interval: step`` to step per batch).

    Logs ``train/loss``, ``val/loss``, ``val/retrieval_i2t_top1`` and ``val/retrieval_t2i_top1``
    (image->text / text->image top-1 within the batch), and ``val/zero_shot_acc`` (same for test).
    """

    def __init__(
        self,
        model_cfg: dict[str, Any] | None = None,
        model_name: str | None = None,
        pretrained: str | None = None,
        input_shape: list[int] | None = None,
        has_captions: bool | None = None,
        zero_shot_templates: list[str] | None = None,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
    ):
        super().__init__()
        if has_captions is False:
            raise ValueError("has_captions: model=clip needs image-text data with captions (data=shapes or data=laion)")
        if model_cfg is not None and model_name:
            raise ValueError(f"model_cfg and model_name: give one, not both (model_name={model_name!r}); set model.model_cfg=null to use model_name")
        if model_cfg is None and not model_name:
            raise ValueError("model_cfg: null needs model.model_name (an open_clip architecture)")
        if pretrained and not model_name:
            raise ValueError(f"pretrained: {pretrained!r} needs model.model_name")
        if model_cfg is not None:
            model_cfg = self._complete_cfg(model_cfg, input_shape)
        self.save_hyperparameters()
        self.model = build_open_clip(model_cfg, model_name, pretrained)
        self.tokenizer = clip_tokenizer(self.model, model_name)
        self.templates = list(zero_shot_templates) if zero_shot_templates else None
        self.loss_fn = ClipLoss()
        self.class_names: list[str] | None = None
        self.class_weights: torch.Tensor | None = None
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{name}": torchmetrics.MeanMetric()
            for stage in ("val", "test") for name in ("retrieval_i2t_top1", "retrieval_t2i_top1", "zero_shot_acc")
        })

    @staticmethod
    def _complete_cfg(model_cfg: dict[str, Any], input_shape: list[int] | None) -> dict[str, Any]:
        cfg = copy.deepcopy(dict(model_cfg))
        missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(cfg)
        if missing:
            raise ValueError(f"model_cfg: missing {sorted(missing)} (open_clip.CLIP needs embed_dim, vision_cfg, text_cfg)")
        cfg["vision_cfg"], cfg["text_cfg"] = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
        if cfg["vision_cfg"].get("image_size") is None:
            if input_shape is None:
                raise ValueError("model_cfg.vision_cfg.image_size: null needs input_shape from the data (or set it)")
            cfg["vision_cfg"]["image_size"] = int(input_shape[-1])
        size, patch = cfg["vision_cfg"]["image_size"], cfg["vision_cfg"].get("patch_size")
        if isinstance(cfg["vision_cfg"].get("layers"), int) and patch and size % patch:
            raise ValueError(f"model_cfg.vision_cfg.patch_size: {patch} does not divide image_size {size}")
        return cfg

    # -- steps -------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        world_size = self.trainer.world_size if self._trainer is not None else 1
        rank = self.trainer.global_rank if self._trainer is not None else 0
        # features of all ranks enter each rank's loss (gradients flow through the local ones)
        self.loss_fn = ClipLoss(gather_with_grad=world_size > 1, rank=rank, world_size=world_size)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, "class_names", None)
        self.class_names = list(names) if names else None
        if self.hparams.zero_shot_templates is None:
            self.templates = list(getattr(datamodule, "zero_shot_templates", None) or ["a photo of a {}."])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm ``(B, D)`` image embeddings of images ``(B, C, H, W)`` in [0, 1]: the codes that
        embedding views and the kNN accuracy use, as for the autoencoders."""
        return image_features(self.model, images)

    def encode_pair(self, images: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm ``(B, D)`` image and text embeddings of images in [0, 1] and their captions."""
        return image_features(self.model, images), text_features(self.model, self.tokenizer, captions)

    def forward(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """The CLIP loss of a batch of matching image-caption pairs."""
        img, txt = self.encode_pair(images, captions)
        return self.loss_fn(img, txt, self.model.logit_scale.exp())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self(batch["image"], batch["caption"])
        log_training_values(self, {"train/loss": loss, "train/logit_scale": self.model.logit_scale.exp().detach()},
                            len(batch["caption"]))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def _start_eval(self) -> None:
        self.class_weights = None
        if self.class_names:
            self.class_weights = zero_shot_weights(self.model, self.tokenizer, self.class_names, self.templates)

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def _eval_step(self, batch: dict[str, Any], stage: str) -> dict[str, torch.Tensor]:
        img, txt = self.encode_pair(batch["image"], batch["caption"])
        n = len(img)
        self.log(f"{stage}/loss", self.loss_fn(img, txt, self.model.logit_scale.exp()), prog_bar=stage == "val",
                 batch_size=n, sync_dist=True)
        similarity = img @ txt.T
        target = torch.arange(n, device=img.device)
        for name, hits in (("retrieval_i2t_top1", similarity.argmax(1) == target),
                           ("retrieval_t2i_top1", similarity.argmax(0) == target)):
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(hits.float())
            self.log(f"{stage}/{name}", metric, batch_size=n)
        labels = batch["label"]
        known = labels >= 0
        if self.class_weights is not None and known.any():
            predicted = (img[known] @ self.class_weights.T).argmax(1)
            metric = self.metrics[f"{stage}_zero_shot_acc"]
            metric.update((predicted == labels[known]).float())
            self.log(f"{stage}/zero_shot_acc", metric, batch_size=int(known.sum()))
        return {"codes": img.detach()}  # image embeddings, for the embedding plot at test

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def configure_optimizers(self) -> Any:
        # no weight decay on gains, biases, embeddings' scale and the temperature (as open_clip's trainer)
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim < 2 or "logit_scale" in name or "bn" in name or "ln" in name else decay).append(param)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        return optimizer_and_scheduler(self.hparams.optimizer or DEFAULT_OPTIMIZER, self.hparams.scheduler, groups)

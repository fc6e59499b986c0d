"""``clip``: contrastive image-text pre-training (CLIP) with open_clip's model, tokenizer and loss.

The image and text towers are ``open_clip.CLIP(**model_cfg)`` (a small ViT or ResNet and a small
text transformer, sized in ``conf/model/clip.yaml``), or any open_clip architecture with a
pretrained tag (``model_name`` + ``pretrained``, online). Images arrive in [0, 1] and are resized
to the tower's size and normalised with its mean/std here, so the data modules stay model-agnostic.

Checkpoints are plain Lightning checkpoints: ``hyper_parameters.model_cfg`` holds the
``open_clip.CLIP`` keyword arguments (or is null, with ``model_name``/``pretrained``), and the
``state_dict`` keys of the open_clip model start with ``model.``.
:func:`latentbench.models.clip_inference.load_clip` turns such a checkpoint (or an open_clip name +
tag) into ``(open_clip.CLIP, tokenizer)``, for the CLIP score and for text conditioning of other
models, without Hydra.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torchmetrics
from open_clip.loss import ClipLoss

from latentbench.models.base import EvalOutput, LatentbenchModule, log_training_values
from latentbench.models.clip_inference import build_open_clip, clip_tokenizer, image_features, text_features, zero_shot_weights

DEFAULT_MODEL_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": None, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "lr": 5e-4, "weight_decay": 0.1}
MAX_LOGIT_SCALE = math.log(100.0)  # the temperature clamp of the CLIP paper


# --- the training module -------------------------------------------------------------------


class CLIPModel(LatentbenchModule):
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

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The image embeddings as a feature space (domain FID/KID of colour images without class
        labels): ``(B, C, H, W)`` in [0, 1] -> ``(B, feature_dim)``, before the unit normalisation (as
        CLIP-FID takes them: on the unit sphere every distance, and so the FID, would be squeezed below 4)."""
        return image_features(self.model, images, normalize=False)

    @property
    def feature_dim(self) -> int:
        return int(self.model.visual.output_dim)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """``(C, H, W)`` of the images the model was trained on (None before the data filled it in)."""
        shape = self.hparams.get("input_shape")
        return None if shape is None else tuple(shape)

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

    default_optimizer = DEFAULT_OPTIMIZER

    def evaluation_step(self, batch: dict[str, Any], batch_idx: int, stage: str) -> EvalOutput:
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
        return EvalOutput(codes=img.detach())  # image embeddings, for the embedding views

    def optimizer_parameters(self) -> list[dict[str, Any]]:
        # no weight decay on gains, biases, embeddings' scale and the temperature (as open_clip's trainer)
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim < 2 or "logit_scale" in name or "bn" in name or "ln" in name else decay).append(param)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

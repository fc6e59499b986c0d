"""CLIP score and zero-shot classification with open_clip models (ours offline, pretrained online).

The CLIP score is torchmetrics' definition, ``100 * max(cos(image_emb, text_emb), 0)`` averaged
over image-caption pairs, computed with an open_clip model instead of an HF ``transformers`` one:

- offline: the checkpoint of a ``latentbench train model=clip`` run (``checkpoint=...``), logged as
  ``<stage>/clip_score_local``;
- online: an open_clip architecture and pretrained tag (``model_name="ViT-B-32",
  pretrained="laion2b_s34b_b79k"``), logged as ``<stage>/clip_score_ViT-B-32``.

Scores from different CLIP models are not comparable, hence the model in the key::

    from latentbench.evaluation.clip_score import CLIPScore

    score = CLIPScore(checkpoint="outputs/clip_laion/checkpoints/last.ckpt")
    score.update(images, captions)   # (B, C, H, W) floats in [0, 1], list of B strings
    score.compute()                  # tensor(27.3)
    score.key("val")                 # "val/clip_score_local"
"""

from __future__ import annotations

import re

import open_clip
import torch
from torchmetrics import Metric

from latentbench.errors import ConfigError
from latentbench.models.clip_inference import Tokenizer, image_features, load_clip, text_features, zero_shot_weights


class CLIPScore(Metric):
    """Mean ``100 * max(cos(image, caption), 0)`` over all pairs seen, under an open_clip model.

    Args:
        checkpoint (`str`, *optional*): ``.ckpt`` of a ``clip`` run (offline).
        model_name (`str`, *optional*): open_clip architecture when no checkpoint is given.
        pretrained (`str`, *optional*): its pretrained tag (downloaded) or a local weights file.
        name (`str`, *optional*): the suffix of the logged key; defaults to ``local`` for a
            checkpoint and the architecture name otherwise.
        model, tokenizer: an already loaded open_clip model and its tokenizer (instead of the above).

    States (``score_sum``, ``n``) are sums, so the metric reduces across DDP ranks. The CLIP model
    is deliberately not a registered submodule: a model that holds this metric does not save the
    CLIP weights in its checkpoints; the CLIP follows the images to their device on ``update``.
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, checkpoint: str | None = None, model_name: str | None = None, pretrained: str | None = None,
                 name: str | None = None, model: open_clip.CLIP | None = None, tokenizer: Tokenizer | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        if model is None:
            model, tokenizer = load_clip(checkpoint, model_name, pretrained)
        elif tokenizer is None:
            raise ConfigError("CLIPScore: a model given directly needs its tokenizer")
        model.eval().requires_grad_(False)
        self._clip = [model]  # a list hides it from nn.Module registration (state_dict, .to)
        self.tokenizer = tokenizer
        self.name = name or ("local" if checkpoint is not None else re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name or "model"))
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def clip(self) -> open_clip.CLIP:
        return self._clip[0]

    def key(self, stage: str) -> str:
        """The logged name: ``<stage>/clip_score_<model>``."""
        return f"{stage}/clip_score_{self.name}"

    @torch.no_grad()
    def pair_scores(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """``(B,)`` scores ``100 * max(cos, 0)`` of images ``(B, C, H, W)`` in [0, 1] and their B captions."""
        if len(images) != len(captions):
            raise ValueError(f"CLIPScore: {len(images)} images but {len(captions)} captions")
        if next(self.clip.parameters()).device != images.device:
            self._clip[0] = self.clip.to(images.device)
        img = image_features(self.clip, images.float())
        txt = text_features(self.clip, self.tokenizer, captions)
        return 100.0 * (img * txt).sum(-1).clamp(min=0)

    def update(self, images: torch.Tensor, captions: list[str]) -> None:
        scores = self.pair_scores(images, captions)
        self.score_sum += scores.double().sum()
        self.n += len(scores)

    def compute(self) -> torch.Tensor:
        return (self.score_sum / self.n.clamp(min=1)).float()


@torch.no_grad()
def zero_shot_accuracy(model: open_clip.CLIP, tokenizer: Tokenizer, images: torch.Tensor, labels: torch.Tensor,
                       class_names: list[str], template: str | list[str] = "a photo of a {}.",
                       batch_size: int = 256) -> float:
    """Zero-shot classification accuracy: each image ``(N, C, H, W)`` in [0, 1] gets the class whose
    prompt (``template`` with the class name; a list of templates is averaged) is most similar;
    compared with ``labels`` ``(N,)`` (entries < 0 are ignored)."""
    templates = [template] if isinstance(template, str) else list(template)
    if not class_names:
        raise ConfigError("zero_shot_accuracy: no class names (the data has no named classes)")
    weights = zero_shot_weights(model, tokenizer, list(class_names), templates)
    device = weights.device
    correct = total = 0
    for start in range(0, len(images), batch_size):
        batch, target = images[start:start + batch_size].to(device), labels[start:start + batch_size].to(device)
        known = target >= 0
        predicted = (image_features(model, batch.float()) @ weights.T).argmax(1)
        correct += int((predicted[known] == target[known]).sum())
        total += int(known.sum())
    if total == 0:
        raise ConfigError("zero_shot_accuracy: no labelled images (every label is -1)")
    return correct / total

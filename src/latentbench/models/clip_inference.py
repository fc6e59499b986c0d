"""Using a CLIP model, ours or open_clip's: load it, embed images and texts, zero-shot class weights.

:func:`load_clip` turns a ``latentbench train model=clip`` checkpoint (offline) or an open_clip
architecture + pretrained tag (online) into ``(open_clip.CLIP, tokenizer)``, without Hydra; the
CLIP score (``evaluation/clip_score.py``) and the LDM's text conditioning use these helpers, and
the training module (``models/clip.py``) embeds with them too.

Shapes: images ``(B, C, H, W)`` in [0, 1] (grey or RGB) -> ``(B, embed_dim)`` unit-norm; texts: a
list of N strings -> ``(N, embed_dim)`` unit-norm.
"""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from latentbench.errors import ConfigError

Tokenizer = Callable[[list[str]], torch.Tensor]


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


def image_features(model: open_clip.CLIP, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Image embeddings ``(B, embed_dim)`` of images ``(B, C, H, W)`` in [0, 1]; unit-norm unless ``normalize=False``."""
    return model.encode_image(preprocess_images(model, images), normalize=normalize)


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

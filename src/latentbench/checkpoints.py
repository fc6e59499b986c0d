"""Reading checkpoints a user points at: one clear line for a missing, truncated or foreign file.

Every checkpoint a latentbench run writes records the class of its model (``ModelClassInCheckpoint``),
so that a checkpoint of the wrong kind (a PCA run given where a classifier is expected, a CLIP
run where a first stage is expected) is refused by name before any work starts. Checkpoints are
read with ``torch.load(weights_only=True)``: no pickled code runs when a file is loaded.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from latentbench.errors import ConfigError, first_line

MODEL_CLASS_KEY = "latentbench_model_class"


def qualified_name(cls: type) -> str:
    """``latentbench.models.pca.PCA`` for the class ``PCA``."""
    return f"{cls.__module__}.{cls.__qualname__}"


class ModelClassInCheckpoint(pl.Callback):
    """Writes the model's class (``module.Class``) into every checkpoint, for :func:`read_checkpoint`."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        module = getattr(pl_module, "_orig_mod", pl_module)  # unwrap torch.compile
        checkpoint[MODEL_CLASS_KEY] = qualified_name(type(module))


def read_checkpoint(path: str | Path, key: str, expected: type | tuple[type, ...] | None = None) -> dict[str, Any]:
    """Load a Lightning checkpoint safely; raise ``ConfigError("<key>: ...")`` when it cannot serve.

    Args:
        path: the checkpoint file the config value ``key`` names.
        key: the config key, named in the error (e.g. ``model.first_stage.checkpoint``).
        expected: model class(es) the checkpoint must hold (subclasses count), or None for any.

    Returns:
        the checkpoint dict (``state_dict``, ``hyper_parameters``, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's message is a paragraph about weights_only: say what matters
        unsafe = next((line.strip() for line in str(error).splitlines() if "Unsupported global" in line), None)
        what = f"it holds objects that weights_only=True refuses to load ({unsafe[:120]})" if unsafe else "not a torch checkpoint file"
        raise ConfigError(f"{key}: {path} is not a readable checkpoint ({what})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise ConfigError(f"{key}: {path} is not a readable checkpoint (truncated or corrupt? {first_line(error)[:120]})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{key}: {path} is not a Lightning checkpoint (no state_dict)")
    if expected is not None:
        check_model_class(checkpoint, expected, path, key)
    return checkpoint


def check_model_class(checkpoint: dict[str, Any], expected: type | tuple[type, ...], path: str | Path, key: str) -> None:
    """Refuse a checkpoint whose recorded model class is not (a subclass of) ``expected``."""
    from hydra.utils import get_class

    expected = expected if isinstance(expected, tuple) else (expected,)
    names = ", ".join(qualified_name(cls) for cls in expected)
    recorded = checkpoint.get(MODEL_CLASS_KEY)
    if recorded is None:
        raise ConfigError(f"{key}: {path} was not written by latentbench (no model class recorded; expected {names})")
    try:
        cls = get_class(recorded)
    except Exception:
        raise ConfigError(f"{key}: {path} holds a {recorded}, which cannot be imported (expected {names})") from None
    if not issubclass(cls, expected):
        raise ConfigError(f"{key}: {path} holds a {recorded} checkpoint, expected {names}")

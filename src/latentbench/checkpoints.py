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
from weakref import proxy

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from latentbench.errors import ConfigError, first_line
from latentbench.run_dir import RunDir, RunDirError, link_durably

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


class DurableCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made durable where the checkpoint lives.

    Lightning writes through fsspec, which stages a local file in the system temp dir and then
    moves it: across filesystems (local /tmp, outputs on NFS or Lustre) that move is a copy in
    place, which a kill can cut short, and a small /tmp fails runs with an error naming the wrong
    disk. Here the bytes go to a temporary file in the checkpoint's own folder, are fsynced, and
    replace the old file by one rename: a checkpoint on disk is always whole, the old or the new.
    Remote URLs (``s3://``...) keep Lightning's own path.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        import io

        from latentbench.run_dir import write_durably

        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_durably(path, buffer.getbuffer())


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose saved state names files relative to its folder.

    The stock callback stores absolute paths (best, last, top-k) and drops them on resume when the
    folder differs: a run directory moved or copied elsewhere would then test a file of the old
    folder, or lose track of its best checkpoint. Here the state holds file names, and a resume
    reads them in the folder the callback writes to now. The state keeps ``ModelCheckpoint``'s key,
    so checkpoints of either class restore each other's state.
    """

    @property
    def state_key(self) -> str:
        # Lightning names every hook call by it (its profiler's action names): built once, not per hook
        if "_state_key" not in self.__dict__:
            self.__dict__["_state_key"] = super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)
        return self.__dict__["_state_key"]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            state[key] = Path(state[key]).name if state.get(key) else state.get(key)
        state["best_k_models"] = {Path(path).name: score for path, score in (state.get("best_k_models") or {}).items()}
        state["dirpath"] = "."
        return state

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_not_saved(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # here when the epoch ended with a validation, or when the run has none (then last.ckpt stays
        # periodic and final: an epoch of a run without validation is no moment to save at)
        if self._should_save_on_train_epoch_end(trainer) and sum(trainer.num_val_batches) > 0:
            self._save_last_if_not_saved(trainer)

    def _save_last_if_not_saved(self, trainer: pl.Trainer) -> None:
        """Lightning writes last.ckpt at a validation only with a new top-k checkpoint: after one that
        does not improve, last.ckpt would stay at the last improvement (or periodic save), and a
        finished run's last.ckpt, which ``resume=... trainer.max_epochs=<more>`` extends, at its best
        epoch instead of its end. Here it is written at every validation (epoch end)."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # At a validation that improves, last.ckpt comes right after the top-k checkpoint of the same
        # step: the same state serialized twice. A hard link to that file saves the second write (half
        # the checkpoint time of a run whose epochs last seconds). One process only: with several,
        # the save is collective and every rank must take the same path.
        if filepath == self.last_model_path and self._link_to_this_steps_checkpoint(trainer, filepath):
            self._last_checkpoint_saved = filepath
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
            return
        super()._save_checkpoint(trainer, filepath)

    def _link_to_this_steps_checkpoint(self, trainer: pl.Trainer, filepath: str) -> bool:
        """Hard-link ``filepath`` to the checkpoint this callback wrote at the current step, if any."""
        source = self._last_checkpoint_saved
        if trainer.world_size > 1 or self._last_global_step_saved != trainer.global_step or not source or source == filepath:
            return False
        if "://" in source or "://" in filepath:
            return False
        # a link is safe only where every later save replaces a file by rename (a writer that
        # truncates the file in place would change the other name's bytes too)
        if not isinstance(trainer.strategy.checkpoint_io, DurableCheckpointIO):
            return False
        return link_durably(source, filepath)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        folder = Path(self.dirpath) if self.dirpath else None
        if folder is None:
            return super().load_state_dict(state_dict)

        def here(path: str) -> str:
            return str(folder / Path(path).name) if path else path

        state = dict(state_dict, dirpath=self.dirpath)
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if key in state:
                state[key] = here(state[key])
        state["best_k_models"] = {here(path): score for path, score in (state.get("best_k_models") or {}).items()}
        super().load_state_dict(state)


def load_model(path: str | Path, map_location: Any = "cpu") -> pl.LightningModule:
    """The trained model of a run (a run directory's tested checkpoint, or a checkpoint file), in eval
    mode, of the class the checkpoint records: :func:`latentbench.api.load`, for the layers below the API."""
    from hydra.utils import get_class

    file = checkpoint_of(Path(path))
    name = read_checkpoint(file, "load").get(MODEL_CLASS_KEY) or recorded_model_class(file)
    try:
        cls = get_class(name)
    except Exception as error:  # noqa: BLE001 (Hydra wraps import errors in several kinds)
        raise ConfigError(f"load: {file} holds a {name}, which cannot be imported ({type(error).__name__})") from None
    if not issubclass(cls, pl.LightningModule):
        raise ConfigError(f"load: {file} names {name}, which is not a LightningModule")
    return cls.load_from_checkpoint(file, map_location=map_location, weights_only=True).eval()


def checkpoint_of(path: Path) -> Path:
    """The checkpoint file ``path`` stands for: itself, or a run directory's tested checkpoint."""
    if path.is_file():
        return path
    if not path.exists():
        raise ConfigError(f"load: {path} does not exist (expected a run directory such as outputs/<run name>, or a .ckpt file)")
    run = RunDir(path)
    checkpoint = run.tested_checkpoint()
    if checkpoint is not None:
        return checkpoint
    if run.is_run() or run.info_file.is_file():
        raise ConfigError(f"load: the run {path} has no checkpoint (status: {run.status() or 'unknown'}; "
                          f"checkpoints are written to {run.checkpoint_dir})")
    jobs = sorted(p.parents[1].name for p in path.glob("*/.hydra/overrides.yaml"))
    hint = f"; it holds the runs {', '.join(jobs[:5])}{', ...' if len(jobs) > 5 else ''}: load one of them" if jobs else ""
    raise ConfigError(f"load: {path} is neither a run directory (no .hydra/overrides.yaml) nor a checkpoint file{hint}")


def recorded_model_class(file: Path) -> str:
    """``model._target_`` of the run holding ``file``: for checkpoints that do not record their class."""
    from omegaconf import OmegaConf

    try:
        config = RunDir.containing(file, "load").recorded_config()
    except RunDirError:
        raise ConfigError(f"load: {file} does not record its model class and is not inside a run directory "
                          "(no .hydra/config.yaml above it) whose config would name it") from None
    name = OmegaConf.select(config, "model._target_", default=None)
    if not isinstance(name, str):
        raise ConfigError(f"load: {file} does not record its model class, and its run's config has no model._target_")
    return name

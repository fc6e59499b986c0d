"""Temporal consistency of generated clips against real ones (``metrics.temporal``).

How much a clip changes from one frame to the next says whether it moves like the real data: a
generator whose frames flicker, freeze or jump changes more, less or more unevenly than real clips
do, even where each frame alone looks right (which per-frame FID measures). The measure here is
the distance between the two distributions of frame-to-frame changes::

    change(clip, t) = mean |clip[t + 1] - clip[t]|  over pixels (values in [0, 1])
    temporal_w1     = Wasserstein-1 distance between {change(real, t)} and {change(generated, t)}

It is ~0 for two samples of the same data, and grows when frames are shuffled (larger jumps) or
frozen (no change at all); in units of mean absolute pixel change.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch

from latentbench.callbacks import validation_due
from latentbench.errors import ConfigError

log = logging.getLogger(__name__)

KEY = "metrics.temporal"


def frame_changes(clips: torch.Tensor) -> torch.Tensor:
    """Clips ``(N, T, C, H, W)`` in [0, 1] -> ``(N * (T - 1),)`` mean absolute change between consecutive frames."""
    if clips.dim() != 5 or clips.shape[1] < 2:
        raise ValueError(f"clips: expected (N, T, C, H, W) with T >= 2, got {tuple(clips.shape)}")
    return (clips[:, 1:].float() - clips[:, :-1].float()).abs().flatten(2).mean(2).flatten().cpu()


def temporal_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Wasserstein-1 distance between the frame-to-frame changes of ``real`` and ``fake`` clips ``(N, T, C, H, W)``."""
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(frame_changes(real).double().numpy(), frame_changes(fake).double().numpy()))


class TemporalConsistency(pl.Callback):
    """At test (and every ``every_n_val_epochs`` validation epochs): ``num_clips`` evaluation clips are kept
    with their classes/captions, the model samples one clip for each (its sampling defaults, fixed
    seeds: clip i from noise ``sampling.seed + i``), and ``<stage>/sample_temporal_w1`` (see the module
    docstring), ``<stage>/sample_frame_change`` and ``<stage>/real_frame_change`` (the mean changes) are logged.

    Args:
        num_clips (`int`): real clips per evaluation, and as many samples.
        every_n_val_epochs (`int`, *optional*): also at validation every N epochs (null: test only).
        sample_batch_size (`int`): clips sampled at once.
    """

    def __init__(self, num_clips: int = 64, every_n_val_epochs: int | None = None, sample_batch_size: int = 16):
        self.num_clips, self.every_n_val_epochs, self.sample_batch_size = num_clips, every_n_val_epochs, sample_batch_size
        self.active = False
        self.real: list[torch.Tensor] = []
        self.requests: list | None = []

    def _start(self) -> None:
        self.real, self.requests, self.active = [], [], True

    def _update(self, pl_module, batch: dict) -> None:
        kept = sum(len(clips) for clips in self.real)
        if not self.active or kept >= self.num_clips:
            return
        take = self.num_clips - kept
        self.real.append(batch["image"][:take].detach().cpu())
        requests = pl_module.requests_from_batch(batch)
        self.requests = None if requests is None else [*self.requests, *requests[:take]]

    def _finish(self, pl_module, stage: str) -> None:
        if not self.active:
            return
        self.active = False
        if sum(len(clips) for clips in self.real) < 2:
            log.warning("%s: fewer than 2 %s clips; %s temporal consistency skipped", KEY, stage, stage)
            return
        real = torch.cat(self.real)
        fake = []
        for start in range(0, len(real), self.sample_batch_size):
            count = min(self.sample_batch_size, len(real) - start)
            requests = None if self.requests is None else self.requests[start : start + count]
            fake.append(pl_module.sample_one_each(requests, count, seed_offset=start).cpu())
        fake = torch.cat(fake)
        pl_module.log(f"{stage}/sample_temporal_w1", temporal_distance(real, fake))
        pl_module.log(f"{stage}/sample_frame_change", float(frame_changes(fake).mean()))
        pl_module.log(f"{stage}/real_frame_change", float(frame_changes(real).mean()))
        self.real = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if validation_due(trainer, self.every_n_val_epochs):
            self._start()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(pl_module, batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._finish(pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(pl_module, batch)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._finish(pl_module, "test")


def temporal_callback(enabled: bool | None = None, num_clips: int = 64, every_n_val_epochs: int | None = None,
                      sample_batch_size: int = 16, model=None) -> TemporalConsistency | None:
    """The :class:`TemporalConsistency` of ``metrics.temporal``, or None when it is off.

    ``enabled: null`` means on for models whose samples are clips (``model=video_ldm``: a ``num_frames``)
    and off for the others; ``true`` for a model that does not sample clips is a one-line error.
    """
    if enabled is not None and not isinstance(enabled, bool):
        raise ConfigError(f"{KEY}.enabled: expected true, false or null, got {enabled!r}")
    samples_clips = model is not None and hasattr(model, "num_frames") and callable(getattr(model, "sample_one_each", None))
    if enabled is False or (enabled is None and not samples_clips):
        return None
    if model is not None and not samples_clips:
        raise ConfigError(f"{KEY}.enabled: measures sampled clips, but {type(model).__name__} does not sample clips (use model=video_ldm)")
    for name, value, least in (("num_clips", num_clips, 2), ("sample_batch_size", sample_batch_size, 1),
                               ("every_n_val_epochs", every_n_val_epochs, 1)):
        if value is None and name == "every_n_val_epochs":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"{KEY}.{name}: expected an integer >= {least}, got {value!r}")
    return TemporalConsistency(num_clips, every_n_val_epochs, sample_batch_size)

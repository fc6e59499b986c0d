"""CLIP score of a text-conditioned LDM's samples against their prompts (``metrics.clip_score``).

Every ``every_n_val_epochs`` validation epochs and at test, the callback samples one image per
validation/test caption (the first ``num_prompts`` distinct ones, with the model's sampling
defaults and fixed seeds: image i starts from noise ``sampling.seed + i``), scores each image against its caption
with :class:`~latentbench.evaluation.clip_score.CLIPScore` and logs ``val/clip_score_<model>`` /
``test/clip_score_<model>`` (``local`` for our own ``model=clip`` checkpoint, else the open_clip
architecture): scores under different CLIP models are not comparable.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl

from latentbench.callbacks import validation_due
from latentbench.errors import ConfigError
from latentbench.evaluation.clip_score import CLIPScore

log = logging.getLogger(__name__)
KEY = "metrics.clip_score"


class SampleCLIPScore(pl.Callback):
    """Logs ``<stage>/clip_score_<model>`` of samples for the first ``num_prompts`` evaluation captions.

    Args:
        score (`CLIPScore`): the metric (with its loaded CLIP).
        num_prompts (`int`): distinct captions (one sample each) per evaluation.
        batch_size (`int`): prompts sampled at once.
        every_n_val_epochs (`int`, *optional*): at validation every N epochs (null: at test only).
    """

    def __init__(self, score: CLIPScore, num_prompts: int = 64, batch_size: int = 32, every_n_val_epochs: int | None = 1):
        self.score, self.num_prompts, self.batch_size = score, num_prompts, batch_size
        self.every_n_val_epochs = every_n_val_epochs
        self.prompts: list[str] = []

    def _start(self) -> None:
        self.prompts = []

    def _collect(self, batch) -> None:
        for caption in batch.get("caption", []) if isinstance(batch, dict) else []:
            if len(self.prompts) >= self.num_prompts:
                return
            if caption and caption not in self.prompts:
                self.prompts.append(caption)

    def evaluate(self, pl_module) -> float:
        """Sample one image per collected prompt and return their mean CLIP score."""
        self.score.reset()
        for start in range(0, len(self.prompts), self.batch_size):
            prompts = self.prompts[start : start + self.batch_size]
            images = pl_module.sample_one_each(prompts, len(prompts), seed_offset=start)
            self.score.to(images.device)
            self.score.update(images, prompts)
        return float(self.score.compute())

    def _finish(self, pl_module, stage: str) -> None:
        if not self.prompts:
            log.warning("%s: no %s captions; %s CLIP score skipped", KEY, stage, stage)
            return
        pl_module.log(self.score.key(stage), self.evaluate(pl_module))

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if validation_due(trainer, self.every_n_val_epochs):
            self._finish(pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(batch)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._finish(pl_module, "test")


def clip_score_callback(
    enabled: bool | None = None,
    checkpoint: str | None = None,
    model_name: str | None = None,
    pretrained: str | None = None,
    num_prompts: int = 64,
    batch_size: int = 32,
    every_n_val_epochs: int | None = 1,
    model=None,
) -> SampleCLIPScore | None:
    """The :class:`SampleCLIPScore` of ``metrics.clip_score`` (checked, CLIP loaded), or None when off.

    ``enabled: null`` means on when a ``checkpoint`` or ``model_name`` is given. Needs a
    text-conditioned ``model`` (``model=ldm model.conditioning=text``, given by ``latentbench
    train``); a missing or bad checkpoint, or an open_clip model that cannot be loaded, is a
    one-line ConfigError.
    """
    from latentbench.models.conditioning import TextConditioning

    if enabled is not None and not isinstance(enabled, bool):
        raise ConfigError(f"{KEY}.enabled: expected true, false or null, got {enabled!r}")
    if not (bool(checkpoint or model_name) if enabled is None else enabled):
        return None
    for name, value in (("num_prompts", num_prompts), ("batch_size", batch_size), ("every_n_val_epochs", every_n_val_epochs)):
        if value is None and name == "every_n_val_epochs":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{KEY}.{name}: expected a positive integer, got {value!r}")
    if model is not None and not isinstance(getattr(model, "conditioner", None), TextConditioning):
        raise ConfigError(f"{KEY}: scores samples against their prompts, so it needs a text-conditioned model "
                          f"(model=ldm model.conditioning=text), got {type(model).__name__}"
                          f"{' with conditioning=' + str(model.hparams.get('conditioning')) if 'conditioning' in model.hparams else ''}")
    if not checkpoint and not model_name:
        raise ConfigError(f"{KEY}.checkpoint: required when enabled (a model=clip run's .ckpt or run directory), or set {KEY}.model_name (+ pretrained)")
    if checkpoint:
        from latentbench.checkpoints import read_checkpoint
        from latentbench.models.clip import CLIPModel
        from latentbench.run_dir import resolve_checkpoint

        checkpoint = resolve_checkpoint(str(checkpoint))
        read_checkpoint(checkpoint, f"{KEY}.checkpoint", expected=CLIPModel)
    try:
        score = CLIPScore(checkpoint=checkpoint or None, model_name=None if checkpoint else model_name,
                          pretrained=None if checkpoint else pretrained)
    except ConfigError as error:
        raise ConfigError(f"{KEY}.{'checkpoint' if checkpoint else 'model_name'}: {error}") from None
    log.info("%s: %s on samples for %d prompts", KEY, score.key("test"), num_prompts)
    return SampleCLIPScore(score, num_prompts, batch_size, every_n_val_epochs)

"""Callbacks that log what every reconstruction run shows: image grids, embeddings, best val metrics."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid

from latentbench.devices import cuda_checks_from_the_runtime
from latentbench.models.base import EvalOutput, eval_output
from latentbench.tracking import log_image, log_table, log_video

log = logging.getLogger(__name__)

MIN_DISPLAY_SIZE = 32


def to_images(batch: torch.Tensor, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """``(B, ...)`` pixels in [0, 1] -> ``(B, C, H, W)`` clipped to [0, 1]; a batch that is already
    image-shaped keeps its own channels (a grey model input beside colour images)."""
    if batch.dim() == 4:
        return batch.detach().float().cpu().clamp(0.0, 1.0)
    c, h, w = image_shape
    if batch.shape[-1] != c * h * w and batch.shape[-1] == h * w:  # flattened grey input of colour data
        c = 1
    return batch.detach().float().cpu().reshape(-1, c, h, w).clamp(0.0, 1.0)


def validation_due(trainer: pl.Trainer, every_n_epochs: int | None) -> bool:
    """Whether this validation (not the sanity check) is one of every ``every_n_epochs`` epochs; never for 0 or None."""
    return bool(every_n_epochs) and not trainer.sanity_checking and (trainer.current_epoch + 1) % every_n_epochs == 0


def grid_image(rows: list[torch.Tensor]) -> np.ndarray:
    """Stack equal-length ``(N, C, H, W)`` rows into one ``(H', W', 3)`` uint8 picture."""
    channels = max(row.shape[1] for row in rows)
    stacked = torch.cat([row.expand(-1, channels, -1, -1) for row in rows])  # grey rows beside colour ones
    if stacked.shape[-1] < MIN_DISPLAY_SIZE:  # blow tiny images (8x8 digits) up so they can be seen
        factor = -(-MIN_DISPLAY_SIZE // stacked.shape[-1])
        stacked = torch.nn.functional.interpolate(stacked, scale_factor=factor, mode="nearest")
    grid = make_grid(stacked, nrow=len(rows[0]), padding=1, pad_value=1.0)
    if grid.shape[0] == 1:
        grid = grid.expand(3, -1, -1)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def clip_grid(clips: torch.Tensor) -> np.ndarray:
    """Clips ``(N, T, C, H, W)`` as one picture: a frame strip per clip, one clip per row."""
    return grid_image(list(clips.detach().float().cpu().clamp(0.0, 1.0)))


def clip_video(clips: torch.Tensor, per_row: int) -> np.ndarray:
    """Clips ``(N, T, C, H, W)`` as one video ``(T, H', W', 3)`` uint8: frame t shows every clip's frame t,
    ``per_row`` clips to a row (a last, shorter row is left out)."""
    clips = clips.detach().float().cpu().clamp(0.0, 1.0)
    rows = len(clips) // per_row or 1
    clips = clips[: rows * per_row] if len(clips) >= per_row else clips
    return np.stack([grid_image(list(clips[:, t].split(min(per_row, len(clips))))) for t in range(clips.shape[1])])


def trajectory_views(trajectory: torch.Tensor, columns: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The denoising of a sampler, ``(S, N, ...)`` decoded x0 predictions (images or clips), as
    ``(strip, video)``: the strip has one row per sample (a clip: its first frame), one column per
    shown step (``columns`` evenly spaced, always the first and the last); the video has one frame
    per step, showing every sample (clips: one row each, their frames side by side)."""
    steps = len(trajectory)
    count = min(columns, steps)
    shown = sorted({round(i * (steps - 1) / max(count - 1, 1)) for i in range(count)})
    first_frames = trajectory[:, :, 0] if trajectory.dim() == 6 else trajectory
    strip = grid_image([first_frames[shown, n].float().cpu().clamp(0.0, 1.0) for n in range(trajectory.shape[1])])
    if trajectory.dim() == 6:
        video = np.stack([clip_grid(step) for step in trajectory])
    else:
        video = np.stack([grid_image([step.float().cpu().clamp(0.0, 1.0)]) for step in trajectory])
    return strip, video


class ReconstructionGrid(pl.Callback):
    """Every validation epoch: a grid of model inputs, reconstructions (and clean targets when the
    input is corrupted) for the first ``num_images`` validation images; also once at test."""

    def __init__(self, num_images: int = 8):
        if num_images <= 0:
            raise ValueError(f"num_images: must be positive, got {num_images}")
        self.num_images = num_images

    def _log(self, trainer: pl.Trainer, batch: dict, outputs: EvalOutput | None, key: str) -> None:
        reconstruction = eval_output(outputs).reconstruction
        if trainer.sanity_checking or not trainer.is_global_zero or reconstruction is None:
            return  # also for models without reconstructions (classifiers)
        if batch["image"].dim() == 5:  # clips: frame strips of the first clips and their reconstructions
            n = max(1, min(self.num_images // 4, len(batch["image"])))
            rows = [clip for pair in zip(batch["image"][:n], reconstruction[:n]) for clip in pair]
            log_image(trainer.loggers, trainer.default_root_dir, key, clip_grid(torch.stack(rows)), trainer.global_step,
                      "rows: clip, its reconstruction (frames left to right)")
            return
        shape = trainer.datamodule.image_shape
        n = min(self.num_images, len(batch["image"]))
        rows = [to_images(batch.get("input", batch["image"])[:n], shape), to_images(reconstruction[:n], shape)]
        caption = "top: input, middle: reconstruction" if "input" in batch else "top: input, bottom: reconstruction"
        if "input" in batch:
            rows.append(to_images(batch["image"][:n], shape))
            caption += ", bottom: clean target"
        log_image(trainer.loggers, trainer.default_root_dir, key, grid_image(rows), trainer.global_step, caption)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0:
            self._log(trainer, batch, outputs, "val/reconstructions")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0:
            self._log(trainer, batch, outputs, "test/reconstructions")


class MediaEveryNEpochs(pl.Callback):
    """Base of callbacks that log ``<stage>/<media_key>`` (``_log``) after every ``every_n_epochs``-th
    validation and after test (``every_n_epochs`` 0: never)."""

    media_key: str
    every_n_epochs: int

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, key: str) -> None:
        raise NotImplementedError

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if validation_due(trainer, self.every_n_epochs):
            self._log(trainer, pl_module, f"val/{self.media_key}")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if self.every_n_epochs:
            self._log(trainer, pl_module, f"test/{self.media_key}")


class SampleGrid(MediaEveryNEpochs):
    """Every ``every_n_epochs`` validation epochs and at test: the model's fixed-seed sample grid
    (``val/samples``, ``test/samples``), one row per class or prompt of its ``sampling`` defaults.

    For models that sample (``model=ldm``: ``sample_grid``); others are skipped. Every process
    samples (a sharded model's forward needs them all); the first one logs. Samples that are clips
    (``model=video_ldm``) are logged as a picture of frame strips (one clip per row) and as a video
    (``val/samples_video``: a GIF in ``videos/``, a ``wandb.Video`` in W&B).

    Args:
        every_n_epochs (`int`): validation epochs between grids; 0 never (not at test either).
    """

    media_key = "samples"

    def __init__(self, every_n_epochs: int = 1):
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs: must be >= 0, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, key: str) -> None:
        if not callable(getattr(pl_module, "sample_grid", None)):
            return
        images, requests = pl_module.sample_grid()
        if not trainer.is_global_zero:
            return
        if images.dim() == 5:
            self._log_clips(trainer, pl_module, key, images, requests)
            return
        per_row = pl_module.sampling["per_condition"] if requests else min(len(images), 8)
        rows = list(images.float().cpu().split(per_row))
        if len(rows[-1]) != per_row:
            rows = rows[:-1] or rows
        caption = "rows: " + " | ".join(map(str, requests)) if requests else "unconditional samples"
        log_image(trainer.loggers, trainer.default_root_dir, key, grid_image(rows), trainer.global_step, caption)

    @staticmethod
    def _log_clips(trainer: pl.Trainer, pl_module: pl.LightningModule, key: str, clips: torch.Tensor, requests: list | None) -> None:
        per_condition = pl_module.sampling["per_condition"] if requests else 1
        caption = "rows: " + " | ".join(str(r) for r in requests for _ in range(per_condition)) if requests else "unconditional samples"
        log_image(trainer.loggers, trainer.default_root_dir, key, clip_grid(clips), trainer.global_step, caption)
        log_video(trainer.loggers, trainer.default_root_dir, f"{key}_video", clip_video(clips, per_condition), trainer.global_step,
                  caption=caption)



class DenoisingVideo(MediaEveryNEpochs):
    """The denoising process as a video, for every diffusion model (the Diffusion Explainer's view):
    every ``every_n_epochs`` validation epochs and at test, the decoded prediction of the clean
    sample at each of the sampler's steps, for ``num_samples`` fixed seeds (``sampling.seed + i``) and
    the first classes/prompts of the model's sampling defaults.

    Logs ``<stage>/denoising`` (a picture: one row per sample, ``columns`` steps from the first to the
    last, which is the sample) and ``<stage>/denoising_video`` (one frame per sampler step: a GIF in
    ``videos/``, a ``wandb.Video`` in W&B). Models without ``sample_trajectory`` are skipped.

    Args:
        every_n_epochs (`int`): validation epochs between logs; 0 never (not at test either): the default,
            as sampling costs a little time.
        num_samples (`int`): samples followed.
        columns (`int`): steps shown in the picture.
        fps (`int`): frames per second of the video.
    """

    media_key = "denoising"

    def __init__(self, every_n_epochs: int = 0, num_samples: int = 2, columns: int = 10, fps: int = 8):
        for name, value, least in (("every_n_epochs", every_n_epochs, 0), ("num_samples", num_samples, 1),
                                   ("columns", columns, 2), ("fps", fps, 1)):
            if value < least:
                raise ValueError(f"{name}: must be >= {least}, got {value}")
        self.every_n_epochs, self.num_samples, self.columns, self.fps = every_n_epochs, num_samples, columns, fps

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, key: str) -> None:
        if not callable(getattr(pl_module, "sample_trajectory", None)):
            return
        requests = pl_module.sample_requests()
        requests = [requests[i % len(requests)] for i in range(self.num_samples)] if requests else None
        options = {k: pl_module.sampling[k] for k in ("sampler", "steps", "guidance_scale", "seed")}
        _, trajectory = pl_module.sample_trajectory(requests, per_condition=1 if requests else self.num_samples, **options)
        if not trainer.is_global_zero:
            return
        strip, video = trajectory_views(trajectory, self.columns)
        caption = (f"{options['sampler']}, {len(trajectory)} steps; rows: "
                   + (" | ".join(map(str, requests)) if requests else "unconditional"))
        log_image(trainer.loggers, trainer.default_root_dir, key, strip, trainer.global_step, caption)
        log_video(trainer.loggers, trainer.default_root_dir, f"{key}_video", video, trainer.global_step, self.fps, caption)



class EmbeddingPlot(pl.Callback):
    """At test, for any model with codes (``encode``): 2-D views of up to ``max_points`` test
    codes coloured by label, a projector table, and the kNN accuracy of the codes.

    Logs ``test/embedding`` (PCA, or the codes themselves when they are 2-D), ``test/embedding_tsne``
    and ``test/embedding_umap`` (when umap-learn is installed) as images; ``test/embedding_table``
    (label, 2-D PCA view, codes); ``test/embedding_projector`` (label, thumbnail, codes: W&B's
    embedding projector, or CSV + PNG thumbnails without W&B); and, for data with classes, the metrics ``test/knn_acc``
    (k-NN fitted on up to ``knn_train_points`` train codes, scored on the test codes) and
    ``test/knn_acc_2d`` (the same on the first two principal components of the codes); with
    ``linear_probe``, ``test/probe_err``: the test error in % of a linear probe (standardised codes,
    logistic regression) fitted on up to ``probe_train_points`` train codes.

    Args:
        max_points (`int`): test codes shown and scored.
        methods (`list[str]`): 2-D maps drawn, from ``pca``, ``tsne``, ``umap`` (umap-learn is optional:
            without it ``umap`` is skipped, with one warning line when the callback is built).
        tsne_max_points (`int`): t-SNE runs on at most this many of the points (it is slow).
        knn_neighbors (`int`): k of the kNN accuracy; 0 turns it off.
        knn_train_points (`int`): train images encoded for the kNN classifier.
        thumbnails (`int`): rows (with image thumbnails) of the projector table; 0 turns it off.
        linear_probe (`bool`): also log ``test/probe_err``.
        probe_train_points (`int`): train images encoded for the linear probe.
        probe_max_iter (`int`): iterations of the logistic regression.
        score_inputs (`str`): what the kNN and the probe encode: ``input``, what the model sees (the
            corrupted copy when the data adds one), or ``image``, the clean images (a denoising
            autoencoder's features used on clean data, as in Vincent et al. 2010).
        score_test_points (`int`): test images scored by the kNN and the probe; 0: the up to
            ``max_points`` codes of the test run (re-encoded from the clean images with ``score_inputs=image``).
    """

    def __init__(self, max_points: int = 2000, methods: list[str] = ("pca", "tsne"), tsne_max_points: int = 500,
                 knn_neighbors: int = 5, knn_train_points: int = 5000, thumbnails: int = 500, linear_probe: bool = False,
                 probe_train_points: int = 10000, probe_max_iter: int = 200, score_inputs: Literal["input", "image"] = "input",
                 score_test_points: int = 0):
        from latentbench.evaluation.embeddings import METHODS, umap_installed

        if max_points <= 0:
            raise ValueError(f"max_points: must be positive, got {max_points}")
        for method in methods:
            if method not in METHODS:
                raise ValueError(f"methods: {method!r} is not allowed (allowed: {', '.join(METHODS)})")
        if "umap" in methods and not umap_installed():
            log.warning("callbacks.embedding_plot.methods: umap skipped: umap-learn is not installed (uv pip install umap-learn)")
        for name, value in (("tsne_max_points", tsne_max_points), ("knn_neighbors", knn_neighbors),
                            ("knn_train_points", knn_train_points), ("thumbnails", thumbnails),
                            ("probe_train_points", probe_train_points), ("score_test_points", score_test_points)):
            if value < 0:
                raise ValueError(f"{name}: must be >= 0, got {value}")
        if probe_max_iter <= 0:
            raise ValueError(f"probe_max_iter: must be positive, got {probe_max_iter}")
        if score_inputs not in ("input", "image"):
            raise ValueError(f"score_inputs: {score_inputs!r} is not allowed (allowed: input, image)")
        self.max_points, self.methods, self.tsne_max_points = max_points, list(methods), tsne_max_points
        self.knn_neighbors, self.knn_train_points, self.thumbnails = knn_neighbors, knn_train_points, thumbnails
        self.linear_probe, self.probe_train_points, self.probe_max_iter = linear_probe, probe_train_points, probe_max_iter
        self.score_inputs, self.score_test_points = score_inputs, score_test_points
        self.codes: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.images: list[torch.Tensor] = []

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.codes, self.labels, self.images = [], [], []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        codes = eval_output(outputs).codes
        if codes is not None and sum(len(c) for c in self.codes) < self.max_points:
            self.codes.append(codes.float().cpu())
            self.labels.append(batch["label"].cpu())
            if sum(len(i) for i in self.images) < self.thumbnails:
                self.images.append(batch["image"][: self.thumbnails].cpu())

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if not self.codes:
            return
        codes = torch.cat(self.codes)[: self.max_points].numpy()
        labels = torch.cat(self.labels)[: self.max_points].numpy()
        self._log_knn(trainer, pl_module, codes, labels)
        if not trainer.is_global_zero:
            return
        self._log_views(trainer, pl_module, codes, labels)

    def _log_knn(self, trainer, pl_module, codes: np.ndarray, labels: np.ndarray) -> None:
        from latentbench.evaluation.embeddings import encode_split, knn_accuracy, linear_probe_error, pca_2d

        splits = getattr(trainer.datamodule, "splits", {}) if trainer.datamodule is not None else {}
        if not (self.knn_neighbors or self.linear_probe) or "train" not in splits or not hasattr(pl_module, "encode"):
            return
        was_training = pl_module.training
        pl_module.eval()
        train_points = max(self.knn_train_points if self.knn_neighbors else 0, self.probe_train_points if self.linear_probe else 0)
        train_codes, train_labels, _ = encode_split(pl_module, splits["train"], train_points, key=self.score_inputs)
        if (self.score_test_points or self.score_inputs == "image") and "test" in splits:
            codes, labels, _ = encode_split(pl_module, splits["test"], self.score_test_points or len(codes), key=self.score_inputs)
        pl_module.train(was_training)
        knn_labels = train_labels[: self.knn_train_points]
        if self.knn_neighbors and len(np.unique(knn_labels)) > 1:  # data without classes (labels all 0): nothing to score
            knn_codes = train_codes[: self.knn_train_points]
            pl_module.log("test/knn_acc", knn_accuracy(knn_codes, knn_labels, codes, labels, self.knn_neighbors), sync_dist=True)
            train_2d, test_2d = pca_2d(knn_codes, codes)
            pl_module.log("test/knn_acc_2d", knn_accuracy(train_2d, knn_labels, test_2d, labels, self.knn_neighbors), sync_dist=True)
        if self.linear_probe:
            probe_codes, probe_labels = train_codes[: self.probe_train_points], train_labels[: self.probe_train_points]
            if len(np.unique(probe_labels)) < 2:
                log.warning("EmbeddingPlot: test/probe_err skipped: the %d train codes hold fewer than 2 classes", len(probe_labels))
            else:
                error = linear_probe_error(probe_codes, probe_labels, codes, labels, self.probe_max_iter)
                pl_module.log("test/probe_err", error, sync_dist=True)

    def _log_views(self, trainer, pl_module, codes: np.ndarray, labels: np.ndarray) -> None:
        from latentbench.evaluation.embeddings import log_projector_table, thumbnail
        from latentbench.projections import project, scatter_image, umap_installed

        name = type(pl_module).__name__
        step = trainer.global_step
        points = project(codes, "pca")
        how = "codes" if codes.shape[1] <= 2 else "codes, PC1 vs PC2"
        log_image(trainer.loggers, trainer.default_root_dir, "test/embedding", scatter_image([(points, labels, f"{name} {how} (n={len(codes)})")]), step)
        for method in self.methods:
            if method == "pca" or codes.shape[1] <= 2 or (method == "umap" and not umap_installed()):
                continue
            n = min(len(codes), self.tsne_max_points) if method == "tsne" else len(codes)
            view, title = project(codes[:n], method), f"{name} codes, {method.upper()} (n={n})"
            log_image(trainer.loggers, trainer.default_root_dir, f"test/embedding_{method}", scatter_image([(view, labels[:n], title)]), step)
        columns = ["label", "x", "y", *(f"z{i}" for i in range(codes.shape[1]))]
        rows = [[int(l), float(p[0]), float(p[1]), *map(float, c)] for l, p, c in zip(labels, points, codes)]
        log_table(trainer.loggers, trainer.default_root_dir, "test/embedding_table", columns, rows)
        if self.thumbnails and self.images:
            shape = tuple(trainer.datamodule.image_shape)
            images = torch.cat(self.images)[: min(self.thumbnails, len(codes))]
            log_projector_table(trainer.loggers, trainer.default_root_dir, "test/embedding_projector", codes[: len(images)],
                                labels[: len(images)], [thumbnail(image, shape) for image in images])


class BestValidationMetrics(pl.Callback):
    """Keeps every ``val/*`` metric of the validation epoch where ``monitor`` was best."""

    def __init__(self, monitor: str = "val/loss", mode: str = "min"):
        if mode not in ("min", "max"):
            raise ValueError(f"mode: must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.best: dict[str, float] = {}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        current = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if self.monitor not in current or not math.isfinite(current[self.monitor]):
            return
        previous = self.best.get(self.monitor)
        better = previous is None or (current[self.monitor] < previous if self.mode == "min" else current[self.monitor] > previous)
        if better:
            self.best = current

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict.get("best", {}))


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the run stops and keeps its last good checkpoint."""


class StopOnNonFiniteLoss(pl.Callback):
    """Stops training at a NaN/inf training loss, before any checkpoint of the bad state.

    On the CPU each step's loss is checked at once. On a GPU, reading the loss back waits for the
    step to finish, which would stall the queue of launched work every step; there (``defer``) a
    tensor on the device records the first bad step and its loss, and is read every
    ``trainer.log_every_n_steps`` steps (when Lightning reads logged values anyway), before every
    checkpoint is written and at the end of training. The error names the first bad step either way.
    """

    def __init__(self, defer: bool | None = None):
        self.defer = defer  # None: defer on accelerators, check at once on the CPU
        self._first_bad: torch.Tensor | None = None  # float64 [step, loss] of the first bad loss; step -1: none
        self._where: dict[int, tuple[int, int]] = {}  # step -> (epoch, batch) since the last check

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        # one loss per optimizer step of this batch: several with fused_steps (a group of batches)
        losses = loss.detach().reshape(-1)
        first_step = trainer.global_step - len(losses) + 1
        first_batch = batch_idx * getattr(trainer.datamodule, "fused_steps", 1)
        if not (loss.device.type != "cpu" if self.defer is None else self.defer):
            bad = ~torch.isfinite(losses)
            if bad.any():
                i = int(bad.nonzero()[0])
                raise self._error(losses[i].double().item(), first_step + i, trainer.current_epoch, first_batch + i)
            return
        self._record(losses, first_step)
        for i in range(len(losses)):
            self._where[first_step + i] = (trainer.current_epoch, first_batch + i)
        every = max(trainer.log_every_n_steps, 1)
        if trainer.global_step // every > (first_step - 1) // every:
            self.check()

    def _record(self, losses: torch.Tensor, first_step: int) -> None:
        """Keep ``[step, loss]`` on the device if one of ``losses`` (of steps ``first_step``, ``first_step + 1``, ...)
        is the first non-finite loss; launches only, no sync."""
        if self._first_bad is None:
            self._first_bad = torch.full((2,), -1.0, dtype=torch.float64, device=losses.device)
        bad = ~torch.isfinite(losses)
        i = bad.int().argmax()
        first = bad.any() & (self._first_bad[0] < 0)
        stamp = torch.stack(((i + first_step).double(), losses[i].double()))
        self._first_bad = torch.where(first, stamp, self._first_bad)

    def check(self) -> None:
        """Raise :class:`NonFiniteLossError` if a recorded loss was non-finite (reads the device once)."""
        if self._first_bad is None:
            return
        step, value = self._first_bad.tolist()
        if step >= 0:
            raise self._error(value, int(step), *self._where.get(int(step), ("?", "?")))
        self._where.clear()

    @staticmethod
    def _error(value: float, step: int, epoch, batch) -> NonFiniteLossError:
        return NonFiniteLossError(f"train/loss became {value} at step {step} (epoch {epoch}, batch {batch})")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self.check()  # raising here stops Lightning before it writes the file

    def on_train_end(self, trainer, pl_module) -> None:
        self.check()


class RngStateCheckpoint(pl.Callback):
    """Saves the Python, NumPy and torch (CPU and CUDA) RNG states in every checkpoint and restores
    them on resume, so that random corruptions and dropout continue exactly where they stopped.

    States are stored as tensors and plain Python values, so checkpoints still load with
    ``torch.load(weights_only=True)``.
    """

    def state_dict(self) -> dict[str, Any]:
        import random

        kind, keys, position, has_gauss, cached = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        import random

        python = state_dict["python"]
        random.setstate((python[0], tuple(python[1]), python[2]))
        numpy_state = state_dict["numpy"]
        np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                             numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class ChannelsLast(pl.Callback):
    """Conv models in channels-last memory format (faster convolutions with tensor cores).

    Args:
        enabled (`bool | str`): true, false, or ``auto`` (the top-level ``channels_last``'s default):
            on for a model with 2-D convolutions trained on a CUDA device in 16/bf16 precision, where
            tensor cores want channels-last; off otherwise (on the CPU it buys nothing).
    """

    def __init__(self, enabled: bool | str = True):
        if enabled not in (True, False, "auto"):
            raise ValueError(f"enabled: expected true, false or 'auto', got {enabled!r}")
        self.enabled = enabled

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.enabled == "auto":
            self.enabled = channels_last_pays(trainer.strategy.root_device, str(trainer.precision), pl_module)

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.enabled:
            pl_module.to(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.enabled:
            return
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.dim() == 4:
                batch[key] = value.contiguous(memory_format=torch.channels_last)


def channels_last_pays(device: torch.device, precision: str, module: torch.nn.Module) -> bool:
    """Whether channels-last is worth it: 2-D convolutions, on CUDA, in a tensor-core precision."""
    half = precision.startswith(("16", "bf16"))
    return device.type == "cuda" and half and any(isinstance(m, torch.nn.Conv2d) for m in module.modules())


class EpochLines(pl.Callback):
    """Progress for batch jobs (SLURM, nohup, ``| tee``): one log line per training epoch, and one per
    validation that runs inside an epoch (``trainer.val_check_interval`` < 1), with the step, the
    logged losses and the epoch's time, e.g.
    ``epoch 3/10  step 63  train/loss 0.0712  val/loss 0.0698  (0.8 s)``."""

    def __init__(self):
        self._epoch_started = time.monotonic()

    @staticmethod
    def _losses(trainer: pl.Trainer, prefixes: tuple[str, ...]) -> str:
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefixes) and "loss" in k}
        return "  ".join(f"{k} {v:.4g}" for k, v in sorted(values.items()))

    def _where(self, trainer: pl.Trainer) -> str:
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        return f"epoch {trainer.current_epoch + 1}{total}  step {trainer.global_step}"

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_started = time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the epoch's line follows
        log.info("%s  %s", self._where(trainer), self._losses(trainer, ("val/",)))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            seconds = time.monotonic() - self._epoch_started
            log.info("%s  %s  (%.1f s)", self._where(trainer), self._losses(trainer, ("train/", "val/")), seconds)


def progress_bar(interactive: bool | None = None) -> pl.Callback:
    """Lightning's rich progress bar in a terminal, :class:`EpochLines` when the output is a file or
    pipe (``interactive: null`` asks whether stdout is a terminal)."""
    import sys

    if interactive is None:
        interactive = sys.stdout.isatty()
    return pl.callbacks.RichProgressBar() if interactive else EpochLines()


class ModelSummary(pl.callbacks.ModelSummary):
    """Lightning's layer table at the start of fit, without its FLOPs column when nothing was counted
    (FLOPs are counted only for models with an ``example_input_array``: all zeros otherwise)."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, **kwargs) -> None:
        from pytorch_lightning.utilities.model_summary.model_summary import _format_summary_table

        if not total_flops:
            summary_data = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, *summary_data)
        if not total_flops:
            table = "\n".join(line for line in table.splitlines() if "total flops" not in line.lower())
        log.info("\n" + table)


class PeriodicCheckpoint(pl.Callback):
    """Writes ``<dirpath>/last.ckpt`` every ``every_n_steps`` training steps and/or ``every_minutes``.

    The default is by time (10 minutes), so that saves (a fraction of a second for an LDM with its
    EMA and optimizer state) stay a small share of a run whatever its step time.

    Together with the resumable data loaders and :class:`RngStateCheckpoint`, a run killed at any
    step resumes from here exactly. Checkpoints are written durably (``DurableCheckpointIO``: a
    temporary file in the same folder, fsynced, then a rename), so a kill while saving leaves the
    previous ``last.ckpt`` intact.
    """

    def __init__(self, dirpath: str, every_n_steps: int | None = None, every_minutes: float | None = 10.0):
        if every_n_steps is not None and every_n_steps <= 0:
            raise ValueError(f"every_n_steps: must be positive or null, got {every_n_steps}")
        if every_minutes is not None and every_minutes <= 0:
            raise ValueError(f"every_minutes: must be positive or null, got {every_minutes}")
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_steps, self.every_minutes = every_n_steps, every_minutes
        self._last_save_time = time.monotonic()
        self._previous_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._previous_step = trainer.global_step  # a resumed run counts from where it was saved

    def _due(self, trainer: pl.Trainer) -> bool:
        previous, self._previous_step = self._previous_step, trainer.global_step
        # a multiple of every_n_steps reached since the last batch (with fused_steps a batch is K steps)
        if self.every_n_steps is not None and trainer.global_step // self.every_n_steps > previous // self.every_n_steps:
            return True  # the same step on every rank
        if self.every_minutes is None:
            return False
        # clocks differ between ranks and saving is collective: rank zero's clock decides
        late = time.monotonic() - self._last_save_time >= 60 * self.every_minutes
        return bool(trainer.strategy.broadcast(late))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > 0 and self._due(trainer):
            trainer.save_checkpoint(self.path)
            self._last_save_time = time.monotonic()


class CudaChecksFromTheRuntime(pl.Callback):
    """In a one-process run, ``torch.cuda.is_available()`` skips NVML from setup to teardown
    (:func:`latentbench.devices.cuda_checks_from_the_runtime`): Adam and AdamW ask it on every step."""

    def __init__(self):
        self._inside = contextlib.ExitStack()

    def setup(self, trainer, pl_module, stage: str) -> None:
        if isinstance(trainer.strategy, pl.strategies.SingleDeviceStrategy):
            self._inside.enter_context(cuda_checks_from_the_runtime())

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._inside.close()

"""``latentbench train``: compose a run from ``conf/``, train, test, write ``metrics.json``."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from latentbench.callbacks import BestValidationMetrics, RngStateCheckpoint, StopOnNonFiniteLoss
from latentbench.checkpoints import ModelClassInCheckpoint, read_checkpoint
from latentbench.config_check import check_config
from latentbench.errors import ConfigError, first_line
from latentbench.instantiate import build
from latentbench.tracking import git_commit, log_run_artifacts, scrub, scrub_files, wandb_loggers, write_metrics_json

log = logging.getLogger(__name__)


def check_hardware(cfg: DictConfig) -> None:
    """A GPU asked for on a machine without one fails here, in one line, before any work."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator: '{accelerator}' asked for, but this machine has no CUDA GPU (use trainer=cpu)")
    precision = str(cfg.trainer.get("precision", "32-true"))
    on_cpu = accelerator == "cpu" or not torch.cuda.is_available()
    if on_cpu and precision in ("16-mixed", "16-true", "16"):
        raise ConfigError(f"trainer.precision: '{precision}' needs a CUDA GPU; on the CPU use precision=bf16-mixed or 32")


class ChannelsLast(pl.Callback):
    """Conv models in channels-last memory format (faster convolutions with tensor cores)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.to(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.dim() == 4:
                batch[key] = value.contiguous(memory_format=torch.channels_last)


def apply_compile(model: pl.LightningModule, cfg: DictConfig) -> pl.LightningModule:
    """``torch.compile`` the module when ``compile.enabled``; Lightning trains the compiled wrapper."""
    options = cfg.get("compile")
    if not options or not options.enabled:
        return model
    log.info("torch.compile(mode=%s, backend=%s)", options.mode, options.backend)
    return torch.compile(model, mode=options.mode, backend=options.backend)


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None and "_target_" in node:
            log.info("callback %s: %s", name, node._target_)
            callbacks.append(build(node, f"callbacks.{name}"))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[pl.loggers.Logger]:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is not None and "_target_" in node:
            log.info("logger %s: %s", name, node._target_)
            loggers.append(build(node, f"logger.{name}"))
    return loggers


# Model constructor arguments that describe the data; filled in from the data module when the
# model's constructor takes them and the config leaves them unset.
DATA_ARGUMENTS = ("input_shape", "num_classes", "has_captions")


def data_arguments(model_node: DictConfig, datamodule: pl.LightningDataModule) -> dict[str, Any]:
    """``{"input_shape": [1, 28, 28], "num_classes": 10, ...}``: what the model needs to know about the data."""
    import inspect

    from hydra.utils import get_object

    params = inspect.signature(get_object(model_node._target_)).parameters
    arguments = {}
    for name in DATA_ARGUMENTS:
        if name in params and model_node.get(name) is None and hasattr(datamodule, name):
            value = getattr(datamodule, name)
            arguments[name] = list(value) if isinstance(value, tuple) else value
    return arguments


def corruption_argument(cfg: DictConfig) -> dict[str, Any]:
    """``{"corruption": <object>}`` from the ``corruption`` group for the data module, or ``{}`` for none."""
    node = cfg.get("corruption")
    if not node or "_target_" not in node:
        return {}
    import inspect

    from hydra.utils import get_object

    params = inspect.signature(get_object(cfg.data._target_)).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "corruption" not in params and not takes_kwargs:
        raise ConfigError(f"corruption: {cfg.data._target_} cannot corrupt its inputs (use corruption=none)")
    log.info("corruption: %s", node._target_)
    return {"corruption": build(node, "corruption")}


def check_corruption_fits_model(cfg: DictConfig, corruption: Any, datamodule: pl.LightningDataModule, model: pl.LightningModule) -> None:
    """A corruption that changes the image shape (``grayscale``: 3 -> 1 channel) needs a model that
    takes such inputs (``accepts_grey_input``, the colorizer); found here, not at the first step."""
    shape = tuple(getattr(datamodule, "image_shape", ()) or ())
    if len(shape) != 3:
        return
    corrupted = tuple(corruption(torch.zeros(2, *shape), torch.Generator().manual_seed(0)).shape[1:])
    if corrupted != shape and not getattr(model, "accepts_grey_input", False):
        raise ConfigError(f"corruption: {cfg.corruption._target_.rpartition('.')[2]} turns the data's {list(shape)} images into "
                          f"{list(corrupted)}, which {cfg.model._target_.rpartition('.')[2]} cannot take as input "
                          f"(it reconstructs inputs of the data's shape; for grayscale use model=colorizer)")


def build_run(cfg: DictConfig) -> dict[str, Any]:
    """Validate ``cfg`` and build data module, model, callbacks, loggers and trainer; loads no data."""
    check_config(cfg)
    check_hardware(cfg)
    log.info("data: %s", cfg.data._target_)
    corruption = corruption_argument(cfg)
    datamodule = build(cfg.data, "data", **corruption)
    log.info("model: %s", cfg.model._target_)
    model = build(cfg.model, "model", **data_arguments(cfg.model, datamodule), _recursive_=False, _convert_="all")
    if corruption:
        check_corruption_fits_model(cfg, corruption["corruption"], datamodule, model)
    callbacks = build_callbacks(cfg)
    from latentbench.evaluation.fid import metric_callbacks

    # FID etc. (metrics group), validated here; first, so that best-val metrics and checkpoints see their values
    callbacks[0:0] = metric_callbacks(cfg, datamodule.image_shape)
    for always in (BestValidationMetrics, RngStateCheckpoint, ModelClassInCheckpoint):
        if not any(isinstance(c, always) for c in callbacks):
            callbacks.append(always())
    callbacks.insert(0, StopOnNonFiniteLoss())  # first: no later callback may checkpoint a NaN state
    loggers = build_loggers(cfg)
    if cfg.get("channels_last"):
        callbacks.append(ChannelsLast())
    interactive = sys.stdout.isatty()
    if interactive:
        callbacks.append(pl.callbacks.RichProgressBar())
    trainer = build(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        deterministic=cfg.deterministic,
        default_root_dir=cfg.paths.output_dir,
        enable_progress_bar=interactive,
    )
    return {"datamodule": datamodule, "model": model, "trainer": trainer, "loggers": loggers, "callbacks": callbacks}


def best_checkpoint(trainer: pl.Trainer) -> str | None:
    """Path of the best checkpoint saved during fit, or None (then the final weights are tested)."""
    callback = trainer.checkpoint_callback
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    return path or None


def collect_metrics(cfg: DictConfig, trainer: pl.Trainer, test_results: list[dict], objects: dict[str, Any]) -> dict[str, Any]:
    """Flat ``{"test/...": ..., "best_val/...": ..., "seed": ..., ...}`` for ``metrics.json``."""
    metrics: dict[str, Any] = {}
    for result in test_results:
        metrics.update({k: float(v) for k, v in result.items()})
    for callback in objects["callbacks"]:
        if isinstance(callback, BestValidationMetrics):
            metrics.update({f"best_{k}": v for k, v in callback.best.items()})
    skipped = getattr(objects["datamodule"], "skipped_counts", dict)()  # data.skip_bad=true: samples left out
    if skipped:
        metrics.update(skipped)
        for logger in objects["loggers"]:
            logger.log_metrics(skipped, step=trainer.global_step)
    metrics["seed"] = int(cfg.seed)
    metrics["git_commit"] = git_commit()
    metrics["global_step"] = int(trainer.global_step)
    metrics["epochs"] = int(trainer.current_epoch)
    checkpoint = best_checkpoint(trainer)
    metrics["checkpoint"] = checkpoint
    for logger in wandb_loggers(objects["loggers"]) if trainer.is_global_zero else []:
        experiment = logger.experiment
        metrics["wandb_run_id"] = experiment.id
        metrics["wandb_url"] = experiment.url if not experiment.settings._offline else None
        metrics["wandb_dir"] = str(Path(experiment.dir).parent)
    metrics["status"] = "finished"
    return metrics


def finish_loggers(loggers: list, failed: bool) -> None:
    """Close every W&B run (one run per training run, also under multirun) and say how to sync it."""
    for logger in wandb_loggers(loggers):
        experiment = logger.experiment
        offline = experiment.settings._offline
        run_dir = Path(experiment.dir).parent
        experiment.finish(exit_code=1 if failed else 0)
        if offline:
            log.info("W&B ran offline; upload this run with: wandb sync %s", run_dir)


class TrainingFailed(RuntimeError):
    """A run stopped by an error during training or testing; ``metrics.json`` records why."""


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The ``last.ckpt`` to continue from when ``resume`` names this run's directory, else None."""
    if not cfg.get("resume"):
        return None
    checkpoint = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise ConfigError(f"resume: {cfg.paths.output_dir} has no checkpoints/last.ckpt to resume from")
    from hydra.utils import get_class

    read_checkpoint(checkpoint, "resume", expected=get_class(cfg.model._target_))
    return str(checkpoint)


def reuse_wandb_run(cfg: DictConfig) -> None:
    """On resume, log to the W&B run the interrupted run started (its id is in ``run.json``)."""
    run_file = Path(cfg.paths.output_dir) / "run.json"
    if not cfg.get("resume") or not run_file.is_file() or "wandb" not in (cfg.get("logger") or {}):
        return
    info = json.loads(run_file.read_text())
    if info.get("wandb_run_id"):
        wait_for_wandb_service_of(info.get("pid"))
        # A W&B service inherited from a parent process (WANDB_SERVICE, set by any process that ran
        # wandb before starting this one) still holds the killed run's stream, and refuses its id
        # as "in use" for as long as that parent lives: the resume starts a service of its own.
        os.environ.pop("WANDB_SERVICE", None)
        with open_dict(cfg):
            cfg.logger.wandb.run_id = info["wandb_run_id"]


def wait_for_wandb_service_of(pid: int | None, timeout: float = 120.0) -> None:
    """Wait while the W&B service of the interrupted process (``wandb-core --pid <pid>``) still runs.

    That service outlives a killed training process by a few seconds while it writes the run's
    record, and holds the run id until it exits: a resume started before that is refused by W&B.
    """
    import time

    if not pid:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
        b"wandb-core" in cmdline and f"--pid\0{pid}\0".encode() in cmdline for cmdline in process_command_lines()
    ):
        time.sleep(1.0)


def process_command_lines() -> list[bytes]:
    """Command lines of the running processes (NUL-separated, from /proc; empty where there is none)."""
    lines = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(path.read_bytes())
        except OSError:
            continue
    return lines


def write_run_info(output_dir: Path, cfg: DictConfig, objects: dict[str, Any], status: str) -> None:
    """``run.json``: status and W&B run id, written when a run starts so that a resume can find them."""
    info = {"status": status, "seed": int(cfg.seed), "git_commit": git_commit(), "pid": os.getpid()}
    for logger in wandb_loggers(objects["loggers"]):
        info["wandb_run_id"] = logger.experiment.id
    write_metrics_json(output_dir / "run.json", info)


def last_good_checkpoint(output_dir: Path) -> str | None:
    checkpoint = output_dir / "checkpoints" / "last.ckpt"
    return str(checkpoint) if checkpoint.is_file() else None


def record_failure(output_dir: Path, cfg: DictConfig, error: BaseException) -> str:
    """Write ``metrics.json`` with ``status: failed`` and the reason; return the one-line reason."""
    reason = f"{type(error).__name__}: {first_line(error)}"
    write_metrics_json(output_dir / "metrics.json", {
        "status": "failed",
        "error": reason,
        "seed": int(cfg.seed),
        "git_commit": git_commit(),
        "checkpoint": last_good_checkpoint(output_dir),
    })
    return reason


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one run; return (and write to ``<output_dir>/metrics.json``) its metrics.

    Raises ConfigError for a bad config or input (before any step), TrainingFailed for an error
    during training (``metrics.json`` then says ``status: failed``, the reason and the last good
    checkpoint).
    """
    check_config(cfg)  # before seeding, so that a bad seed is reported as such
    ckpt_path = resume_checkpoint(cfg)
    reuse_wandb_run(cfg)
    pl.seed_everything(cfg.seed, workers=True)  # before building: the seed fixes the initial weights
    objects = build_run(cfg)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))
    trainer, datamodule = objects["trainer"], objects["datamodule"]
    model = apply_compile(objects["model"], cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    failed = True
    try:
        if trainer.is_global_zero:
            write_run_info(output_dir, cfg, objects, "running")
        scrub_files(sorted((output_dir / ".hydra").glob("*.yaml")))
        for logger in objects["loggers"]:
            logger.log_hyperparams(scrub(OmegaConf.to_container(cfg, resolve=True)))
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        test_results = trainer.test(model, datamodule=datamodule, ckpt_path=best_checkpoint(trainer), weights_only=True)
        metrics = collect_metrics(cfg, trainer, test_results, objects)
        if trainer.is_global_zero:
            write_metrics_json(output_dir / "metrics.json", metrics)
            try:
                log_run_artifacts(objects["loggers"], output_dir, metrics.get("checkpoint"), metrics)
            except Exception as error:  # the run has finished: an upload problem must not mark it failed
                log.warning("W&B artifacts not logged: %s", first_line(error))
            write_run_info(output_dir, cfg, objects, "finished")
            log.info("metrics: %s", output_dir / "metrics.json")
        failed = False
        return metrics
    except ConfigError:
        if trainer.is_global_zero:
            record_failure(output_dir, cfg, sys.exc_info()[1])
        raise
    except Exception as error:
        reason = record_failure(output_dir, cfg, error) if trainer.is_global_zero else first_line(error)
        good = last_good_checkpoint(output_dir)
        raise TrainingFailed(f"{reason} (last good checkpoint: {good or 'none'})") from error
    finally:
        if trainer.is_global_zero:
            finish_loggers(objects["loggers"], failed)


def objective(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """The value a Hydra sweeper optimises: ``metrics[cfg.optimized_metric]``, if set."""
    key = cfg.get("optimized_metric")
    if not key:
        return None
    value = metrics.get(key)
    if value is None and metrics.get("status") == "finished":
        log.warning("optimized_metric: %s is not among this run's metrics (e.g. model=classifier: use optimized_metric=test/loss)", key)
    return float(value) if value is not None else math.nan

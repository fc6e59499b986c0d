"""``latentbench train``: compose a run from ``conf/``, train, test, write ``metrics.json``."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import signal
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from latentbench.callbacks import BestValidationMetrics
from latentbench.checkpoints import DurableCheckpointIO, read_checkpoint
from latentbench.config_check import check_config, counts_in_steps, signature_names
from latentbench.devices import cpu_has_native_bf16
from latentbench.errors import ConfigError, first_line
from latentbench.instantiate import build
from latentbench.models.fused import compile_fused_step, fuse_training_steps
from latentbench.interrupts import RunInterrupted, SaveOnInterrupt, signal_name
from latentbench.quiet import silence_third_party_noise
from latentbench.run_dir import RunDir, headline_metrics
from latentbench.tracking import git_commit, log_run_artifacts, scrub, scrub_files, wandb_loggers

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


def model_to_fit(model: pl.LightningModule, cfg: DictConfig) -> pl.LightningModule:
    """What ``trainer.fit`` trains: ``model`` with the run's float32 matmul precision set and, when
    ``compile.enabled``, compiled (benchmarks that build a run with :func:`build_run` call this too)."""
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))
    return apply_compile(model, cfg)


def apply_compile(model: pl.LightningModule, cfg: DictConfig) -> pl.LightningModule:
    """``torch.compile`` the module when ``compile.enabled``; Lightning trains the compiled wrapper.
    With fused steps, each optimizer step's own training step and the evaluation steps are compiled
    instead, and the group's loop stays eager."""
    options = cfg.get("compile")
    if not options or not options.enabled:
        return model
    log.info("torch.compile(mode=%s, backend=%s)", options.mode, options.backend)
    keep_bookkeeping_eager(model)
    compiler = functools.partial(torch.compile, mode=options.mode, backend=options.backend)
    if compile_fused_step(model, compiler):
        for hook in ("validation_step", "test_step", "predict_step"):
            setattr(model, hook, compiler(getattr(model, hook)))
        return model
    return compiler(model)


def keep_bookkeeping_eager(model: pl.LightningModule) -> None:
    """Run ``model.log``/``log_dict`` and its torchmetrics' updates eagerly inside a compiled step.

    Traced, they are no graph worth having, and their Python state becomes guards that fail on the
    next call (the logged name, a metric's update count), so that Dynamo compiles the step again and
    again until its recompile limit. Methods are replaced on the instances (bound, so that a deep copy
    of the model calls its own); the classes stay as they are.
    """
    from torchmetrics import Metric, MetricCollection

    for name in ("log", "log_dict"):
        run_eagerly(model, name)
    for module in model.modules():
        if isinstance(module, Metric):
            # torchmetrics' own per-instance wrapper of update (it counts the updates); a deep copy rebuilds it
            module.update = torch.compiler.disable(module.update)
            run_eagerly(module, "forward")
        elif isinstance(module, MetricCollection):
            run_eagerly(module, "update")
            run_eagerly(module, "forward")


def run_eagerly(obj: Any, name: str) -> None:
    """Bind ``obj``'s class method ``name`` to ``obj`` again, out of Dynamo's reach."""
    setattr(obj, name, types.MethodType(torch.compiler.disable(getattr(type(obj), name)), obj))


AUTO_FUSED_STEPS = (32, 16, 8, 4, 2)  # fused_steps=auto: the largest of these that the counts and memory allow
FUSED_BATCH_BYTES = 64 * 2**20  # fused_steps=auto keeps a group of K batches (float32) within this


def auto_fused_steps(cfg: DictConfig, datamodule: pl.LightningDataModule, model: pl.LightningModule) -> tuple[int, str]:
    """What ``fused_steps: auto`` means for this run: ``(K, why)``.

    K > 1 where fusing changes nothing a user counts: an in-memory data module, one optimizer under
    automatic optimisation, one process, no gradient scaler (16-mixed) and no gradient accumulation;
    K is the largest of 32, 16, 8, 4, 2 that divides every count in steps (``trainer.max_steps``,
    integer ``limit_train_batches`` and ``val_check_interval``, ``callbacks.periodic_checkpoint.every_n_steps``),
    so that validation, checkpoints and the end fall on the same steps as unfused (a fractional
    ``val_check_interval`` falls on whole groups: up to K - 1 steps off), and whose group of K
    batches fits in :data:`FUSED_BATCH_BYTES`. Else 1. The rule reads the config and the data's
    shape only; a resumed run takes the K it was saved with (:func:`adopt_saved_fused_steps`).
    """
    trainer = cfg.trainer
    if trainer.get("fast_dev_run"):
        return 1, "trainer.fast_dev_run"
    if not getattr(datamodule, "supports_fused_steps", False):
        return 1, f"{type(datamodule).__name__} streams its batches"
    if not model.automatic_optimization:
        return 1, f"{type(model).__name__} runs its own optimisation loop"
    if str(trainer.get("strategy", "auto")) != "auto" or str(trainer.get("devices", 1)) not in ("1", "auto"):
        return 1, "more than one process"
    if str(trainer.get("accelerator", "auto")) != "cpu" and str(trainer.get("devices")) == "auto":
        return 1, "trainer.devices=auto on an accelerator"
    if str(trainer.get("precision")).startswith("16"):
        return 1, "16-bit precision (a gradient scaler)"
    if trainer.get("accumulate_grad_batches", 1) not in (1, None):
        return 1, "gradient accumulation"
    counts = counts_a_group_must_divide(cfg)
    fitting = [steps for steps in AUTO_FUSED_STEPS if all(count % steps == 0 for count in counts)]
    if not fitting:
        return 1, f"the counts in steps {counts} share no factor of 2"
    batch_bytes = served_batch_bytes(datamodule)
    steps = next((steps for steps in fitting if steps * batch_bytes <= FUSED_BATCH_BYTES), 1)
    if steps == 1:
        return 1, f"a batch of {batch_bytes / 2**20:.0f} MiB: {fitting[-1]} of them exceed {FUSED_BATCH_BYTES // 2**20} MiB"
    return steps, "in-memory data, one process"


def counts_a_group_must_divide(cfg: DictConfig) -> list[int]:
    """The run's counts in steps (the trainer's, and the periodic checkpoint's ``every_n_steps``)."""
    counts = list(counts_in_steps(cfg.trainer).values())
    every_n_steps = ((cfg.get("callbacks") or {}).get("periodic_checkpoint") or {}).get("every_n_steps")
    if isinstance(every_n_steps, int) and not isinstance(every_n_steps, bool) and every_n_steps > 0:
        counts.append(every_n_steps)
    return counts


def served_batch_bytes(datamodule: pl.LightningDataModule) -> int:
    """Bytes of one training batch as an in-memory data module serves it: float32 images, and as
    much again for a corrupted input beside them."""
    images = getattr(datamodule, "batch_size", 1) * math.prod(getattr(datamodule, "image_shape", (1,))) * 4
    corrupted = getattr(datamodule, "corruption", None) is not None and "train" in getattr(datamodule, "corrupt_splits", ())
    return images * (2 if corrupted else 1)


def apply_fused_steps(cfg: DictConfig, datamodule: pl.LightningDataModule, model: pl.LightningModule) -> dict[str, Any]:
    """With ``fused_steps`` K > 1 (or ``auto``, :func:`auto_fused_steps`): the data module serves K
    batches per item and the model runs K optimizer steps on them (:mod:`latentbench.models.fused`).
    Returns the Trainer arguments that change: its batch counts are in items of K batches, and
    gradient clipping moves into the step."""
    setting = cfg.get("fused_steps", 1)
    if setting == "auto":
        steps, why = auto_fused_steps(cfg, datamodule, model)
        log.info("fused_steps=auto: %d optimizer step%s per Lightning step (%s)", steps, "s" * (steps > 1), why)
    else:
        steps = int(setting)
    if steps == 1:
        return {}
    if not getattr(datamodule, "supports_fused_steps", False):
        raise ConfigError(f"fused_steps: {type(datamodule).__name__} does not serve in-memory batches; fused steps need "
                          "an in-memory data module (data=mnist, faces, digits, shapes, images)")
    trainer = cfg.trainer
    try:
        fuse_training_steps(model, steps, datamodule.batch_size, trainer.get("gradient_clip_val"),
                            trainer.get("gradient_clip_algorithm") or "norm")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    datamodule.fused_steps = steps
    changed: dict[str, Any] = {"gradient_clip_val": None}
    for key in ("limit_train_batches", "val_check_interval"):  # multiples of K (config_check.check_fused_steps)
        value = trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            changed[key] = value // steps
    return changed


def build_callbacks(cfg: DictConfig, **provided: Any) -> list[pl.Callback]:
    """The ``metrics`` group's callbacks, then the ``callbacks`` group's, each in config order.

    A node's ``_target_`` is a callback class or a factory that returns one, or None when it is
    off (``metrics.fid`` without a checkpoint, the progress bar outside a terminal). Targets that
    take them get the ``provided`` objects (``image_shape`` of the data, the built ``model``).
    """
    import inspect

    from hydra.utils import get_object

    callbacks = []
    for group in ("metrics", "callbacks"):
        for name, node in (cfg.get(group) or {}).items():
            if node is None or "_target_" not in node:
                continue
            params = inspect.signature(get_object(node._target_)).parameters
            callback = build(node, f"{group}.{name}", **{k: v for k, v in provided.items() if k in params and k not in node})
            if callback is not None:
                log.debug("%s %s: %s", group, name, type(callback).__name__)
                callbacks.append(callback)
    log.info("callbacks: %s", ", ".join(type(c).__name__ for c in callbacks))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[pl.loggers.Logger]:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is not None and "_target_" in node:
            log.debug("logger %s: %s", name, node._target_)
            loggers.append(build(node, f"logger.{name}"))
    return loggers


# Model constructor arguments that describe the data; filled in from the data module when the
# model's constructor takes them and the config leaves them unset.
DATA_ARGUMENTS = ("input_shape", "num_classes", "has_captions")


def data_arguments(model_node: DictConfig, datamodule: pl.LightningDataModule) -> dict[str, Any]:
    """``{"input_shape": [1, 28, 28], "num_classes": 10, ...}``: what the model needs to know about the data."""
    params = signature_names(model_node._target_)
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


def resolve_precision(cfg: DictConfig) -> None:
    """``trainer.precision: auto`` (``precision=auto``, model=ldm's default) becomes bf16-mixed on a
    CUDA GPU with bf16, else 32-true."""
    if cfg.trainer.get("precision") != "auto":
        return
    gpu = not runs_on_cpu(cfg) and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    with open_dict(cfg):
        cfg.trainer.precision = "bf16-mixed" if gpu else "32-true"


def runs_on_cpu(cfg: DictConfig) -> bool:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def warn_of_emulated_bf16(cfg: DictConfig) -> None:
    """One warning line when a bf16 precision would run on a CPU that emulates bfloat16."""
    precision = str(cfg.trainer.get("precision"))
    if precision.startswith("bf16") and runs_on_cpu(cfg) and not cpu_has_native_bf16():
        log.warning("precision=%s: this CPU has no native bfloat16 (AVX512-BF16/AMX), so its matrix products are "
                    "emulated, ~50x slower than precision=32-true (or precision=auto)", precision)


def build_run(cfg: DictConfig) -> dict[str, Any]:
    """Validate ``cfg`` and build data module, model, callbacks, loggers and trainer; loads no data."""
    resolve_precision(cfg)
    check_config(cfg)
    check_hardware(cfg)
    warn_of_emulated_bf16(cfg)
    silence_third_party_noise()
    log.debug("data: %s", cfg.data._target_)
    corruption = corruption_argument(cfg)
    datamodule = build(cfg.data, "data", **corruption)
    log.debug("model: %s", cfg.model._target_)
    model = build(cfg.model, "model", **data_arguments(cfg.model, datamodule), _recursive_=False, _convert_="all")
    if corruption:
        check_corruption_fits_model(cfg, corruption["corruption"], datamodule, model)
    # metrics first: best-val metrics and checkpoints see the values they log
    shape = getattr(datamodule, "image_shape", None)
    callbacks = build_callbacks(cfg, image_shape=list(shape) if shape is not None else None, model=model)
    loggers = build_loggers(cfg)
    trainer = build(
        cfg.trainer,
        "trainer",
        **apply_fused_steps(cfg, datamodule, model),
        callbacks=callbacks,
        logger=loggers or False,
        deterministic=cfg.deterministic,
        default_root_dir=cfg.paths.output_dir,
        enable_progress_bar=any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks),
        enable_model_summary=any(isinstance(c, pl.callbacks.ModelSummary) for c in callbacks),
        plugins=[DurableCheckpointIO()],
    )
    # save_on_interrupt acts last of all (Lightning has moved checkpointing to the end): a signal that
    # arrives during any other callback's hook is still acted on at the end of the same step
    for callback in [c for c in trainer.callbacks if isinstance(c, SaveOnInterrupt)]:
        trainer.callbacks.remove(callback)
        trainer.callbacks.append(callback)
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


def finish_loggers(loggers: list, failed: bool) -> list[Path]:
    """Close every W&B run (one run per training run, also under multirun); returns the folders of
    the offline ones, to upload with ``wandb sync``."""
    offline = []
    for logger in wandb_loggers(loggers):
        experiment = logger.experiment
        if experiment.settings._offline:
            offline.append(Path(experiment.dir).parent)
        experiment.finish(exit_code=1 if failed else 0)
    return offline


def run_summary(run: RunDir, metrics: dict[str, Any], seconds: float, offline_wandb: list[Path]) -> str:
    """The few lines printed when a run finishes: where it is, what it reached, what to do next."""
    lines = [f"run finished: {run.path} ({metrics.get('epochs')} epochs, {metrics.get('global_step')} steps, {seconds:.0f} s)",
             f"  {', '.join(headline_metrics(metrics, 4))} (all in {run.metrics_file.name})"]
    if metrics.get("checkpoint"):
        lines.append(f"  best checkpoint: {run.relative(metrics['checkpoint'])}")
    lines.append(f"  train it further: {resume_command(run)} trainer.max_epochs=<more>")
    lines += [f"  W&B ran offline; upload with: wandb sync {folder}" for folder in offline_wandb]
    return "\n".join(lines)


class TrainingFailed(RuntimeError):
    """A run stopped by an error during training or testing; ``metrics.json`` records why."""


def resume_checkpoint(cfg: DictConfig, run: RunDir) -> str | None:
    """The ``last.ckpt`` to continue from when ``resume`` names this run's directory, else None.

    A run killed before its first checkpoint has nothing to continue from: it starts again from
    step 0, in the same directory and W&B run, which gives the same result.
    """
    if not cfg.get("resume"):
        return None
    if not run.last_checkpoint.is_file():
        log.warning("resume: %s has no checkpoint yet; starting the run again from its first step", run.path)
        return None
    from hydra.utils import get_class

    checkpoint = read_checkpoint(run.last_checkpoint, "resume", expected=get_class(cfg.model._target_))
    adopt_saved_fused_steps(cfg, checkpoint)
    return str(run.last_checkpoint)


def adopt_saved_fused_steps(cfg: DictConfig, checkpoint: dict[str, Any]) -> None:
    """Under ``fused_steps: auto``, a resumed run fuses as many steps as the run it continues (the
    data position of a checkpoint saved mid-epoch is in groups of that size), whatever today's rule
    would pick, if the counts in steps allow it; an explicit K stays (and must match, as the data
    loader's restore checks)."""
    if cfg.get("fused_steps", 1) != "auto":
        return
    loader_states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or [{}]
    saved = loader_states[0].get("group") if isinstance(loader_states[0], dict) else None
    if isinstance(saved, int) and saved >= 1 and all(count % saved == 0 for count in counts_a_group_must_divide(cfg)):
        log.info("fused_steps=auto: %d, as the run was saved with", saved)
        cfg.fused_steps = saved


def reuse_wandb_run(cfg: DictConfig, run: RunDir) -> None:
    """On resume, log to the W&B run the interrupted run started (its id is in ``run.json``)."""
    if not cfg.get("resume") or "wandb" not in (cfg.get("logger") or {}):
        return
    info = run.info()
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


def wandb_run_id_of(objects: dict[str, Any]) -> str | None:
    for logger in wandb_loggers(objects["loggers"]):
        return logger.experiment.id
    return None


def record_failure(run: RunDir, cfg: DictConfig, error: BaseException) -> str:
    """Mark the run failed with the reason (a finished run's results are kept); return the reason."""
    reason = f"{type(error).__name__}: {first_line(error)}"
    run.record_failure(reason, seed=int(cfg.seed), git_commit=git_commit())
    return reason


def training_length(cfg: DictConfig) -> list[int]:
    """``[max_epochs, max_steps]`` of the config: what a finished run was trained to."""
    return [int(cfg.trainer.get("max_epochs") or -1), int(cfg.trainer.get("max_steps") or -1)]


def finished_as_configured(cfg: DictConfig, run: RunDir) -> dict[str, Any] | None:
    """Under ``resume``, the results of a run that already finished with this training length
    (the finished jobs of a resumed multirun), else None (train: fresh, continued or extended)."""
    if not cfg.get("resume"):
        return None
    metrics = run.finished_metrics()
    if metrics is None or run.info().get("trained_to") != training_length(cfg):
        return None
    return {**metrics, "checkpoint": str(run.resolve(metrics.get("checkpoint"))) if metrics.get("checkpoint") else None}


def requeue_slurm_job(signum: int) -> None:
    """Under SLURM, SIGUSR1 (``sbatch --signal=USR1@<seconds>``) means the time limit is near:
    requeue the job (``scontrol requeue``), whose next start continues this run by itself."""
    import subprocess

    job = os.environ.get("SLURM_ARRAY_JOB_ID") and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    job = job or os.environ.get("SLURM_JOB_ID")
    if signum != signal.SIGUSR1 or not job:
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("SLURM: could not requeue job %s (%s); resume by hand", job, first_line(error))
        return
    if result.returncode == 0:
        print(f"SLURM: requeued job {job}; its next start continues this run", file=sys.stderr)
    else:
        log.warning("SLURM: scontrol requeue %s failed: %s", job, first_line(result.stderr or result.stdout or "no output"))


def resume_command(run: RunDir) -> str:
    return f"latentbench train resume={run.path}"


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one run; return (and write to ``<output_dir>/metrics.json``) its metrics.

    Raises ConfigError for a bad config or input (before any step), TrainingFailed for an error
    during training (``metrics.json`` then says ``status: failed``, the reason and the last good
    checkpoint), RunInterrupted for SIGTERM/SIGINT/SIGUSR1 (``last.ckpt`` saved at the current
    step, ``run.json`` says ``interrupted``).
    """
    started = time.monotonic()
    resolve_precision(cfg)
    check_config(cfg)  # before seeding, so that a bad seed is reported as such
    run = RunDir(cfg.paths.output_dir)
    done = finished_as_configured(cfg, run)
    if done is not None:
        log.info("%s: finished before (a resumed multirun runs only the jobs not finished)", run.path)
        return done
    ckpt_path = resume_checkpoint(cfg, run)
    reuse_wandb_run(cfg, run)
    pl.seed_everything(cfg.seed, workers=True)  # before building: the seed fixes the initial weights
    objects = build_run(cfg)
    loggers = ", ".join(type(logger).__name__.removesuffix("Logger") for logger in objects["loggers"]) or "no logger"
    log.info("run %s: %s on %s (%s)", run.path, type(objects["model"]).__name__, type(objects["datamodule"]).__name__, loggers)
    trainer, datamodule = objects["trainer"], objects["datamodule"]
    model = model_to_fit(objects["model"], cfg)
    rank_zero = trainer.is_global_zero
    if rank_zero:
        run.acquire_lock()
    failed = True
    interrupt = next((c for c in trainer.callbacks if isinstance(c, SaveOnInterrupt)), None)
    try:
        with interrupt.signals if interrupt is not None else contextlib.nullcontext():
            if rank_zero:
                run.reserve_space()
                run.start(int(cfg.seed), git_commit(), wandb_run_id_of(objects))
            scrub_files(sorted(run.hydra_dir.glob("*.yaml")))
            for logger in objects["loggers"]:
                logger.log_hyperparams(scrub(OmegaConf.to_container(cfg, resolve=True)))
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
            test_results = trainer.test(model, datamodule=datamodule, ckpt_path=best_checkpoint(trainer), weights_only=True,
                                        verbose=False)  # the run's summary says what matters, once
            metrics = collect_metrics(cfg, trainer, test_results, objects)
        if rank_zero:
            run.write_metrics(metrics)
            try:
                log_run_artifacts(objects["loggers"], run.path, metrics.get("checkpoint"), metrics)
            except Exception as error:  # the run has finished: an upload problem must not mark it failed
                log.warning("W&B artifacts not logged: %s", first_line(error))
            run.mark("finished", error=None, last_attempt=None, trained_to=training_length(cfg))
        failed = False
        return metrics
    except (RunInterrupted, SIGTERMException) as error:
        # Lightning stops by itself (SIGTERMException) on a SIGTERM that came after save_on_interrupt's
        # hook in the step, or when that callback is turned off: the run keeps its last saved state
        interrupted = error if isinstance(error, RunInterrupted) else RunInterrupted(signal.SIGTERM, "interrupted by SIGTERM", saved=False)
        if rank_zero:
            kept = run.last_checkpoint.is_file()
            run.mark("interrupted", signal=signal_name(interrupted.signum), checkpoint=run.relative(run.last_checkpoint) if kept else None)
            state = f"saved {run.last_checkpoint}" if interrupted.saved else f"kept {run.last_checkpoint if kept else 'no checkpoint yet'}"
            print(f"interrupted by {signal_name(interrupted.signum)}: {state}; continue with:\n"
                  f"  {resume_command(run)}", file=sys.stderr)
            requeue_slurm_job(interrupted.signum)
        if interrupted is error:
            raise
        raise interrupted from None
    except ConfigError:
        if rank_zero:
            record_failure(run, cfg, sys.exc_info()[1])
        raise
    except Exception as error:
        reason = record_failure(run, cfg, error) if rank_zero else first_line(error)
        good = run.last_checkpoint if run.last_checkpoint.is_file() else None
        raise TrainingFailed(f"{reason} (last good checkpoint: {good or 'none'})") from error
    finally:
        if rank_zero:
            offline_wandb = finish_loggers(objects["loggers"], failed)
            run.release_reserve()
            run.release_lock()
            if not failed:
                print(run_summary(run, metrics, time.monotonic() - started, offline_wandb), flush=True)
            for folder in offline_wandb if failed else []:
                print(f"W&B ran offline; upload what was logged with: wandb sync {folder}", file=sys.stderr)


def objective(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """The value a Hydra sweeper optimises: ``metrics[cfg.optimized_metric]``, if set."""
    key = cfg.get("optimized_metric")
    if not key:
        return None
    value = metrics.get(key)
    if value is None and metrics.get("status") == "finished":
        log.warning("optimized_metric: %s is not among this run's metrics (e.g. model=classifier: use optimized_metric=test/loss)", key)
    return float(value) if value is not None else math.nan

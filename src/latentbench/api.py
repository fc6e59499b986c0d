"""The Python API, for notebooks: train a run, load its model, read runs as a table.

    import latentbench as lb
    metrics = lb.train(["model=pca", "data=digits"])  # as `latentbench train model=pca data=digits`
    lb.runs("outputs")                                # one row per run: status, config, metrics
    model = lb.load(metrics.run_dir)                  # the run's trained LightningModule

``train`` runs the command line's own code path (:func:`latentbench.launch.run_train`) in this
process, so a run started here is an ordinary run directory (``.hydra/``, ``run.json``,
``metrics.json``, checkpoints) that ``resume=``, ``latentbench eval`` and ``latentbench report``
read like any other; a bad override raises the ConfigError whose line the command prints.
torch, Lightning and pandas are imported inside the functions, when they are used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback

from latentbench.errors import ConfigError
from latentbench.run_dir import RunDir, RunDirError

if TYPE_CHECKING:
    import pandas as pd
    import pytorch_lightning as pl


class RecordRunDir(Callback):
    """A Hydra callback that notes where each job runs: how :func:`train` finds the run it started
    (Hydra restores its runtime config when a job ends, and the default folder name holds the time)."""

    run_dirs: list[str] = []

    def on_job_start(self, config, **kwargs: Any) -> None:
        RecordRunDir.run_dirs.append(str(config.hydra.runtime.output_dir))


class RunMetrics(dict):
    """A run's ``metrics.json`` as a dict, and the run's folder as ``run_dir`` (for :func:`load`)."""

    def __init__(self, metrics: dict[str, Any], run_dir: str | Path):
        super().__init__(metrics)
        self.run_dir = Path(run_dir)


def train(overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> RunMetrics:
    """Train and test one run, exactly as ``latentbench train <overrides>`` does, in this process.

    Args:
        overrides (`list[str]`, *optional*): Hydra overrides as on the command line, e.g.
            ``["model=ae", "data=digits", "trainer.max_epochs=5"]``; ``resume=<run dir>`` continues
            a run. Hydra's flags (``-m``, ``--cfg``, ``--help``) are for the command line.
        run_dir (`str | Path`, *optional*): the run's folder (``hydra.run.dir``); by default
            ``outputs/<run name>``, as on the command line.

    Returns:
        the run's ``metrics.json`` (``test/...``, ``best_val/...``, ``status``, ``checkpoint``
        relative to the run, ...), with the run's folder as the attribute ``run_dir``.

    Raises:
        ConfigError: a bad override, value or input, with the one line the command prints after
            ``error:``. ``latentbench.train.TrainingFailed``: an error during training
            (``metrics.json`` records it). ``latentbench.interrupts.RunInterrupted``: a signal
            (SIGINT: the notebook's interrupt) stopped the run after saving ``last.ckpt``; continue
            it with ``train(["resume=<run dir>"])``.
    """
    if isinstance(overrides, (str, bytes)):
        raise ConfigError(f"train: overrides: expected a list of key=value strings, got the string {overrides!r} "
                          f"(write overrides=[{overrides!r}])")
    args = [str(override) for override in overrides]
    flag = next((arg for arg in args if arg.startswith("-")), None)
    if flag is not None:
        raise ConfigError(f"train: {flag}: the Python API trains one run from overrides; for Hydra's flags "
                          "(-m, --cfg, --help) use the command line, latentbench train")
    if run_dir is not None:
        if any(arg.startswith("hydra.run.dir=") for arg in args):
            raise ConfigError("train: run_dir= and hydra.run.dir= both given (give one)")
        from latentbench.overrides import hydra_value

        args.append(f"hydra.run.dir={hydra_value(str(run_dir))}")
    recorder = f"+hydra.callbacks.latentbench_api._target_={RecordRunDir.__module__}.{RecordRunDir.__qualname__}"

    from hydra.core.global_hydra import GlobalHydra

    from latentbench.interrupts import RunInterrupted, signal_name
    from latentbench.launch import run_train

    GlobalHydra.instance().clear()  # a compose() or an earlier run in this process left Hydra set up
    RecordRunDir.run_dirs.clear()
    # launch.py re-raises a job's ConfigError / TrainingFailed under HYDRA_FULL_ERROR=1 instead of
    # printing it as the command's last line: what a Python caller wants
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        code = run_train([*args, recorder])
    finally:
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
        GlobalHydra.instance().clear()
    output_dir = RecordRunDir.run_dirs[-1] if RecordRunDir.run_dirs else None
    if output_dir is None:  # resume= of a finished run that the overrides do not extend: nothing ran
        from latentbench.resume import split_resume

        output_dir = split_resume(args)[0]
    if code > 128 and output_dir is not None:  # 128 + signal number, as the command's exit code
        raise RunInterrupted(code - 128, f"{output_dir}: interrupted by {signal_name(code - 128)}; continue it with "
                                         f"latentbench.train(['resume={output_dir}'])")
    if code != 0 or output_dir is None:
        raise ConfigError(f"train: latentbench train {' '.join(args)} ended with exit code {code}")
    run = RunDir(output_dir)
    metrics = run.metrics()
    if metrics is None:
        raise RunDirError(f"train: {run.path} has no metrics.json after the run")
    return RunMetrics(metrics, run.path)


def load(path: str | Path, map_location: Any = "cpu") -> pl.LightningModule:
    """The trained model of a run, in eval mode, without knowing its class.

    Args:
        path (`str | Path`): a run directory (its tested checkpoint: the one in ``metrics.json``,
            else the newest ``best-*.ckpt``, else ``last.ckpt``) or a checkpoint file.
        map_location (*optional*, defaults to ``"cpu"``): where the weights go, as for ``torch.load``
            (``"cuda"``, a ``torch.device``).

    The class is the one the checkpoint records (every latentbench checkpoint does), else the
    ``model._target_`` of the run's ``.hydra/config.yaml``; the file is read with
    ``weights_only=True`` (no pickled code runs). A path that holds no run or checkpoint raises a
    one-line ConfigError.
    """
    from latentbench.checkpoints import load_model

    return load_model(path, map_location)


IDENTITY_COLUMNS = ("run", "status", "overrides")
TRAILING_COLUMNS = ("error", "path")
RUN_FIELDS = ("status", "error")  # metrics.json's own, already the run's status and error columns


def runs(path: str | Path = "outputs", config: bool = True) -> pd.DataFrame:
    """One row per run directory below ``path`` (single runs and multirun jobs, at any depth).

    Args:
        path (`str | Path`, *optional*, defaults to ``"outputs"``): a run, a multirun folder or ``outputs/``.
        config (`bool`, *optional*, defaults to True): every config key as a column (``model.lr``);
            False keeps only the group choices and the overridden keys.

    Columns, in order: ``run`` (folder relative to ``path``), ``status`` (finished, failed,
    interrupted, missing, unreadable), ``overrides`` (the list the run was started with), the
    keys the overrides set (``choices.model`` for ``model=ae``, ``trainer.max_epochs``), the other
    group choices (``choices.data``, ...), every entry of ``metrics.json`` under its own name (``test/recon_sse``,
    ``best_val/...``, ``checkpoint``; a nested ``eval`` section as ``eval.test/...``), the rest of
    the config as dotted keys, ``error`` and ``path`` (the run's folder, for :func:`load`). Runs are
    collected as ``latentbench report`` collects them.
    """
    import pandas as pd

    from latentbench.report import collect_local

    root = Path(path)
    if not root.exists():
        raise ConfigError(f"runs: {root} does not exist (expected a run directory, a multirun folder or outputs/)")
    if not any(root.rglob(".hydra/config.yaml")):
        return pd.DataFrame(columns=[*IDENTITY_COLUMNS, *TRAILING_COLUMNS])
    rows, groups = [], {"choices": {}, "overridden": {}, "metrics": {}, "config": {}}  # dicts as ordered sets
    for run in collect_local(root):
        try:
            overrides = RunDir(run.path).overrides()
        except RunDirError:
            overrides = []
        settings = flatten(run.config)
        metrics = {k: v for k, v in flatten(run.metrics).items() if k not in RUN_FIELDS}
        overridden = [key for key in (override_column(o, settings) for o in overrides) if key is not None]
        groups["choices"].update(dict.fromkeys(k for k in settings if k.startswith("choices.")))
        groups["overridden"].update(dict.fromkeys(overridden))
        groups["metrics"].update(dict.fromkeys(metrics))
        groups["config"].update(dict.fromkeys(settings))
        rows.append({**settings, **metrics, "run": run.name, "status": run.status, "overrides": overrides,
                     "error": run.error, "path": str(run.path)})
    columns: dict[str, None] = dict.fromkeys(IDENTITY_COLUMNS)
    for group in ("overridden", "choices", "metrics", *(("config",) if config else ())):
        columns.update(dict.fromkeys(k for k in groups[group] if k not in columns and k not in TRAILING_COLUMNS))
    columns.update(dict.fromkeys(TRAILING_COLUMNS))
    return pd.DataFrame(rows, columns=list(columns))


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"lr": 0.001}}`` -> ``{"model.lr": 0.001}``; lists and empty dicts stay values."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def override_column(override: str, settings: dict[str, Any]) -> str | None:
    """The column an override sets: ``choices.model`` for ``model=ae``, ``trainer.max_epochs`` for
    ``trainer.max_epochs=5``; None for one that left no key (``~callbacks.x``)."""
    key = override.lstrip("+~").partition("=")[0]
    for column in (f"choices.{key}", key):
        if column in settings:
            return column
    return None

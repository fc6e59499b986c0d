"""``latentbench train``: Hydra runs :func:`latentbench.train.train` on one run or a multirun.

Arguments are quoted (:mod:`latentbench.overrides`), ``resume=`` is expanded
(:mod:`latentbench.resume`), the config is checked (:func:`latentbench.compose.preflight`), then
Hydra runs each job; the exit code is the worst job's.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from hydra.experimental.callback import Callback

from latentbench.compose import conf_dir, preflight
from latentbench.errors import ConfigError


def run_train(args: list[str]) -> int:
    """Run Hydra on ``args`` (overrides and Hydra flags) with the training task; 0 when every job succeeded.

    Hydra is driven with ``args`` directly rather than through ``sys.argv``, so ``sys.argv`` keeps
    ``latentbench train ...``: Lightning's DDP launcher re-executes ``sys.argv`` for ranks > 0.
    """
    from latentbench.overrides import quote_numeric_choices, safe_overrides
    from latentbench.resume import NothingToResume, expand_resume, run_dir_claimed

    try:
        args = expand_resume(quote_numeric_choices(safe_overrides(args)))
    except NothingToResume as nothing:
        print(nothing, file=sys.stderr)
        return 0
    claimed = run_dir_claimed(args)
    try:
        return run_hydra_jobs(args)
    finally:
        if claimed is not None:
            claimed.release_lock()


def run_hydra_jobs(args: list[str]) -> int:
    """Hydra runs ``train`` on each job of ``args``; the exit code of the worst job."""
    from hydra._internal.utils import _run_hydra, get_args_parser

    from latentbench.errors import RunInterrupted
    from latentbench.run_dir import RunDir

    preflight(args)
    multirun = any(a in ("-m", "--multirun") for a in args)
    if multirun:
        args = [*args, *multirun_overrides(args), f"+hydra.callbacks.latentbench_multirun._target_={__name__}.MultirunRecord"]
        MultirunRecord.sweep_dirs.clear()
    failures: list[int] = []  # exit code of each failed job
    sweep_dirs: list[str] = []  # the multirun's folder, once a job has started

    def train_task(cfg):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        # imported here, when a job runs: --help, --cfg and config errors answer without torch
        from latentbench.train import TrainingFailed, objective, record_failure, train

        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        if multirun:
            sweep_dirs[:] = [HydraConfig.get().sweep.dir]
            group_multirun_in_wandb(cfg, sweep_dirs[0], HydraConfig.get().runtime.output_dir)
            share_cores_between_trials(HydraConfig.get().launcher)
        try:
            metrics = train(cfg)
            return objective(cfg, metrics) if multirun else None  # only a sweeper reads the value
        except ConfigError as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1" and not multirun:
                raise
            print(f"error: {error}", file=sys.stderr)
            if multirun:  # a sweep's trial with bad hyperparameters: recorded as failed, the sweep goes on
                try:
                    record_failure(RunDir(cfg.paths.output_dir), cfg, error)
                except Exception:  # noqa: BLE001 (a config too broken to name its output dir or seed)
                    pass
            failures.append(2)
            return float("nan")
        except RunInterrupted:
            if multirun:  # the remaining jobs do not start; the same command resumes them all
                sweep_dir = HydraConfig.get().sweep.dir
                print(f"multirun interrupted; continue it (finished jobs are skipped) with:\n"
                      f"  latentbench train -m resume={sweep_dir}", file=sys.stderr)
            raise
        except TrainingFailed as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1" and not multirun:
                raise
            print(f"error: training failed: {error}", file=sys.stderr)
            failures.append(1)
            return float("nan")

    parser = get_args_parser()
    parser.prog = "latentbench train"
    try:
        _run_hydra(
            args=parser.parse_args(args),
            args_parser=parser,
            task_function=train_task,
            config_path=str(conf_dir()),
            config_name="train",
        )
    except SystemExit as exit_:  # --help, --cfg and Hydra's own errors end with sys.exit
        return exit_.code if isinstance(exit_.code, int) else 1
    except RunInterrupted as interrupted:  # a signal: the run saved its state; a multirun stops here too
        return interrupted.exit_code
    if multirun and MultirunRecord.sweep_dirs:
        rows = print_multirun_summary(MultirunRecord.sweep_dirs[0])
        if not sweep_dirs and any(row["status"] != "finished" for row in rows):
            failures.append(1)  # the jobs ran in worker processes (hydra/launcher=parallel): their errors are in their folders
    return max(failures, default=0)


class MultirunRecord(Callback):
    """A Hydra callback that notes a multirun's folder in this process, also when its jobs run in
    worker processes (``hydra/launcher=parallel``), for the table at the end."""

    sweep_dirs: list[str] = []

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        MultirunRecord.sweep_dirs[:] = [str(config.hydra.sweep.dir)]


def share_cores_between_trials(launcher) -> None:
    """Under a launcher that runs ``n_jobs`` trials at once on this machine, each trial's torch uses
    its share of the cores (else every trial starts one thread per core and they fight)."""
    n_jobs = launcher.get("n_jobs") if launcher is not None else None
    if not isinstance(n_jobs, int) or n_jobs == 1:
        return
    import torch

    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // (cores if n_jobs < 0 else n_jobs)))


def multirun_overrides(args: list[str]) -> list[str]:
    """Hydra overrides for a multirun: each job's folder is named by the overrides that vary over the
    sweep (``3_model=pca,seed=2``; the shared ones, and values holding a ``/``, are left out of the name)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    named = [o for o in parsed if not o.is_hydra_override() and o.is_sweep_override() and not any("/" in v for v in sweep_values(o))]
    shared = sorted({o.key_or_group for o in parsed if not o.is_hydra_override() and o not in named})
    return [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(shared)}]"]


def sweep_values(override) -> list[str]:
    """The values a sweep override takes (``a,b``, ``range(3)``), or its text for one that samples (``interval(0,1)``)."""
    try:
        return [str(value) for value in override.sweep_string_iterator()]
    except Exception:  # noqa: BLE001 (Hydra: "Can only enumerate CHOICE and RANGE sweeps")
        return [str(override.value())]


def group_multirun_in_wandb(cfg, sweep_dir: str, job_dir: str) -> None:
    """Every job of a multirun logs to one W&B group, the multirun's folder (unless the config names
    one), as a W&B run named like its folder (``2_model=ae,seed=1``)."""
    from pathlib import Path

    from omegaconf import open_dict

    wandb = (cfg.get("logger") or {}).get("wandb")
    if wandb is None:
        return
    with open_dict(cfg):
        if wandb.get("group") is None:
            wandb.group = str(sweep_dir)
        wandb.name = Path(job_dir).name


def print_multirun_summary(sweep_dir: str) -> list[dict]:
    """One table of the multirun's jobs: folder, status, headline metrics or why it failed."""
    from pathlib import Path

    from latentbench.run_dir import multirun_jobs

    rows = multirun_jobs(Path(sweep_dir))
    if not rows:
        return rows
    width = max(len(row["job"]) for row in rows)
    print(f"\nmultirun {sweep_dir}: {sum(r['status'] == 'finished' for r in rows)} of {len(rows)} jobs finished")
    for row in rows:
        print(f"  {row['job']:<{width}}  {row['status']:<11} {row['result']}")
    print(f"table: latentbench report {sweep_dir}")
    return rows


"""``latentbench train``: Hydra runs :func:`latentbench.train.train` on one run or a multirun.

Arguments are quoted (:mod:`latentbench.overrides`), ``resume=`` is expanded
(:mod:`latentbench.resume`), the config is checked (:func:`latentbench.compose.preflight`), then
Hydra runs each job; the exit code is the worst job's.
"""

from __future__ import annotations

import os
import sys

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

    from latentbench.run_dir import RunDir
    from latentbench.interrupts import RunInterrupted
    from latentbench.train import TrainingFailed, objective, record_failure, train

    preflight(args)
    failures: list[int] = []  # exit code of each failed job

    def train_task(cfg):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        try:
            return objective(cfg, train(cfg))
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
    return max(failures, default=0)

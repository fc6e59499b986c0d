"""The ``latentbench`` command: ``latentbench <subcommand> [args]``."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

from latentbench.errors import ConfigError, first_line

log = logging.getLogger("latentbench")

# name -> ("module:function" taking the remaining arguments and returning an exit code, help line)
SUBCOMMANDS = {
    "train": ("latentbench.cli:run_train",
              "train and test one run (or a Hydra multirun with -m); arguments are Hydra overrides"),
    "eval": ("latentbench.evaluation.run_eval:main",
             "recompute a trained run's test metrics: eval checkpoint=<path> [overrides, e.g. more metrics]"),
    "embeddings": ("latentbench.evaluation.embeddings:main",
                   "side-by-side 2-D test codes of two runs: embeddings <run dir A> <run dir B> [--out file.png]"),
    "sweep": ("latentbench.sweep:main",
              "run a W&B sweep file: W&B sweep + agent online, the same search space via Hydra multirun offline"),
    "report": ("latentbench.report:main",
               "tables (Markdown, LaTeX, CSV, HTML) and plots from run directories or a W&B project/sweep"),
    "sample": ("latentbench.sample:run_sample",
               "images from a latent diffusion checkpoint: checkpoint=<ckpt> output=<dir> [classes=[..]|prompts=[..]] ..."),
    "experiment": ("latentbench.experiment:main",
                   "run a paper experiment from experiments/<name>/ (--quick: minutes on a CPU) and write its tables"),
}

USAGE = "usage: latentbench <subcommand> [args]\n\nsubcommands:\n" + "\n".join(
    f"  {name:<11} {text}" for name, (_, text) in SUBCOMMANDS.items()
) + "\n\n'latentbench <subcommand> --help' shows the options of one subcommand."


def conf_dir() -> Path:
    """``conf/`` shipped inside the package (wheel install) or beside ``src/`` (editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise ConfigError(f"conf/train.yaml not found next to {here}")


HYDRA_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--multirun", "-m",
               "--shell-completion", "-sc", "--resolve", "--package", "-p", "--run", "-r", "--version")


def preflight(overrides: list[str]) -> None:
    """Compose the config once before Hydra runs, so that an unknown choice or key is one line."""
    if any(arg.split("=")[0] in HYDRA_FLAGS for arg in overrides):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            compose(config_name="train", overrides=overrides)
    except MissingConfigException as error:
        raise ConfigError(unknown_choice_message(error, overrides)) from None
    except (HydraException, ValueError) as error:
        raise ConfigError(override_error_message(error)) from None


def unknown_choice_message(error, overrides: list[str]) -> str:
    """``model=foo: unknown choice (available: ae, pca)`` from Hydra's multi-line message."""
    text = str(error)
    for override in overrides:
        group, _, choice = override.lstrip("+~").partition("=")
        if f"'{group}/{choice}'" in text:
            available = sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
            return f"{group}={choice}: unknown choice (available: {', '.join(available)})"
    return first_line(error)


def override_error_message(error: Exception) -> str:
    """One line from Hydra's message about an override it could not apply."""
    text = f"{error} {error.__cause__ or ''}"
    key = re.search(r"Could not override '([^']+)'", text)
    if key and "not in struct" in text:
        return f"{key.group(1)}: no such key in the config (to add a new key, write +{key.group(1)}=...)"
    if key:
        return f"{key.group(1)}: {first_line(error.__cause__ or error) if error.__cause__ else 'cannot override'}"
    return first_line(error)


def quote_numeric_choices(args: list[str]) -> list[str]:
    """``precision=32`` -> ``precision='32'``: Hydra parses 32 as an int, which it refuses as a group choice."""
    quoted = []
    for arg in args:
        group, sep, choice = arg.partition("=")
        if sep and choice.isdigit() and (conf_dir() / group / f"{choice}.yaml").is_file():
            arg = f"{group}='{choice}'"
        quoted.append(arg)
    return quoted


def run_train(args: list[str]) -> int:
    """Run Hydra on ``args`` (overrides and Hydra flags) with the training task; 0 when every job succeeded.

    Hydra is driven with ``args`` directly rather than through ``sys.argv``, so ``sys.argv`` keeps
    ``latentbench train ...``: Lightning's DDP launcher re-executes ``sys.argv`` for ranks > 0.
    """
    from latentbench.resume import NothingToResume, expand_resume, run_dir_claimed
    from latentbench.sweep import safe_overrides

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
    from latentbench.train import RunInterrupted, TrainingFailed, objective, record_failure, train

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


def subcommand(name: str):
    """The function that runs subcommand ``name``, imported only when it is used."""
    from hydra.utils import get_method

    module, _, function = SUBCOMMANDS[name][0].partition(":")
    return get_method(f"{module}.{function}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command in SUBCOMMANDS:
            return subcommand(command)(rest)
    except ConfigError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"error: unknown subcommand {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

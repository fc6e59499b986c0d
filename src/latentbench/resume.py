"""``latentbench train resume=<run dir>``: continue a run as the same run.

A resumed run is the run it continues: its own overrides, its directory, its W&B run. Overrides
given with ``resume=`` are refused unless they cannot change what the result means (the
:data:`RESUME_SAFE` keys: more epochs or steps, where logs go, how many devices and loader
workers, how often ``last.ckpt`` is written). Nothing is recorded that is not applied: an
accepted override replaces the recorded one in ``.hydra/overrides.yaml``.

A finished run is left alone (its results say so) unless the resume extends it with a larger
``trainer.max_epochs`` or ``trainer.max_steps``: then training continues from its ``last.ckpt``.
"""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

from latentbench.errors import ConfigError
from latentbench.overrides import hydra_value, unquoted
from latentbench.run_dir import RunDir, RunDirError, headline_metrics

# Hydra's flags that print and exit instead of running (nothing is written then)
HYDRA_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc", "--resolve",
               "--package", "-p", "--version")

RESUME_KEYS = ("resume=", "hydra.run.dir=")
EXTENDING_KEYS = ("trainer.max_epochs", "trainer.max_steps")
RESUME_SAFE = (*EXTENDING_KEYS, "logger", "logger.*", "trainer.devices", "trainer.num_nodes", "data.num_workers",
               "callbacks.periodic_checkpoint.*", "trainer.log_every_n_steps", "trainer.enable_progress_bar", "callbacks.progress_bar.*",
               "hydra.*", "hydra/launcher")


class NothingToResume(Exception):
    """The run named by ``resume=`` has finished and the resume does not extend it."""


def is_resume_safe(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUME_SAFE)


def log_dir_of(args: list[str]) -> Path:
    """``paths.log_dir`` given in ``args``, else the default ``outputs``."""
    return Path(next((a.partition("=")[2] for a in args if a.startswith("paths.log_dir=")), "outputs"))


def override_key(override: str) -> str:
    """``trainer.max_epochs`` for ``trainer.max_epochs=5`` (also ``+key=...``, ``~key``)."""
    return override.lstrip("+~").partition("=")[0]


def split_resume(args: list[str]) -> tuple[str | None, list[str]]:
    """``(value of resume=..., the other arguments)``."""
    value = None
    rest = []
    for arg in args:
        if arg.startswith("resume="):
            value = unquoted(arg.partition("=")[2])
        else:
            rest.append(arg)
    return (value if value not in ("", "null", "None") else None), rest


def recorded_overrides(run: RunDir) -> list[str]:
    """The overrides a run was started with (and extended by), without the ones a resume adds."""
    return [o for o in run.overrides() if not o.startswith(RESUME_KEYS)]


def unfinished_run_with(overrides: list[str], log_dir: Path) -> Path | None:
    """The newest run under ``log_dir`` started with ``overrides`` that has a last.ckpt and did not finish."""
    candidates = []
    for overrides_file in log_dir.glob("*/.hydra/overrides.yaml"):
        run = RunDir(overrides_file.parents[1])
        try:
            if run.last_checkpoint.is_file() and run.status() != "finished" and recorded_overrides(run) == overrides:
                candidates.append((run.last_checkpoint.stat().st_mtime, run.path))
        except RunDirError:  # an unreadable run is not the one to continue
            continue
    return max(candidates)[1] if candidates else None


def recorded_number(overrides: list[str], run: RunDir, key: str) -> int | None:
    """The value of ``key`` (``trainer.max_epochs``) in the recorded overrides, else in the recorded config."""
    for override in overrides:
        if override_key(override) == key:
            value = override.partition("=")[2]
            return int(value) if value.lstrip("-").isdigit() else None
    node = run.recorded_config()
    for part in key.split("."):
        node = node.get(part) if node is not None else None
    return int(node) if isinstance(node, int) else None


def check_resume_overrides(run: RunDir, recorded: list[str], extra: list[str]) -> bool:
    """Refuse overrides that would change the resumed run; return True when ``extra`` extends it."""
    recorded_keys = {override_key(o): o for o in recorded}
    extends = False
    for override in extra:
        key = override_key(override)
        if not is_resume_safe(key):
            was = recorded_keys.get(key) or f"{key}={recorded_value(run, key)}"
            raise ConfigError(f"resume: {override} would change the run {run.path} (recorded: {was}); a resumed run keeps its "
                              f"config; only {', '.join(RESUME_SAFE)} may be given with resume= (start a new run to change it)")
        if key in EXTENDING_KEYS:
            value = override.partition("=")[2]
            before = recorded_number(recorded, run, key)
            if not value.lstrip("-").isdigit():
                raise ConfigError(f"resume: {override}: expected a whole number")
            if before is not None and before != -1 and int(value) != -1 and int(value) < before:
                raise ConfigError(f"resume: {override} is smaller than the run's {key}={before} (a resume can extend a run, not shorten it)")
            extends = extends or before is None or int(value) == -1 or int(value) > before
    return extends


def merged(recorded: list[str], extra: list[str]) -> list[str]:
    """``recorded`` with each override of the same key replaced by the one in ``extra``, new ones appended."""
    replacements = {override_key(o): o for o in extra}
    kept = [replacements.pop(override_key(o), o) for o in recorded]
    return [*kept, *(o for o in extra if override_key(o) in replacements)]


def recorded_value(run: RunDir, key: str) -> str:
    """The value of ``key`` in the run's recorded config, as text (``not set`` when it has none)."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(run.recorded_config(), key, default="not set", throw_on_missing=False)
    return str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def finished_summary(run: RunDir) -> str:
    metrics = run.finished_metrics() or {}
    epochs = [f"{metrics['epochs']} epochs"] if metrics.get("epochs") is not None else []
    return ", ".join([*epochs, *headline_metrics(metrics)])


def expand_resume(args: list[str]) -> list[str]:
    """``resume=<run dir>`` -> that run's own overrides + ``hydra.run.dir=<run dir> resume=<run dir>``.

    ``resume=auto`` does the same for the newest unfinished run with the same overrides, and
    starts a fresh run when there is none. Raises NothingToResume for a finished run that the
    arguments do not extend, ConfigError for a refused override or a run in use.
    """
    value, rest = split_resume(args)
    multirun = any(a in ("-m", "--multirun") for a in args)
    if value is not None and multirun:
        return expand_multirun_resume(value, rest)
    if value is None and not multirun:
        value = requeued_slurm_run(rest)
    if value is None:
        refuse_run_dir_in_use(args)
        return args
    if value == "auto":
        log_dir = log_dir_of(rest)
        found = unfinished_run_with([a for a in rest if not a.startswith(RESUME_KEYS)], log_dir)
        if found is None:
            print(f"resume=auto: no unfinished run with these overrides under {log_dir}; starting a new run", file=sys.stderr)
            return rest
        value = str(found)
        rest = []  # the run's own overrides, which these equal
    run = RunDir(value).require_run("resume")
    recorded = recorded_overrides(run)
    extra = [a for a in rest if a not in recorded]
    extends = check_resume_overrides(run, recorded, extra)
    run.metrics()  # a corrupt metrics.json is named here, before anything runs
    status = run.status()
    if status == "finished" and not extends:
        raise NothingToResume(f"resume: {run.path} has finished ({finished_summary(run)}); nothing to do. "
                              f"To train it further, give a larger trainer.max_epochs or trainer.max_steps with resume=")
    if is_first_process():
        run.acquire_lock()  # refused now, before Hydra rewrites the run's config files; held until the run ends
    print(f"resuming {run.path}" + (" (extending a finished run)" if status == "finished" else ""), file=sys.stderr)
    where = hydra_value(str(run.path))  # a job folder's name holds '=' and ',' (3_seed=1,lr=0.1)
    return [*merged(recorded, extra), f"hydra.run.dir={where}", f"resume={where}"]


def expand_multirun_resume(sweep_dir: str, rest: list[str]) -> list[str]:
    """``-m resume=<sweep dir>``: the multirun's own overrides into the same sweep folder; each job
    then skips (finished), continues (has ``last.ckpt``) or starts (never ran)."""
    import yaml

    sweep = Path(sweep_dir)
    record = sweep / "multirun.yaml"
    if not record.is_file():
        raise RunDirError(f"resume: {sweep} is not a multirun folder (no multirun.yaml; expected outputs/multirun/<time>)")
    try:
        task = yaml.safe_load(record.read_text())["hydra"]["overrides"]["task"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        raise RunDirError(f"{record}: cannot be read ({type(error).__name__})") from None
    task = [o for o in task if not o.startswith(RESUME_KEYS) and not o.startswith("hydra.sweep.dir=")]
    extra = [a for a in rest if a not in task and a not in ("-m", "--multirun")]
    refused = [o for o in extra if not is_resume_safe(override_key(o))]
    if refused:
        raise ConfigError(f"resume: {refused[0]} would change the multirun {sweep}; only {', '.join(RESUME_SAFE)} may be given with resume=")
    print(f"resuming the multirun {sweep}: finished jobs are skipped, interrupted ones continue", file=sys.stderr)
    where = hydra_value(str(sweep))
    return ["-m", *merged(task, extra), f"hydra.sweep.dir={where}", f"resume={where}"]


def requeued_slurm_run(rest: list[str]) -> str | None:
    """A SLURM job started again after a requeue (``SLURM_RESTART_COUNT`` > 0) continues the run it
    started before: the unfinished run under ``paths.log_dir`` whose ``run.json`` has its job id."""
    import os

    job, restarts = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_RESTART_COUNT", "0")
    if not job or not restarts.isdigit() or int(restarts) == 0:
        return None
    log_dir = log_dir_of(rest)
    for info_file in sorted(log_dir.glob("*/run.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        run = RunDir(info_file.parent)
        try:
            if run.info().get("slurm_job_id") == job and run.status() != "finished":
                print(f"SLURM job {job} restarted (restart {restarts}): continuing its run {run.path}", file=sys.stderr)
                return str(run.path)
        except RunDirError:
            continue
    return None


def refuse_run_dir_in_use(args: list[str]) -> None:
    """A new run given an explicit ``hydra.run.dir`` that another process writes, or that holds a
    finished run, is refused before Hydra writes anything into it."""
    run_dir = given_run_dir(args)
    if not run_dir or any(a in ("-m", "--multirun") for a in args):
        return
    run = RunDir(run_dir)
    if not is_first_process():
        return
    if run.lock_file.exists():
        run.acquire_lock()  # refused when another live process writes the run
    if run.finished_metrics() is not None:
        run.release_lock()
        raise RunDirError(f"hydra.run.dir: {run.path} holds a finished run; a new run there would replace its results "
                          f"(continue it with resume={run.path}, or pick another directory)")
    if not any(a.split("=")[0] in HYDRA_FLAGS for a in args):
        run.acquire_lock()  # held from before Hydra writes the run's config until the run ends


def is_first_process() -> bool:
    """False in the other ranks of a multi-process run (DDP's re-executed command lines, SLURM tasks):
    the run directory and its lock belong to rank 0."""
    import os

    return all(os.environ.get(name, "0") == "0" for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def run_dir_claimed(args: list[str]) -> RunDir | None:
    """The run directory that :func:`expand_resume` locked for ``args``, if any."""
    if any(a in ("-m", "--multirun") for a in args):
        return None
    run_dir = given_run_dir(args)
    return RunDir(run_dir) if run_dir else None


def given_run_dir(args: list[str]) -> str | None:
    """The folder ``hydra.run.dir=`` names in ``args`` (unquoted, as Hydra reads it), or None."""
    return next((unquoted(a.partition("=")[2]) for a in args if a.startswith("hydra.run.dir=")), None)

"""The run directory: the one owner of a run's files, its status and its lock.

Every command reads and writes runs through :class:`RunDir`; nothing else knows the layout::

    <run>/
      .hydra/config.yaml       the composed config of record (Hydra writes it when a run starts)
      .hydra/overrides.yaml    the overrides the run was started with
      run.json                 status (running | finished | failed | interrupted), pid, host, W&B id
      metrics.json             final results (status finished) or why the run failed
      history.csv              every logged value by step (train, val, test), whatever the logger
      checkpoints/last.ckpt    the newest state: epoch end, periodic, interruption
      checkpoints/best-*.ckpt  the best by the monitored metric (tested at the end)
      .lock                    pid and host of the process writing the run (absent when none is)
      wandb/                   W&B's files (offline runs: ``wandb sync`` them)

Paths stored inside a run (``metrics.json``'s ``checkpoint``) are relative to the run directory,
so a run that is moved or copied still resumes, evaluates, samples and reports. Every JSON file is
written durably (:func:`write_durably`): a temporary file in the same folder, flushed to disk,
renamed over the old one. A finished run's results are never replaced by a failure.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
from pathlib import Path
from typing import Any, Callable

from latentbench.errors import ConfigError, first_line

STATUSES = ("running", "finished", "failed", "interrupted")
RESERVE_BYTES = 256 * 1024  # freed on a full disk, so that the failure can still be recorded


class RunDirError(ConfigError):
    """A run directory, or a file in it, cannot serve: missing, unreadable, in use, unwritable."""


# The test metrics a run's one-line summary leads with, when it has them (then the others by name).
HEADLINE_METRICS = ("test/recon_sse", "test/loss", "test/fid_domain", "test/sample_fid_domain", "test/acc", "test/zero_shot_acc")


def headline_metrics(metrics: dict[str, Any], count: int = 3) -> list[str]:
    """``["test/recon_sse 3.152", "test/loss 0.04926", ...]``: the first ``count`` test metrics, headline ones first."""
    ranked = sorted((k for k, v in metrics.items() if k.startswith("test/") and isinstance(v, (int, float))),
                    key=lambda k: (HEADLINE_METRICS.index(k) if k in HEADLINE_METRICS else len(HEADLINE_METRICS), k))
    return [f"{k} {metrics[k]:.4g}" for k in ranked[:count]]


def resolve_checkpoint(path: str | Path) -> str:
    """A checkpoint file as given; a run directory stands for the checkpoint it was tested with
    (:meth:`RunDir.tested_checkpoint`), else its ``last.ckpt``.

    Lets a user write ``...checkpoint=outputs/<run>`` instead of quoting ``best-epoch=003.ckpt``,
    whose ``=`` Hydra's override grammar would otherwise refuse.
    """
    run = RunDir(path)
    if not run.path.is_dir():
        return str(path)
    return str(run.tested_checkpoint() or run.last_checkpoint)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_durably(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically and durably: a temporary file beside it (same
    filesystem, so the rename is atomic), flushed and fsynced, renamed over ``path``, the folder
    fsynced. A failure (disk full, read-only folder) leaves the old file intact and raises
    :class:`RunDirError` naming ``path``."""
    path = Path(path)

    def write(tmp: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    try:
        replace_through_temporary(path, "tmp", write)
    except OSError as error:
        raise RunDirError(f"cannot write {path}: {error.strerror or first_line(error)}") from error


def link_durably(source: str | Path, path: str | Path) -> bool:
    """Make ``path`` a hard link to the file ``source`` (same bytes, no copy), replacing ``path``
    atomically (a link beside it, renamed over it) and durably (the folder fsynced).

    Returns False, leaving ``path`` as it was, where the filesystem cannot link (FAT, some network
    and FUSE mounts) or ``source`` is not a file beside it: the caller then writes ``path`` itself.
    Writers here replace files by rename, never in place, so a later write of either name leaves
    the other's bytes alone.
    """

    def link(tmp: Path) -> None:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)

    try:
        replace_through_temporary(Path(path), "link", link)
    except OSError:
        return False
    return True


def replace_through_temporary(path: Path, kind: str, make: Callable[[Path], None]) -> None:
    """``make(tmp)`` builds the new file at ``.<name>.<kind>-<pid>`` beside ``path``, which it then
    replaces by one rename, the folder fsynced. On OSError the temporary is removed, ``path`` is
    left as it was, and the error propagates."""
    tmp = path.with_name(f".{path.name}.{kind}-{os.getpid()}")
    try:
        make(tmp)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str | Path, values: dict[str, Any]) -> None:
    """``values`` as indented JSON, secrets scrubbed, written with :func:`write_durably`."""
    from latentbench.tracking import scrub, scrub_text

    write_durably(path, (scrub_text(json.dumps(scrub(values), indent=2, sort_keys=True)) + "\n").encode())


def read_json(path: str | Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when the file does not exist; RunDirError naming the
    file when it is not a readable JSON object (truncated, corrupt, not a dict)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise RunDirError(f"{path}: cannot be read ({first_line(error)})") from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise RunDirError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}); the file is corrupt or truncated") from None
    if not isinstance(values, dict):
        raise RunDirError(f"{path}: expected a JSON object, got {type(values).__name__}")
    return values


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDir:
    """One run's folder. Cheap to make; reads happen when asked."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- layout ---------------------------------------------------------------------------------
    @property
    def hydra_dir(self) -> Path:
        return self.path / ".hydra"

    @property
    def config_file(self) -> Path:
        return self.hydra_dir / "config.yaml"

    @property
    def overrides_file(self) -> Path:
        return self.hydra_dir / "overrides.yaml"

    @property
    def info_file(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def history_file(self) -> Path:
        return self.path / "history.csv"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / "last.ckpt"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    @property
    def reserve_file(self) -> Path:
        return self.path / ".reserve"

    def is_run(self) -> bool:
        """True when this folder holds a latentbench run (its recorded overrides)."""
        return self.overrides_file.is_file()

    def require_run(self, key: str = "run") -> "RunDir":
        if not self.path.is_dir():
            raise RunDirError(f"{key}: {self.path} does not exist (expected a run directory such as outputs/<run name>)")
        if not self.is_run():
            raise RunDirError(f"{key}: {self.path} is not a latentbench run directory (no .hydra/overrides.yaml)")
        return self

    @classmethod
    def containing(cls, file: str | Path, key: str = "checkpoint") -> "RunDir":
        """The run directory holding ``file``: the nearest parent with ``.hydra/config.yaml`` (or,
        for runs started from Python without Hydra's files, ``run.json``)."""
        parents = Path(file).resolve().parents
        for marker in (Path(".hydra") / "config.yaml", Path("run.json")):
            for parent in parents:
                if (parent / marker).is_file():
                    return cls(parent)
        raise RunDirError(f"{key}: {file} is not inside a latentbench run directory (no .hydra/config.yaml above it)")

    # -- paths stored inside the run ----------------------------------------------------------------
    def relative(self, path: str | Path | None) -> str | None:
        """``path`` relative to the run directory (POSIX), as stored in the run's files."""
        if not path:
            return None
        path = Path(path)
        try:
            return path.resolve().relative_to(self.path.resolve()).as_posix()
        except ValueError:
            return str(path)  # outside the run: kept as given

    def resolve(self, stored: str | None) -> Path | None:
        """A path read from the run's files: relative ones are relative to this directory. An
        absolute path of a run that has moved since is looked up under the same name here."""
        if not stored:
            return None
        path = Path(stored)
        if not path.is_absolute():
            return self.path / path
        if not path.exists() and "checkpoints" in path.parts:  # older layout: absolute, and the run has moved
            index = len(path.parts) - 1 - path.parts[::-1].index("checkpoints")
            return self.path.joinpath(*path.parts[index:])
        return path

    # -- records --------------------------------------------------------------------------------
    def overrides(self) -> list[str]:
        import yaml

        self.require_run()
        try:
            values = yaml.safe_load(self.overrides_file.read_text()) or []
        except (OSError, yaml.YAMLError) as error:
            raise RunDirError(f"{self.overrides_file}: cannot be read ({first_line(error)})") from None
        if not isinstance(values, list):
            raise RunDirError(f"{self.overrides_file}: expected a list of overrides")
        return [str(v) for v in values]

    def recorded_config(self):
        """The config of record (``.hydra/config.yaml``) as an OmegaConf DictConfig."""
        from omegaconf import OmegaConf

        try:
            return OmegaConf.load(self.config_file)
        except FileNotFoundError:
            raise RunDirError(f"{self.path}: not a latentbench run directory (no .hydra/config.yaml)") from None
        except Exception as error:  # noqa: BLE001 (yaml and OmegaConf raise many kinds)
            raise RunDirError(f"{self.config_file}: cannot be read ({first_line(error)})") from None

    def info(self) -> dict[str, Any]:
        return read_json(self.info_file) or {}

    def metrics(self) -> dict[str, Any] | None:
        return read_json(self.metrics_file)

    def status(self) -> str | None:
        """``running``, ``finished``, ``failed``, ``interrupted``, or None for a run never started
        by this layout. A ``running`` run whose process is gone (killed) reads as ``interrupted``."""
        info = self.info()
        status = info.get("status")
        if status is None:
            metrics = self.metrics() or {}
            status = metrics.get("status")
        if status == "running" and info.get("host") == socket.gethostname() and info.get("pid") and not pid_alive(int(info["pid"])):
            return "interrupted"
        return status

    def update_info(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into ``run.json`` (durably); returns the new record."""
        info = self.info()
        info.update(fields, updated=now())
        write_json(self.info_file, info)
        return info

    def mark(self, status: str, **fields: Any) -> dict[str, Any]:
        if status not in STATUSES:
            raise ValueError(f"status: {status!r} is not one of {', '.join(STATUSES)}")
        return self.update_info(status=status, **fields)

    def start(self, seed: int, git_commit: str | None, wandb_run_id: str | None) -> None:
        """Record that this process runs the run now (``run.json`` status ``running``)."""
        fields: dict[str, Any] = {"seed": seed, "git_commit": git_commit, "pid": os.getpid(), "host": socket.gethostname(),
                                  "started": now(), "error": None}
        if wandb_run_id:
            fields["wandb_run_id"] = wandb_run_id
        if os.environ.get("SLURM_JOB_ID"):  # a requeued job finds its run by it
            fields["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
        self.mark("running", **fields)

    def wandb_run_id(self) -> str | None:
        return self.info().get("wandb_run_id") or (self.metrics() or {}).get("wandb_run_id")

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """``metrics.json`` with checkpoint paths made relative to the run."""
        metrics = dict(metrics)
        if metrics.get("checkpoint"):
            metrics["checkpoint"] = self.relative(metrics["checkpoint"])
        write_json(self.metrics_file, metrics)

    def add_eval_section(self, section: dict[str, Any]) -> None:
        """Put ``latentbench eval``'s results under ``eval`` in ``metrics.json``, the rest kept."""
        metrics = self.metrics() or {}
        metrics["eval"] = section
        write_json(self.metrics_file, metrics)

    def finished_metrics(self) -> dict[str, Any] | None:
        """The results of a finished run, or None (unreadable files count as none)."""
        try:
            metrics = self.metrics()
        except RunDirError:
            return None
        return metrics if metrics and metrics.get("status") == "finished" else None

    def record_failure(self, reason: str, **fields: Any) -> None:
        """Mark the run failed with ``reason``. A finished run's ``metrics.json`` is kept (a later
        command that failed on it, such as an extension, is recorded in ``run.json`` only); else
        ``metrics.json`` says ``status: failed``. On a full disk the reserve is freed first."""
        last = self.last_checkpoint if self.last_checkpoint.is_file() else None
        record = {"status": "failed", "error": reason, "checkpoint": self.relative(last), **fields}
        for attempt in range(2):
            try:
                if self.finished_metrics() is None:
                    self.write_metrics(record)
                    self.mark("failed", error=reason)
                else:
                    self.mark("finished", error=None, last_attempt={"status": "failed", "error": reason, "time": now()})
                return
            except RunDirError as error:
                disk_full = getattr(error.__cause__, "errno", None) == errno.ENOSPC
                if attempt or not disk_full or not self.release_reserve():  # the reserve is for a full disk only
                    raise

    # -- space reserve --------------------------------------------------------------------------
    def reserve_space(self) -> None:
        """Hold a small file that a full disk can give back to record a failure."""
        try:
            if not self.reserve_file.exists():
                with open(self.reserve_file, "wb") as handle:
                    handle.write(b"\0" * RESERVE_BYTES)
        except OSError:
            self.reserve_file.unlink(missing_ok=True)

    def release_reserve(self) -> bool:
        if self.reserve_file.exists():
            self.reserve_file.unlink()
            return True
        return False

    # -- checkpoints ----------------------------------------------------------------------------
    def tested_checkpoint(self) -> Path | None:
        """The checkpoint the run was tested with (``metrics.json``'s), else the newest best one,
        else ``last.ckpt``; None when there is none."""
        try:
            recorded = self.resolve((self.metrics() or {}).get("checkpoint"))
        except RunDirError:
            recorded = None
        if recorded is not None and recorded.is_file():
            return recorded
        for candidate in [*sorted(self.checkpoint_dir.glob("best*.ckpt"))[::-1], self.last_checkpoint]:
            if candidate.is_file():
                return candidate
        return None

    # -- one writer at a time ----------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """Make this process the run's only writer; RunDirError when another live process is.

        The lock file holds the owner's pid and host. A lock left by a dead process on this host
        (SIGKILL, a crash) is taken over; one from another host cannot be checked and is refused
        with the way out (delete the file once that job is gone).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": now()}
        for _ in range(3):
            try:
                fd = os.open(self.lock_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                owner = self._lock_owner()
                if owner is None or owner.get("pid") == os.getpid() and owner.get("host") == me["host"]:
                    write_json(self.lock_file, me)  # unreadable, or ours already
                    return
                if owner.get("host") == me["host"] and not pid_alive(int(owner.get("pid", 0))):
                    self.lock_file.unlink(missing_ok=True)  # a dead process's lock: take it over
                    continue
                raise RunDirError(f"{self.path} is in use by process {owner.get('pid')} on {owner.get('host')} since "
                                  f"{owner.get('since')} (one writer per run; if that process is gone, delete {self.lock_file})")
            except OSError as error:
                raise RunDirError(f"cannot write {self.lock_file}: {error.strerror}") from None
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            return
        raise RunDirError(f"{self.lock_file}: could not take the lock")

    def _lock_owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.lock_file.read_text() or "null")
        except (OSError, json.JSONDecodeError):
            return None
        return owner if isinstance(owner, dict) and "pid" in owner else None

    def release_lock(self) -> None:
        owner = self._lock_owner()
        if owner is not None and owner.get("pid") == os.getpid():
            self.lock_file.unlink(missing_ok=True)


def job_number(folder: Path) -> int:
    """The job number a multirun folder starts with (``3_model=pca`` -> 3); large for other names."""
    head = folder.name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def multirun_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The jobs of a multirun folder in job order: ``{"job", "path", "overrides", "status", "metrics", "result"}``,
    ``result`` being the headline test metrics of a finished job, else why it did not finish."""
    rows = []
    for path in sorted((p.parents[1] for p in sweep_dir.glob("*/.hydra/overrides.yaml")), key=lambda p: (job_number(p), p.name)):
        run = RunDir(path)
        try:
            metrics = run.metrics() or {}
            status = metrics.get("status") or run.status() or "not started"
            overrides = run.overrides()
            reason = metrics.get("error") or run.info().get("error") or ""
        except RunDirError as error:
            metrics, status, overrides, reason = {"error": str(error)}, "unreadable", [], str(error)
        result = ", ".join(headline_metrics(metrics)) if status == "finished" else str(reason)
        rows.append({"job": path.name, "path": path, "overrides": overrides, "status": status, "metrics": metrics, "result": result})
    return rows


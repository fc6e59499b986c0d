"""Weights & Biases (online or offline), CSV or no logger; images and tables to whichever is active."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

WandbMode = Literal["auto", "online", "offline", "disabled"]


def wandb_has_key() -> bool:
    """True when a W&B API key is configured (env var or ``wandb login``'s netrc entry)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: WandbMode) -> str:
    """``auto`` (default): ``WANDB_MODE`` if set, else online with a key and offline without one."""
    if mode != "auto":
        return mode
    return os.environ.get("WANDB_MODE") or ("online" if wandb_has_key() else "offline")


def wandb_base_url(base_url: str | None = None) -> str:
    """The W&B server a run talks to: ``base_url``, else W&B's own setting (``WANDB_BASE_URL``,
    ``wandb login --host``, or its default server)."""
    if base_url:
        return base_url
    import wandb

    try:
        from wandb.sdk import wandb_setup

        return wandb_setup.singleton().settings.base_url  # reads env and settings files; starts no service
    except Exception:  # noqa: BLE001 (a wandb without this internal API)
        return os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url


def unreachable_reason(url: str, timeout: float) -> str | None:
    """None when an HTTP(S) server answers at ``url`` within ``timeout`` seconds (any status counts),
    else why not, in a few words: ``connection refused``, ``no answer within 5 s``, ...

    The whole probe, name lookup included, takes at most ``timeout`` seconds: it runs in a daemon
    thread that is abandoned when time is up (a server that accepts connections but never answers).
    """
    import ssl
    import threading
    import urllib.error
    import urllib.request

    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # an error status is still an answer
            outcome.append(None)
        except urllib.error.URLError as error:
            reason = error.reason
            # A TLS problem means the server answered; W&B's own client (other CA bundle) decides.
            outcome.append(None if isinstance(reason, ssl.SSLError) else describe_network_error(reason, timeout))
        except (OSError, ValueError) as error:
            outcome.append(describe_network_error(error, timeout))
        except Exception:  # noqa: BLE001 (e.g. http.client.BadStatusLine: something answered)
            outcome.append(None)

    thread = threading.Thread(target=attempt, name="wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def describe_network_error(error: object, timeout: float) -> str:
    """A few words for a connection error: ``connection refused``, ``host not found``, ..."""
    import socket

    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s"
    if isinstance(error, socket.gaierror):
        return "host not found"
    if isinstance(error, ConnectionError):
        return "connection closed without an answer"
    return (getattr(error, "strerror", None) or str(error) or type(error).__name__).splitlines()[0]


def make_wandb_logger(
    save_dir: str,
    project: str = "latentbench",
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    entity: str | None = None,
    mode: WandbMode = "auto",
    log_model: bool = False,
    run_id: str | None = None,
    flush_seconds: float = 2.0,
    base_url: str | None = None,
    fallback_offline: bool = True,
    connect_timeout: float = 5.0,
    init_timeout: float = 60.0,
) -> WandbLogger:
    """A Lightning WandbLogger whose run files live in the run directory ``save_dir/wandb``.

    ``flush_seconds``: how often W&B writes what was logged to the run's ``.wandb`` file (W&B's own
    default is 15 s); a process killed without warning loses at most that much of its record, and
    the rest can still be uploaded with ``wandb sync``.

    Online (``mode=online``, ``WANDB_MODE=online``, or ``auto`` with a key), the W&B server
    (``base_url``, else ``WANDB_BASE_URL`` or W&B's default) is first probed for ``connect_timeout``
    seconds, here, before any training (W&B itself retries for minutes): unreachable, the run logs
    offline with a one-line warning, or with ``fallback_offline=False`` raises ConfigError.
    ``init_timeout`` bounds W&B's own start-up (``wandb.Settings(init_timeout=...)``) past the probe.
    """
    import sys

    import wandb

    from latentbench.errors import ConfigError

    Path(save_dir).mkdir(parents=True, exist_ok=True)
    resolved = resolve_wandb_mode(mode)
    if resolved == "online":
        url = wandb_base_url(base_url)
        reason = unreachable_reason(url, connect_timeout)
        if reason and not fallback_offline:
            raise ConfigError(f"logger.wandb.mode: online asked for, but {url} is unreachable ({reason}); "
                              "use logger.wandb.mode=offline or check the network")
        if reason:
            runs = Path(save_dir) / "wandb"
            print(f"warning: W&B: {url} unreachable ({reason}); logging offline to {runs} "
                  f"(upload later with: wandb sync {runs}/offline-run-*)", file=sys.stderr, flush=True)
            resolved = "offline"
    settings = {"base_url": base_url} if base_url else {}
    logger = WandbLogger(
        save_dir=save_dir,
        project=project,
        name=name,
        group=group,
        tags=list(tags or []),
        entity=entity,
        mode=resolved,
        log_model=log_model,
        id=run_id,
        resume="allow" if run_id else None,
        # quiet (silent offline): no banner and no history dump at the end; the run's own summary says
        # where the run is and how to sync it; online W&B still prints the run's URL
        settings=wandb.Settings(x_transaction_log_flush_interval=flush_seconds, init_timeout=init_timeout, quiet=True,
                                silent=resolved == "offline", **settings),
    )
    # Lightning always passes anonymous=None, which W&B answers with a deprecation warning on every run
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    return logger


def make_csv_logger(save_dir: str, name: str = "csv") -> CSVLogger:
    """Metrics as ``save_dir/csv/version_0/metrics.csv``."""
    return CSVLogger(save_dir=save_dir, name=name)


def wandb_loggers(loggers: list[Logger]) -> list[WandbLogger]:
    return [logger for logger in loggers if isinstance(logger, WandbLogger)]


def log_image(loggers: list[Logger], output_dir: str | Path, key: str, image: np.ndarray, step: int, caption: str = "") -> None:
    """Log an ``(H, W, 3)`` uint8 image to W&B, or save it as ``output_dir/images/<key>_<step>.png``."""
    wandb = wandb_loggers(loggers)
    if wandb:
        for logger in wandb:
            extra = {"caption": [caption]} if caption else {}
            logger.log_image(key=key, images=[image], step=step, **extra)
        return
    from PIL import Image

    path = Path(output_dir) / "images" / f"{key.replace('/', '_')}_{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def log_video(loggers: list[Logger], output_dir: str | Path, key: str, frames: np.ndarray, step: int, fps: int = 4,
              caption: str = "") -> Path:
    """Write ``(T, H, W, 3)`` uint8 frames as ``output_dir/videos/<key>_<step>.gif`` and log it to W&B
    as a ``wandb.Video`` when W&B is active; returns the GIF's path."""
    from latentbench.media import write_video

    path = write_video(Path(output_dir) / "videos" / f"{key.replace('/', '_')}_{step:06d}.gif", frames, fps)
    wandb = wandb_loggers(loggers)
    if wandb:
        import wandb as wandb_module

        for logger in wandb:
            logger.log_metrics({key: wandb_module.Video(str(path), caption=caption or None, format="gif")}, step=step)
    return path


def log_table(loggers: list[Logger], output_dir: str | Path, key: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Log a table to W&B as a ``wandb.Table``, or save it as ``output_dir/tables/<key>.csv``."""
    wandb = wandb_loggers(loggers)
    if wandb:
        for logger in wandb:
            logger.log_table(key=key, columns=columns, data=rows)
        return
    import csv

    path = Path(output_dir) / "tables" / f"{key.replace('/', '_')}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


def git_commit() -> str | None:
    """The commit of the working tree the run was launched from, if it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# Names of keys and environment variables that hold credentials: api_key, WANDB_API_KEY, HF_TOKEN, ...
SECRET_NAME = re.compile(r"(^|_)(api_?key|token|secret|password|passwd|credentials?)($|_)", re.IGNORECASE)
REDACTED = "***"


def secret_values() -> list[str]:
    """Values of environment variables that look like credentials (``WANDB_API_KEY``, ``HF_TOKEN``, ...)."""
    values = {value for name, value in os.environ.items() if SECRET_NAME.search(name) and len(value) >= 8}
    return sorted(values, key=len, reverse=True)  # longest first, so that no secret is left half-replaced


def scrub_text(text: str) -> str:
    """``text`` with every credential value from the environment replaced by ``***``."""
    for value in secret_values():
        text = text.replace(value, REDACTED)
    return text


def scrub(value: Any) -> Any:
    """A copy of a (nested) config or result with secrets removed: values under credential-like keys
    (``api_key``, ``token``, ...) and any credential value from the environment become ``***``."""
    if isinstance(value, dict):
        return {k: REDACTED if SECRET_NAME.search(str(k)) and v not in (None, "") else scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub(v) for v in value)
    if isinstance(value, str):
        return scrub_text(value)
    return value


def scrub_files(paths: list[Path]) -> None:
    """Rewrite text files (Hydra's saved config and overrides) with credential values replaced."""
    for path in paths:
        text = path.read_text()
        clean = scrub_text(text)
        if clean != text:
            path.write_text(clean)


def artifact_name(kind: str, run_id: str) -> str:
    """``model-<run id>``: W&B artifact names allow letters, digits, ``-``, ``_`` and ``.``."""
    return f"{kind}-{run_id}"


def log_run_artifacts(loggers: list[Logger], output_dir: str | Path, checkpoint: str | None, metrics: dict[str, Any]) -> list[str]:
    """Log the run's checkpoint (type ``model``) and its results (type ``results``: ``metrics.json``,
    the composed config, the CSV tables and a ``metrics`` table) as W&B artifacts of the run, so
    that a number in a table can be traced to the exact weights. Returns the artifact names.

    The checkpoint is the best one (alias ``best``) or, without one, ``last.ckpt`` (alias ``final``).
    Works online and offline (offline runs upload them with ``wandb sync``).
    """
    import wandb

    output_dir = Path(output_dir)
    names = []
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for logger in wandb_loggers(loggers):
        run = logger.experiment
        path, alias = (Path(checkpoint), "best") if checkpoint else (output_dir / "checkpoints" / "last.ckpt", "final")
        if path.is_file():
            model = wandb.Artifact(artifact_name("model", run.id), type="model",
                                   metadata={"checkpoint": path.name, "run_name": run.name, **numbers})
            model.add_file(str(path), name=path.name)
            run.log_artifact(model, aliases=[alias])
            names.append(model.name)
        results = wandb.Artifact(artifact_name("results", run.id), type="results", metadata=numbers)
        for file in (output_dir / "metrics.json", output_dir / ".hydra" / "config.yaml", *sorted((output_dir / "tables").glob("*.csv"))):
            if file.is_file():
                results.add_file(str(file), name=file.relative_to(output_dir).as_posix())
        results.add(wandb.Table(columns=["metric", "value"], data=[[k, float(v)] for k, v in sorted(numbers.items())]), "metrics")
        run.log_artifact(results)
        names.append(results.name)
    return names

"""Learning curves: a run's logged history, and one metric against training steps over a multirun.

Every run writes ``history.csv`` beside ``metrics.json`` (:class:`latentbench.history.History`,
whatever the logger): one row per time Lightning logged values (a training step every
``trainer.log_every_n_steps``, a validation, a training epoch's end, the test), with the columns
``step`` (``trainer.global_step``: optimizer steps taken when the values were logged), ``epoch``
and one column per logged key (``train/loss``, ``val/loss``, ``val/psnr``, ``test/...``), blank
where that row did not log the key. Lightning's own loggers (CSV, W&B) label step-wise values
with the count of steps before the current one, so their step of a value is one less.

:func:`read_history` reads it (for runs from before it existed: the CSV logger's
``csv/version_*/metrics.csv``, with that logger's steps); the report's curves and
:func:`write_curves` use it. :func:`write_curves` writes, for ``latentbench experiment`` entries
with ``curves: {metric: ..., title: ...}`` (experiments/ldm_factor: sample FID against steps per
first-stage factor), ``<name>_curves.csv`` (run, step, value), ``<name>_curves.md`` (one row per
step, one column per run) and ``<name>_curves.png``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from latentbench.errors import ConfigError

HISTORY_INDEX = ("step", "epoch")
STAGE_ORDER = ("train/", "val/", "test/")


def column_order(key: str) -> tuple[int, str]:
    """Logged keys by stage (train, val, test, others), then by name."""
    return next((i for i, prefix in enumerate(STAGE_ORDER) if key.startswith(prefix)), len(STAGE_ORDER)), key


def history_csv(rows: list[dict[str, Any]]) -> str:
    """``rows`` (``{"step": int, "epoch": int, key: float, ...}``) as the text of ``history.csv``.
    Floats are written in full (``repr``), so that reading the file back gives the same numbers."""
    keys = sorted({k for row in rows for k in row} - set(HISTORY_INDEX), key=column_order)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([*HISTORY_INDEX, *keys])
    writer.writerows([row.get(k, "") for k in (*HISTORY_INDEX, *keys)] for row in rows)
    return text.getvalue()


def history_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``history.csv`` as written by :func:`history_csv` (blank cells left out);
    ConfigError naming the file when it cannot be read."""
    try:
        with open(path, newline="") as handle:
            return [{**{k: int(row[k]) for k in HISTORY_INDEX}, **{k: float(v) for k, v in row.items() if k not in HISTORY_INDEX and v}}
                    for row in csv.DictReader(handle)]
    except (OSError, KeyError, TypeError, ValueError, csv.Error) as error:
        raise ConfigError(f"{path}: not a readable history ({type(error).__name__}: {error})") from None


def read_history(run: Path):
    """The run's logged values as a pandas DataFrame (``step``, ``epoch``, one column per key, NaN
    where a row did not log it), from ``history.csv``, else from the CSV logger's files; None when
    the run has neither."""
    import pandas as pd

    from latentbench.run_dir import RunDir

    history = RunDir(run).history_file
    if history.is_file():
        return pd.read_csv(history)
    logs = sorted(Path(run).glob("csv/version_*/metrics.csv"))  # a resumed run's CSV logger starts a new version
    if logs:
        return pd.concat([pd.read_csv(log) for log in logs], ignore_index=True)
    return None


def curve(frame, metric: str):
    """``metric`` of a history frame as a pandas Series indexed by step (sorted; the last value of a
    step), empty when it was never logged."""
    import pandas as pd

    if frame is None or metric not in frame or "step" not in frame:
        return pd.Series(dtype=float)
    return frame[["step", metric]].dropna().groupby("step")[metric].last().astype(float)


def read_curve(run: Path, metric: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of ``metric`` in a run's history, by step (the last value of a step)."""
    return [(int(step), float(value)) for step, value in curve(read_history(run), metric).items()]


def write_curves(sweep_dir: Path, metrics: str | list[str], out: Path, name: str,
                 title: str = "") -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Collect each of ``metrics`` against steps for every run under ``sweep_dir`` (labelled by its
    folder name) and write ``<name>_curves.{csv,md,png}``: one CSV column, one Markdown table and one
    figure panel per metric (Fig. 6 of Rombach et al. 2022: sample FID and class accuracy against steps).
    Returns ``{metric: {run label: [(step, value), ...]}}``."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    runs = sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir())
    curves = {}
    for metric in metrics:
        found = {run.name: read_curve(run, metric) for run in runs}
        curves[metric] = {label: points for label, points in found.items() if points}
        if not curves[metric]:
            raise ConfigError(f"curves: no run under {sweep_dir} logged {metric} to CSV (history.csv, or the CSV logger's metrics.csv)")
    out.mkdir(parents=True, exist_ok=True)
    position = {run.name: i for i, run in enumerate(runs)}  # rows by run, as the folders sort, then by step
    keys = sorted({(label, step) for by_run in curves.values() for label, points in by_run.items() for step, _ in points},
                  key=lambda key: (position[key[0]], key[1]))
    with (out / f"{name}_curves.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "step", *metrics])
        for label, step in keys:
            writer.writerow([label, step, *(dict(curves[m].get(label, [])).get(step, "") for m in metrics)])
    lines = []
    for metric in metrics:
        labels = list(curves[metric])
        lines += [f"{metric} against training steps" + (f": {title}" if title else ""), "",
                  "| step | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
        for step in sorted({step for points in curves[metric].values() for step, _ in points}):
            values = [dict(curves[metric][label]).get(step) for label in labels]
            lines.append(f"| {step} | " + " | ".join("" if v is None else f"{v:.3f}" for v in values) + " |")
        lines.append("")
    (out / f"{name}_curves.md").write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for label, points in curves[metric].items():
            axis.plot([s for s, _ in points], [v for _, v in points], marker="o", label=label)
        axis.set_xlabel("training steps")
        axis.set_ylabel(metric)
        axis.set_title(title or metric, fontsize=9)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out / f"{name}_curves.png", dpi=120)
    plt.close(figure)
    return curves

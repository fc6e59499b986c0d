"""Learning curves of a multirun: one logged metric against training steps, one line per run.

Reads each run's CSV log (``<run>/csv/version_*/metrics.csv``, ``logger=csv``) under a sweep
directory and writes ``<name>_curves.csv`` (run, step, value), ``<name>_curves.md`` (a table: one
row per step, one column per run) and ``<name>_curves.png``. Used by ``latentbench experiment``
for entries with ``curves: {metric: ..., title: ...}`` (e.g. experiments/ldm_factor: sample FID
against steps per first-stage factor).
"""

from __future__ import annotations

import csv
from pathlib import Path

from latentbench.errors import ConfigError


def read_curve(run: Path, metric: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of ``metric`` in a run's CSV logs, by step."""
    points: dict[int, float] = {}
    for file in sorted(run.glob("csv/version_*/metrics.csv")):
        with file.open() as handle:
            for row in csv.DictReader(handle):
                if row.get(metric) not in (None, ""):
                    points[int(float(row["step"]))] = float(row[metric])
    return sorted(points.items())


def write_curves(sweep_dir: Path, metric: str, out: Path, name: str, title: str = "") -> dict[str, list[tuple[int, float]]]:
    """Collect ``metric`` against steps for every run under ``sweep_dir`` (labelled by its folder name) and write them."""
    curves = {run.name: read_curve(run, metric) for run in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir())}
    curves = {label: points for label, points in curves.items() if points}
    if not curves:
        raise ConfigError(f"curves: no run under {sweep_dir} logged {metric} to CSV (logger=csv)")
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{name}_curves.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "step", metric])
        writer.writerows([label, step, value] for label, points in curves.items() for step, value in points)
    steps = sorted({step for points in curves.values() for step, _ in points})
    labels = list(curves)
    lines = [f"{metric} against training steps" + (f": {title}" if title else ""), "",
             "| step | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    for step in steps:
        values = [dict(curves[label]).get(step) for label in labels]
        lines.append(f"| {step} | " + " | ".join("" if v is None else f"{v:.3f}" for v in values) + " |")
    (out / f"{name}_curves.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    for label, points in curves.items():
        axes.plot([s for s, _ in points], [v for _, v in points], marker="o", label=label)
    axes.set_xlabel("training steps")
    axes.set_ylabel(metric)
    axes.set_title(title or metric, fontsize=9)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / f"{name}_curves.png", dpi=120)
    plt.close(figure)
    return curves

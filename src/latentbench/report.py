"""``latentbench report``: tables (Markdown, LaTeX, CSV, HTML) and plots from many runs.

Runs come from a local directory of run outputs (any folder below it holding ``.hydra/config.yaml``;
``metrics.json`` beside it holds the results: a single run, a Hydra multirun ``multirun/<time>/<n>/``
or a whole ``outputs/``), or from a W&B project or sweep through the public API
(``wandb:<entity>/<project>`` or ``wandb:<entity>/<project>/<sweep id>``).

Runs are grouped by config keys (``--group-by model._target_ data.limit``); each metric is shown as
mean ± std over the runs of a group (its seeds) with the run count ``n``. Failed runs
(``metrics.json`` says ``status: failed``) and runs without ``metrics.json`` (killed, still running)
are counted and listed, never averaged; a group with no finished run shows ``failed``/``missing``
cells. A run whose config lacks a group key gets a blank cell.

Every format is written unless ``--format`` picks some (``md,tex,csv,html`` or ``md tex``). The
HTML page also draws the training curves of the runs (``history.csv``, :mod:`latentbench.curves`):
``train/loss`` and the validation metrics against steps, one colour per group, mean ± std over its
finished runs; its run cards are named by the overrides that differ between the runs
(``model=pca,seed=1``). Runs of ``latentbench experiment --quick`` (an ``experiment.json`` of mode
``quick`` in a folder above them) are marked as such in every table's header.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from latentbench.errors import ConfigError, first_line

DEFAULT_METRICS = ["test/recon_sse", "test/psnr"]
FORMATS = ("md", "tex", "csv", "html")
ABSENT = object()
EXPERIMENT_RECORD = "experiment.json"  # written by `latentbench experiment` into its output folder
MAX_CURVES = 9  # panels of the training-curves figure when --curves does not name them


@dataclass
class Run:
    """One run: its name, flat config lookups, metrics and status (finished | failed | missing | running)."""

    name: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    status: str
    error: str = ""
    path: Path | None = None
    images: dict[str, Path] = field(default_factory=dict)  # image key -> latest PNG
    codes: Path | None = None  # the test embedding table (CSV or W&B table JSON)
    overrides: list[str] = field(default_factory=list)  # the run's own overrides (.hydra/overrides.yaml)
    quick: dict[str, Any] | None = None  # the record of the `latentbench experiment --quick` that made the run
    label: str = ""  # the run's name in the report: the overrides that set it apart, else its folder
    history: Any = None  # its logged values by step (pandas DataFrame), once read

    def value(self, key: str) -> Any:
        """The config value at dotted ``key`` (``model.n_components``), or ABSENT."""
        if key in self.config:
            return self.config[key]
        node: Any = self.config
        for part in key.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                return ABSENT
        return node


# ----------------------------------------------------------------------------- collecting runs


UNREADABLE = "unreadable"  # a run whose files cannot be read: left out of the table, counted under it


def load_config(path: Path) -> dict[str, Any]:
    """``.hydra/config.yaml`` as a nested dict; interpolations resolved where they can be offline."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    raw = OmegaConf.to_container(cfg, resolve=False)

    def resolve(node: Any, prefix: str) -> Any:
        if isinstance(node, dict):
            return {k: resolve(v, f"{prefix}{k}.") for k, v in node.items()}
        if isinstance(node, list):
            return node
        if isinstance(node, str) and "${" in node:
            try:
                return OmegaConf.select(cfg, prefix[:-1], throw_on_resolution_failure=True)
            except Exception:  # ${hydra:...} and friends only resolve inside a Hydra run
                return node
        return node

    return resolve(raw, "")


def hydra_choices(path: Path) -> dict[str, Any]:
    """The config group choices of a run (``choices.experiment``, ``choices.model``) from ``.hydra/hydra.yaml``."""
    if not path.is_file():
        return {}
    import yaml

    try:
        hydra = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    choices = ((hydra.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    return {k: v for k, v in choices.items() if not k.startswith("hydra/")}


def image_key_and_step(path: Path, media_root: Path | None) -> tuple[str, int]:
    """``images/test_reconstructions_000004.png`` -> ``("test_reconstructions", 4)``;
    W&B's ``media/images/test/reconstructions_4_<hash>.png`` -> the same."""
    if media_root is not None:
        relative = path.relative_to(media_root).with_suffix("").as_posix()
        match = re.fullmatch(r"(.+)_(\d+)_[0-9a-f]+", relative)
    else:
        match = re.fullmatch(r"(.+)_(\d+)", path.stem)
    if not match:
        return path.stem.replace("/", "_"), -1
    return match.group(1).replace("/", "_"), int(match.group(2))


def latest_images(run_dir: Path) -> dict[str, Path]:
    """The newest PNG of each image key logged by the run (``images/`` or W&B offline media), and the
    newest GIF of each video key (``videos/``: sample clips, the denoising process)."""
    found: dict[str, tuple[int, Path]] = {}
    candidates = [(p, None) for p in (run_dir / "images").glob("*.png")] + [(p, None) for p in (run_dir / "videos").glob("*.gif")]
    for media in sorted((run_dir / "wandb").glob("*run-*/files/media/images")):
        candidates += [(p, media) for p in media.rglob("*.png")]
    for path, media in candidates:
        key, step = image_key_and_step(path, media)
        if key not in found or step >= found[key][0]:
            found[key] = (step, path)
    order = sorted(found, key=lambda k: ("embedding" in k, k))  # reconstruction/sample grids first
    return {key: found[key][1] for key in order}


def embedding_table(run_dir: Path) -> Path | None:
    """The test codes the EmbeddingPlot callback logged: ``tables/test_embedding_table.csv`` or W&B's table JSON."""
    local = run_dir / "tables" / "test_embedding_table.csv"
    if local.is_file():
        return local
    tables = sorted((run_dir / "wandb").glob("*run-*/files/media/table/test/embedding_table_*.table.json"))
    return tables[-1] if tables else None


def read_codes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(points (N, 2), labels (N,))`` of an embedding table (CSV or W&B ``.table.json``)."""
    if path.suffix == ".json":
        table = json.loads(path.read_text())
        frame = pd.DataFrame(table["data"], columns=table["columns"])
    else:
        frame = pd.read_csv(path)
    return frame[["x", "y"]].to_numpy(float), frame["label"].to_numpy(int)


def run_overrides(run) -> list[str]:
    """The overrides a run was started with, without the ones that only say where it went."""
    from latentbench.run_dir import RunDirError

    try:
        return [o for o in run.overrides() if not o.startswith(("hydra.", "resume="))]
    except RunDirError:
        return []


def quick_record(run_dir: Path, root: Path) -> dict[str, Any] | None:
    """The record of the quick-mode experiment a run belongs to (``experiment.json`` with mode
    ``quick`` in its folder or a folder above it, up to the report's source's parent), else None."""
    from latentbench.run_dir import RunDirError, read_json

    stop = root.resolve().parent
    for folder in [run_dir.resolve(), *run_dir.resolve().parents]:
        try:
            record = read_json(folder / EXPERIMENT_RECORD)
        except RunDirError:
            record = None
        if record is not None:
            return record if record.get("mode") == "quick" else None
        if folder == stop:
            return None
    return None


def name_runs(runs: list[Run]) -> None:
    """Each run's ``label``: its overrides whose value differs between the runs
    (``model=pca,seed=1``), else its folder name; a label two runs share gets the folder too."""
    keyed = [{o.lstrip("+~").partition("=")[0]: o for o in run.overrides} for run in runs]
    differing = {key for key in set().union(*keyed) if len({k.get(key) for k in keyed}) > 1}
    for run, overrides in zip(runs, keyed):
        run.label = ",".join(o for key, o in overrides.items() if key in differing) or run.name
    shared = pd.Series([run.label for run in runs]).duplicated(keep=False)
    for run, twice in zip(runs, shared):
        if twice and run.label != run.name:
            run.label = f"{run.label} ({run.name})"


def collect_local(root: Path) -> list[Run]:
    """Every run directory below ``root`` (a folder with ``.hydra/config.yaml``)."""
    if not root.exists():
        raise ConfigError(f"report: {root} does not exist (expected a run directory, a multirun directory or outputs/)")
    from latentbench.run_dir import RunDir, RunDirError

    runs = []
    for config_file in sorted(root.rglob(".hydra/config.yaml")):
        run = RunDir(config_file.parents[1])
        name = run.path.relative_to(root).as_posix() if run.path != root else run.path.name
        try:
            config = load_config(config_file)
            config.setdefault("choices", hydra_choices(run.hydra_dir / "hydra.yaml"))
            metrics = run.metrics()
            status = run.status()
        except RunDirError as error:
            runs.append(Run(name, {}, {}, UNREADABLE, str(error), run.path))
            continue
        except Exception as error:  # noqa: BLE001 (a config.yaml that YAML or OmegaConf cannot read)
            runs.append(Run(name, {}, {}, UNREADABLE, f"{config_file}: cannot be read ({first_line(error)})", run.path))
            continue
        if metrics is not None:
            status = metrics.get("status", "finished") if status in (None, "running") else status
            error = metrics.get("error") or ""
        else:
            status = status if status in ("interrupted", "failed") else "missing"
            error = {"interrupted": "interrupted; resume it with latentbench train resume=" + str(run.path)}.get(
                status, "no metrics.json (killed, or still running)")
        runs.append(Run(name, config, metrics or {}, status, error, run.path, latest_images(run.path), embedding_table(run.path),
                        run_overrides(run), quick_record(run.path, root)))
    if not runs:
        raise ConfigError(f"report: no runs under {root} (no .hydra/config.yaml below it)")
    return runs


def collect_wandb(path: str, group: str | None = None) -> list[Run]:
    """Runs of a W&B project (``entity/project``) or sweep (``entity/project/<sweep id>``), online."""
    import os

    from latentbench.tracking import wandb_has_key

    if os.environ.get("WANDB_MODE") in ("offline", "disabled") or not wandb_has_key():
        raise ConfigError(
            f"report: wandb:{path} needs the W&B API online (set WANDB_API_KEY or run `wandb login`, and unset "
            "WANDB_MODE=offline); for local runs pass their directory instead"
        )
    parts = path.strip("/").split("/")
    if len(parts) not in (2, 3, 4):
        raise ConfigError(f"report: wandb:{path}: expected wandb:<entity>/<project> or wandb:<entity>/<project>/<sweep id>")
    import wandb

    try:
        api = wandb.Api()
        if len(parts) == 2:
            filters = {"group": group} if group else None
            remote = list(api.runs("/".join(parts), filters=filters))
        else:
            sweep_id = parts[-1]
            remote = list(api.sweep(f"{parts[0]}/{parts[1]}/{sweep_id}").runs)
    except Exception as error:  # network, auth, unknown project
        raise ConfigError(f"report: wandb:{path}: {first_line(error)}") from None
    runs = []
    for run in remote:
        summary = {k: v for k, v in dict(run.summary).items() if isinstance(v, (int, float, str))}
        status = {"finished": "finished", "running": "running"}.get(run.state, "failed")
        runs.append(Run(run.name, dict(run.config), summary, status, "" if status != "failed" else f"W&B state {run.state}"))
    if not runs:
        raise ConfigError(f"report: wandb:{path} has no runs")
    return runs


def collect(source: str, group: str | None = None) -> list[Run]:
    if source.startswith("wandb:"):
        return collect_wandb(source[len("wandb:"):], group)
    return collect_local(Path(source))


# ----------------------------------------------------------------------------- aggregating


def display(value: Any, key: str = "") -> str:
    """A config value as a table cell: blank when absent, the class name for ``_target_`` keys."""
    if value is ABSENT or value is None:
        return ""
    if key.endswith("_target_") and isinstance(value, str):
        return value.rsplit(".", 1)[-1]
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def sort_key(cells: tuple[str, ...]) -> tuple:
    def one(cell: str):
        try:
            return (0, float(cell), "")
        except ValueError:
            return (1, 0.0, cell)

    return tuple(one(c) for c in cells)


def finite(value: Any) -> float:
    """A metric value as a float: NaN unless it is a finite number."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


@dataclass
class Reference:
    """Paper values: rows of ``match`` (config key -> value) and ``values`` (metric -> number)."""

    rows: list[dict[str, Any]]
    source: str = ""
    label: str = "paper"

    def lookup(self, runs: list[Run], metric: str) -> float | None:
        """The paper value of ``metric`` for a group of runs: the first row whose ``match`` fits every run."""
        for row in self.rows:
            if metric not in row["values"]:
                continue
            if all(all(matches(run.value(k), v) for run in runs) for k, v in row["match"].items()):
                return float(row["values"][metric])
        return None


def matches(value: Any, wanted: Any) -> bool:
    if value is ABSENT:
        return False
    if isinstance(wanted, (int, float)) and isinstance(value, (int, float)):
        return float(value) == float(wanted)
    return str(value) == str(wanted) or display(value, "_target_") == str(wanted)


def load_reference(path: Path) -> Reference:
    """``reference.yaml`` (``source``, ``label``, ``rows: [{match: {...}, values: {metric: x}}]``) or a CSV
    whose columns are config keys plus ``metric`` and ``value`` (and optionally ``source``)."""
    if not path.is_file():
        raise ConfigError(f"report --reference: {path} does not exist")
    if path.suffix == ".csv":
        with path.open() as handle:
            records = list(csv.DictReader(handle))
        if not records or not {"metric", "value"} <= set(records[0]):
            raise ConfigError(f"report --reference: {path} needs the columns metric and value (plus config keys to match)")
        rows = [{"match": {k: v for k, v in r.items() if k not in ("metric", "value", "source", "label")},
                 "values": {r["metric"]: float(r["value"])}} for r in records]
        return Reference(rows, records[0].get("source", ""))
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ConfigError(f"report --reference: {path} needs a 'rows' list of {{match: {{key: value}}, values: {{metric: number}}}}")
    rows = []
    for i, row in enumerate(data["rows"]):
        if not isinstance(row, dict) or not isinstance(row.get("values"), dict):
            raise ConfigError(f"report --reference: {path} rows[{i}] needs 'values: {{metric: number}}'")
        rows.append({"match": dict(row.get("match") or {}), "values": row["values"]})
    return Reference(rows, str(data.get("source", "")), str(data.get("label", "paper")))


# ----------------------------------------------------------------------------- tables


@dataclass
class Table:
    """One row per group of runs (same group-by values), in ``sort_key`` order of those values."""

    shown: pd.DataFrame  # the cells of md, tex and html: "mean ± std" (no std for one run), failed / missing
    raw: pd.DataFrame  # the cells of the CSV: means and stds at full precision
    groups: list[tuple[tuple[str, ...], list[Run]]]  # each row's group-by values and its runs (finished or not)


def build_table(runs: list[Run], group_by: list[str], metrics: list[str], reference: Reference | None, digits: int) -> Table:
    """Columns: the group keys, each metric (with a paper column when the reference has a value for
    that metric), the finished run count ``n`` and the count of the others (``failed``). A metric is
    averaged over the finished runs that logged it as a finite number."""
    keys = [tuple(display(run.value(k), k) for k in group_by) for run in runs]
    order = sorted(set(keys), key=sort_key)
    row = pd.Series(keys).map({key: i for i, key in enumerate(order)}.get)  # each run's table row
    unique = list(dict.fromkeys(metrics))  # a metric asked for twice gets two equal columns
    values = pd.DataFrame([[finite(run.metrics.get(m)) if run.status == "finished" else math.nan for m in unique] for run in runs],
                          columns=unique)
    stats = values.groupby(row).agg(["mean", pd.Series.std, "count"])  # Series.std: two-pass, steadier digits than "std"
    status = pd.Series([run.status for run in runs])
    finished, failed = status.eq("finished").groupby(row).sum(), status.ne("finished").groupby(row).sum()
    empty = pd.Series(np.where(status.eq("failed").groupby(row).any() & finished.eq(0), "failed", "missing"))
    groups = [(key, [run for run, r in zip(runs, row) if r == i]) for i, key in enumerate(order)]

    shown, raw = [], []
    for i, key in enumerate(group_by):
        shown.append(pd.Series([k[i] for k in order], name=key))
        raw.append(shown[-1])
    for metric in metrics:
        mean, std, n = stats[metric]["mean"], stats[metric]["std"], stats[metric]["count"]
        cell = mean.map(f"{{:.{digits}f}}".format) + std.map(f" ± {{:.{digits}f}}".format).where(n > 1, "")
        shown.append(cell.where(n > 0, empty).rename(metric))
        raw += [mean.astype(object).where(n > 0, empty).rename(f"{metric} mean"),
                std.astype(object).where(n > 1, "").rename(f"{metric} std")]
        if reference is not None and any(metric in r["values"] for r in reference.rows):
            paper = pd.Series([reference.lookup(members, metric) for _, members in groups], dtype=float)
            shown.append(paper.map("{:.2f}".format).where(paper.notna(), "").rename(f"{metric} ({reference.label})"))
            raw.append(paper.astype(object).where(paper.notna(), "").rename(f"{metric} ({reference.label})"))
    shown += [finished.astype(str).rename("n"), failed.astype(str).where(failed > 0, "").rename("failed")]
    raw += [finished.rename("n"), failed.rename("failed")]
    return Table(pd.concat(shown, axis=1), pd.concat(raw, axis=1), groups)


def to_markdown(frame: pd.DataFrame) -> str:
    """A pipe table, one space around each cell (``|`` in a cell escaped)."""
    lines = [list(frame.columns), ["---"] * frame.shape[1], *frame.to_numpy().tolist()]
    return "".join("| " + " | ".join(str(cell).replace("|", "\\|") for cell in line) + " |\n" for line in lines)


LATEX_ESCAPES = str.maketrans({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"})


def latex_cell(cell: str) -> str:
    """``12.000 ± 2.000`` -> ``$12.000 \\pm 2.000$``; other cells escaped."""
    return re.sub(r"^(-?[\d.]+(?:e[-+]?\d+)?) ± (-?[\d.]+(?:e[-+]?\d+)?)$", r"$\1 \\pm \2$", cell.translate(LATEX_ESCAPES))


def to_latex(frame: pd.DataFrame, caption: str = "") -> str:
    """A ``booktabs`` table (``\\usepackage{booktabs}``): toprule, midrule, bottomrule, no vertical
    rules; the key columns left-aligned, the metric, ``n`` and ``failed`` columns right-aligned."""
    n_keys = sum(1 for h in frame.columns if "/" not in h and h not in ("n", "failed"))
    styler = frame.style.hide(axis="index").format(latex_cell).format_index(lambda h: h.translate(LATEX_ESCAPES), axis=1)
    return styler.to_latex(column_format="l" * n_keys + "r" * (frame.shape[1] - n_keys), position="t", position_float="centering",
                           hrules=True, caption=caption.translate(LATEX_ESCAPES) or None)


def to_csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, lineterminator="\r\n")  # the csv module's line ends, as before


def quick_note(runs: list[Run]) -> str:
    """One line for the header of tables made from ``latentbench experiment --quick`` runs, else ''."""
    quick = [run for run in runs if run.quick is not None]
    if not quick:
        return ""
    record = quick[0].quick
    how = " ".join(str(part) for part in ("latentbench experiment", record.get("experiment"), "--quick") if part)
    overrides = record.get("overrides") or []
    if overrides:
        how += ": " + " ".join(str(o) for o in overrides)
    share = "" if len(quick) == len(runs) else f" ({len(quick)} of the {len(runs)} runs)"
    return f"Quick mode{share} ({how}): a slice of the data and of the training budget, not comparable with the paper's numbers"


def failure_lines(table: Table) -> list[str]:
    return [f"{run.name}: {run.status}" + (f" ({run.error})" if run.error else "")
            for _, runs in table.groups for run in runs if run.status != "finished"]


# ----------------------------------------------------------------------------- figures


def numeric(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def short_key(key: str) -> str:
    """``model._target_`` -> ``model`` (matplotlib hides legend labels that start with an underscore)."""
    return key[: -len("._target_")] if key.endswith("._target_") else key


def plot_against(runs: list[Run], metric: str, against: str, series_keys: list[str], path: Path) -> Path:
    """``metric`` (mean ± std over seeds) against the swept config key ``against``, one line per
    combination of the other group-by keys; a log x axis when the values span > 2 decades."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finished = [run for run in runs if run.status == "finished"]
    points = pd.DataFrame({
        "label": [tuple(display(run.value(k), k) for k in series_keys) for run in finished],
        "x": [numeric(run.value(against)) for run in finished],
        "y": [finite(run.metrics.get(metric)) for run in finished],
    }).dropna()
    if points.empty:
        raise ConfigError(f"report --plot {metric} --against {against}: no finished run has a numeric {against} and a {metric}")
    points["series"] = [", ".join(f"{short_key(k)}={v}" for k, v in zip(series_keys, label)) or metric for label in points["label"]]
    stats = points.groupby(["series", "x"])["y"].agg(["mean", "std"]).fillna({"std": 0.0})
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, _ in sorted(dict(zip(points["series"], points["label"])).items(), key=lambda item: sort_key(item[1])):
        line = stats.loc[name]
        ax.errorbar(line.index, line["mean"], yerr=line["std"], marker="o", capsize=3, label=name)
    if points["x"].min() > 0 and points["x"].max() / points["x"].min() > 100:
        ax.set_xscale("log")
    ax.set_xlabel(against)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if points["series"].nunique() > 1 or series_keys:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def codes_panel_title(run: Run, keys: tuple) -> str:
    """A codes panel's title: the group (else the run's name) and, when the run logged it, the kNN
    accuracy of its codes (``test/knn_acc``), the figure by which Fig. 3's two panels are compared."""
    title = ", ".join(str(k) for k in keys if k) or run.name
    knn = run.metrics.get("test/knn_acc")
    if knn is None:
        return title
    k = run.value("callbacks.embedding_plot.knn_neighbors")
    return f"{title}\n{'k' if k is ABSENT else k}-NN accuracy {float(knn):.3f}"


def group_representatives(table: Table, usable) -> list[tuple[tuple, Run]]:
    """``(group keys, its first finished run for which usable(run))`` per group, in job order (a
    multirun's ``color_space=rgb,ycbcr,lab`` stays in that order; job 10 after job 9)."""
    def job_order(run: Run) -> list:
        where = run.path.as_posix() if run.path is not None else run.name
        return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", where)]

    chosen = []
    for keys, members in table.groups:
        run = next((r for r in members if r.status == "finished" and usable(r)), None)
        if run is not None:
            chosen.append((keys, run))
    return sorted(chosen, key=lambda pair: job_order(pair[1]))


def plot_codes(table: Table, path: Path) -> Path | None:
    """Side-by-side 2-D scatters of the test codes (first finished run of each group that logged them,
    in job order), coloured by label, as in Fig. 3 of Hinton & Salakhutdinov (2006)."""
    from PIL import Image

    from latentbench.projections import scatter_image

    panels = [(*read_codes(run.codes), codes_panel_title(run, keys))
              for keys, run in group_representatives(table, lambda r: r.codes is not None)]
    if not panels:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scatter_image(panels, ticks=False, robust_limits=True)).save(path)
    return path


def compare_groups(table: Table, count: int, path: Path) -> Path:
    """The side-by-side figure (:mod:`latentbench.comparison`) of each group's first finished local run, in job order."""
    from latentbench.comparison import compare_runs

    columns = [(", ".join(str(k) for k in keys if k) or run.name, run.path)
               for keys, run in group_representatives(table, lambda r: r.path is not None)]
    if not columns:
        raise ConfigError("report --side-by-side: no finished local run to take a model from")
    return compare_runs(columns, count, path)


def load_histories(runs: list[Run]) -> list[str]:
    """Read each local run's logged history (``run.history``); lines for the ones that cannot be read."""
    from latentbench.curves import read_history

    problems = []
    for run in runs:
        if run.path is None:
            continue
        try:
            run.history = read_history(run.path)
        except Exception as error:  # noqa: BLE001 (pandas raises many kinds for a damaged file)
            problems.append(f"{run.name}: history not read ({first_line(error)})")
    return problems


def curve_metrics(runs: list[Run], asked: list[str] | None) -> list[str]:
    """The curves to draw: ``asked``, else ``train/loss``, ``val/loss`` and the other ``val/`` keys
    the runs logged (at most MAX_CURVES)."""
    if asked is not None:
        return list(dict.fromkeys(asked))
    logged = {key for run in runs if run.history is not None for key in run.history.columns}
    shown = [k for k in ("train/loss", "val/loss") if k in logged]
    return (shown + sorted(k for k in logged if k.startswith("val/") and k not in shown))[:MAX_CURVES]


def group_curve(runs: list[Run], metric: str) -> pd.DataFrame:
    """``metric`` against step over the finished runs of a group: columns ``mean``, ``std`` (blank
    where fewer than two runs cover the step) and ``n``, indexed by step. Runs logged at different
    steps are each interpolated linearly onto the others' steps, inside their own range only."""
    from latentbench.curves import curve

    series = [curve(run.history, metric) for run in runs if run.status == "finished" and run.history is not None]
    series = [s for s in series if not s.empty]
    if not series:
        return pd.DataFrame(columns=["mean", "std", "n"], dtype=float)
    steps = sorted(set().union(*(s.index for s in series)))
    aligned = pd.concat([s.reindex(steps).interpolate(method="index", limit_area="inside") for s in series], axis=1)
    return pd.DataFrame({"mean": aligned.mean(axis=1), "std": aligned.std(axis=1), "n": aligned.count(axis=1)})


def group_label(keys: tuple[str, ...]) -> str:
    return ", ".join(k for k in keys if k) or "all runs"


def plot_training_curves(table: Table, metrics: list[str], path: Path) -> Path | None:
    """One panel per metric against step: per group (one colour each) the mean over its finished
    runs, a band of ± one std; None when no run logged any of ``metrics``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(metric, [(i, keys, group_curve(runs, metric)) for i, (keys, runs) in enumerate(table.groups)]) for metric in metrics]
    panels = [(metric, [g for g in groups if not g[2].empty]) for metric, groups in panels]
    panels = [(metric, groups) for metric, groups in panels if groups]
    if not panels:
        return None
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    legend_rows = math.ceil(len({i for _, groups in panels for i, _, _ in groups}) / 4)
    height = 3.1 * rows + 0.3 * legend_rows + 0.2
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, height), dpi=110, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    legend: dict[str, Any] = {}
    for ax, (metric, groups) in zip(axes.flat, panels):
        for i, keys, stats in groups:
            colour = colours[i % len(colours)]
            label = f"{group_label(keys)} (n={int(stats['n'].max())})"
            marker = "o" if len(stats) <= 12 else None  # single evaluations (PCA's one validation) stay visible
            (line,) = ax.plot(stats.index, stats["mean"], color=colour, marker=marker, markersize=5 if len(stats) == 1 else 3,
                              linewidth=1.4, label=label)
            band = stats["std"].notna()
            ax.fill_between(stats.index[band], (stats["mean"] - stats["std"])[band], (stats["mean"] + stats["std"])[band],
                            color=colour, alpha=0.2, linewidth=0)
            legend.setdefault(label, line)
        values = pd.concat([g[2]["mean"] for g in groups]).dropna()
        if len(values) and values.min() > 0 and values.max() / values.min() > 30:
            ax.set_yscale("log")
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=min(4, len(legend)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, (0.3 * legend_rows + 0.2) / height, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- HTML


def data_uri(path: Path) -> str:
    kind = "gif" if path.suffix.lower() == ".gif" else "png"  # an inlined GIF plays in the page
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def cell_class(cell: str) -> str:
    return "bad" if cell in ("failed", "missing") else ("num" if re.match(r"-?[\d.]", cell) else "")


def table_html(frame: pd.DataFrame) -> str:
    """The table with a ``num`` (right-aligned) or ``bad`` (red) class on each cell."""
    cells = frame.set_axis(range(frame.shape[1]), axis=1)  # cell classes need unique labels (a group key may repeat a metric)
    styler = Styler(cells, uuid="report", cell_ids=False).hide(axis="index").format(escape="html")
    styler = styler.format_index(lambda i: html.escape(frame.columns[i]), axis=1)
    return styler.set_td_classes(cells.map(cell_class)).to_html()


def to_html(title: str, table: Table, figures: list[Path], failures: list[str], image_filter: list[str], reference: Reference | None,
            curves: Path | None = None, note: str = "") -> str:
    """One self-contained page: every image is inlined as base64, no script, no network."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if note:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    parts.append(table_html(table.shown))
    if reference is not None and reference.source:
        parts.append(f"<p class='src'>{html.escape(reference.label)}: {html.escape(reference.source)}</p>")
    if failures:
        parts.append("<h2>Failed or missing runs</h2><ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in failures) + "</ul>")
    if curves is not None:
        parts.append("<h2>Training curves</h2><figure class='curves'>"
                     f"<img src='{data_uri(curves)}' alt='training curves'><figcaption>against optimizer steps; per group the mean "
                     "over its finished runs, the band ± one standard deviation (history.csv of each run)</figcaption></figure>")
    if figures:
        parts.append("<h2>Plots</h2><div class='row plots'>" + "".join(
            f"<figure><img src='{data_uri(f)}' alt='{html.escape(f.name)}'><figcaption>{html.escape(f.stem)}</figcaption></figure>"
            for f in figures) + "</div>")
    gallery = []
    for keys, runs in table.groups:
        cards = []
        for run in runs:
            images = {k: p for k, p in run.images.items() if not image_filter or any(s in k for s in image_filter)}
            status = "" if run.status == "finished" else f" <span class='bad'>{html.escape(run.status)}</span>"
            folder = f" <span class='src'>{html.escape(run.name)}</span>" if run.label not in run.name else ""  # 1_model=pca: once
            imgs = "".join(
                f"<figure><img src='{data_uri(p)}' alt='{html.escape(k)}'><figcaption>{html.escape(k)}</figcaption></figure>"
                for k, p in images.items()) or "<p class='src'>no images</p>"
            cards.append(f"<div class='card'><h3>{html.escape(run.label or run.name)}{folder}{status}</h3><div class='row'>{imgs}</div></div>")
        gallery.append(f"<h3 class='group'>{html.escape(group_label(keys))}</h3><div class='row'>{''.join(cards)}</div>")
    parts.append("<h2>Latest images of each run</h2>" + "".join(gallery))
    style = (
        "body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:1em 0}"
        "th,td{padding:4px 10px;border-bottom:1px solid #ccc}thead th{border-bottom:2px solid #333;text-align:left}"
        "td.num{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#b00;font-weight:bold}"
        ".row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}figure{margin:0}"
        "figure img{max-width:420px;max-height:260px;border:1px solid #ddd}.plots figure img{max-width:760px;max-height:420px}figcaption{font-size:11px;color:#555}"
        ".card{border:1px solid #ddd;padding:6px;border-radius:4px}.card h3{font-size:13px;margin:2px 0 6px}"
        ".src{font-size:12px;color:#555}h3.group{margin-bottom:4px}.curves img{max-width:100%;max-height:none}"
        ".note{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px;display:inline-block}"
    )
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


# ----------------------------------------------------------------------------- command


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="latentbench report",
        description="Tables (mean ± std over seeds, run count n) and plots from run directories or a W&B project/sweep.",
    )
    p.add_argument("source", help="a run directory, a multirun directory, outputs/, or wandb:<entity>/<project>[/<sweep id>]")
    p.add_argument("--group-by", nargs="*", default=["model._target_"], metavar="KEY",
                   help="dotted config keys that define a row (default: model._target_), or choices.<group> for a local run's "
                        "config group choice (choices.experiment); the other keys (seeds) are aggregated")
    p.add_argument("--metrics", nargs="+", default=DEFAULT_METRICS, metavar="METRIC", help=f"metrics.json keys (default: {' '.join(DEFAULT_METRICS)})")
    p.add_argument("--reference", type=Path, help="paper values: reference.yaml or a CSV (config keys, metric, value)")
    p.add_argument("--plot", nargs="*", default=[], metavar="METRIC", help="plot these metrics against --against (PNG)")
    p.add_argument("--against", metavar="KEY", help="the swept config key on the x axis of --plot")
    p.add_argument("--codes", action="store_true", help="a side-by-side scatter of each group's 2-D test codes (codes.png)")
    p.add_argument("--side-by-side", type=int, metavar="N",
                   help="the first N test images through each group's first finished run (its tested checkpoint): "
                        "input | one column per group | original (side_by_side.png; local runs)")
    p.add_argument("--format", nargs="+", metavar="FORMAT",
                   help=f"what to write, comma- or space-separated: {','.join(FORMATS)} (default: all of them)")
    p.add_argument("--curves", nargs="*", metavar="METRIC",
                   help="history keys drawn against steps (default: train/loss, val/loss and the other val/ metrics; "
                        "drawn with html, or when named here; none given: no curves)")
    p.add_argument("--images", nargs="*", default=["reconstructions", "samples", "embedding", "denoising"], metavar="SUBSTRING",
                   help="image keys shown per run in the HTML page, GIFs of videos too (default: reconstructions samples embedding denoising)")
    p.add_argument("--out", type=Path, help="output folder (default: <source>/report, or report/ for W&B)")
    p.add_argument("--name", default="table", help="file stem of the tables (default: table)")
    p.add_argument("--title", default="", help="title of the HTML page and the LaTeX caption")
    p.add_argument("--digits", type=int, default=3, help="decimals in the tables (default: 3)")
    p.add_argument("--wandb-group", help="with wandb:<entity>/<project>: only the runs of this W&B group")
    return p


def formats(asked: list[str] | None) -> list[str]:
    """``--format`` values (``md,csv``, ``md csv`` or both mixed) as a list of FORMATS; all of them when none is given."""
    if not asked:
        return list(FORMATS)
    picked = [f.strip().lower() for value in asked for f in value.split(",") if f.strip()]
    unknown = [f for f in picked if f not in FORMATS]
    if unknown or not picked:
        raise ConfigError(f"report --format: {', '.join(unknown) or 'nothing'} is not a format (choose from {', '.join(FORMATS)}, "
                          "comma- or space-separated)")
    return list(dict.fromkeys(picked))


def make_report(args: argparse.Namespace) -> dict[str, Path]:
    """Collect, group, aggregate and write; returns ``{format or figure name: path}``."""
    if args.plot and not args.against:
        raise ConfigError("report --plot: needs --against <swept config key>")
    chosen = formats(args.format)
    runs = collect(args.source, args.wandb_group)
    unreadable = [r for r in runs if r.status == UNREADABLE]
    runs = [r for r in runs if r.status != UNREADABLE]
    if not runs:
        raise ConfigError(f"report: every run under {args.source} is unreadable (first: {unreadable[0].error})")
    name_runs(runs)
    reference = load_reference(args.reference) if args.reference else None
    table = build_table(runs, args.group_by, args.metrics, reference, args.digits)
    out = args.out or (Path("report") if args.source.startswith("wandb:") else Path(args.source) / "report")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    figures = []
    for metric in args.plot:
        series_keys = [k for k in args.group_by if k != args.against]
        name = f"{metric}_vs_{args.against}".replace("/", "_")
        figures.append(plot_against(runs, metric, args.against, series_keys, out / f"{name}.png"))
        written[name] = figures[-1]
    if args.codes:
        codes = plot_codes(table, out / "codes.png")
        if codes is None:
            raise ConfigError("report --codes: no finished run logged test codes (tables/test_embedding_table.csv)")
        figures.append(codes)
        written["codes"] = codes
    if args.side_by_side is not None:
        figures.append(compare_groups(table, args.side_by_side, out / "side_by_side.png"))
        written["side_by_side"] = figures[-1]
    failures = failure_lines(table)
    if unreadable:
        failures.append(f"{len(unreadable)} unreadable run{'s' if len(unreadable) > 1 else ''} left out of the table")
        failures += [f"{r.name}: unreadable ({r.error})" for r in unreadable]
    curves = None
    if args.curves or (args.curves is None and "html" in chosen):
        failures += load_histories(runs)
        curves = plot_training_curves(table, curve_metrics(runs, args.curves), out / f"{args.name}_training_curves.png")
        if curves is not None:
            written["curves"] = curves
    note = quick_note(runs)
    title = args.title or f"latentbench report: {args.source}"
    for fmt_name in chosen:
        if fmt_name == "md":
            text = (f"**{note}**\n\n" if note else "") + to_markdown(table.shown)
            if reference is not None and reference.source:
                text += f"\n{reference.label}: {reference.source}\n"
            if curves is not None:
                text += f"\n![training curves]({curves.name})\n"
            if failures:
                text += "\nFailed or missing runs:\n\n" + "".join(f"- {line}\n" for line in failures)
            path = out / f"{args.name}.md"
        elif fmt_name == "tex":
            caption = f"{args.title} ({note})" if args.title and note else args.title or note
            text, path = to_latex(table.shown, caption), out / f"{args.name}.tex"
        elif fmt_name == "csv":
            raw = table.raw if not note else table.raw.assign(mode=["quick" if any(r.quick for r in members) else ""
                                                                     for _, members in table.groups])
            text, path = to_csv(raw), out / f"{args.name}.csv"
        else:
            text = to_html(f"{title} (quick mode)" if note else title, table, figures, failures, args.images, reference, curves, note)
            path = out / f"{args.name}.html"
        path.write_text(text, encoding="utf-8")
        written[fmt_name] = path
    if note:
        print(note)
    print(to_markdown(table.shown), end="")
    for line in failures:
        print(f"  {line}")
    for name, path in written.items():
        print(f"{name}: {path}")
    return written


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    make_report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

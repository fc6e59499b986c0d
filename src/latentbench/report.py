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
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentbench.errors import ConfigError, first_line

DEFAULT_METRICS = ["test/recon_sse", "test/psnr"]
FORMATS = ("md", "tex", "csv", "html")
ABSENT = object()


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
    """The newest PNG of each image key logged by the run (``images/`` or W&B offline media)."""
    found: dict[str, tuple[int, Path]] = {}
    candidates = [(p, None) for p in (run_dir / "images").glob("*.png")]
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


def read_codes(path: Path) -> tuple[list[float], list[float], list[int]]:
    """``(x, y, labels)`` of an embedding table (CSV or W&B ``.table.json``)."""
    if path.suffix == ".json":
        table = json.loads(path.read_text())
        columns, rows = table["columns"], table["data"]
    else:
        with path.open() as handle:
            reader = csv.reader(handle)
            columns = next(reader)
            rows = [[float(v) for v in row] for row in reader]
    ix, iy, il = columns.index("x"), columns.index("y"), columns.index("label")
    return [float(r[ix]) for r in rows], [float(r[iy]) for r in rows], [int(r[il]) for r in rows]


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
        runs.append(Run(name, config, metrics or {}, status, error, run.path, latest_images(run.path), embedding_table(run.path)))
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


@dataclass
class Group:
    keys: tuple[str, ...]  # display values of the group-by keys
    runs: list[Run]

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.status == "finished"]

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if r.status != "finished"]

    def values(self, metric: str) -> list[float]:
        values = []
        for run in self.finished:
            value = run.metrics.get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                values.append(float(value))
        return values

    def stats(self, metric: str) -> tuple[float, float, int] | None:
        """``(mean, sample std (0 for one run), n)`` over the finished runs that have the metric."""
        values = self.values(metric)
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return statistics.fmean(values), std, len(values)

    def empty_cell(self) -> str:
        if not self.finished:
            return "failed" if any(r.status == "failed" for r in self.runs) else "missing"
        return "missing"


def group_runs(runs: list[Run], group_by: list[str]) -> list[Group]:
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(display(run.value(k), k) for k in group_by), []).append(run)
    return [Group(keys, members) for keys, members in sorted(groups.items(), key=lambda item: sort_key(item[0]))]


@dataclass
class Reference:
    """Paper values: rows of ``match`` (config key -> value) and ``values`` (metric -> number)."""

    rows: list[dict[str, Any]]
    source: str = ""
    label: str = "paper"

    def lookup(self, group: Group, metric: str) -> float | None:
        for row in self.rows:
            if metric not in row["values"]:
                continue
            if all(all(matches(run.value(k), v) for run in group.runs) for k, v in row["match"].items()):
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


def fmt(x: float, digits: int) -> str:
    return f"{x:.{digits}f}"


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]  # display cells
    raw: list[list[Any]]  # CSV cells (numbers at full precision)
    raw_header: list[str]


def build_table(groups: list[Group], group_by: list[str], metrics: list[str], reference: Reference | None, digits: int) -> Table:
    """Rows: one per group; columns: the group keys, each metric (with a paper column when the
    reference has a value for that metric), the finished run count ``n`` and the failed count."""
    with_paper = {m for m in metrics if reference is not None and any(m in row["values"] for row in reference.rows)}
    header = [*group_by]
    raw_header = [*group_by]
    for metric in metrics:
        header.append(metric)
        raw_header += [f"{metric} mean", f"{metric} std"]
        if metric in with_paper:
            header.append(f"{metric} ({reference.label})")
            raw_header.append(f"{metric} ({reference.label})")
    header += ["n", "failed"]
    raw_header += ["n", "failed"]
    rows, raw = [], []
    for group in groups:
        row, raw_row = [*group.keys], [*group.keys]
        for metric in metrics:
            stats = group.stats(metric)
            if stats is None:
                row.append(group.empty_cell())
                raw_row += [group.empty_cell(), ""]
            else:
                mean, std, n = stats
                row.append(fmt(mean, digits) + (f" ± {fmt(std, digits)}" if n > 1 else ""))
                raw_row += [mean, std if n > 1 else ""]
            if metric in with_paper:
                value = reference.lookup(group, metric)
                row.append("" if value is None else fmt(value, 2))
                raw_row.append("" if value is None else value)
        row += [str(len(group.finished)), str(len(group.failed)) if group.failed else ""]
        raw_row += [len(group.finished), len(group.failed)]
        rows.append(row)
        raw.append(raw_row)
    return Table(header, rows, raw, raw_header)


def to_markdown(table: Table) -> str:
    lines = ["| " + " | ".join(table.header) + " |", "|" + "|".join(" --- " for _ in table.header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_ESCAPES.get(ch, ch) for ch in text)


def latex_cell(cell: str) -> str:
    match = re.fullmatch(r"(-?[\d.]+(?:e[-+]?\d+)?) ± (-?[\d.]+(?:e[-+]?\d+)?)", cell)
    if match:
        return f"${match.group(1)} \\pm {match.group(2)}$"
    return latex_escape(cell)


def to_latex(table: Table, caption: str = "") -> str:
    """A ``booktabs`` table (``\\usepackage{booktabs}``): toprule, midrule, bottomrule, no vertical rules."""
    n_keys = len(table.header) - sum(1 for h in table.header if "/" in h or h in ("n", "failed"))
    spec = "l" * n_keys + "r" * (len(table.header) - n_keys)
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(f"\\caption{{{latex_escape(caption)}}}")
    lines += [f"\\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(latex_escape(h) for h in table.header) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_cell(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(table.raw_header)
    writer.writerows(table.raw)
    return out.getvalue()


def failure_lines(groups: list[Group]) -> list[str]:
    lines = []
    for group in groups:
        for run in group.failed:
            lines.append(f"{run.name}: {run.status}" + (f" ({run.error})" if run.error else ""))
    return lines


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

    series: dict[tuple[str, ...], dict[float, list[float]]] = {}
    for run in runs:
        x = numeric(run.value(against))
        y = run.metrics.get(metric)
        if run.status != "finished" or x is None or not isinstance(y, (int, float)) or not math.isfinite(y):
            continue
        label = tuple(display(run.value(k), k) for k in series_keys)
        series.setdefault(label, {}).setdefault(x, []).append(float(y))
    if not series:
        raise ConfigError(f"report --plot {metric} --against {against}: no finished run has a numeric {against} and a {metric}")
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for label, points in sorted(series.items(), key=lambda item: sort_key(item[0])):
        xs = sorted(points)
        means = [statistics.fmean(points[x]) for x in xs]
        stds = [statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs]
        name = ", ".join(f"{short_key(k)}={v}" for k, v in zip(series_keys, label)) or metric
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=name)
    xs_all = [x for points in series.values() for x in points]
    if min(xs_all) > 0 and max(xs_all) / min(xs_all) > 100:
        ax.set_xscale("log")
    ax.set_xlabel(against)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if len(series) > 1 or series_keys:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_codes(groups: list[Group], path: Path, title_keys: list[str]) -> Path | None:
    """Side-by-side 2-D scatters of the test codes (first finished run of each group that logged them),
    coloured by label, as in Fig. 3 of Hinton & Salakhutdinov (2006)."""
    panels = []
    for group in groups:
        run = next((r for r in group.finished if r.codes is not None), None)
        if run is not None:
            panels.append((", ".join(g for g in group.keys if g) or run.name, read_codes(run.codes)))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), dpi=110, squeeze=False)
    for ax, (title, (x, y, labels)) in zip(axes[0], panels):
        scatter = ax.scatter(x, y, c=labels, cmap="tab10", s=4, vmin=-0.5, vmax=9.5)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(scatter, ax=list(axes[0]), ticks=range(10), fraction=0.02, label="label")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- HTML


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(f'<td class="{cell_class(c)}">{html.escape(c)}</td>' for c in row) + "</tr>" for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cell_class(cell: str) -> str:
    return "bad" if cell in ("failed", "missing") else ("num" if re.match(r"-?[\d.]", cell) else "")


def to_html(title: str, table: Table, figures: list[Path], groups: list[Group], failures: list[str], image_filter: list[str], reference: Reference | None) -> str:
    """One self-contained page: every image is inlined as base64, no script, no network."""
    parts = [f"<h1>{html.escape(title)}</h1>", table_html(table)]
    if reference is not None and reference.source:
        parts.append(f"<p class='src'>{html.escape(reference.label)}: {html.escape(reference.source)}</p>")
    if failures:
        parts.append("<h2>Failed or missing runs</h2><ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in failures) + "</ul>")
    if figures:
        parts.append("<h2>Plots</h2><div class='row plots'>" + "".join(
            f"<figure><img src='{data_uri(f)}' alt='{html.escape(f.name)}'><figcaption>{html.escape(f.stem)}</figcaption></figure>"
            for f in figures) + "</div>")
    gallery = []
    for group in groups:
        cards = []
        for run in group.runs:
            images = {k: p for k, p in run.images.items() if not image_filter or any(s in k for s in image_filter)}
            status = "" if run.status == "finished" else f" <span class='bad'>{html.escape(run.status)}</span>"
            imgs = "".join(
                f"<figure><img src='{data_uri(p)}' alt='{html.escape(k)}'><figcaption>{html.escape(k)}</figcaption></figure>"
                for k, p in images.items()) or "<p class='src'>no images</p>"
            cards.append(f"<div class='card'><h3>{html.escape(run.name)}{status}</h3><div class='row'>{imgs}</div></div>")
        label = ", ".join(k for k in group.keys if k) or "all runs"
        gallery.append(f"<h3 class='group'>{html.escape(label)}</h3><div class='row'>{''.join(cards)}</div>")
    parts.append("<h2>Latest images of each run</h2>" + "".join(gallery))
    style = (
        "body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:1em 0}"
        "th,td{padding:4px 10px;border-bottom:1px solid #ccc}thead th{border-bottom:2px solid #333;text-align:left}"
        "td.num{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#b00;font-weight:bold}"
        ".row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}figure{margin:0}"
        "figure img{max-width:420px;max-height:260px;border:1px solid #ddd}.plots figure img{max-width:760px;max-height:420px}figcaption{font-size:11px;color:#555}"
        ".card{border:1px solid #ddd;padding:6px;border-radius:4px}.card h3{font-size:13px;margin:2px 0 6px}"
        ".src{font-size:12px;color:#555}h3.group{margin-bottom:4px}"
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
    p.add_argument("--format", nargs="+", default=["md", "tex", "csv"], choices=FORMATS, help="table formats (default: md tex csv)")
    p.add_argument("--images", nargs="*", default=["reconstructions", "samples", "embedding"], metavar="SUBSTRING",
                   help="image keys shown per run in the HTML page (default: reconstructions samples embedding)")
    p.add_argument("--out", type=Path, help="output folder (default: <source>/report, or report/ for W&B)")
    p.add_argument("--name", default="table", help="file stem of the tables (default: table)")
    p.add_argument("--title", default="", help="title of the HTML page and the LaTeX caption")
    p.add_argument("--digits", type=int, default=3, help="decimals in the tables (default: 3)")
    p.add_argument("--wandb-group", help="with wandb:<entity>/<project>: only the runs of this W&B group")
    return p


def make_report(args: argparse.Namespace) -> dict[str, Path]:
    """Collect, group, aggregate and write; returns ``{format or figure name: path}``."""
    if args.plot and not args.against:
        raise ConfigError("report --plot: needs --against <swept config key>")
    runs = collect(args.source, args.wandb_group)
    unreadable = [r for r in runs if r.status == UNREADABLE]
    runs = [r for r in runs if r.status != UNREADABLE]
    if not runs:
        raise ConfigError(f"report: every run under {args.source} is unreadable (first: {unreadable[0].error})")
    reference = load_reference(args.reference) if args.reference else None
    groups = group_runs(runs, args.group_by)
    table = build_table(groups, args.group_by, args.metrics, reference, args.digits)
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
        codes = plot_codes(groups, out / "codes.png", args.group_by)
        if codes is None:
            raise ConfigError("report --codes: no finished run logged test codes (tables/test_embedding_table.csv)")
        figures.append(codes)
        written["codes"] = codes
    failures = failure_lines(groups)
    if unreadable:
        failures.append(f"{len(unreadable)} unreadable run{'s' if len(unreadable) > 1 else ''} left out of the table")
        failures += [f"{r.name}: unreadable ({r.error})" for r in unreadable]
    title = args.title or f"latentbench report: {args.source}"
    for fmt_name in args.format:
        if fmt_name == "md":
            text = to_markdown(table)
            if reference is not None and reference.source:
                text += f"\n{reference.label}: {reference.source}\n"
            if failures:
                text += "\nFailed or missing runs:\n\n" + "".join(f"- {line}\n" for line in failures)
            path = out / f"{args.name}.md"
        elif fmt_name == "tex":
            text, path = to_latex(table, args.title), out / f"{args.name}.tex"
        elif fmt_name == "csv":
            text, path = to_csv(table), out / f"{args.name}.csv"
        else:
            text = to_html(title, table, figures, groups, failures, args.images, reference)
            path = out / f"{args.name}.html"
        path.write_text(text, encoding="utf-8")
        written[fmt_name] = path
    print(to_markdown(table), end="")
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

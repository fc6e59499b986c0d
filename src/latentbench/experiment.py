"""``latentbench experiment <name> [--quick] [overrides]``: run a paper experiment and write its tables.

An experiment is a folder ``experiments/<name>/`` with ``experiment.yaml`` (its Hydra multiruns and
the ``latentbench report`` arguments of each), the paper's numbers (``reference.yaml``) and a README.
Each entry of ``runs`` is one ``latentbench train -m <overrides>`` into ``<out>/<entry>/``, then one
``latentbench report`` into ``<out>/report/<entry>.{md,tex,csv,html}``. ``--quick`` merges the
experiment's ``quick.overrides`` over every run (same key: the quick value wins): the same code
path on a slice of the data, for CPUs and tests. Extra overrides on the command line win over both.
``<out>/experiment.json`` records the experiment, its mode and the budget overrides, so that a
report of its runs (also one made later by hand) marks quick-mode tables as such.

Entries run in their order, and a later one may use an earlier one's runs: every run gets
``paths.experiment_dir=<out>`` (absolute), so a config can name e.g.
``model.pretrained: ${paths.experiment_dir}/pretrain/masking0.25_seed${seed}``, the run folder of the
``pretrain`` entry's job whose ``hydra.sweep.subdir`` is ``masking${model.masking}_seed${seed}``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from latentbench.errors import ConfigError


def experiments_dir() -> Path:
    from latentbench.compose import conf_dir

    return conf_dir().parent / "experiments"


def load_experiment(name: str) -> tuple[Path, dict[str, Any]]:
    """``(folder, experiment.yaml)`` of ``experiments/<name>`` (or of a folder path)."""
    import yaml

    folder = Path(name) if Path(name).is_dir() else experiments_dir() / name
    spec_file = folder / "experiment.yaml"
    if not spec_file.is_file():
        available = sorted(p.parent.name for p in experiments_dir().glob("*/experiment.yaml"))
        raise ConfigError(f"experiment: unknown experiment {name!r} (available: {', '.join(available) or 'none'})")
    spec = yaml.safe_load(spec_file.read_text()) or {}
    lists = [run.get(k, []) for run in (spec.get("runs") or {}).values() for k in ("overrides", "quick")]
    lists.append((spec.get("quick") or {}).get("overrides", []))
    if any(not isinstance(o, str) or "=" not in o for layer in lists for o in layer):
        raise ConfigError(f"experiment: {spec_file}: every override must be a 'key=value' string (quote values with commas)")
    if not isinstance(spec.get("runs"), dict) or not spec["runs"]:
        raise ConfigError(f"experiment: {spec_file} needs 'runs: {{<name>: {{overrides: [...], report: [...]}}}}'")
    return folder, spec


def override_key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def merge_overrides(*layers: list[str]) -> list[str]:
    """Later layers replace earlier overrides of the same key (a multirun must not see a key twice)."""
    merged: dict[str, str] = {}
    for layer in layers:
        for override in layer:
            merged.pop(override_key(override), None)
            merged[override_key(override)] = str(override)
    return list(merged.values())


def report_args(folder: Path, args: list[str]) -> list[str]:
    """The experiment's report arguments, with ``--reference <file>`` made relative to its folder."""
    resolved = [str(a) for a in args]
    for i, arg in enumerate(resolved[:-1]):
        if arg == "--reference" and not Path(resolved[i + 1]).is_absolute():
            resolved[i + 1] = str(folder / resolved[i + 1])
    return resolved


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentbench experiment", description="Run a paper experiment (experiments/<name>/) and write its tables.")
    p.add_argument("name", help="an experiment under experiments/, e.g. hinton2006")
    p.add_argument("--quick", action="store_true", help="the quick mode: a slice of the data, few epochs and seeds, CPU, offline")
    p.add_argument("--only", nargs="+", metavar="RUN", help="only these entries of the experiment's runs")
    p.add_argument("--out", type=Path, help="output folder (default: outputs/experiments/<name>/<quick|full>_<time>)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. trainer.max_epochs=10 seed=1")
    return p


def main(argv: list[str]) -> int:
    from latentbench.launch import run_train
    from latentbench.report import EXPERIMENT_RECORD, main as report_main
    from latentbench.run_dir import now, write_json

    args = parser().parse_intermixed_args(argv)
    if args.only:  # `--only ldm trainer=cpu`: argparse hands the overrides after --only to it
        args.overrides = [*(word for word in args.only if "=" in word), *args.overrides]
        args.only = [word for word in args.only if "=" not in word]
    folder, spec = load_experiment(args.name)
    runs = spec["runs"]
    unknown = sorted(set(args.only or []) - set(runs))
    if unknown:
        raise ConfigError(f"experiment --only: {', '.join(unknown)} (runs of {args.name}: {', '.join(runs)})")
    mode = "quick" if args.quick else "full"
    out = args.out or Path("outputs") / "experiments" / spec.get("name", args.name) / f"{mode}_{datetime.now():%Y-%m-%d_%H-%M-%S}"
    quick = (spec.get("quick") or {}).get("overrides", []) if args.quick else []
    write_json(out / EXPERIMENT_RECORD, {"experiment": spec.get("name", args.name), "mode": mode, "started": now(),
                                         "overrides": merge_overrides(quick, args.overrides)})
    code = 0
    written = []
    for entry, run in runs.items():
        if args.only and entry not in args.only:
            continue
        sweep_dir = out / entry
        run_quick = run.get("quick", []) if args.quick else []
        overrides = merge_overrides([f"paths.experiment_dir={out.resolve()}"], spec.get("common", []), run.get("overrides", []), quick,
                                    run_quick, args.overrides)
        print(f"== {spec.get('name', args.name)}/{entry} ({mode}): latentbench train -m {' '.join(overrides)}", file=sys.stderr)
        code = max(code, run_train(["-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]))
        if not sweep_dir.is_dir():
            raise ConfigError(f"experiment: {args.name}/{entry}: Hydra started no run (see its message above)")
        report = [str(sweep_dir), *report_args(folder, run.get("report", [])), "--out", str(out / "report"), "--name", entry,
                  "--format", "md", "tex", "csv", "html"]
        report_main(report)
        written.append(out / "report" / f"{entry}.md")
        if run.get("curves"):  # a metric against training steps, one line per run (latentbench.curves)
            from latentbench.curves import write_curves

            write_curves(sweep_dir, run["curves"]["metrics"], out / "report", entry, run["curves"].get("title", ""))
            written.append(out / "report" / f"{entry}_curves.md")
    print("\n".join(f"table: {path}" for path in written))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``latentbench sweep sweeps/<file>.yaml``: one W&B sweep file, two back ends.

Online (a W&B key, ``WANDB_MODE`` not offline/disabled) it creates the W&B sweep (``wandb.sweep``)
and runs an agent on it (``wandb.agent``), which starts the file's ``command`` once per trial:
``latentbench train <fixed overrides> ${args_no_hyphens}``. ``${args_no_hyphens}`` makes W&B pass
``key=value`` (Hydra's override syntax) rather than ``--key=value``.

Offline it runs the same search space locally through Hydra multirun, one trial after another in
this process: ``grid`` through Hydra's basic sweeper (``key=a,b,c``), ``random`` and ``bayes``
through the Optuna sweeper (``hydra-optuna-sweeper``: random sampler, TPE sampler) with the
sweep's ``metric.name`` as ``optimized_metric`` and its ``metric.goal`` as the direction.

Every trial carries the sweep name as its W&B ``group`` and ``run_name`` prefix. A trial that fails
(bad hyperparameters, NaN loss) is recorded in its ``metrics.json`` as failed, with the reason, and
the sweep goes on; the summary at the end lists every trial with its status and objective.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from latentbench.errors import ConfigError, first_line
from latentbench.overrides import hydra_value

METHODS = ("grid", "random", "bayes")
# ----------------------------------------------------------------------------- reading a sweep file


def load_sweep(path: str | Path) -> dict[str, Any]:
    """The sweep file as a dict, checked: ``name``, ``method``, ``parameters``, ``command``, ``metric``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep: {path} does not exist (expected a W&B sweep file such as sweeps/ae_grid.yaml)")
    try:
        sweep = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"sweep: {path} is not valid YAML: {first_line(error)}") from None
    if not isinstance(sweep, dict):
        raise ConfigError(f"sweep: {path} must be a mapping with method, metric, parameters and command")
    sweep.setdefault("name", path.stem)
    method = sweep.get("method")
    if method not in METHODS:
        raise ConfigError(f"sweep: {path}: method {method!r} (allowed: {', '.join(METHODS)})")
    parameters = sweep.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise ConfigError(f"sweep: {path}: 'parameters' must map config keys to {{values: [...]}}, {{value: x}} or {{min: a, max: b}}")
    metric = sweep.get("metric") or {}
    if method != "grid" and not metric.get("name"):
        raise ConfigError(f"sweep: {path}: method {method} needs metric: {{name: test/recon_sse, goal: minimize}}")
    if metric and metric.get("goal", "minimize") not in ("minimize", "maximize"):
        raise ConfigError(f"sweep: {path}: metric.goal {metric.get('goal')!r} (allowed: minimize, maximize)")
    command = sweep.get("command")
    if not isinstance(command, list) or "${args_no_hyphens}" not in command:
        raise ConfigError(
            f"sweep: {path}: command must end with ${{args_no_hyphens}} (e.g. [${{env}}, latentbench, train, ${{args_no_hyphens}}]); "
            "other macros make W&B pass --key=value, which Hydra rejects"
        )
    if "train" not in command:
        raise ConfigError(f"sweep: {path}: command must run `latentbench train` (got {' '.join(map(str, command))})")
    return sweep


def fixed_overrides(sweep: dict[str, Any]) -> list[str]:
    """The literal Hydra overrides of the command (the items after ``train`` that are not W&B macros)."""
    command = [str(c) for c in sweep["command"]]
    return [c for c in command[command.index("train") + 1:] if not (c.startswith("${") and c.endswith("}"))]


# ----------------------------------------------------------------------------- search space -> Hydra


def parameter_spec(key: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or not ({"values", "value"} & set(spec) or {"min", "max"} <= set(spec)):
        raise ConfigError(f"sweep: parameters.{key}: expected {{values: [...]}}, {{value: x}} or {{min: a, max: b}}, got {spec!r}")
    return spec


def grid_overrides(parameters: dict[str, Any]) -> list[str]:
    """Basic sweeper: ``key=a,b,c`` per parameter (the cartesian product, as W&B's grid)."""
    overrides = []
    for key, spec in parameters.items():
        spec = parameter_spec(key, spec)
        if "value" in spec:
            overrides.append(f"{key}={hydra_value(spec['value'])}")
        elif "values" in spec:
            overrides.append(f"{key}=" + ",".join(hydra_value(v) for v in spec["values"]))
        else:
            raise ConfigError(f"sweep: parameters.{key}: a grid sweep needs 'values' (got min/max)")
    return overrides


def optuna_overrides(parameters: dict[str, Any]) -> list[str]:
    """Optuna sweeper search space: ``choice(...)``, ``interval(a,b)``, ``int(interval(a,b))``, ``tag(log, interval(a,b))``."""
    overrides = []
    for key, spec in parameters.items():
        spec = parameter_spec(key, spec)
        if "value" in spec:
            overrides.append(f"{key}={hydra_value(spec['value'])}")
            continue
        if "values" in spec:
            overrides.append(f"{key}=choice(" + ",".join(hydra_value(v) for v in spec["values"]) + ")")
            continue
        low, high = spec["min"], spec["max"]
        distribution = spec.get("distribution") or ("int_uniform" if isinstance(low, int) and isinstance(high, int) else "uniform")
        if distribution == "int_uniform":
            overrides.append(f"{key}=int(interval({int(low)},{int(high)}))")
        elif distribution == "uniform":
            overrides.append(f"{key}=interval({float(low)!r},{float(high)!r})")
        elif distribution == "log_uniform_values":
            overrides.append(f"{key}=tag(log,interval({float(low)!r},{float(high)!r}))")
        else:
            raise ConfigError(f"sweep: parameters.{key}: distribution {distribution!r} has no local equivalent "
                              "(use values, int_uniform, uniform or log_uniform_values)")
    return overrides


def local_args(sweep: dict[str, Any], count: int | None, sweep_dir: Path, extra: list[str], jobs: int = 1) -> list[str]:
    """The ``latentbench train -m ...`` arguments that run ``sweep`` locally into ``sweep_dir``,
    ``jobs`` trials at once (``hydra/launcher=parallel``) when more than one."""
    name = sweep["name"]
    if jobs > 1:
        extra = ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={jobs}", *extra]
    pinned = {o.partition("=")[0].lstrip("+~") for o in extra}
    parameters = {k: v for k, v in sweep["parameters"].items() if k not in pinned}  # an extra override pins a parameter
    common = [
        "-m",
        *(o for o in fixed_overrides(sweep) if o.partition("=")[0] not in ("logger.wandb.group", "run_name")),
        *extra,
        f"++logger.wandb.group={hydra_value(name)}",  # ++: also when logger=none (then unused)
        f"hydra.sweep.dir={sweep_dir}",
    ]
    if sweep["method"] == "grid":
        return [*common, *grid_overrides(parameters)]
    metric = sweep["metric"]
    return [
        *common,
        "hydra/sweeper=optuna",
        f"hydra/sweeper/sampler={'random' if sweep['method'] == 'random' else 'tpe'}",
        f"hydra.sweeper.direction={metric.get('goal', 'minimize')}",
        f"hydra.sweeper.n_trials={count or sweep.get('run_cap') or 10}",
        f"hydra.sweeper.n_jobs={jobs}",  # trials Optuna proposes at once: one per parallel slot
        "hydra.sweeper.max_failure_rate=1.0",
        f"hydra.sweeper.study_name={hydra_value(name)}",
        f"optimized_metric={hydra_value(metric['name'])}",
        *optuna_overrides(parameters),
    ]


# ----------------------------------------------------------------------------- running


def wandb_online() -> bool:
    from latentbench.tracking import wandb_has_key

    return os.environ.get("WANDB_MODE", "online") not in ("offline", "disabled", "dryrun") and wandb_has_key()


def run_wandb(sweep: dict[str, Any], count: int | None, project: str | None, entity: str | None) -> int:
    """Create the W&B sweep and run an agent on it in this process (it starts the command per trial)."""
    import wandb

    config = {k: v for k, v in sweep.items()}
    sweep_id = wandb.sweep(sweep=config, project=project or "latentbench", entity=entity)
    print(f"W&B sweep {sweep_id}: more agents with `wandb agent {entity + '/' if entity else ''}{project or 'latentbench'}/{sweep_id}`")
    wandb.agent(sweep_id, project=project or "latentbench", entity=entity, count=count)
    return 0


def trial_rows(sweep_dir: Path, metric: str | None, swept: list[str]) -> list[dict[str, Any]]:
    """One row per job of the multirun: its folder, swept overrides, status and objective (or failure reason)."""
    from latentbench.run_dir import multirun_jobs

    rows = []
    for job in multirun_jobs(sweep_dir):
        shown = [o for o in job["overrides"] if o.split("=")[0] in swept]
        value = job["metrics"].get(metric) if metric else None
        detail = job["metrics"].get("error", "") if job["status"] != "finished" else ("" if value is None else f"{value:.6g}")
        rows.append({"job": job["job"].split("_", 1)[0], "overrides": " ".join(shown), "status": job["status"], "objective": detail, "value": value})
    return rows


def print_summary(sweep: dict[str, Any], sweep_dir: Path) -> list[dict[str, Any]]:
    metric = (sweep.get("metric") or {}).get("name")
    rows = trial_rows(sweep_dir, metric, list(sweep["parameters"]))
    print(f"\nsweep {sweep['name']} ({sweep['method']}, {len(rows)} trials) in {sweep_dir}")
    width = max([len("overrides"), *(len(r["overrides"]) for r in rows)])
    print(f"{'job':>4}  {'status':<9} {'overrides':<{width}}  {metric or 'objective'} (or why it failed)")
    for row in rows:
        print(f"{row['job']:>4}  {row['status']:<9} {row['overrides']:<{width}}  {row['objective']}")
    finished = [r for r in rows if r["status"] == "finished" and isinstance(r["value"], (int, float)) and math.isfinite(r["value"])]
    if metric and finished:
        best = (min if (sweep.get("metric") or {}).get("goal", "minimize") == "minimize" else max)(finished, key=lambda r: r["value"])
        print(f"best: job {best['job']} {metric}={best['value']:.6g} ({best['overrides']})")
    print(f"table: latentbench report {sweep_dir} --group-by {' '.join(sweep['parameters'])}" + (f" --metrics {metric}" if metric else ""))
    return rows


def run_local(sweep: dict[str, Any], count: int | None, out: Path | None, extra: list[str], jobs: int = 1) -> int:
    from latentbench.launch import run_train

    sweep_dir = out or Path("outputs") / "sweeps" / sweep["name"] / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if sweep["method"] == "grid" and count:
        print("note: --count is ignored for a local grid sweep (every combination runs)", file=sys.stderr)
    args = local_args(sweep, count, sweep_dir, extra, jobs)
    print("latentbench train " + " ".join(args), file=sys.stderr)
    try:
        run_train(args)
    except ValueError as error:  # Optuna: "No trials are completed yet" when every trial failed
        print(f"note: {first_line(error)}", file=sys.stderr)
    if not sweep_dir.is_dir():
        raise ConfigError(f"sweep: {sweep['name']}: Hydra started no trial (see its message above)")
    rows = print_summary(sweep, sweep_dir)
    return 0 if any(r["status"] == "finished" for r in rows) else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="latentbench sweep",
        description="Run a W&B sweep file: a W&B sweep + agent when W&B is online, the same search space through Hydra multirun offline.",
    )
    p.add_argument("file", help="a W&B sweep file, e.g. sweeps/ae_lr_grid.yaml")
    p.add_argument("--count", type=int, help="number of trials (random/bayes; W&B: trials this agent runs)")
    p.add_argument("--local", action="store_true", help="run locally through Hydra multirun even when W&B is online")
    p.add_argument("--out", type=Path, help="local sweep directory (default: outputs/sweeps/<name>/<time>)")
    p.add_argument("--jobs", type=int, default=1, help="local trials at once on this machine (worker processes sharing "
                                                        "the cores or the GPU; default 1)")
    p.add_argument("--project", help="W&B project (default: latentbench)")
    p.add_argument("--entity", help="W&B entity")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every trial (local mode), e.g. trainer.max_epochs=1")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_intermixed_args(argv)
    sweep = load_sweep(args.file)
    if args.count is not None and args.count <= 0:
        raise ConfigError(f"sweep --count: must be positive, got {args.count}")
    if args.jobs <= 0:
        raise ConfigError(f"sweep --jobs: must be positive, got {args.jobs}")
    if not args.local and wandb_online():
        if args.jobs > 1:
            raise ConfigError("sweep --jobs: runs local trials at once (with --local); for a W&B sweep start one agent per slot")
        if args.overrides:
            raise ConfigError("sweep: extra overrides only apply locally; put them in the sweep file's command for W&B")
        return run_wandb(sweep, args.count, args.project, args.entity)
    return run_local(sweep, args.count, args.out, args.overrides, args.jobs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

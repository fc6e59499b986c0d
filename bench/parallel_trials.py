"""Trials per hour of a small sweep, one trial at a time vs N at once (issue 20, goal 5).

    uv run python -m bench.parallel_trials [--jobs N --trials 12 --limit 10000 --epochs 2 --device cpu|cuda]

The same 12-trial MNIST autoencoder grid (``model.latent_dim`` x ``seed``) runs twice as
``latentbench train -m``, each in a fresh process: with Hydra's default launcher (one trial after
another, in the one process) and with ``hydra/launcher=parallel hydra.launcher.n_jobs=N`` (worker
processes, N trials at once, the cores split between them; on a GPU the N trials share it).
Reported: wall time of each, trials per hour, the speed-up, and that every trial finished with its
own seed, folder and W&B run (offline).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import environment, write_result

MNIST = os.environ.get("LATENTBENCH_DATA", "../shared/data") + "/mnist"
LATENT_DIMS = (4, 8, 16, 32, 64, 128)


def grid(trials: int) -> list[str]:
    """Sweep overrides with ``trials`` jobs: latent sizes x seeds."""
    seeds = max(1, trials // len(LATENT_DIMS))
    dims = LATENT_DIMS[: max(1, trials // seeds)]
    return [f"model.latent_dim={','.join(map(str, dims))}", f"seed={','.join(str(s) for s in range(1, seeds + 1))}"]


def run_sweep(sweep_dir: Path, overrides: list[str], launcher: list[str]) -> float:
    command = [sys.executable, "-m", "latentbench.cli", "train", "-m", *overrides, *launcher, f"hydra.sweep.dir={sweep_dir}"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"sweep failed ({' '.join(launcher) or 'default launcher'}):\n{result.stderr[-3000:]}")
    return seconds


def trials_kept_apart(sweep_dir: Path) -> dict:
    """Each job folder's seed and W&B run id: all finished, seeds as swept, no run shared."""
    jobs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]
    runs = {job.get("wandb_run_id") for job in jobs}
    return {"jobs": len(jobs), "finished": sum(job["status"] == "finished" for job in jobs),
            "distinct_wandb_runs": len(runs - {None}), "seeds": sorted({job["seed"] for job in jobs})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="trials at once (default: one per core)")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--limit", type=int, default=10000, help="MNIST images per split (data.limit)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    overrides = ["model=ae", "data=mnist", f"data.root={MNIST}", f"data.limit={args.limit}", f"trainer.accelerator={accelerator}",
                 f"trainer.max_epochs={args.epochs}", "logger=wandb", "callbacks.embedding_plot.methods=[pca]", *grid(args.trials)]
    with tempfile.TemporaryDirectory() as tmp:
        one = run_sweep(Path(tmp) / "one", overrides, [])
        many = run_sweep(Path(tmp) / "many", overrides, ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={args.jobs}"])
        kept = {"one_at_a_time": trials_kept_apart(Path(tmp) / "one"), "parallel": trials_kept_apart(Path(tmp) / "many")}
    trials = kept["one_at_a_time"]["jobs"]
    result = {
        "benchmark": "parallel_trials", "trials": trials, "jobs": args.jobs, "limit": args.limit, "epochs": args.epochs,
        "device_kind": args.device, "overrides": overrides,
        "one_at_a_time_seconds": one, "parallel_seconds": many,
        "one_at_a_time_trials_per_hour": 3600 * trials / one, "parallel_trials_per_hour": 3600 * trials / many,
        "speedup": one / many, "kept_apart": kept, **environment(args.device),
    }
    name = args.name or f"parallel_trials-{args.device.split(':')[0]}-{args.jobs}jobs"
    path = write_result(name, result)
    print(f"{name}: {trials} trials one at a time {one:.0f} s ({result['one_at_a_time_trials_per_hour']:.0f}/h), "
          f"{args.jobs} at once {many:.0f} s ({result['parallel_trials_per_hour']:.0f}/h): {result['speedup']:.2f}x; "
          f"kept apart: {kept['parallel']} -> {path}")


if __name__ == "__main__":
    main()

"""Start-up: how long a command takes before it answers, and the README's main command end to end.

    uv run python -m bench.startup [--reps 3] [--skip-train]

Each command runs in a fresh interpreter (``python -m latentbench.cli ...``), as a user runs it:

- ``train --help``, ``train --cfg job`` and a config error (``trainer.max_epoch=3``, a misspelled
  key): goal <= 2 s on the 2-core machine; these compose the config and must not import torch;
- ``train`` (the README's main command: the default run, W&B offline, into a temporary folder):
  goal <= 25 s;
- the baseline, in the same process: ``python -c "import torch, pytorch_lightning"``, the price of
  the two imports any training run pays, so the figures read against this machine's speed.

Writes ``bench/results/startup.json``: seconds (min / median / max over ``--reps``) per command,
each also as a ratio to the baseline, and whether torch was imported (``-X importtime``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from bench.common import environment, spread, write_result

COMMANDS = {
    "help": ["train", "--help"],
    "cfg_job": ["train", "--cfg", "job"],
    "config_error": ["train", "trainer.max_epoch=3"],
    # errors the config checker finds (a value of the wrong type, a key the class does not take)
    "type_error": ["train", "model.latent_dim=abc"],
    "unknown_argument": ["train", "+model.foo=1"],
}


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    return time.perf_counter() - started, result


def imports_torch(args: list[str], env: dict[str, str]) -> bool:
    """Whether the command imports torch (``-X importtime`` lists every module it imports)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "latentbench.cli", *args], capture_output=True, text=True, env=env)
    return any(line.rstrip().endswith("| torch") for line in result.stderr.splitlines())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true", help="leave out the README main command (about half a minute a repetition)")
    args = parser.parse_args()
    env = {**os.environ, "WANDB_MODE": "offline"}
    baseline = [timed([sys.executable, "-c", "import torch, pytorch_lightning"], env)[0] for _ in range(args.reps)]
    result = {"environment": environment("cpu"), "baseline_import_torch_lightning_s": spread(baseline), "commands": {}}
    runs = dict(COMMANDS)
    if not args.skip_train:
        runs["readme_train"] = ["train"]
    for name, command in runs.items():
        seconds = []
        for _ in range(args.reps):
            with tempfile.TemporaryDirectory() as folder:
                extra = [f"hydra.run.dir={folder}/run"] if name == "readme_train" else []
                elapsed, completed = timed([sys.executable, "-m", "latentbench.cli", *command, *extra], env)
            expected = 2 if name in ("config_error", "type_error", "unknown_argument") else 0
            if completed.returncode != expected:
                raise SystemExit(f"{name}: exit {completed.returncode}, expected {expected}:\n{completed.stderr[-2000:]}")
            seconds.append(elapsed)
        median_baseline = spread(baseline)["median"]
        result["commands"][name] = {"seconds": spread(seconds), "ratio_to_baseline": spread([s / median_baseline for s in seconds]),
                                    "imports_torch": imports_torch(command, env) if name != "readme_train" else True}
        print(f"{name:>13}: {spread(seconds)['median']:.2f} s median (min {min(seconds):.2f}, max {max(seconds):.2f}), "
              f"{spread(seconds)['median'] / median_baseline:.2f}x importing torch+Lightning; "
              f"imports torch: {result['commands'][name]['imports_torch']}")
    print(f"baseline: import torch, pytorch_lightning {spread(baseline)['median']:.2f} s median")
    print(f"wrote {write_result('startup', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

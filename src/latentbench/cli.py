"""The ``latentbench`` command: ``latentbench <subcommand> [args]``, a dispatcher and nothing else.

Each subcommand is a function in its own module, imported only when it runs; a ConfigError from
any of them ends as one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import os
import sys

from latentbench.errors import ConfigError

# name -> ("module:function" taking the remaining arguments and returning an exit code, help line)
SUBCOMMANDS = {
    "train": ("latentbench.launch:run_train",
              "train and test one run (or a Hydra multirun with -m); arguments are Hydra overrides"),
    "eval": ("latentbench.evaluate:main",
             "recompute a trained run's test metrics: eval checkpoint=<path> [overrides, e.g. more metrics]"),
    "embeddings": ("latentbench.evaluation.embeddings:main",
                   "side-by-side 2-D test codes of two runs: embeddings <run dir A> <run dir B> [--out file.png]"),
    "sweep": ("latentbench.sweep:main",
              "run a W&B sweep file: W&B sweep + agent online, the same search space via Hydra multirun offline"),
    "report": ("latentbench.report:main",
               "tables (Markdown, LaTeX, CSV, HTML) and plots from run directories or a W&B project/sweep"),
    "sample": ("latentbench.sample:run_sample",
               "images from a latent diffusion checkpoint: checkpoint=<ckpt> output=<dir> [classes=[..]|prompts=[..]] ..."),
    "experiment": ("latentbench.experiment:main",
                   "run a paper experiment from experiments/<name>/ (--quick: minutes on a CPU) and write its tables"),
}

USAGE = "usage: latentbench <subcommand> [args]\n\nsubcommands:\n" + "\n".join(
    f"  {name:<11} {text}" for name, (_, text) in SUBCOMMANDS.items()
) + "\n\n'latentbench <subcommand> --help' shows the options of one subcommand."


def subcommand(name: str):
    """The function that runs subcommand ``name``, imported only when it is used."""
    import importlib

    module, _, function = SUBCOMMANDS[name][0].partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command in SUBCOMMANDS:
            return subcommand(command)(rest)
    except ConfigError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"error: unknown subcommand {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

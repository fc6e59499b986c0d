"""Shared fixtures: configs composed with Hydra's compose API, each run in its own tmp dir, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from latentbench.compose import compose_run_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LATENTBENCH_DATA", REPO.parent / "shared" / "data"))
MNIST_ROOT = SHARED_DATA / "mnist"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

needs_mnist = pytest.mark.skipif(not MNIST_ROOT.is_dir(), reason=f"shared MNIST not found at {MNIST_ROOT}")

# Overrides that make any run tiny and quiet: CPU, no W&B unless a test asks for it.
FAST = ["trainer=cpu", "logger=none", "trainer.max_epochs=1"]
MNIST_SLICE = [f"data=mnist", f"data.root={MNIST_ROOT}", "data.limit=512", "data.val_size=512"]


def make_cfg(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/train.yaml`` with overrides, as ``latentbench train`` would, into ``output_dir``.

    The test-time embedding view draws PCA only, unless a test names ``callbacks...`` itself:
    t-SNE costs ~10 s per run on two cores, and tests/test_embeddings.py covers it.
    """
    if not any(o.startswith(("callbacks", "~callbacks", "+callbacks")) for o in overrides):
        overrides = [*overrides, "callbacks.embedding_plot.methods=[pca]"]
    return compose_run_config(overrides, output_dir)


@pytest.fixture
def cfg_factory(tmp_path):
    """``cfg_factory(*overrides)`` -> composed config writing into this test's ``tmp_path``."""

    def factory(*overrides: str) -> DictConfig:
        return make_cfg([*FAST, *overrides], tmp_path)

    yield factory
    GlobalHydra.instance().clear()


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300,
            fresh: bool = False) -> subprocess.CompletedProcess:
    """Run ``latentbench <args>`` in a process of its own, as a user would.

    By default the process is forked from a server that has imported the project already
    (``tests/forked.py``: no 20 s of imports per run); ``fresh=True`` starts a new interpreter
    (``python -m latentbench.cli``), for what a fork cannot show (DDP re-executing its argv).
    """
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    if not fresh:
        from tests.forked import run_forked

        return run_forked(list(args), cwd or REPO, full_env, timeout)
    return subprocess.run(
        [sys.executable, "-m", "latentbench.cli", *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

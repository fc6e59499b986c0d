"""Compose a run's config from Python (notebooks, tests, benchmarks), as ``latentbench train`` would."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from latentbench.cli import conf_dir


def compose_run_config(overrides: list[str], output_dir: str | Path) -> DictConfig:
    """``conf/train.yaml`` + overrides, with the run writing into ``output_dir``.

    Sets Hydra's runtime config too, so that ``${hydra:...}`` interpolations resolve and
    ``latentbench.train.train(cfg)`` runs exactly as under the CLI.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg

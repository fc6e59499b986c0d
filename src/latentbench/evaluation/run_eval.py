"""``latentbench eval checkpoint=<path> [overrides]``: recompute a trained run's test metrics.

The run directory is the checkpoint's ``<run>/checkpoints/..`` parent. Its config is recomposed
from the run's own overrides (``.hydra/overrides.yaml``) plus the new ones, with the model node
taken verbatim from ``.hydra/config.yaml`` (it must match the checkpoint). New overrides can
enable more metrics (``metrics.fid.checkpoint=...``) or change the embedding views. The results
go into the run's ``metrics.json`` under ``eval`` (the original keys are kept), and to the run's
W&B run when ``run.json`` names one.
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from latentbench.errors import ConfigError

log = logging.getLogger(__name__)

USAGE = "usage: latentbench eval checkpoint=<path to .ckpt> [overrides, e.g. metrics.fid.checkpoint=<classifier ckpt>]"


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory holding ``checkpoint`` (the first parent with ``.hydra/config.yaml``)."""
    for parent in checkpoint.resolve().parents:
        if (parent / ".hydra" / "config.yaml").is_file():
            return parent
    raise ConfigError(f"checkpoint: {checkpoint} is not inside a latentbench run directory (no .hydra/config.yaml above it)")


def eval_config(checkpoint: Path, overrides: list[str]) -> tuple[DictConfig, Path]:
    """The run's config with ``overrides`` applied, writing into the run directory."""
    from latentbench.cli import RESUME_KEYS, preflight, saved_overrides
    from latentbench.compose import compose_run_config

    run_dir = run_dir_of(checkpoint)
    saved = [o for o in saved_overrides(run_dir) if not o.startswith(RESUME_KEYS)]
    preflight([*saved, *overrides])
    cfg = compose_run_config([*saved, *overrides], run_dir)
    recorded = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    with open_dict(cfg):
        cfg.model = recorded.model  # the architecture the checkpoint was trained with
    return cfg, run_dir


def use_recorded_wandb_run(cfg: DictConfig, run_dir: Path) -> str | None:
    """Log to the run's W&B run when ``run.json`` names one; no logger otherwise. Returns the id."""
    run_file = run_dir / "run.json"
    run_id = json.loads(run_file.read_text()).get("wandb_run_id") if run_file.is_file() else None
    with open_dict(cfg):
        if run_id and "wandb" in (cfg.get("logger") or {}):
            cfg.logger = {"wandb": cfg.logger.wandb}
            cfg.logger.wandb.run_id = run_id
        else:
            cfg.logger = {}
            run_id = None
    return run_id


def evaluate(checkpoint: str | Path, overrides: list[str]) -> dict[str, Any]:
    """Test ``checkpoint`` with its run's config + ``overrides``; merge the results into ``metrics.json``."""
    import pytorch_lightning as pl

    from latentbench.tracking import git_commit, wandb_loggers, write_metrics_json
    from latentbench.train import build_run, finish_loggers

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint: {checkpoint} does not exist")
    cfg, run_dir = eval_config(checkpoint, overrides)
    run_id = use_recorded_wandb_run(cfg, run_dir)
    pl.seed_everything(cfg.seed, workers=True)
    objects = build_run(cfg)
    trainer = objects["trainer"]
    failed = True
    try:
        results = trainer.test(objects["model"], datamodule=objects["datamodule"], ckpt_path=str(checkpoint), weights_only=False)
        values = {k: float(v) for result in results for k, v in result.items()}
        for logger in wandb_loggers(objects["loggers"]):
            logger.experiment.summary.update({f"eval/{k}": v for k, v in values.items()})
        failed = False
    finally:
        if trainer.is_global_zero:
            finish_loggers(objects["loggers"], failed)
    section = {
        **values,
        "checkpoint": str(checkpoint),
        "overrides": list(overrides),
        "git_commit": git_commit(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wandb_run_id": run_id,
    }
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    metrics["eval"] = section
    if trainer.is_global_zero:
        write_metrics_json(metrics_file, metrics)
        log.info("eval metrics: %s (eval section)", metrics_file)
    return section


def main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    checkpoints = [a.partition("=")[2] for a in args if a.startswith("checkpoint=")]
    if len(checkpoints) != 1 or not checkpoints[0]:
        raise ConfigError(f"checkpoint: give exactly one checkpoint=<path> ({USAGE})")
    overrides = [a for a in args if not a.startswith("checkpoint=")]
    section = evaluate(checkpoints[0], overrides)
    print(json.dumps({k: v for k, v in section.items() if "/" in k}, indent=2, sort_keys=True))
    return 0

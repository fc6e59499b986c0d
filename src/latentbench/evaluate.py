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

from omegaconf import DictConfig, open_dict

from latentbench.errors import ConfigError, first_line
from latentbench.run_dir import RunDir

log = logging.getLogger(__name__)

USAGE = "usage: latentbench eval checkpoint=<path to .ckpt> [overrides, e.g. metrics.fid.checkpoint=<classifier ckpt>]"


def eval_config(checkpoint: Path, overrides: list[str]) -> tuple[DictConfig, RunDir]:
    """The run's config with ``overrides`` applied, writing into the run directory."""
    from latentbench.compose import compose_run_config, preflight
    from latentbench.config_check import drop_moved_keys, is_moved_override
    from latentbench.resume import recorded_overrides

    run = RunDir.containing(checkpoint)
    run.metrics()  # a corrupt metrics.json is named now, not after the evaluation

    saved = [o for o in recorded_overrides(run) if not is_moved_override(o)]  # an older run's model.fid=...
    preflight([*saved, *overrides])
    cfg = compose_run_config([*saved, *overrides], run.path)
    with open_dict(cfg):
        cfg.model = drop_moved_keys(run.recorded_config().model)  # the architecture the checkpoint was trained with
    return cfg, run


def use_recorded_wandb_run(cfg: DictConfig, run: RunDir) -> str | None:
    """Log to the run's W&B run when ``run.json`` names one; no logger otherwise. Returns the id."""
    run_id = run.wandb_run_id()
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

    from hydra.utils import get_class

    from latentbench.checkpoints import read_checkpoint
    from latentbench.tracking import git_commit, wandb_loggers
    from latentbench.train import build_run, finish_loggers

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint: {checkpoint} does not exist")
    cfg, run = eval_config(checkpoint, overrides)
    read_checkpoint(checkpoint, "checkpoint", expected=get_class(cfg.model._target_))
    run_id = use_recorded_wandb_run(cfg, run)
    pl.seed_everything(cfg.seed, workers=True)
    objects = build_run(cfg)
    trainer = objects["trainer"]
    failed = True
    try:
        try:
            results = trainer.test(objects["model"], datamodule=objects["datamodule"], ckpt_path=str(checkpoint), weights_only=True)
        except RuntimeError as error:  # e.g. a checkpoint of another data shape: size mismatch for <param>
            raise ConfigError(f"checkpoint: {checkpoint} does not fit this run's model and data ({mismatch_line(error)})") from None
        values = {k: float(v) for result in results for k, v in result.items()}
        for logger in wandb_loggers(objects["loggers"]):
            logger.experiment.summary.update({f"eval/{k}": v for k, v in values.items()})
        failed = False
    finally:
        if trainer.is_global_zero:
            finish_loggers(objects["loggers"], failed)
    section = {
        **values,
        "checkpoint": run.relative(checkpoint),
        "overrides": list(overrides),
        "git_commit": git_commit(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wandb_run_id": run_id,
    }
    if trainer.is_global_zero:
        run.add_eval_section(section)
        log.info("eval metrics: %s (eval section)", run.metrics_file)
    return section


def mismatch_line(error: BaseException) -> str:
    """The first ``size mismatch for ...`` line of a load_state_dict error, else its first line."""
    for line in str(error).splitlines():
        if "size mismatch" in line or "Missing key" in line or "Unexpected key" in line:
            return line.strip().rstrip(".")[:200]
    return first_line(error)[:200]


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

"""Time to quality: wall time for the MNIST deep autoencoder to beat the figures of Hinton &
Salakhutdinov (2006): squared error per image below 13.87 (their PCA-30) and below 3.00 (their
deep autoencoder).

    uv run python -m bench.time_to_quality                       # default recipe, CPU
    uv run python -m bench.time_to_quality --precision bf16-mixed  # the same, faster on CPUs with AVX512-BF16
    uv run python -m bench.time_to_quality --batch-size 256 --lr 2e-3 --max-epochs 100 --compile
    uv run python -m bench.time_to_quality --override model.activation=Sigmoid --weight-decay 0.01 --max-epochs 100
    uv run python -m bench.time_to_quality --device cuda --on-device

By default the run is ``experiment=hinton2006_ae30`` exactly as configured (its batch size, optimizer,
weight decay, schedule and epochs); each recipe flag given overrides that one value of it, and the
result records the recipe that ran (``config``). bench/README.md has the recipes tried.

The run is an ordinary ``latentbench train experiment=hinton2006_ae30`` run with one extra callback
that checks the validation squared error per image ``val_checks_per_epoch`` times an epoch and
notes the wall time (since the start of training) at which each target is first beaten; the run stops
when all targets are beaten or at ``--max-minutes``. The test error of the best checkpoint is
reported beside it, so that a figure reached on validation can be checked on the test set.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from bench.common import add_ab_arguments, environment, write_result
from latentbench.metrics import HINTON2006_MNIST_AE30_SSE, HINTON2006_MNIST_PCA30_SSE

MNIST = os.environ.get("LATENTBENCH_DATA", "../shared/data") + "/mnist"
CLOCK_FILE = "quality_clock.json"


class QualityClock(pl.Callback):
    """Notes when the monitored validation metric first drops below each target; stops when all are.

    With ``test_every`` > 0 it also measures the test squared error per image every ``test_every``
    epochs (the paper's figures are test figures; validation runs ~0.1 above test here) and notes when
    that first drops below each target. The clock stops while it measures the test set: the seconds it
    reports are training and validation time only.

    Writes ``<output_dir>/quality_clock.json``: ``{"reached": {"<target>": {"seconds", "epoch", "step",
    "value"}}, "history": [[seconds, value], ...], "test_reached": ..., "test_history": ...}``.
    """

    def __init__(self, output_dir: str, targets: list[float], monitor: str = "val/recon_sse",
                 max_minutes: float | None = None, test_every: int = 0):
        self.path = Path(output_dir) / CLOCK_FILE
        self.targets, self.monitor, self.max_minutes = sorted(targets, reverse=True), monitor, max_minutes
        self.test_every = test_every
        self.reached: dict[str, dict] = {}
        self.history: list[tuple[float, float]] = []
        self.test_reached: dict[str, dict] = {}
        self.test_history: list[tuple[float, float]] = []
        self.start, self.paused = time.perf_counter(), 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start, self.paused = time.perf_counter(), 0.0

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def note(self, trainer, value: float, history: list, reached: dict) -> None:
        seconds = self.seconds()
        history.append((round(seconds, 2), value))
        for target in self.targets:
            if str(target) not in reached and value < target:
                reached[str(target)] = {"seconds": round(seconds, 2), "epoch": trainer.current_epoch,
                                        "step": trainer.global_step, "value": value}
        self.path.write_text(json.dumps({"reached": self.reached, "history": self.history, "test_reached": self.test_reached,
                                         "test_history": self.test_history}, indent=2))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        self.note(trainer, float(trainer.callback_metrics[self.monitor]), self.history, self.reached)
        out_of_time = self.max_minutes is not None and self.seconds() > 60 * self.max_minutes
        if len(self.reached) == len(self.targets) or out_of_time:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.test_every and (trainer.current_epoch + 1) % self.test_every == 0:
            started = time.perf_counter()
            value = test_set_error(trainer, pl_module)
            self.paused += time.perf_counter() - started
            self.note(trainer, value, self.test_history, self.test_reached)


def test_set_error(trainer: pl.Trainer, model) -> float:
    """Squared error per image of ``model`` as it is now on the test split, under the run's precision."""
    datamodule = trainer.datamodule
    datamodule.setup("test")
    return squared_error_per_image(model, datamodule.test_dataloader(), trainer)


def squared_error_per_image(model, loader, trainer: pl.Trainer) -> float:
    """``ReconstructionSSE`` of ``model`` (in eval mode, under ``trainer``'s precision) over ``loader``'s
    clean images; the model's train/eval mode is restored after."""
    from latentbench.metrics import ReconstructionSSE

    metric, was_training = ReconstructionSSE().to(model.device), model.training
    model.eval()
    with torch.no_grad(), trainer.precision_plugin.forward_context():
        for batch in loader:
            batch = {key: value.to(model.device) for key, value in batch.items() if isinstance(value, torch.Tensor)}
            metric.update(model(model.model_input(batch)).float(), batch["image"].float())
    model.train(was_training)
    return float(metric.compute())


def recipe_overrides(args: argparse.Namespace) -> list[str]:
    """Hydra overrides for the recipe flags given (None: the experiment's own value)."""
    overrides = []
    if args.batch_size is not None:
        overrides.append(f"data.batch_size={args.batch_size}")
    if args.lr is not None:
        overrides.append(f"model.optimizer.lr={args.lr}")
    if args.weight_decay is not None:
        overrides += ["model.optimizer._target_=torch.optim.AdamW", f"++model.optimizer.weight_decay={args.weight_decay}"]
    if args.max_epochs is not None:
        overrides.append(f"trainer.max_epochs={args.max_epochs}")
    if args.schedule is not None:
        overrides += lr_schedule_overrides(args.schedule)
    if args.dropout is not None:
        overrides.append(f"model.dropout={args.dropout}")
    return overrides


def lr_schedule_overrides(schedule: str) -> list[str]:
    """Hydra overrides for the learning-rate schedule: ``constant`` or ``cosine`` (annealed to zero
    per epoch over ``trainer.max_epochs``, so the run should be allowed to finish its epochs:
    ``--max-minutes`` cuts it before the rate is low)."""
    if schedule == "constant":
        return ["model.scheduler=null"]
    if schedule == "cosine":
        return ["model.scheduler={_target_:torch.optim.lr_scheduler.CosineAnnealingLR,T_max:${trainer.max_epochs},interval:epoch}"]
    raise ValueError(f"--schedule: expected 'constant' or 'cosine', got {schedule!r}")


def recipe_that_ran(cfg) -> dict:
    """The recipe's values in the composed run config: what the flags and the experiment made of it."""
    optimizer, scheduler = cfg.model.optimizer, cfg.model.get("scheduler")
    return {"batch_size": cfg.data.batch_size, "optimizer": optimizer._target_.rsplit(".", 1)[-1], "lr": optimizer.lr,
            "weight_decay": optimizer.get("weight_decay", 0.0), "activation": cfg.model.activation,
            "init": cfg.model.init, "dropout": cfg.model.dropout, "max_epochs": cfg.trainer.max_epochs,
            "schedule": scheduler._target_.rsplit(".", 1)[-1] if scheduler else "constant"}


def training_set_error(cfg, checkpoint: str, accelerator: str) -> float:
    """Squared error per image of ``checkpoint`` on the training split (no corruption): beside the
    test figure it says whether a recipe underfits (both high) or overfits (train far below test)."""
    from latentbench.instantiate import build
    from latentbench.models.ae import AutoEncoder

    datamodule = build(cfg.data, "data")
    datamodule.setup("fit")
    model = AutoEncoder.load_from_checkpoint(checkpoint, map_location="cuda" if accelerator == "gpu" else "cpu",
                                             weights_only=True)
    # a trainer only for its precision plugin (the autocast of the run)
    trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=cfg.trainer.precision, logger=False)
    return squared_error_per_image(model, datamodule.train_dataloader(), trainer)


def seconds_to_targets(reached: dict[str, dict], targets: list[float]) -> dict[float, float | None]:
    """``{target: seconds when first beaten, or None}`` from a clock's ``reached`` record."""
    return {target: reached.get(str(target), {}).get("seconds") for target in targets}


def describe_reached(seconds_to_target: dict[float, float | None]) -> str:
    """``"< 13.87: 35.0 s, < 3.0: not reached"``."""
    return ", ".join(f"< {t}: {f'{s} s' if s is not None else 'not reached'}" for t, s in seconds_to_target.items())


def run(args: argparse.Namespace) -> dict:
    from hydra.core.global_hydra import GlobalHydra

    from latentbench.compose import compose_run_config
    from latentbench.train import train

    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    targets = [HINTON2006_MNIST_PCA30_SSE, HINTON2006_MNIST_AE30_SSE]
    with tempfile.TemporaryDirectory() as output_dir:
        overrides = [
            "experiment=hinton2006_ae30", f"data.root={MNIST}", f"trainer.accelerator={accelerator}",
            f"precision='{args.precision}'", f"trainer.val_check_interval={1 / args.val_checks_per_epoch}",
            f"data.on_device={str(args.on_device).lower()}", f"compile.enabled={str(args.compile).lower()}",
            "logger=wandb", "logger.wandb.mode=offline", *([f"data.limit={args.limit}"] if args.limit else []),
            "+callbacks.quality_clock._target_=bench.time_to_quality.QualityClock",
            f"+callbacks.quality_clock.output_dir={output_dir}",
            f"+callbacks.quality_clock.targets=[{targets[0]},{targets[1]}]",
            f"+callbacks.quality_clock.max_minutes={args.max_minutes}",
            f"+callbacks.quality_clock.test_every={args.test_every}",
            *recipe_overrides(args),
            *args.override,
        ]
        cfg = compose_run_config(overrides, Path(output_dir))
        start = time.perf_counter()
        metrics = train(cfg)
        total = time.perf_counter() - start
        clock = json.loads((Path(output_dir) / CLOCK_FILE).read_text())
        train_sse = training_set_error(cfg, metrics["checkpoint"], accelerator) if metrics.get("checkpoint") else None
        GlobalHydra.instance().clear()
    return {
        "recipe": {k: v for k, v in vars(args).items()},
        "config": recipe_that_ran(cfg),
        "seconds_to_target": seconds_to_targets(clock["reached"], targets),
        "reached": clock["reached"],
        "val_history": clock["history"],
        "test_seconds_to_target": seconds_to_targets(clock["test_reached"], targets),
        "test_reached": clock["test_reached"],
        "test_history": clock["test_history"],
        "test_recon_sse": metrics.get("test/recon_sse"),
        "train_recon_sse": train_sse,
        "epochs": metrics.get("epochs"),
        "total_seconds": round(total, 1),
    }


def result_name(args: argparse.Namespace, recipe: dict) -> str:
    """``time_to_quality-cpu-bs128-32-cosine50-wd0.1-tanh``: the device and the recipe that ran."""
    name = f"time_to_quality-{args.device.split(':')[0]}-bs{recipe['batch_size']}-{args.precision}{'-compile' if args.compile else ''}"
    name += "" if recipe["schedule"] == "constant" else f"-{recipe['schedule'].removesuffix('AnnealingLR').lower()}{recipe['max_epochs']}"
    name += f"-wd{recipe['weight_decay']:g}" if recipe["weight_decay"] else ""
    name += f"-dropout{recipe['dropout']:g}" if recipe["dropout"] else ""
    return name + f"-{recipe['activation'].lower()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    own = "the experiment's own when not given"
    parser.add_argument("--batch-size", type=int, default=None, help=f"data.batch_size ({own})")
    parser.add_argument("--lr", type=float, default=None, help=f"model.optimizer.lr ({own})")
    parser.add_argument("--schedule", default=None, choices=["constant", "cosine"],
                        help=f"learning rate: constant, or cosine-annealed to zero over the epochs ({own})")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help=f"AdamW's decoupled weight decay (0: plain Adam's steps; {own}). Against the deep "
                             "AE's overfitting (bench/README.md, goal 3 on the CPU)")
    parser.add_argument("--dropout", type=float, default=None,
                        help=f"model.dropout: dropout after each hidden activation, a regulariser ({own})")
    add_ab_arguments(parser, "an extra Hydra override of the run, e.g. corruption=gaussian corruption.sigma=0.1 "
                             "data.corrupt_splits=[train] (input noise as a regulariser)", "from the recipe")
    parser.add_argument("--precision", default="32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--on-device", action="store_true")
    parser.add_argument("--max-epochs", type=int, default=None, help=f"trainer.max_epochs ({own})")
    parser.add_argument("--max-minutes", type=float, default=120.0)
    parser.add_argument("--val-checks-per-epoch", type=int, default=4)
    parser.add_argument("--test-every", type=int, default=0, metavar="EPOCHS",
                        help="> 0: also measure the test error every EPOCHS epochs and time the targets on it "
                             "(the clock stops while it does)")
    parser.add_argument("--limit", type=int, default=None, help="first N images of each split (smoke runs only)")
    args = parser.parse_args()
    result = {"benchmark": "time_to_quality", **run(args), **environment(args.device)}
    path = write_result(args.name or result_name(args, result["config"]), result)
    reached = describe_reached(result["seconds_to_target"])
    if args.test_every:
        reached += "; on test: " + describe_reached(result["test_seconds_to_target"])
    print(f"time to quality ({result['device']}, batch {result['config']['batch_size']}, {args.precision}): {reached}; "
          f"test recon_sse {result['test_recon_sse']:.3f} (train {result['train_recon_sse'] or float('nan'):.3f}) "
          f"after {result['epochs']} epochs -> {path}")


if __name__ == "__main__":
    main()

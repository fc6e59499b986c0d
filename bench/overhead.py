"""Harness overhead: latentbench (Lightning, logging on) vs a minimal PyTorch loop, same model and data.

    uv run python -m bench.overhead --model ae_hinton --steps 200 --reps 3
    uv run python -m bench.overhead --model ae_conv --device cuda --on-device

Both sides train the same model class on the same MNIST tensors with the same batch size,
optimizer and precision for the same number of steps, alternated in one process. Reported: the
throughput ratio latentbench / plain loop (1.0 = no overhead), min/median/max over repetitions.
The latentbench side runs as a user runs it: W&B logger (offline), default callbacks
(checkpoints, best-val tracking), Lightning's loop; validation is skipped on both sides.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from bench.common import RESULTS, StepClock, Timing, add_ab_arguments, environment, own_matmul_precision, spread, synchronizer, write_result
from latentbench.devices import cuda_checks_from_the_runtime

MNIST = os.environ.get("LATENTBENCH_DATA", "../shared/data") + "/mnist"


def profiled(path: Path | None):
    """A CPU (and CUDA) profiler whose op table goes to ``path`` on exit, or nothing when no path."""
    if path is None:
        return nullcontext()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)

    class Profile(torch.profiler.profile):
        def __exit__(self, *exc):
            super().__exit__(*exc)
            table = self.key_averages().table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=60)
            path.write_text(table + "\n")

    return Profile(activities=activities)


def latentbench_seconds(model: str, steps: int, batch_size: int, device: str, on_device: bool, profile: Path | None = None,
                        overrides: tuple[str, ...] = ()) -> Timing:
    """Wall time of ``trainer.fit`` for ``steps`` steps, built exactly as ``latentbench train`` builds it
    (plus a callback that notes the end of each step)."""
    from hydra.core.global_hydra import GlobalHydra

    from latentbench.train import build_run, model_to_fit

    with tempfile.TemporaryDirectory() as output_dir, own_matmul_precision():
        cfg = run_config(model, steps, batch_size, device, on_device, overrides, output_dir)
        objects = build_run(cfg)
        trainer, module, datamodule = objects["trainer"], model_to_fit(objects["model"], cfg), objects["datamodule"]
        timing = Timing()
        # windows that hold the same steps on both sides: whole groups of fused steps, whole logging periods
        timing.group = getattr(datamodule, "fused_steps", 1)
        timing.window = math.lcm(timing.group, int(cfg.trainer.log_every_n_steps))
        trainer.callbacks.append(StepClock(timing, synchronizer(device)))
        # data loading is not training time, on either side; the trainer must be attached first, or
        # setup cannot see the device and data.on_device would leave the splits on the CPU
        datamodule.trainer = trainer
        datamodule.setup("fit")
        with profiled(profile):
            start = time.perf_counter()
            trainer.fit(module, datamodule=datamodule)
            synchronizer(device)()
            timing.total = time.perf_counter() - start
        for logger in objects["loggers"]:
            logger.experiment.finish()
        GlobalHydra.instance().clear()
    return timing


def run_config(model: str, steps: int, batch_size: int, device: str, on_device: bool, overrides: tuple[str, ...],
               output_dir: str):
    """The latentbench side's run config: ``model`` on MNIST for ``steps`` steps, W&B offline, no validation."""
    from latentbench.compose import compose_run_config

    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    return compose_run_config([
        f"model={model}", "data=mnist", f"data.root={MNIST}", f"data.batch_size={batch_size}",
        f"data.on_device={str(on_device).lower()}", f"trainer.accelerator={accelerator}",
        f"trainer.max_steps={steps}", "trainer.max_epochs=-1", "trainer.limit_val_batches=0",
        "logger=wandb", "logger.wandb.mode=offline", *overrides,
    ], output_dir)


def plain_loop_seconds(model: str, steps: int, batch_size: int, device: str, on_device: bool,
                       profile: Path | None = None, wandb_every: int = 0, mark_every: int = 1) -> Timing:
    """The same model class, data, optimizer and step count in a hand-written loop.

    With ``on_device`` the uint8 images live on the device and batches are gathered there; without
    it they stay on the CPU and each float batch is copied over, as latentbench's loader serves them.
    With ``wandb_every`` N > 0 the loop also logs what latentbench logs (the loss, the epoch, the
    step) to an offline W&B run every N steps, as a hand-written loop with W&B would. The loop notes
    the time (on a GPU: after waiting for the device) every ``mark_every`` steps and at the last, the
    cadence at which the latentbench side's clock sees its steps (once per group of K fused steps),
    so that neither side stalls the GPU's queue more often than the other.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from latentbench.compose import conf_dir
    from latentbench.data.mnist import MNISTDataModule

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        model_cfg = compose(config_name="train", overrides=[f"model={model}"]).model
    GlobalHydra.instance().clear()
    datamodule = MNISTDataModule(root=MNIST)
    datamodule.setup()
    images = datamodule.splits["train"].images.to(device if on_device else "cpu")
    network = instantiate(model_cfg, input_shape=[1, 28, 28], _recursive_=False, _convert_="all").to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=model_cfg.optimizer.lr)
    timing, sync = Timing(), synchronizer(device)
    with tempfile.TemporaryDirectory() as run_dir:
        run = wandb_run(run_dir) if wandb_every else None
        # as in a script that never imported Lightning (which sets PYTORCH_NVML_BASED_CUDA_CHECK)
        with cuda_checks_from_the_runtime(), profiled(profile):
            start = time.perf_counter()
            step = epoch = 0
            while step < steps:
                for index in torch.randperm(len(images), device=images.device).split(batch_size):
                    x = (images[index].float() / 255).to(device)
                    loss = network.training_loss(network(x), x)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    step += 1
                    if run is not None and step % wandb_every == 0:
                        run.log({"train/loss": loss.item(), "epoch": epoch, "trainer/global_step": step - 1})
                    if step % mark_every == 0 or step == steps:
                        timing.step_ended(sync, step)
                    if step == steps:
                        break
                epoch += 1
            sync()
            timing.total = time.perf_counter() - start
        if run is not None:
            run.finish()
    return timing


def median_windows(timings: list[Timing], window: int) -> float:
    """The median seconds of a ``window``-step window over all of ``timings``' steady windows (NaN: none)."""
    windows = [seconds for timing in timings for seconds in timing.window_seconds(window)]
    return statistics.median(windows) if windows else math.nan


def wandb_run(run_dir: str):
    """An offline W&B run, as latentbench's logger starts one (not timed)."""
    import wandb

    return wandb.init(project="latentbench-bench", dir=run_dir, mode="offline", reinit="create_new")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ae_hinton", choices=["ae_hinton", "ae_conv", "ae"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--on-device", action="store_true", help="hold MNIST on the device (latentbench data.on_device)")
    parser.add_argument("--profile", action="store_true",
                        help="after the timed repetitions, run each side once more under the PyTorch profiler and "
                             "write its op table to bench/results/<name>-profile-{latentbench,plain}.txt")
    parser.add_argument("--plain-logs-to-wandb", action="store_true",
                        help="the plain loop also logs the loss to an offline W&B run every trainer.log_every_n_steps "
                             "steps (10, or what --override sets): the baseline of a hand-written loop with W&B")
    add_ab_arguments(parser, "an extra Hydra override for the latentbench side (callbacks, logger, trainer; not the "
                             "model, which the plain loop would not see), e.g. callbacks.periodic_checkpoint.every_n_steps=100",
                     "overhead-<model>-<device>[-ondevice]")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_SILENT", "true")
    name = args.name or f"overhead-{args.model}-{args.device.split(':')[0]}{'-ondevice' if args.on_device else ''}"
    overrides = tuple(args.override)
    wandb_every = 0
    if args.plain_logs_to_wandb:  # the cadence of the latentbench side, whatever sets it (an override, an experiment)
        from hydra.core.global_hydra import GlobalHydra

        with tempfile.TemporaryDirectory() as output_dir:
            cfg = run_config(args.model, args.steps, args.batch_size, args.device, args.on_device, overrides, output_dir)
            wandb_every = int(cfg.trainer.log_every_n_steps)
        GlobalHydra.instance().clear()
    if args.plain_logs_to_wandb and not args.name:
        name += "-plainwandb"

    plain_loop_seconds(args.model, 5, args.batch_size, args.device, args.on_device)  # warm-up: allocator, kernels
    ours, plain = [], []
    for _ in range(args.reps):
        ours.append(latentbench_seconds(args.model, args.steps, args.batch_size, args.device, args.on_device, overrides=overrides))
        plain.append(plain_loop_seconds(args.model, args.steps, args.batch_size, args.device, args.on_device, wandb_every=wandb_every,
                                        mark_every=ours[-1].group))
    images = args.steps * args.batch_size
    window = ours[0].window

    def throughput(timings: list[Timing], steady: bool) -> list[float]:
        return [t.steady_rate(args.batch_size) if steady else images / t.total for t in timings]

    result = {
        "benchmark": "overhead", "model": args.model, "steps": args.steps, "batch_size": args.batch_size,
        "device_kind": args.device, "on_device": args.on_device, "overrides": list(overrides),
        "plain_loop_logs_to_wandb_every": wandb_every,
        "latentbench_images_per_s": spread(throughput(ours, False)), "plain_loop_images_per_s": spread(throughput(plain, False)),
        "throughput_ratio": spread([a / b for a, b in zip(throughput(ours, False), throughput(plain, False))]),
        # the same from the end of the first step to the end of the last: per-step cost only
        "steady_throughput_ratio": spread([a / b for a, b in zip(throughput(ours, True), throughput(plain, True))]),
        # what the harness adds to every optimizer step, whatever the model (ms): a model whose step
        # takes T ms runs at T / (T + this) of the plain loop's speed
        "per_step_overhead_ms": spread([1000 * (1 / a.steady_rate() - 1 / b.steady_rate()) for a, b in zip(ours, plain)]),
        # the same, robust to the machine's slow spells: the steady window cut into windows of
        # lcm(K, log_every_n_steps) steps (the same logged steps and group ends in each), the median
        # window of each side, all repetitions pooled; min-max: the ratio of the medians of each pair
        "window_steps": window,
        "steady_window_median_ratio": {
            "pooled": median_windows(plain, window) / median_windows(ours, window),
            **spread([median_windows([b], window) / median_windows([a], window) for a, b in zip(ours, plain)])},
        "latentbench_fixed_seconds": spread([t.total - t.steady for t in ours]),
        "plain_loop_fixed_seconds": spread([t.total - t.steady for t in plain]),
        **environment(args.device),
    }
    if args.profile:
        for side, run in (("latentbench", lambda p: latentbench_seconds(args.model, args.steps, args.batch_size, args.device, args.on_device, p,
                                                                     overrides)),
                          ("plain", lambda p: plain_loop_seconds(args.model, args.steps, args.batch_size, args.device, args.on_device, p,
                                                                 wandb_every, ours[-1].group))):
            timing = run(Path(f"{RESULTS}/{name}-profile-{side}.txt"))
            result[f"profiled_{side}_seconds"] = {"total": timing.total, "steady": timing.steady}
    path = write_result(name, result)
    r, s, w = result["throughput_ratio"], result["steady_throughput_ratio"], result["steady_window_median_ratio"]
    print(f"{name}: latentbench/plain throughput ratio median {r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f}), "
          f"steps only {s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f}), median {window}-step window {w['pooled']:.3f} "
          f"(pairs {w['min']:.3f}-{w['max']:.3f}), "
          f"{result['per_step_overhead_ms']['median']:.2f} ms more per step; fixed cost per fit "
          f"{result['latentbench_fixed_seconds']['median']:.2f} s vs {result['plain_loop_fixed_seconds']['median']:.2f} s "
          f"over {args.reps} reps of {args.steps} steps -> {path}")


if __name__ == "__main__":
    main()

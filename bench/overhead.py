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
import os
import tempfile
import time

import torch

from bench.common import environment, spread, write_result

MNIST = os.environ.get("LATENTBENCH_DATA", "../shared/data") + "/mnist"


def latentbench_seconds(model: str, steps: int, batch_size: int, device: str, on_device: bool) -> float:
    """Wall time of ``trainer.fit`` for ``steps`` steps, built exactly as ``latentbench train`` builds it."""
    from hydra.core.global_hydra import GlobalHydra

    from latentbench.compose import compose_run_config
    from latentbench.train import build_run

    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory() as output_dir:
        cfg = compose_run_config([
            f"model={model}", "data=mnist", f"data.root={MNIST}", f"data.batch_size={batch_size}",
            f"data.on_device={str(on_device).lower()}", f"trainer.accelerator={accelerator}",
            f"trainer.max_steps={steps}", "trainer.max_epochs=-1", "trainer.limit_val_batches=0",
            "logger=wandb", "logger.wandb.mode=offline",
        ], output_dir)
        objects = build_run(cfg)
        trainer, module, datamodule = objects["trainer"], objects["model"], objects["datamodule"]
        datamodule.setup("fit")  # data loading is not training time, on either side
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        for logger in objects["loggers"]:
            logger.experiment.finish()
        GlobalHydra.instance().clear()
    return seconds


def plain_loop_seconds(model: str, steps: int, batch_size: int, device: str) -> float:
    """The same model class, data, optimizer and step count in a hand-written loop."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from latentbench.cli import conf_dir
    from latentbench.data.mnist import MNISTDataModule

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        model_cfg = compose(config_name="train", overrides=[f"model={model}"]).model
    GlobalHydra.instance().clear()
    datamodule = MNISTDataModule(root=MNIST)
    datamodule.setup()
    images = datamodule.splits["train"].images.to(device)
    network = instantiate(model_cfg, input_shape=[1, 28, 28], _recursive_=False, _convert_="all").to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=model_cfg.optimizer.lr)
    start = time.perf_counter()
    step = 0
    while step < steps:
        for index in torch.randperm(len(images), device=images.device).split(batch_size):
            x = images[index].float() / 255
            loss = network.training_loss(network(x), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ae_hinton", choices=["ae_hinton", "ae_conv", "ae"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--on-device", action="store_true", help="hold MNIST on the device (latentbench data.on_device)")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_SILENT", "true")

    plain_loop_seconds(args.model, 5, args.batch_size, args.device)  # warm-up: allocator, kernels
    ours, plain = [], []
    for _ in range(args.reps):
        ours.append(args.steps * args.batch_size / latentbench_seconds(args.model, args.steps, args.batch_size, args.device, args.on_device))
        plain.append(args.steps * args.batch_size / plain_loop_seconds(args.model, args.steps, args.batch_size, args.device))
    ratios = [a / b for a, b in zip(ours, plain)]
    name = f"overhead-{args.model}-{args.device.split(':')[0]}{'-ondevice' if args.on_device else ''}"
    result = {
        "benchmark": "overhead", "model": args.model, "steps": args.steps, "batch_size": args.batch_size,
        "device_kind": args.device, "on_device": args.on_device,
        "latentbench_images_per_s": spread(ours), "plain_loop_images_per_s": spread(plain),
        "throughput_ratio": spread(ratios), **environment(args.device),
    }
    path = write_result(name, result)
    r = result["throughput_ratio"]
    print(f"{name}: latentbench/plain throughput ratio median {r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f}) "
          f"over {args.reps} reps of {args.steps} steps -> {path}")


if __name__ == "__main__":
    main()

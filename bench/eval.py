"""Cost of evaluation metrics: FID (and, for the LDM, CLIP score) at their default interval as a
share of a training run's wall time.

    uv run python -m bench.eval --steps 100 --reps 2
    uv run python -m bench.eval --model ae_conv --every-n-val-epochs 1
    uv run python -m bench.eval --model ldm --steps 64 --reps 2
    uv run python -m bench.eval --model ldm --device cuda      # timed runs on the GPU (setup stays on the CPU)

Setup (not timed): a small ``model=classifier`` trained for a few steps on MNIST, the ``domain``
feature extractor of FID. Then, alternated for ``--reps`` repetitions, the same ``latentbench
train`` run (``--model`` on 4096 MNIST images, ``--steps`` steps, validation once an epoch, test of the best
checkpoint) with ``metrics.fid.checkpoint=<classifier>`` and without metrics. With the defaults of
``conf/metrics/default.yaml`` FID runs at test on ``num_images`` (1000) test images;
``--every-n-val-epochs`` adds it on validation too. Reported: the share of the run spent on metrics,
``(time with - time without) / time with``, min/median/max, and FID's compute time alone (extractor
features of ``num_images`` real and reconstructed images + the Frechet distance).

``--model ldm``: a text-conditioned ``model=ldm`` on 16x16 ``data=shapes`` (512 training images,
batch 32, so 16 steps an epoch), on the tiny first stage and CLIP text tower of ``bench.diffusion``
(trained first, not timed) and a small shapes classifier. Both runs draw the model's fixed-seed
sample grid every epoch (``callbacks.sample_grid``, the default interval); the run with metrics
adds, every epoch and at test, the sample FID (``metrics.fid``: 256 samples for the validation
images' captions vs the real images, domain features) and the CLIP score of samples for
``metrics.clip_score.num_prompts`` captions (scored by that CLIP model), with their defaults.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.common import environment, spread, synchronizer, write_result

MNIST = os.environ.get("LATENTBENCH_DATA", "../shared/data") + "/mnist"
DATA = ["data=mnist", f"data.root={MNIST}", "data.limit=4096", "data.val_size=1000"]
CPU = ["trainer=cpu", "logger=none"]


def timed_trainer(args) -> list[str]:
    """Trainer overrides of the timed runs: the CPU, or ``trainer=gpu`` for ``--device cuda``."""
    return CPU if args.device == "cpu" else ["trainer=gpu", "logger=none"]


def train_classifier(root: Path, data: list[str] = DATA) -> str:
    from hydra.core.global_hydra import GlobalHydra

    from latentbench.compose import compose_run_config
    from latentbench.train import train

    train(compose_run_config([*CPU, *data, "model=classifier", "model.channels=[8,16]", "model.feature_dim=32",
                              "trainer.max_steps=30", "trainer.max_epochs=-1", "trainer.limit_val_batches=1"], root / "classifier"))
    GlobalHydra.instance().clear()
    from latentbench.run_dir import resolve_checkpoint

    return resolve_checkpoint(str(root / "classifier"))  # its best checkpoint, else last.ckpt


def autoencoder_overrides(args, setup: dict[str, str], with_metrics: bool) -> list[str]:
    """An MNIST autoencoder run; with metrics: reconstruction FID (domain features)."""
    overrides = [*timed_trainer(args), *DATA, f"model={args.model}", f"trainer.max_steps={args.steps}", "trainer.max_epochs=-1"]
    if with_metrics:
        overrides += [f"metrics.fid.checkpoint='{setup['classifier']}'", f"metrics.fid.num_images={args.num_images}"]
        if args.every_n_val_epochs:
            overrides.append(f"metrics.fid.every_n_val_epochs={args.every_n_val_epochs}")
    return overrides


def ldm_overrides(args, setup: dict[str, str], with_metrics: bool) -> list[str]:
    """A text-conditioned LDM run on shapes, sample grid every epoch; with metrics: sample FID + CLIP score."""
    from bench.diffusion import shapes_overrides

    overrides = [
        *timed_trainer(args), *shapes_overrides(), "data.batch_size=32", "model=ldm", "model.conditioning=text",
        f"model.first_stage.checkpoint={setup['first_stage']}", f"model.text_encoder.checkpoint={setup['clip']}",
        "model.latent_std_batches=1", f"trainer.max_steps={args.steps}", "trainer.max_epochs=-1",
    ]
    if with_metrics:
        overrides += ["metrics.fid.enabled=true", f"metrics.fid.checkpoint='{setup['classifier']}'",
                      "metrics.fid.num_images=256", "metrics.fid.every_n_val_epochs=1",
                      f"metrics.clip_score.checkpoint='{setup['clip']}'"]
    return overrides


def prepare(args, root: Path) -> dict[str, str]:
    """Checkpoints the timed runs read (trained here, not timed)."""
    if args.model != "ldm":
        return {"classifier": train_classifier(root)}
    from bench.diffusion import setup_checkpoints, shapes_overrides

    return {**setup_checkpoints(root, "text"), "classifier": train_classifier(root, shapes_overrides())}


def run_seconds(args, setup: dict[str, str], with_metrics: bool) -> tuple[float, dict]:
    """Wall time of one whole ``latentbench train`` run (build, fit, test), with or without the metrics."""
    from hydra.core.global_hydra import GlobalHydra

    from latentbench.compose import compose_run_config
    from latentbench.train import train

    overrides = (ldm_overrides if args.model == "ldm" else autoencoder_overrides)(args, setup, with_metrics)
    with tempfile.TemporaryDirectory() as output_dir:
        start = time.perf_counter()
        metrics = train(compose_run_config(overrides, output_dir))
        seconds = time.perf_counter() - start
    GlobalHydra.instance().clear()
    return seconds, metrics


def fid_alone_seconds(classifier: str, num_images: int, device: str = "cpu") -> float:
    """FID of ``num_images`` MNIST test images vs noisy copies, with the same extractor, on ``device``."""
    from latentbench.data.mnist import MNISTDataModule
    from latentbench.evaluation.fid import make_fid

    data = MNISTDataModule(root=MNIST)
    data.setup()
    split = data.splits["test"]
    real = split.images[:num_images].to(device).float() / split.pixel_scale
    fake = (real + 0.1 * torch.randn_like(real)).clamp(0, 1)
    evaluator = make_fid("domain", checkpoint=classifier).to(device)
    synchronize = synchronizer(device)
    synchronize()
    start = time.perf_counter()
    for begin in range(0, len(real), 256):
        evaluator.update(real[begin:begin + 256], fake[begin:begin + 256])
    evaluator.compute()
    synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ae_hinton", choices=["ae_hinton", "ae_conv", "ae", "ldm"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--num-images", type=int, default=1000, help="metrics.fid.num_images (default of conf/metrics)")
    parser.add_argument("--every-n-val-epochs", type=int, default=None, help="also FID on validation (default: test only)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the timed runs train")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_SILENT", "true")

    ldm = args.model == "ldm"
    with tempfile.TemporaryDirectory() as root:
        setup = prepare(args, Path(root))
        # no separate warm-up: the setup's training above has warmed up allocator and kernels
        with_metrics, without, values = [], [], []
        for _ in range(args.reps):
            seconds, metrics = run_seconds(args, setup, with_metrics=True)
            with_metrics.append(seconds)
            values.append({key: value for key, value in metrics.items() if "fid" in key or "clip_score" in key})
            without.append(run_seconds(args, setup, with_metrics=False)[0])
        alone = [] if ldm else [fid_alone_seconds(setup["classifier"], args.num_images, args.device) for _ in range(args.reps)]
    shares = [(a - b) / a for a, b in zip(with_metrics, without)]
    name = f"eval-{'fid-clip_score' if ldm else 'fid'}-{args.model}-{args.device}"
    result = {
        "benchmark": "eval", "metric": "sample fid_domain + clip_score_local" if ldm else "fid_domain",
        "model": args.model, "steps": args.steps,
        **({} if ldm else {"num_images": args.num_images, "every_n_val_epochs": args.every_n_val_epochs}),
        "run_seconds_with_metrics": spread(with_metrics), "run_seconds_without": spread(without),
        "metrics_share_of_run": spread(shares), "metric_values": values,
        **({} if ldm else {"fid_alone_seconds": spread(alone)}),
        **environment(args.device),
    }
    path = write_result(name, result)
    s = result["metrics_share_of_run"]
    alone_note = "" if ldm else f"; FID on {args.num_images} images alone {spread(alone)['median']:.2f} s"
    print(f"{name}: metrics take {s['median']:.1%} of the run (min {s['min']:.1%}, max {s['max']:.1%}; "
          f"{spread(with_metrics)['median']:.1f} s with vs {spread(without)['median']:.1f} s without, {args.steps} steps)"
          f"{alone_note} -> {path}")


if __name__ == "__main__":
    main()

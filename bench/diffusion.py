"""LDM training throughput: latentbench (``model=ldm`` through Lightning) vs a plain diffusers loop.

    uv run python -m bench.diffusion --conditioning text --steps 20 --reps 3
    uv run python -m bench.diffusion --conditioning class --device cuda --precision bf16-mixed --batch-size 256

Setup (not timed, once, in a temp dir): a tiny ``model=ae_kl`` first stage (factor 2) and, for
``--conditioning text``, a tiny ``model=clip`` text tower, each trained for a few steps on
``data=shapes`` (16x16 images, 4x8x8 latents). Then, alternated in one process for ``--reps``
repetitions:

- latentbench: ``trainer.fit`` of the run ``latentbench train model=ldm ...`` builds (W&B offline,
  default callbacks, EMA, per-step logging); validation and sample grids off;
- plain loop: the same U-Net config (``build_unet``), ``diffusers.DDPMScheduler``, AdamW,
  EMA (``AveragedModel``), condition dropout, batch size and autocast precision, with latents from
  the same frozen first stage and text states from the same frozen CLIP text tower computed in the
  loop, on batches of the same data loader.

Both sides include the latent-std measurement on one batch (``model.latent_std_batches=1``).
Reported: images/s of each side and their ratio (1.0 = no overhead), min/median/max. Model FLOP
utilisation (FLOPs of one training step counted with ``torch.utils.flop_counter.FlopCounterMode``,
times steps/s, over the GPU's dense peak) on CUDA; on CPU it is n/a.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import tempfile
import time
from pathlib import Path

import torch

from bench.common import StepClock, Timing, add_ab_arguments, environment, own_matmul_precision, spread, synchronizer, write_result
from latentbench.devices import cuda_checks_from_the_runtime


def shapes_overrides(image_size: int = 16, num_train: int = 512) -> list[str]:
    """``data=shapes`` at ``image_size`` (16: small enough for a CPU; the factor-2 ae_kl gives 4x8x8 latents)."""
    return ["data=shapes", f"data.image_size={image_size}", f"data.num_train={num_train}", "data.num_val=64", "data.num_test=64"]


SETUP = ["trainer=cpu", "logger=none", "trainer.max_epochs=-1", "trainer.limit_val_batches=0", "trainer.limit_test_batches=1"]
AE_KL = ["model=ae_kl", "model.factor=2", "model.channels=[8,16]", "model.layers_per_block=1", "model.norm_num_groups=4"]


def tiny_clip(image_size: int) -> str:
    """A tiny open_clip config (2x2 patches of the image) for ``model.model_cfg``; only its text tower is used."""
    return (f"{{embed_dim:32,vision_cfg:{{image_size:{image_size},layers:1,width:32,head_width:16,patch_size:{image_size // 2}}},"
            "text_cfg:{context_length:32,width:64,heads:2,layers:2}}")


# dense (no sparsity) peak FLOP/s from the vendors' data sheets: {name fragment: {dtype: FLOP/s}}
PEAK_FLOPS = {
    "H200": {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H100": {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},  # SXM
    "A100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},
    "4090": {"bf16": 165.2e12, "fp16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12},
}


def peak_flops(device: str, precision: str) -> float | None:
    """The device's dense peak for the dtype the matmuls run in, or None (CPU, unknown GPU)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    if precision.startswith("bf16"):
        dtype = "bf16"
    elif precision.startswith("16"):
        dtype = "fp16"
    else:
        dtype = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    for fragment, table in PEAK_FLOPS.items():
        if fragment in name:
            return table.get(dtype)
    return None


def setup_checkpoints(root: Path, conditioning: str, image_size: int = 16) -> dict[str, str]:
    """Train the tiny first stage (and CLIP for text) for a few steps; returns their run directories."""
    from hydra.core.global_hydra import GlobalHydra

    from latentbench.compose import compose_run_config
    from latentbench.train import train

    shapes = shapes_overrides(image_size)
    runs = {"first_stage": root / "ae_kl"}
    train(compose_run_config([*SETUP, *shapes, *AE_KL, "trainer.max_steps=5", "data.batch_size=32"], runs["first_stage"]))
    GlobalHydra.instance().clear()
    if conditioning == "text":
        runs["clip"] = root / "clip"
        train(compose_run_config([*SETUP, *shapes, "model=clip", f"model.model_cfg={tiny_clip(image_size)}", "trainer.max_steps=3",
                                  "data.batch_size=32", "~callbacks.embedding_plot"], runs["clip"]))
        GlobalHydra.instance().clear()
    return {key: str(value) for key, value in runs.items()}


def ldm_overrides(args, runs: dict[str, str], device: str) -> list[str]:
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    overrides = [
        "model=ldm", *shapes_overrides(args.image_size, args.num_train), f"data.batch_size={args.batch_size}", f"model.conditioning={args.conditioning}",
        f"model.first_stage.checkpoint={runs['first_stage']}", "model.latent_std_batches=1", "callbacks.sample_grid.every_n_epochs=0",
        f"trainer.accelerator={accelerator}", "trainer.devices=1", f"trainer.max_steps={args.steps}", "trainer.max_epochs=-1",
        "trainer.limit_val_batches=0",
    ]
    overrides += args.override
    if args.unet_channels:
        overrides.append(f"model.unet.block_out_channels=[{args.unet_channels}]")
    if args.precision != "auto":  # auto: model=ldm's own choice (bf16-mixed on a GPU); quoted: a bare 32 is an int to Hydra
        overrides.append(f"precision='{args.precision}'")
    if args.conditioning == "text":
        # fixed grid prompts: otherwise fit start reads validation captions to choose them
        overrides += [f"model.text_encoder.checkpoint={runs['clip']}", "model.sampling.prompts=['a red circle']"]
    return overrides


def latentbench_seconds(args, runs: dict[str, str]) -> Timing:
    """Wall time of ``trainer.fit`` for ``--steps`` steps, built as ``latentbench train`` builds it
    (plus a callback that notes the end of each step)."""
    from hydra.core.global_hydra import GlobalHydra

    from latentbench.compose import compose_run_config
    from latentbench.train import build_run, model_to_fit

    with tempfile.TemporaryDirectory() as output_dir, own_matmul_precision():
        cfg = compose_run_config([*ldm_overrides(args, runs, args.device), "logger=wandb", "logger.wandb.mode=offline"], output_dir)
        objects = build_run(cfg)
        trainer, module, datamodule = objects["trainer"], model_to_fit(objects["model"], cfg), objects["datamodule"]
        timing, sync = Timing(), synchronizer(args.device)
        trainer.callbacks.append(StepClock(timing, sync))
        datamodule.trainer = trainer  # so that setup sees the device
        datamodule.setup("fit")  # data loading is not training time, on either side
        sync()
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        sync()
        timing.total = time.perf_counter() - start
        for logger in objects["loggers"]:
            logger.experiment.finish()
        GlobalHydra.instance().clear()
    return timing


class PlainLoop:
    """The LDM training step written with diffusers' components, no latentbench module or Lightning."""

    def __init__(self, args, runs: dict[str, str]):
        from diffusers import DDPMScheduler
        from hydra.core.global_hydra import GlobalHydra
        from hydra.utils import instantiate

        from latentbench.compose import compose_run_config
        from latentbench.models.ldm import load_first_stage
        from latentbench.run_dir import resolve_checkpoint

        self.args, self.device = args, torch.device(args.device)
        with tempfile.TemporaryDirectory() as output_dir:
            cfg = compose_run_config(ldm_overrides(args, runs, args.device), output_dir)
        GlobalHydra.instance().clear()
        self.model_cfg = cfg.model
        self.datamodule = instantiate(cfg.data)
        self.datamodule.setup("fit")
        self.num_classes = self.datamodule.num_classes
        self.first_stage, _ = load_first_stage({"checkpoint": runs["first_stage"]})
        self.first_stage.to(self.device)
        unet_arguments = {}
        self.clip = self.tokenizer = None
        if args.conditioning == "class":
            unet_arguments["num_class_embeds"] = self.num_classes + 1
        elif args.conditioning == "text":
            from latentbench.models.clip_inference import load_clip

            self.clip, self.tokenizer = load_clip(checkpoint=resolve_checkpoint(runs["clip"]))
            self.clip.to(self.device).eval().requires_grad_(False)
            unet_arguments["cross_attention_dim"] = self.clip.token_embedding.embedding_dim
        c, h, _ = self.first_stage.latent_shape
        unet_cfg = {k: v for k, v in dict(cfg.model.unet).items() if k != "_target_"}
        from latentbench.models.ldm import build_unet

        self.unet_factory = lambda: build_unet(sample_size=h, in_channels=c, **unet_cfg, **unet_arguments).to(self.device)
        self.scheduler = DDPMScheduler(num_train_timesteps=cfg.model.noise_scheduler.num_train_timesteps,
                                       beta_schedule=cfg.model.noise_scheduler.beta_schedule)
        self.dropout = float(cfg.model.condition_dropout)
        self.ema_decay = cfg.model.ema_decay
        self.lr, self.weight_decay = cfg.model.optimizer.lr, cfg.model.optimizer.weight_decay

    def autocast(self):
        precision = self.args.precision
        if precision in ("bf16-mixed", "16-mixed"):
            dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
            return torch.autocast(self.device.type, dtype=dtype)
        return contextlib.nullcontext()

    @torch.no_grad()
    def text_states(self, captions: list[str]) -> torch.Tensor:
        """Per-token hidden states ``(B, T, D)`` of the frozen CLIP text tower."""
        clip = self.clip
        x = clip.token_embedding(self.tokenizer(captions).to(self.device)) + clip.positional_embedding
        return clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))

    def condition(self, batch: dict) -> dict[str, torch.Tensor]:
        if self.args.conditioning == "class":
            labels = batch["label"].to(self.device)
            drop = torch.rand(len(labels), device=self.device) < self.dropout
            return {"class_labels": torch.where(drop, torch.full_like(labels, self.num_classes), labels)}
        if self.args.conditioning == "text":
            captions = ["" if random.random() < self.dropout else c for c in batch["caption"]]
            return {"encoder_hidden_states": self.text_states(captions)}
        return {}

    def loss(self, unet, batch: dict, latent_std: float) -> torch.Tensor:
        images = batch["image"].to(self.device)
        with self.autocast():
            with torch.no_grad():
                latents = self.first_stage.encode_latents(images) / latent_std
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(latents),), device=self.device)
            noisy = self.scheduler.add_noise(latents, noise, timesteps)
            prediction = unet(noisy, timesteps, **self.condition(batch)).sample
        return torch.nn.functional.mse_loss(prediction.float(), noise.float())

    def batches(self):
        while True:
            yield from self.datamodule.train_dataloader()

    def seconds(self, steps: int) -> Timing:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        unet = self.unet_factory()
        optimizer = torch.optim.AdamW(unet.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        ema = None
        if self.ema_decay is not None:
            ema = AveragedModel(unet, multi_avg_fn=get_ema_multi_avg_fn(self.ema_decay), use_buffers=True)
        scaler = torch.amp.GradScaler(enabled=self.args.precision == "16-mixed")
        batches = self.batches()
        timing, sync = Timing(), synchronizer(self.args.device)
        sync()
        # as in a script that never imported Lightning (which sets PYTORCH_NVML_BASED_CUDA_CHECK)
        with cuda_checks_from_the_runtime():
            start = time.perf_counter()
            with torch.no_grad():
                latent_std = float(self.first_stage.encode_latents(next(batches)["image"].to(self.device)).std())
            for step in range(1, steps + 1):
                loss = self.loss(unet, next(batches), latent_std)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update_parameters(unet)
                timing.step_ended(sync, step)
            sync()
            timing.total = time.perf_counter() - start
        return timing

    def step_flops(self) -> int:
        """FLOPs of one training step (first stage encode, text tower, U-Net forward and backward)."""
        from torch.utils.flop_counter import FlopCounterMode

        unet = self.unet_factory()
        batch = next(self.batches())
        counter = FlopCounterMode(display=False)
        with counter:
            self.loss(unet, batch, 1.0).backward()
        return int(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditioning", default="none", choices=["none", "class", "text"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed", "auto"],
                        help="both sides in this precision; auto: latentbench with model=ldm's defaults (on a GPU bf16-mixed, "
                             "channels-last U-Net, fused AdamW) against the plain loop as diffusers' examples write it (fp32)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=16, help="shapes images; latents are 4 x size/2 x size/2")
    parser.add_argument("--num-train", type=int, default=512, help="training images (an epoch ends every num_train / batch_size steps)")
    add_ab_arguments(parser, "an extra Hydra override of the ldm run (model keys reach the plain loop too)",
                     "diffusion-<conditioning>-<device>-<precision>[-<size>px]")
    parser.add_argument("--unet-channels", default=None, help="U-Net block_out_channels, e.g. 128,256 (default: conf/model/ldm.yaml's)")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_SILENT", "true")

    with tempfile.TemporaryDirectory() as root:
        runs = setup_checkpoints(Path(root), args.conditioning, args.image_size)
        plain = PlainLoop(args, runs)
        latent_shape = list(plain.first_stage.latent_shape)
        flops = plain.step_flops()
        plain.seconds(3)  # warm-up: allocator, kernels
        our_timings, their_timings = [], []
        for _ in range(args.reps):
            our_timings.append(latentbench_seconds(args, runs))
            their_timings.append(plain.seconds(args.steps))
    ours = [args.steps * args.batch_size / t.total for t in our_timings]
    theirs = [args.steps * args.batch_size / t.total for t in their_timings]
    # from the end of the first step to the end of the last: the per-step cost, without fit start-up
    ours_steady = [t.steady_rate(args.batch_size) for t in our_timings]
    theirs_steady = [t.steady_rate(args.batch_size) for t in their_timings]
    ratios = [a / b for a, b in zip(ours, theirs)]
    # MFU against the peak of the dtype latentbench's matmuls run in (auto: bf16 on a GPU)
    peak = peak_flops(args.device, "bf16-mixed" if args.precision == "auto" else args.precision)
    mfu = None
    if peak:
        mfu = {"latentbench": flops / args.batch_size * statistics_median(ours) / peak,
               "plain_loop": flops / args.batch_size * statistics_median(theirs) / peak,
               "latentbench_steady": flops / args.batch_size * statistics_median(ours_steady) / peak,
               "plain_loop_steady": flops / args.batch_size * statistics_median(theirs_steady) / peak}
    name = args.name or (f"diffusion-{args.conditioning}-{args.device.split(':')[0]}-{args.precision}"
                         + ("" if args.image_size == 16 else f"-{args.image_size}px"))
    result = {
        "benchmark": "diffusion", "conditioning": args.conditioning, "steps": args.steps, "batch_size": args.batch_size,
        "precision": args.precision, "device_kind": args.device, "latent_shape": latent_shape, "image_shape": [3, args.image_size, args.image_size],
        "unet_block_out_channels": list(plain.model_cfg.unet.block_out_channels), "num_train": args.num_train, "overrides": args.override,
        "latentbench_images_per_s": spread(ours), "plain_loop_images_per_s": spread(theirs),
        "throughput_ratio": spread(ratios),
        "latentbench_steady_images_per_s": spread(ours_steady), "plain_loop_steady_images_per_s": spread(theirs_steady),
        "steady_throughput_ratio": spread([a / b for a, b in zip(ours_steady, theirs_steady)]),
        "latentbench_fixed_seconds": spread([t.total - t.steady for t in our_timings]),
        "plain_loop_fixed_seconds": spread([t.total - t.steady for t in their_timings]),
        "flops_per_step": flops, "peak_flops": peak, "mfu_median": mfu,
        **environment(args.device),
    }
    path = write_result(name, result)
    r, s = result["throughput_ratio"], result["steady_throughput_ratio"]
    mfu_text = "n/a (no GPU peak)" if mfu is None else (
        f"{mfu['latentbench']:.1%} (plain {mfu['plain_loop']:.1%}; steps only {mfu['latentbench_steady']:.1%} vs "
        f"{mfu['plain_loop_steady']:.1%})")
    print(f"{name}: latentbench {spread(ours)['median']:.1f} vs plain {spread(theirs)['median']:.1f} images/s, ratio median "
          f"{r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f}), steps only {s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f}) "
          f"over {args.reps} reps of {args.steps} steps; {flops / 1e9:.2f} GFLOP/step, MFU {mfu_text} -> {path}")


def statistics_median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


if __name__ == "__main__":
    main()

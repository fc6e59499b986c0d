"""Latent diffusion (Rombach et al. 2022, small): a diffusers U-Net denoising a frozen first stage's latents.

The module owns four replaceable parts, each built from its own config node:

- ``first_stage``: a trained ``model=ae_kl`` checkpoint (frozen, eval); without one the model
  works in pixel space (x -> 2x - 1), the pixel-space baseline;
- ``unet``: a ``_target_`` returning a diffusers U-Net for the latent shape and the conditioning
  (default :func:`build_unet`: ``UNet2DModel``, or ``UNet2DConditionModel`` for text);
- ``noise_scheduler``: a ``_target_`` diffusers scheduler that defines the forward process
  (``DDPMScheduler``); sampling rebuilds DDPM, DDIM or DPM-Solver from its config;
- the conditioner (``conditioning: none | class | text``, see ``models/conditioning.py``).

Latents are divided by their standard deviation, measured on the training data at the start of
fit and kept in the checkpoint (``latent_std``), so that the U-Net sees unit-variance inputs.
"""

from __future__ import annotations

import logging
import inspect
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, SchedulerMixin, UNet2DConditionModel, UNet2DModel
from hydra.utils import instantiate
from torch import nn
from torch.optim.swa_utils import AveragedModel

from latentbench.checkpoints import read_checkpoint
from latentbench.run_dir import resolve_checkpoint
from latentbench.errors import ConfigError
from latentbench.metrics import reconstruction_metrics
from latentbench.models.ae_kl import AutoencoderKL
from latentbench.models.base import EvalOutput, LatentbenchModule, check_positive, log_training_values
from latentbench.models.conditioning import ClassConditioning, NoConditioning, TextConditioning, concat_conditions

log = logging.getLogger(__name__)

Conditioning = Literal["none", "class", "text"]
PredictionType = Literal["epsilon", "v_prediction"]
Sampler = Literal["ddpm", "ddim", "dpm"]
SAMPLERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}
DEFAULT_NOISE_SCHEDULER = {"_target_": "diffusers.DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}
DEFAULT_UNET = {"_target_": "latentbench.models.ldm.build_unet"}
DEFAULT_SAMPLING = {"sampler": "ddim", "steps": 50, "guidance_scale": 3.0, "seed": 0, "per_condition": 4, "prompts": None, "classes": None}
# Keys that moved out of the model (sample grids, sample FID: callbacks and metrics); an older
# checkpoint's hyperparameters still hold them, so they are dropped there, not refused.
MOVED_SAMPLING_KEYS = {"every_n_epochs": "callbacks.sample_grid.every_n_epochs"}


def as_images(x: torch.Tensor) -> torch.Tensor:
    """``(..., C, H, W)`` -> ``(N, C, H, W)``: clips ``(B, T, C, H, W)`` as their frames; images unchanged."""
    return x.reshape(-1, *x.shape[-3:])


def check_keys(name: str, options: dict | None, allowed) -> None:
    """Refuse a key of a plain (non-``_target_``) option dict that nothing reads, e.g. a typo."""
    for key in options or {}:
        if key not in allowed:
            raise ValueError(f"{name}.{key}: unknown key (allowed: {', '.join(allowed)})")


def make_sampler(name: Sampler, config) -> SchedulerMixin:
    """The ``ddpm`` / ``ddim`` / ``dpm`` sampler on the training schedule, without ``clip_sample``.

    diffusers' DDPM and DDIM schedulers clip the predicted clean sample to [-1, 1] by default. Our
    latents are scaled to unit std (and pixels divided by it), so a third of their values lie
    outside that range: clipping broke every sample into dotted strokes (class accuracy at chance
    on MNIST; 94 % for the same checkpoint without it).
    """
    cls = SAMPLERS[name]
    options = {"clip_sample": False} if "clip_sample" in inspect.signature(cls.__init__).parameters else {}
    return cls.from_config(config, **options)


def ema_with_warmup(decay: float):
    """EMA update for :class:`~torch.optim.swa_utils.AveragedModel` whose decay grows with the number
    of updates n as ``min(decay, (1 + n) / (10 + n))`` (the warm-up of diffusers' ``EMAModel``).

    A constant decay of 0.999 keeps 55 % of the initial (random) weights in the average after 600
    steps, so short runs would sample from a mostly untrained U-Net.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        step_decay = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - step_decay)

    return update


def build_unet(
    sample_size: int,
    in_channels: int,
    block_out_channels: list[int] = (32, 64),
    layers_per_block: int = 1,
    attention: list[bool] = (False, True),
    attention_head_dim: int = 8,
    norm_num_groups: int = 8,
    num_class_embeds: int | None = None,
    cross_attention_dim: int | None = None,
) -> nn.Module:
    """A small diffusers U-Net: ``(B, in_channels, S, S), t -> (B, in_channels, S, S)``.

    Args:
        sample_size, in_channels: the latent's side and channels (filled in by the LDM).
        block_out_channels (`list[int]`): width of each level; the latent side must be divisible by
            ``2 ** (len(block_out_channels) - 1)``.
        layers_per_block (`int`): ResNet blocks per level.
        attention (`list[bool]`): per level, whether it has (self- or cross-) attention.
        attention_head_dim, norm_num_groups: as in diffusers.
        num_class_embeds (`int`, *optional*): class conditioning (``UNet2DModel`` class embedding).
        cross_attention_dim (`int`, *optional*): text conditioning: a ``UNet2DConditionModel``
            cross-attending to ``(B, T, cross_attention_dim)`` hidden states.
    """
    if len(attention) != len(block_out_channels):
        raise ValueError(f"unet.attention: needs one entry per level ({len(block_out_channels)}), got {list(attention)}")
    if any(width % norm_num_groups for width in block_out_channels):
        raise ValueError(f"unet.norm_num_groups: {norm_num_groups} must divide every entry of unet.block_out_channels {list(block_out_channels)}")
    common = dict(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
                  block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block, norm_num_groups=norm_num_groups)
    if cross_attention_dim is not None:
        return UNet2DConditionModel(
            **common,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
        )
    return UNet2DModel(
        **common,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        attention_head_dim=attention_head_dim,
        num_class_embeds=num_class_embeds,
    )


def load_first_stage(spec: dict[str, Any]) -> tuple[AutoencoderKL | None, dict[str, Any]]:
    """``(frozen ae_kl or None for pixel space, spec to save)`` from ``{"checkpoint": path}``.

    The saved spec adds ``config`` (the autoencoder's hyperparameters), so that an LDM checkpoint
    rebuilds its first stage without the original file (the weights are in its own state_dict).
    """
    config, checkpoint_path = spec.get("config"), spec.get("checkpoint")
    if config is None and checkpoint_path is None:
        return None, {"checkpoint": None}
    if config is None:
        checkpoint_path = resolve_checkpoint(checkpoint_path)
        checkpoint = read_checkpoint(checkpoint_path, "model.first_stage.checkpoint", expected=AutoencoderKL)
        config = dict(checkpoint["hyper_parameters"])
        model = AutoencoderKL(**config)
        try:
            model.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as error:
            raise ValueError(f"first_stage.checkpoint: {checkpoint_path} does not match its own ae_kl config ({str(error).splitlines()[0][:120]})") from None
    else:
        model = AutoencoderKL(**config)
    model.requires_grad_(False)
    model.eval()
    return model, {"checkpoint": checkpoint_path, "config": config}


def load_text_encoder(spec: dict[str, Any]) -> tuple[nn.Module, Any, dict[str, Any]]:
    """``(open_clip CLIP, tokenizer, spec to save)`` from the ``text_encoder`` options.

    ``checkpoint`` (a ``model=clip`` run) or ``model_name`` + ``pretrained`` (open_clip weights,
    online) go through :func:`latentbench.models.clip.load_clip`; ``model_cfg`` (open_clip ``CLIP``
    kwargs) builds the architecture alone. The saved spec keeps only what rebuilds the architecture
    (``model_cfg``, or ``model_name`` without ``pretrained``): a saved LDM holds the text tower's
    weights in its own state_dict and loads without the CLIP checkpoint or a download.
    """
    from latentbench.models.clip import CLIPModel
    from latentbench.models.clip_inference import build_open_clip, clip_tokenizer, load_clip

    model_cfg, model_name = spec.get("model_cfg"), spec.get("model_name")
    if model_cfg is not None:
        clip = build_open_clip(dict(model_cfg), None, None)
        where = {"checkpoint": spec["checkpoint"]} if spec.get("checkpoint") else {}  # kept as a record of the source
        return clip, clip_tokenizer(clip), {**where, "model_cfg": model_cfg}
    checkpoint = spec.get("checkpoint")
    if checkpoint is None and model_name is None:
        raise ValueError("text_encoder: text conditioning needs text_encoder.checkpoint (a model=clip run) or text_encoder.model_name (+ pretrained)")
    if checkpoint is not None:
        key = "model.text_encoder.checkpoint"
        checkpoint = resolve_checkpoint(str(checkpoint))
        hparams = read_checkpoint(checkpoint, key, expected=CLIPModel).get("hyper_parameters", {})
        try:
            clip, tokenizer = load_clip(checkpoint=checkpoint)
        except ConfigError as error:
            raise ConfigError(f"{key}: {error}") from None
        if hparams.get("model_cfg") is not None:
            return clip, tokenizer, {"checkpoint": checkpoint, "model_cfg": hparams["model_cfg"]}
        return clip, tokenizer, {"model_name": hparams.get("model_name")}  # a fine-tuned open_clip architecture
    try:
        clip, tokenizer = load_clip(model_name=model_name, pretrained=spec.get("pretrained"))
    except ConfigError as error:
        raise ConfigError(f"model.text_encoder.{error}") from None
    return clip, tokenizer, {"model_name": model_name}


class LatentDiffusion(LatentbenchModule):
    """A diffusion model on a frozen first stage's latents (or on pixels), optionally conditioned.

    Args:
        input_shape (`list[int]`): ``(C, H, W)`` of the data (filled in by ``latentbench train``).
        conditioning (`str`): ``none``, ``class`` (needs ``num_classes``) or ``text`` (needs captions).
        first_stage (`dict`): ``{"checkpoint": <ae_kl .ckpt> or null}``; null = pixel space.
        unet (`dict`): ``_target_`` building the U-Net, called with ``sample_size``, ``in_channels``
            and the conditioner's arguments; defaults to :func:`build_unet`.
        noise_scheduler (`dict`): ``_target_`` of a diffusers scheduler (the forward process), built
            with ``prediction_type``.
        prediction_type (`str`): what the U-Net predicts: ``epsilon`` (the noise) or ``v_prediction``.
        text_encoder (`dict`): for ``text``: ``checkpoint`` (our ``model=clip``) or ``model_name`` +
            ``pretrained`` (open_clip weights, online).
        condition_dropout (`float`): probability of training on the null condition (for guidance).
        ema_decay (`float`, *optional*): EMA of the U-Net weights, used for sampling; null disables it.
        latent_std_batches (`int`): training batches used to measure the latent standard deviation.
        sampling (`dict`): the sampling defaults of :meth:`sample_grid` (and of the sample metrics and
            ``latentbench sample``): ``sampler``, ``steps``, ``guidance_scale``, ``seed``,
            ``per_condition``, ``prompts``, ``classes``. When and how often samples are drawn during
            training is the callbacks' business (``callbacks.sample_grid``, ``metrics.fid``, ``metrics.clip_score``).
        num_classes (`int`, *optional*), has_captions (`bool`): from the data module.
        optimizer, scheduler (`dict`): ``_target_`` configs as in :class:`ReconstructionModel`.

    Shapes: images ``(B, C, H, W)`` in [0, 1]; latents ``(B, c, H/f, W/f)``.
    """

    def __init__(
        self,
        input_shape: list[int],
        conditioning: Conditioning = "none",
        first_stage: dict | None = None,
        unet: dict | None = None,
        noise_scheduler: dict | None = None,
        prediction_type: PredictionType = "epsilon",
        text_encoder: dict | None = None,
        condition_dropout: float = 0.1,
        ema_decay: float | None = 0.999,
        latent_std_batches: int = 8,
        sampling: dict | None = None,
        num_classes: int | None = None,
        has_captions: bool = False,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.check_input_shape(self.input_shape)
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(f"condition_dropout: must lie in [0, 1), got {condition_dropout}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay: must lie in (0, 1) or be null, got {ema_decay}")
        check_positive("latent_std_batches", latent_std_batches)
        check_keys("first_stage", first_stage, ("checkpoint", "config"))
        sampling = {k: v for k, v in (sampling or {}).items() if k not in MOVED_SAMPLING_KEYS}
        self.hparams["sampling"] = sampling
        check_keys("sampling", sampling, DEFAULT_SAMPLING)
        check_keys("text_encoder", text_encoder, ("checkpoint", "model_name", "pretrained", "model_cfg"))
        self.conditioner = self._build_conditioner(conditioning, num_classes, has_captions, text_encoder or {})
        self.first_stage, self.hparams["first_stage"] = load_first_stage(first_stage or {})
        self.latent_shape = self._latent_shape()
        unet_cfg = dict(unet or self.default_unet)
        self.unet = self._build_unet(unet_cfg)
        self.noise_scheduler = instantiate(noise_scheduler or DEFAULT_NOISE_SCHEDULER, prediction_type=prediction_type)
        self.sampling = {**DEFAULT_SAMPLING, **(sampling or {})}
        if self.sampling["sampler"] not in SAMPLERS:
            raise ValueError(f"sampling.sampler: {self.sampling['sampler']!r} is not a sampler (allowed: {', '.join(SAMPLERS)})")
        self.ema = None
        if ema_decay is not None:
            self.ema = AveragedModel(self.unet, multi_avg_fn=ema_with_warmup(ema_decay), use_buffers=True)
            self.ema.requires_grad_(False)
        self.register_buffer("latent_std", torch.tensor(1.0))
        self.register_buffer("latent_std_measured", torch.tensor(False))
        self.val_metrics = reconstruction_metrics("val/first_stage/", True)
        self.test_metrics = reconstruction_metrics("test/first_stage/", True)

    # -- construction ------------------------------------------------------------------------
    default_unet: dict[str, Any] = DEFAULT_UNET
    returns_codes = True  # evaluation steps return the latents as codes (embedding views)

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """Refuse data this model cannot take: images ``(C, H, W)`` here."""
        if len(shape) != 3:
            raise ValueError(f"input_shape: latent diffusion needs (C, H, W) images, got {shape} (set data.flatten=false)")

    def _build_conditioner(self, conditioning: str, num_classes: int | None, has_captions: bool, text_encoder: dict) -> nn.Module:
        if conditioning == "none":
            return NoConditioning()
        if conditioning == "class":
            if num_classes is None:
                raise ValueError("conditioning: 'class' needs labelled data with classes, but this data module has num_classes=None")
            return ClassConditioning(num_classes)
        if conditioning == "text":
            if not has_captions:
                raise ValueError("conditioning: 'text' needs image-text data with captions (data=shapes or data=laion); this data module has none")
            clip, tokenizer, saved = load_text_encoder(text_encoder)
            self.hparams["text_encoder"] = saved
            prompts = (self.hparams.get("sampling") or {}).get("prompts")
            return TextConditioning(clip, tokenizer, prompts)
        raise ValueError(f"conditioning: {conditioning!r} is not allowed (allowed: none, class, text)")

    def _latent_shape(self) -> tuple[int, ...]:
        """The shape of one example's latents: the input shape with the image axes ``(C, H, W)`` replaced
        by the first stage's ``(c, h, w)`` (leading axes, e.g. frames, kept)."""
        if self.first_stage is None:
            return self.input_shape
        image_shape, lead = self.input_shape[-3:], self.input_shape[:-3]
        if tuple(self.first_stage.input_shape) != image_shape:
            raise ValueError(
                f"first_stage.checkpoint: {self.hparams.first_stage['checkpoint']} was trained on images of shape "
                f"{list(self.first_stage.input_shape)}, but the data gives {list(image_shape)}"
            )
        return (*lead, *self.first_stage.latent_shape)

    def _build_unet(self, unet_cfg: dict) -> nn.Module:
        channels, height, width = self.latent_shape[-3:]
        levels = len(unet_cfg.get("block_out_channels", (32, 64)))
        step = 2 ** (levels - 1)
        if height != width or height % step:
            where = f"the latents of first_stage.checkpoint {self.hparams.first_stage['checkpoint']}" if self.first_stage else "the images (pixel space)"
            raise ValueError(
                f"unet.block_out_channels: {where} are {channels}x{height}x{width}; a U-Net with {levels} levels needs "
                f"square sides divisible by {step} (use fewer levels or another first-stage factor)"
            )
        return instantiate(unet_cfg, sample_size=height, in_channels=channels, **self.conditioner.unet_arguments())

    def train(self, mode: bool = True) -> "LatentDiffusion":
        super().train(mode)
        if self.first_stage is not None:
            self.first_stage.eval()  # frozen
        return self

    # -- latents -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_first_stage(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(..., C, H, W)`` in [0, 1] -> the first stage's latents ``(..., c, h, w)`` (pixel space:
        ``2x - 1``); leading axes (batch, frames) are folded into one batch for the 2-D first stage."""
        if self.first_stage is None:
            return images * 2.0 - 1.0
        lead = images.shape[:-3]
        latents = self.first_stage.encode_latents(images.reshape(-1, *images.shape[-3:]))
        return latents.reshape(*lead, *latents.shape[1:])

    @torch.no_grad()
    def decode_first_stage(self, latents: torch.Tensor) -> torch.Tensor:
        """The first stage's latents ``(..., c, h, w)`` -> images ``(..., C, H, W)`` (not clipped)."""
        if self.first_stage is None:
            return (latents + 1.0) / 2.0
        lead = latents.shape[:-3]
        images = self.first_stage.decode_latents(latents.reshape(-1, *latents.shape[-3:]))
        return images.reshape(*lead, *images.shape[1:])

    @torch.no_grad()
    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` (or clips ``(B, T, C, H, W)``) in [0, 1] -> unit-scale latents ``(B, c, h, w)`` (``(B, T, c, h, w)``)."""
        return self.encode_first_stage(images) / self.latent_std

    @torch.no_grad()
    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Unit-scale latents ``(B, c, h, w)`` (or ``(B, T, c, h, w)``) -> images ``(B, C, H, W)`` (clips) clipped to [0, 1]."""
        return self.decode_first_stage(latents * self.latent_std).clamp(0.0, 1.0)

    def choose_prompts(self, loader, count: int = 4) -> None:
        """Fix the sample grid's prompts to the first ``count`` distinct validation captions (saved in hparams)."""
        prompts: list[str] = []
        for batch in loader:
            prompts += [c for c in batch["caption"] if c and c not in prompts]
            if len(prompts) >= count:
                break
        self.sampling["prompts"] = prompts[:count]
        self.hparams["sampling"] = {**(self.hparams.get("sampling") or {}), "prompts": prompts[:count]}
        log.info("sample grid prompts (from the validation captions): %s", prompts[:count])

    @torch.no_grad()
    def measure_latent_std(self, loader) -> float:
        """Standard deviation of the first stage's latents over the first ``latent_std_batches`` batches."""
        total, total_sq, count = 0.0, 0.0, 0
        for index, batch in enumerate(loader):
            if index >= self.hparams.latent_std_batches:
                break
            latents = self.encode_first_stage(batch["image"].to(self.device)).double()
            total, total_sq, count = total + latents.sum().item(), total_sq + (latents**2).sum().item(), count + latents.numel()
        mean = total / count
        return math.sqrt(max(total_sq / count - mean**2, 1e-12))

    def on_fit_start(self) -> None:
        if isinstance(self.conditioner, TextConditioning) and not self.sample_requests():
            self.choose_prompts(self.trainer.datamodule.val_dataloader())
        if bool(self.latent_std_measured):
            return
        std = self.measure_latent_std(self.trainer.datamodule.train_dataloader())
        std = float(self.trainer.strategy.broadcast(std))
        self.latent_std.fill_(std)
        self.latent_std_measured.fill_(True)
        log.info("latent std measured on the training data: %.4f", std)
        for logger in self.trainer.loggers:
            logger.log_metrics({"latent_std": std}, step=self.global_step)

    # -- diffusion loss ----------------------------------------------------------------------
    def diffusion_loss(self, batch: dict, generator: torch.Generator | None = None, drop_probability: float = 0.0) -> torch.Tensor:
        """Mean squared error of the U-Net's prediction (noise or v) at uniformly drawn timesteps."""
        latents = self.to_latents(batch["image"])
        shape, device = latents.shape, latents.device
        steps = self.noise_scheduler.config.num_train_timesteps
        if generator is not None:  # evaluation: fixed draws from a CPU generator, the same on any device
            noise = torch.randn(shape, generator=generator, device="cpu").to(device)
            timesteps = torch.randint(0, steps, (shape[0],), generator=generator, device="cpu").to(device)
        else:  # training: drawn on the device (a copy from the CPU would wait for the GPU every step)
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, steps, (shape[0],), device=device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        condition = self.conditioner.from_batch(batch, drop_probability, generator)
        prediction = self.unet(noisy, timesteps, **condition).sample
        target = noise if self.hparams.prediction_type == "epsilon" else self.noise_scheduler.get_velocity(latents, noise, timesteps)
        return nn.functional.mse_loss(prediction.float(), target.float())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch, drop_probability=self.hparams.condition_dropout)
        log_training_values(self, {"train/loss": loss}, len(batch["image"]))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.unet)

    def evaluation_step(self, batch: dict, batch_idx: int, stage: str) -> EvalOutput:
        # fixed noise and timesteps per batch: val/loss is comparable across epochs
        generator = torch.Generator().manual_seed(batch_idx)
        images = batch["image"]
        loss = self.diffusion_loss(batch, generator)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=len(images))
        latents = self.to_latents(images)
        reconstruction = self.to_images(latents)
        if self.first_stage is not None:  # pixel space reconstructs exactly: nothing to measure
            metrics = self.val_metrics if stage == "val" else self.test_metrics
            metrics.update(as_images(reconstruction).float(), as_images(images).float())  # clips: frame by frame
            self.log_dict(metrics, batch_size=len(images))
        return EvalOutput(reconstruction=reconstruction, codes=latents.flatten(1) if self.returns_codes else None)

    # -- sampling ----------------------------------------------------------------------------
    def denoiser(self) -> nn.Module:
        """The EMA U-Net once it has averaged at least one step, else the trained one."""
        if self.ema is not None and int(self.ema.n_averaged) > 0:
            return self.ema.module
        return self.unet

    @torch.no_grad()
    def sample(
        self,
        requests: list | None = None,
        per_condition: int = 1,
        sampler: Sampler = "ddim",
        steps: int = 50,
        guidance_scale: float = 1.0,
        seed: int = 0,
    ) -> torch.Tensor:
        """Generate ``len(requests) * per_condition`` images ``(N, C, H, W)`` (clips ``(N, T, C, H, W)``) in [0, 1].

        ``requests`` are class ids (class conditioning), prompts (text) or None (unconditional:
        ``per_condition`` images). Image i starts from noise seeded with ``seed + i`` and the
        sampler's own noise comes from a generator seeded with ``seed``, so the same call gives the
        same images in every epoch and run. ``guidance_scale`` > 1 applies classifier-free guidance:
        ``uncond + scale * (cond - uncond)``.
        """
        return self.to_images(self.denoise(requests, per_condition, sampler, steps, guidance_scale, seed))

    @torch.no_grad()
    def sample_trajectory(
        self,
        requests: list | None = None,
        per_condition: int = 1,
        sampler: Sampler = "ddim",
        steps: int = 50,
        guidance_scale: float = 1.0,
        seed: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`sample`, and the denoising seen step by step: ``(images (N, ...), trajectory (S, N, ...))``.

        Trajectory frame k is the decoded prediction of the clean sample (x0) at the sampler's k-th of
        its S steps; the last one is the final sample (exactly for ``ddpm`` and ``ddim``, whose last
        step returns its x0 prediction).
        """
        predictions: list[torch.Tensor] = []
        latents = self.denoise(requests, per_condition, sampler, steps, guidance_scale, seed, on_step=predictions.append)
        return self.to_images(latents), torch.stack([self.to_images(x0) for x0 in predictions])

    @torch.no_grad()
    def denoise(
        self,
        requests: list | None,
        per_condition: int,
        sampler: Sampler,
        steps: int,
        guidance_scale: float,
        seed: int,
        on_step: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """The sampling loop of :meth:`sample`: unit-scale latents ``(N, *latent_shape)``; ``on_step``
        gets the predicted clean latents (x0) of every step."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler: {sampler!r} is not a sampler (allowed: {', '.join(SAMPLERS)})")
        check_positive("steps", steps)
        check_positive("per_condition", per_condition)
        unet = self.denoiser()
        was_training = unet.training
        unet.eval()
        device = self.latent_std.device
        expanded = None if requests is None else [r for r in requests for _ in range(per_condition)]
        count = per_condition if expanded is None else len(expanded)
        condition = self.conditioner.from_requests(expanded, device) if expanded is not None else {}
        guided = guidance_scale != 1.0 and expanded is not None and condition
        if guided:
            condition = concat_conditions(self.conditioner.null(count, device), condition)
        scheduler = make_sampler(sampler, self.noise_scheduler.config)
        scheduler.set_timesteps(steps)
        noise = torch.stack([torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(count)])
        latents = noise.to(device) * scheduler.init_noise_sigma
        generator = torch.Generator().manual_seed(seed)
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
            prediction = unet(model_input, t.to(device), **condition).sample
            if guided:
                unconditional, conditional = prediction.chunk(2)
                prediction = unconditional + guidance_scale * (conditional - unconditional)
            step = scheduler.step(prediction, t, latents, generator=generator)
            if on_step is not None:
                x0 = getattr(step, "pred_original_sample", None)
                on_step(x0 if x0 is not None else self.predicted_clean(prediction, t, latents))
            latents = step.prev_sample
        unet.train(was_training)
        return latents

    def predicted_clean(self, prediction: torch.Tensor, t: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        """x0 from the U-Net's prediction at timestep t: ``(x_t - sqrt(1 - a) eps) / sqrt(a)`` (epsilon) or
        ``sqrt(a) x_t - sqrt(1 - a) v`` (v-prediction), a the training schedule's cumulative alpha at t."""
        alpha = self.noise_scheduler.alphas_cumprod[int(t)].to(noisy.device, noisy.dtype)
        if self.hparams.prediction_type == "epsilon":
            return (noisy - (1 - alpha).sqrt() * prediction) / alpha.sqrt()
        return alpha.sqrt() * noisy - (1 - alpha).sqrt() * prediction

    def sample_requests(self) -> list | None:
        """The classes/prompts of the logged sample grids: ``sampling.classes``/``prompts`` or the conditioner's defaults."""
        configured = self.sampling.get("classes") if isinstance(self.conditioner, ClassConditioning) else self.sampling.get("prompts")
        return list(configured) if configured else self.conditioner.default_requests()

    def sample_one_each(self, requests: list | None, count: int, seed_offset: int = 0) -> torch.Tensor:
        """One image per request (``count`` unconditional images for None) with the sampling defaults.

        Image i starts from noise ``sampling.seed + seed_offset + i``: the sample metrics draw the
        same images in every epoch, so their values are comparable across epochs and runs.
        """
        options = {key: self.sampling[key] for key in ("sampler", "steps", "guidance_scale")}
        return self.sample(requests, per_condition=1 if requests is not None else count, seed=self.sampling["seed"] + seed_offset, **options)

    def requests_from_batch(self, batch: dict) -> list | None:
        """What to sample to match a batch's images: their class ids (class), captions (text), or None (unconditional)."""
        if isinstance(self.conditioner, ClassConditioning):
            return batch["label"].tolist()
        if isinstance(self.conditioner, TextConditioning):
            return list(batch["caption"])
        return None

    def sample_grid(self, **overrides: Any) -> tuple[torch.Tensor, list | None]:
        """Samples for the configured requests, ``(rows * per_condition, C, H, W)``, and the requests."""
        options = {key: self.sampling[key] for key in ("per_condition", "sampler", "steps", "guidance_scale", "seed")}
        options.update(overrides)
        requests = self.sample_requests()
        return self.sample(requests, **options), requests

    # -- optimisation --------------------------------------------------------------------------
    def optimizer_parameters(self) -> Any:
        return self.unet.parameters()  # the first stage and the text tower are frozen

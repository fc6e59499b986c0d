"""Video latent diffusion (Ho et al. 2022, small): a space-time U-Net denoising the per-frame latents of a frozen first stage.

Everything but the shapes is :class:`~latentbench.models.ldm.LatentDiffusion`'s: the first stage
(any ``model=ae_kl`` checkpoint, applied frame by frame), the noise schedule, the samplers,
EMA, classifier-free guidance, class/text conditioning, the latent scale and the sampling
defaults. This module adds the clip shapes, the space-time U-Net and joint training on still images.

Shapes: clips ``(B, T, C, H, W)`` in [0, 1]; latents ``(B, T, c, H/f, W/f)``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet3DConditionModel
from diffusers.models.unets.unet_3d_condition import UNet3DConditionOutput
from torch import nn

from latentbench.models.base import check_positive, log_training_values
from latentbench.models.ldm import LatentDiffusion

DEFAULT_VIDEO_UNET = {"_target_": "latentbench.models.video_ldm.build_video_unet"}


class SpaceTimeUNet(nn.Module):
    """diffusers' ``UNet3DConditionModel`` (factorised: 2-D convolutions and attention per frame, temporal
    convolutions and attention per pixel) on clips laid out as the harness keeps them, frames first.

    ``UNet3DConditionModel`` is conditioned by cross-attention; class labels (and, for an
    unconditional model, nothing) become one learned token of ``condition_dim`` it attends to. With
    ``class_in_time_embedding`` (the unet's ``time_cond_proj_dim`` set) the class token is also added to
    the timestep embedding (diffusers' ``timestep_cond``), which shifts every ResNet block of every level,
    as ``UNet2DModel``'s class embedding does in ``model=ldm``: attention to a single token is a
    class-dependent bias in the attention levels only, and is learned far more slowly.

    ``forward(sample (B, T, c, h, w), timestep, class_labels=None, encoder_hidden_states=None)``
    returns an output whose ``sample`` is ``(B, T, c, h, w)``, like the 2-D U-Nets of ``ldm``.
    """

    def __init__(self, unet: UNet3DConditionModel, num_class_embeds: int | None = None, text: bool = False):
        super().__init__()
        self.unet = unet
        width = unet.config.cross_attention_dim
        self.class_tokens = nn.Embedding(num_class_embeds, width) if num_class_embeds else None
        self.null_token = None if text or num_class_embeds else nn.Parameter(torch.zeros(1, 1, width))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None) -> UNet3DConditionOutput:
        if encoder_hidden_states is None:
            if self.class_tokens is not None:
                encoder_hidden_states = self.class_tokens(class_labels)[:, None]
            else:
                encoder_hidden_states = self.null_token.expand(len(sample), -1, -1)
        timestep_cond = None
        if self.class_tokens is not None and self.unet.config.time_cond_proj_dim is not None:
            timestep_cond = encoder_hidden_states[:, 0]  # the class token, into the timestep embedding
        out = self.unet(sample.transpose(1, 2), timestep, encoder_hidden_states=encoder_hidden_states,
                        timestep_cond=timestep_cond).sample
        return UNet3DConditionOutput(sample=out.transpose(1, 2))


def build_video_unet(
    sample_size: int,
    in_channels: int,
    block_out_channels: list[int] = (32, 64),
    layers_per_block: int = 1,
    attention: list[bool] = (False, True),
    attention_heads: int = 4,
    norm_num_groups: int = 8,
    condition_dim: int = 32,
    num_class_embeds: int | None = None,
    cross_attention_dim: int | None = None,
    class_in_time_embedding: bool = False,
) -> SpaceTimeUNet:
    """A small space-time U-Net: ``(B, T, in_channels, S, S), t -> (B, T, in_channels, S, S)``.

    Args:
        sample_size, in_channels: the latent's side and channels (filled in by the model).
        block_out_channels (`list[int]`): width of each level.
        layers_per_block (`int`): ResNet (+ temporal convolution) blocks per level.
        attention (`list[bool]`): per level, whether it has spatial cross-attention and temporal attention
            (the middle block always has both).
        attention_heads (`int`): heads of every attention (diffusers calls it ``attention_head_dim`` here);
            must divide every width.
        norm_num_groups (`int`): GroupNorm groups; must divide every width.
        condition_dim (`int`): width of the class (or unconditional) token the U-Net attends to.
        num_class_embeds (`int`, *optional*): class conditioning (classes + the null class).
        cross_attention_dim (`int`, *optional*): text conditioning: the width of the ``(B, L, D)`` hidden states.
        class_in_time_embedding (`bool`): class conditioning: also add the class token to the timestep
            embedding (every ResNet block sees the class), not only to the cross-attention. Off by default
            so that checkpoints saved before it existed load unchanged; ``model=video_ldm`` turns it on.
    """
    if len(attention) != len(block_out_channels):
        raise ValueError(f"unet.attention: needs one entry per level ({len(block_out_channels)}), got {list(attention)}")
    for name, divisor in (("norm_num_groups", norm_num_groups), ("attention_heads", attention_heads)):
        if any(width % divisor for width in block_out_channels):
            raise ValueError(f"unet.{name}: {divisor} must divide every entry of unet.block_out_channels {list(block_out_channels)}")
    unet = UNet3DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
        down_block_types=tuple("CrossAttnDownBlock3D" if a else "DownBlock3D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(attention)),
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
        cross_attention_dim=cross_attention_dim or condition_dim, attention_head_dim=attention_heads,
        time_cond_proj_dim=condition_dim if class_in_time_embedding and num_class_embeds else None,
    )
    return SpaceTimeUNet(unet, num_class_embeds, text=cross_attention_dim is not None)


class VideoLatentDiffusion(LatentDiffusion):
    """Latent diffusion of clips: :class:`~latentbench.models.ldm.LatentDiffusion` with a frame axis.

    Args:
        input_shape (`list[int]`): ``(T, C, H, W)`` of one clip (filled in from ``data=moving_digits``
            or ``data=video_clips``).
        still_images (`int`): joint training on still images (Ho et al. 2022, Sec. 3.2): every training
            step also denoises this many single frames, drawn at random from the batch's clips and
            taken as 1-frame clips (their temporal layers see one frame: the spatial layers learn from
            independent images); 0 turns it off.
        still_image_weight (`float`): weight of the still-image loss beside the clip loss.
        conditioning, first_stage, unet, noise_scheduler, prediction_type, text_encoder, condition_dropout,
        ema_decay, latent_std_batches, sampling, num_classes, has_captions, optimizer, scheduler: as for
            :class:`~latentbench.models.ldm.LatentDiffusion` (``unet`` defaults to :func:`build_video_unet`).

    Shapes: clips ``(B, T, C, H, W)`` in [0, 1]; latents ``(B, T, c, H/f, W/f)``; ``sample`` returns clips.
    """

    default_unet: dict[str, Any] = DEFAULT_VIDEO_UNET
    returns_codes = False  # a clip's latents are no code for the embedding views

    def __init__(self, input_shape: list[int], still_images: int = 0, still_image_weight: float = 1.0, **kwargs):
        super().__init__(input_shape=input_shape, **kwargs)
        if still_images < 0:
            raise ValueError(f"still_images: must be >= 0, got {still_images}")
        if still_images:
            check_positive("still_image_weight", still_image_weight)

    @property
    def num_frames(self) -> int:
        return self.input_shape[0]

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 4:
            raise ValueError(f"input_shape: video latent diffusion needs clips (T, C, H, W), got {list(shape)} "
                             "(use a clip data module: data=moving_digits or data=video_clips, with frames_as_images=false)")

    def still_batch(self, batch: dict) -> dict:
        """``still_images`` frames of random clips and times, as 1-frame clips ``(S, 1, C, H, W)`` with their clips' labels and captions."""
        clips = batch["image"]
        which = torch.randint(0, len(clips), (self.hparams.still_images,), device=clips.device)
        when = torch.randint(0, clips.shape[1], (self.hparams.still_images,), device=clips.device)
        still = {"image": clips[which, when][:, None], "label": batch["label"][which]}
        if "caption" in batch:
            still["caption"] = [batch["caption"][i] for i in which.tolist()]
        return still

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch, drop_probability=self.hparams.condition_dropout)
        values = {"train/loss": loss}
        if self.hparams.still_images:
            still_loss = self.diffusion_loss(self.still_batch(batch), drop_probability=self.hparams.condition_dropout)
            values["train/still_loss"] = still_loss
            loss = loss + self.hparams.still_image_weight * still_loss
        log_training_values(self, values, len(batch["image"]))
        return loss

"""What a diffusion U-Net is conditioned on: nothing, a class label, or a caption.

Each conditioner turns a batch (training) or a list of requests (sampling: class ids or prompts)
into the keyword arguments of the U-Net's forward, knows its "null" condition for
classifier-free guidance, and says which U-Net it needs (``unet_arguments``).
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import nn

from latentbench.devices import to_device_without_sync


def concat_conditions(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack two U-Net keyword-argument dicts along the batch (for one guided forward pass)."""
    return {key: torch.cat([first[key], second[key]]) for key in first}


class NoConditioning(nn.Module):
    """Unconditional generation: the U-Net gets no condition."""

    def unet_arguments(self) -> dict[str, Any]:
        return {}

    def from_batch(self, batch: dict, drop_probability: float = 0.0, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        return {}

    def from_requests(self, requests: list | None, device: torch.device) -> dict[str, torch.Tensor]:
        return {}

    def null(self, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        return {}

    def default_requests(self) -> list | None:
        return None


class ClassConditioning(nn.Module):
    """Class labels ``0 .. num_classes-1``; label ``num_classes`` is the null class used for
    classifier-free guidance (training drops labels to it with ``drop_probability``).

    Args:
        num_classes (`int`): classes of the data; the U-Net gets ``num_classes + 1`` class embeddings.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def unet_arguments(self) -> dict[str, Any]:
        return {"num_class_embeds": self.num_classes + 1}

    def from_batch(self, batch: dict, drop_probability: float = 0.0, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``{"class_labels": (B,) int64}``, each replaced by the null class with ``drop_probability``."""
        labels = batch["label"].long()
        if drop_probability > 0:
            # with a (CPU) generator: the same draws on any device; without: on the device, no copy to wait for
            draws = (torch.rand(len(labels), generator=generator).to(labels.device) if generator is not None
                     else torch.rand(len(labels), device=labels.device))
            drop = draws < drop_probability
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return {"class_labels": labels}

    def from_requests(self, requests: list, device: torch.device) -> dict[str, torch.Tensor]:
        for request in requests:
            if not isinstance(request, int) or not 0 <= request < self.num_classes:
                raise ValueError(f"classes: {request!r} is not a class id (allowed: 0..{self.num_classes - 1})")
        return {"class_labels": torch.tensor(requests, dtype=torch.long, device=device)}

    def null(self, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        return {"class_labels": torch.full((batch_size,), self.num_classes, dtype=torch.long, device=device)}

    def default_requests(self) -> list:
        return list(range(self.num_classes))


class TextConditioning(nn.Module):
    """Captions through a frozen open_clip text tower: per-token hidden states ``(B, T, D)`` for the
    U-Net's cross-attention. The null condition is the empty caption (as in Stable Diffusion).

    Args:
        clip (`open_clip.CLIP`): the CLIP model whose text tower is used; frozen, kept in eval mode.
        tokenizer: open_clip tokenizer, ``list[str] -> (B, T) int64``.
        prompts (`list[str]`): default prompts of the sample grids.
    """

    def __init__(self, clip: nn.Module, tokenizer, prompts: list[str] | None = None):
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.tokenizer = tokenizer
        self.prompts = list(prompts or [])
        self.requires_grad_(False)
        self.eval()

    @property
    def width(self) -> int:
        """D, the width of the hidden states (the U-Net's ``cross_attention_dim``)."""
        return self.token_embedding.embedding_dim

    def train(self, mode: bool = True) -> "TextConditioning":
        return super().train(False)  # frozen: always in eval mode

    @torch.no_grad()
    def encode(self, captions: list[str], device: torch.device) -> torch.Tensor:
        """``list[str]`` of length B -> per-token hidden states ``(B, T, D)`` after ``ln_final``."""
        tokens = self.tokens(captions, device)
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.transformer(x, attn_mask=self.attn_mask)
        return self.ln_final(x)

    @torch.compiler.disable  # string work, in a compiled step too: no graph in it, and every caption a guard
    def tokens(self, captions: list[str], device: torch.device) -> torch.Tensor:
        """``list[str]`` of length B -> token ids ``(B, T)`` on ``device``."""
        return to_device_without_sync(self.tokenizer(list(captions)), device)

    def unet_arguments(self) -> dict[str, Any]:
        return {"cross_attention_dim": self.width}

    def from_batch(self, batch: dict, drop_probability: float = 0.0, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        captions = dropped_captions(batch["caption"], drop_probability, generator)
        return {"encoder_hidden_states": self.encode(captions, batch["image"].device)}

    def from_requests(self, requests: list, device: torch.device) -> dict[str, torch.Tensor]:
        for request in requests:
            if not isinstance(request, str):
                raise ValueError(f"prompts: {request!r} is not a string")
        return {"encoder_hidden_states": self.encode(requests, device)}

    def null(self, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        return {"encoder_hidden_states": self.encode([""] * batch_size, device)}

    def default_requests(self) -> list:
        return self.prompts


@torch.compiler.disable  # Python's random and strings: a compiled step cannot trace them (nor should it)
def dropped_captions(captions: list[str], drop_probability: float, generator: torch.Generator | None) -> list[str]:
    """``captions`` with each replaced by "" (the unconditional prompt) with probability ``drop_probability``,
    drawn from ``generator`` (classifier-free guidance training)."""
    captions = list(captions)
    if drop_probability > 0:
        rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=generator)))
        captions = ["" if rng.random() < drop_probability else caption for caption in captions]
    return captions

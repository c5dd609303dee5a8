"""Noise-aware image classifier ``p_phi(y | x, c_noise)`` for classifier guidance.

Dhariwal & Nichol 2021, sec. 4: the classifier is the encoder half of the UNet (down-sampling
stages and middle block, conditioned on the noise level) followed by an attention-pooling head; it is
trained on noisy images and its gradient ``grad_x log p(y | x)`` steers sampling (their Algorithm 1
and 2). See :mod:`difflab.guidance` for the guided denoiser.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConditionEmbedding, GroupNorm
from .unet import Encoder, EncoderConfig

__all__ = ["ClassifierConfig", "NoisyClassifier", "AttentionPool"]

POOLS = ("attention", "average")


@dataclass(frozen=True)
class ClassifierConfig(EncoderConfig):
    """:class:`EncoderConfig` plus the head: ``num_classes`` logits from ``pool`` ("attention" or
    "average"). Defaults follow ADM's classifier (Dhariwal & Nichol 2021, appendix; no dropout,
    BigGAN down-sampling blocks)."""

    dropout: float = 0.0
    resblock_updown: bool = True
    num_classes: int = 10
    pool: str = "attention"

    def __post_init__(self):
        super().__post_init__()
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; choose from {POOLS}")


class AttentionPool(nn.Module):
    """Attention pooling (Radford et al. 2021, sec. 2.4; ADM's classifier head).

    The spatial mean is prepended as a query token, a learned positional embedding is added to all
    ``H W + 1`` tokens, and the output is the mean token after one multi-head attention layer,
    projected to ``out_dim``.
    """

    def __init__(self, channels: int, resolution: int, num_heads: int, out_dim: int):
        super().__init__()
        self.num_heads, self.resolution = num_heads, resolution
        self.pos = nn.Parameter(torch.randn(resolution**2 + 1, channels) / channels**0.5)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, out_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, c, height, width = h.shape
        if (height, width) != (self.resolution, self.resolution):
            raise ValueError(f"attention pooling was built for {self.resolution}x{self.resolution} "
                             f"features, got {height}x{width}; use pool='average' for other sizes")
        tokens = h.flatten(2).transpose(1, 2)  # (B, HW, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + self.pos
        qkv = self.qkv(tokens).reshape(b, -1, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, HW + 1, d)
        out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # only the mean token's query is needed
        return self.proj(out.reshape(b, c))


class NoisyClassifier(nn.Module):
    """Classifier ``(x, c_noise) -> logits (B, num_classes)`` on noisy images (Dhariwal & Nichol 2021, sec. 4).

    ``c_noise`` uses the same convention as the UNet it guides, so both see the same noise level.
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        cfg = self.config = config
        emb_dim = 4 * cfg.base_channels
        self.embed = ConditionEmbedding(cfg.base_channels, emb_dim)
        self.encoder = Encoder(cfg, emb_dim)
        ch = self.encoder.out_channels
        self.norm_out = GroupNorm(ch, cfg.groups)
        if cfg.pool == "attention":
            self.head = AttentionPool(ch, self.encoder.out_resolution, cfg.heads(ch), cfg.num_classes)
        else:
            self.head = nn.Linear(ch, cfg.num_classes)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        h, _ = self.encoder(x, self.embed(c_noise, None, x.shape[0]))
        h = F.silu(self.norm_out(h))
        if self.config.pool == "average":
            h = h.mean(dim=(2, 3))
        return self.head(h)

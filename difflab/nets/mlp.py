"""Residual MLP ``F(x, c_noise, y)`` for low-dimensional data of shape (B, D).

The toy-data network of score-based and diffusion tutorials: the noise level enters through the
same sinusoidal embedding + MLP as the UNet (Ho et al. 2020, appendix B) and is added inside every
residual block (a pre-activation residual MLP, He et al. 2016, "Identity Mappings in Deep Residual
Networks", sec. 4). Like the UNet, the last layer of every residual branch and the output layer
are zero-initialised, so a fresh network outputs exactly zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConditionEmbedding, JSONConfig, zero_init

__all__ = ["MLPConfig", "MLPDenoiserNet"]


@dataclass(frozen=True)
class MLPConfig(JSONConfig):
    """``dim``: data dimension D; ``hidden_channels`` x ``depth`` residual blocks; ``embed_dim``: size of
    the sinusoidal noise features; ``num_classes``: optional class embedding with a null class;
    ``guidance_embedding``: an input for the guidance scale w (a guidance-distilled student)."""

    dim: int = 2
    hidden_channels: int = 256
    depth: int = 4
    embed_dim: int = 64
    num_classes: int | None = None
    dropout: float = 0.0
    guidance_embedding: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.embed_dim % 2:
            raise ValueError(f"embed_dim must be even for the sinusoidal embedding, got {self.embed_dim}")


class MLPBlock(nn.Module):
    """``h + W2 Dropout(SiLU(W1 SiLU(LN(h)) + A SiLU(emb))))``, with ``W2`` zero-initialised."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb_proj = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = zero_init(nn.Linear(width, width))

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        r = self.fc1(F.silu(self.norm(h))) + self.emb_proj(F.silu(emb))
        return h + self.fc2(self.dropout(F.silu(r)))


class MLPDenoiserNet(nn.Module):
    """Noise-conditional residual MLP ``(B, D), (B,) [, (B,)] -> (B, D)``.

    ``y`` follows the UNet's convention: ``None``, ``-1`` or ``num_classes`` is the null class used
    for classifier-free guidance (Ho & Salimans 2021, sec. 3.2).
    """

    def __init__(self, config: MLPConfig):
        super().__init__()
        cfg = self.config = config
        self.embed = ConditionEmbedding(cfg.embed_dim, cfg.hidden_channels, cfg.num_classes, cfg.guidance_embedding)
        self.proj_in = nn.Linear(cfg.dim, cfg.hidden_channels)
        self.blocks = nn.ModuleList(MLPBlock(cfg.hidden_channels, cfg.dropout) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.hidden_channels)
        self.proj_out = zero_init(nn.Linear(cfg.hidden_channels, cfg.dim))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor | None = None, w=None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"expected data of shape (B, {self.config.dim}), got {tuple(x.shape)}")
        emb = self.embed(c_noise, y, x.shape[0], w)
        h = self.proj_in(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.proj_out(F.silu(self.norm_out(h)))

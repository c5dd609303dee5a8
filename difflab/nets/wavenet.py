"""DiffWave's non-causal WaveNet ``F(x, c_noise, y, w, condition)`` for 1-D sequences (B, C, L).

Kong et al. 2021, "DiffWave: A Versatile Diffusion Model for Audio Synthesis", sec. 3 and Fig. 2:
a 1x1 input convolution and ReLU lift x to R residual channels; then a stack of residual layers,
layer i with a dilated convolution of dilation ``2 ** (i % dilation_cycle)``. Inside a layer the
noise embedding is added to the input, the dilated convolution gives 2R channels, a local
conditioner (1x1 convolution of ``condition``) is added, the gated unit ``tanh(a) * sigmoid(b)``
(van den Oord et al. 2016, "WaveNet", sec. 2.3) follows, and a 1x1 convolution splits into a
residual and a skip part. The layer's output is ``(x + residual) / sqrt(2)`` of its *input* x; the
skips of all layers are summed and divided by ``sqrt(layers)``, then 1x1 conv, ReLU and a
zero-initialised 1x1 conv to the output channels, so a fresh network outputs exactly zero.

Unlike the causal WaveNet, the convolutions are centred (DiffWave is not autoregressive), so the
output keeps the input's length and position i sees ``receptive_field // 2`` samples on each side.
With ``cond_channels`` the same local conditioner carries e.g. CSDI's observed values and mask
(Tashiro et al. 2021, sec. 4) to every layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConditionEmbedding, JSONConfig, zero_init

__all__ = ["WaveNetConfig", "WaveNet", "WaveNetLayer"]


def _check_int(name: str, value, minimum: int):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class WaveNetConfig(JSONConfig):
    """``layers`` residual layers of ``residual_channels`` R with dilations ``2 ** (i % dilation_cycle)``
    and an odd ``kernel_size``; outputs ``out_channels`` (default ``in_channels``); ``embed_dim``: size
    of the sinusoidal noise features; ``cond_channels``: channels of the local conditioner (0 = none);
    ``num_classes`` / ``guidance_embedding`` add those conditionings; ``length`` is informational
    only (the network runs at any length)."""

    in_channels: int = 1
    out_channels: int | None = None
    residual_channels: int = 64
    layers: int = 12
    dilation_cycle: int = 6
    kernel_size: int = 3
    embed_dim: int = 128
    cond_channels: int = 0
    num_classes: int | None = None
    guidance_embedding: bool = False
    length: int | None = None

    def __post_init__(self):
        super().__post_init__()
        for name in ("in_channels", "residual_channels", "layers", "dilation_cycle", "kernel_size", "embed_dim"):
            _check_int(name, getattr(self, name), 1)
        _check_int("cond_channels", self.cond_channels, 0)
        for name in ("out_channels", "num_classes", "length"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so the convolution is centred, got {self.kernel_size}")
        if self.embed_dim % 2:
            raise ValueError(f"embed_dim must be even for the sinusoidal embedding, got {self.embed_dim}")
        if not isinstance(self.guidance_embedding, bool):
            raise ValueError(f"guidance_embedding must be true or false, got {self.guidance_embedding!r}")

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels

    @property
    def dilations(self) -> tuple[int, ...]:
        """Dilation of each layer: ``2 ** (i % dilation_cycle)`` (Kong et al. 2021, sec. 3)."""
        return tuple(2 ** (i % self.dilation_cycle) for i in range(self.layers))

    @property
    def receptive_field(self) -> int:
        """``1 + sum_i dilation_i (kernel_size - 1)`` samples, centred on the output position."""
        return 1 + sum(d * (self.kernel_size - 1) for d in self.dilations)


class WaveNetLayer(nn.Module):
    """One residual layer of DiffWave (Kong et al. 2021, Fig. 2): returns ``((x + r) / sqrt(2), s)`` with
    ``[r, s] = W_out (tanh(a) * sigmoid(b))``, ``[a, b] = DilConv(x + W_emb emb) + W_c condition``."""

    def __init__(self, channels: int, emb_dim: int, dilation: int, kernel_size: int, cond_channels: int):
        super().__init__()
        self.emb_proj = nn.Linear(emb_dim, channels)
        self.dilated_conv = nn.Conv1d(channels, 2 * channels, kernel_size, dilation=dilation,
                                      padding=dilation * (kernel_size - 1) // 2)
        self.cond_proj = nn.Conv1d(cond_channels, 2 * channels, 1) if cond_channels else None
        self.out_proj = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, condition: torch.Tensor | None = None):
        # DiffWave's embedding MLP ends in a swish before each layer's own linear map.
        h = x + self.emb_proj(F.silu(emb))[:, :, None]
        z = self.dilated_conv(h)
        if self.cond_proj is not None:
            z = z + self.cond_proj(condition)
        a, b = z.chunk(2, dim=1)
        residual, skip = self.out_proj(torch.tanh(a) * torch.sigmoid(b)).chunk(2, dim=1)
        return (x + residual) / math.sqrt(2), skip


class WaveNet(nn.Module):
    """Non-causal WaveNet denoiser ``(B, C, L), (B,) -> (B, C_out, L)`` (Kong et al. 2021, sec. 3).

    ``y`` follows the UNet's convention: ``None``, ``-1`` or ``num_classes`` is the null class used
    for classifier-free guidance (Ho & Salimans 2021, sec. 3.2); ``w`` is a guided student's
    guidance scale; ``condition`` (B, cond_channels, L) is required exactly when ``cond_channels > 0``.
    """

    def __init__(self, config: WaveNetConfig):
        super().__init__()
        cfg = self.config = config
        r = cfg.residual_channels
        emb_dim = 4 * r
        self.embed = ConditionEmbedding(cfg.embed_dim, emb_dim, cfg.num_classes, cfg.guidance_embedding)
        self.proj_in = nn.Conv1d(cfg.in_channels, r, 1)
        self.layers = nn.ModuleList(WaveNetLayer(r, emb_dim, d, cfg.kernel_size, cfg.cond_channels)
                                    for d in cfg.dilations)
        self.skip_proj = nn.Conv1d(r, r, 1)
        self.proj_out = zero_init(nn.Conv1d(r, cfg.output_channels, 1))

    @property
    def receptive_field(self) -> int:
        """Input samples one output sample depends on, centred on it (see :class:`WaveNetConfig`)."""
        return self.config.receptive_field

    def _check_inputs(self, x: torch.Tensor, condition: torch.Tensor | None):
        cfg = self.config
        if x.ndim != 3 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected data of shape (B, {cfg.in_channels}, L), got {tuple(x.shape)}")
        if condition is None and cfg.cond_channels:
            raise ValueError(f"this network needs a condition of shape (B, {cfg.cond_channels}, L)")
        if condition is not None and not cfg.cond_channels:
            raise ValueError("a condition was given to a network built with cond_channels=0")
        expected = (x.shape[0], cfg.cond_channels, x.shape[2])
        if condition is not None and tuple(condition.shape) != expected:
            raise ValueError(f"expected a condition of shape {expected}, got {tuple(condition.shape)}")

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor | None = None, w=None,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(x, condition)
        emb = self.embed(c_noise, y, x.shape[0], w)
        if condition is not None:
            condition = condition.to(x.dtype)
        h = F.relu(self.proj_in(x))
        skips = 0
        for layer in self.layers:
            h, skip = layer(h, emb, condition)
            skips = skips + skip
        skips = skips / math.sqrt(len(self.layers))
        return self.proj_out(F.relu(self.skip_proj(skips)))

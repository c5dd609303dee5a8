"""Convolutional KL-regularised autoencoder: the first stage of a latent diffusion model.

Rombach et al. 2022 ("High-Resolution Image Synthesis with Latent Diffusion Models"), sec. 3.1 and
appendix G: an encoder E maps an image x of shape (C, H, W) to a diagonal Gaussian posterior
q(z | x) = N(mean, diag(exp(logvar))) over latents of shape (c, H/f, W/f), f = 2^m; a decoder D
maps a latent back to an image. A slight KL penalty towards N(0, I) keeps the latent space from
growing arbitrarily (the "KL-reg." variant), and diffusion then runs on z instead of x.

The network follows their Encoder / Decoder (taming-transformers' VQGAN backbone) made small:
residual blocks of GroupNorm, SiLU and 3x3 convolutions with a skip path, a stride-2 convolution
to downsample and nearest-neighbour upsampling followed by a convolution (the UNet's
:class:`~.unet.Downsample` and :class:`~.unet.Upsample`), no attention. The decoder's output is
unbounded, like theirs; images live in [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import GroupNorm, JSONConfig, zero_init
from .unet import Downsample, Upsample

__all__ = ["AutoencoderConfig", "Autoencoder", "ResnetBlock", "LOGVAR_RANGE"]

#: logvar is clamped to this range, as in LDM's DiagonalGaussianDistribution, so exp(logvar) never
#: overflows nor underflows.
LOGVAR_RANGE = (-30.0, 20.0)


@dataclass(frozen=True)
class AutoencoderConfig(JSONConfig):
    """Architecture of :class:`Autoencoder`.

    ``channel_mult[i] * base_channels`` channels at level i, ``num_res_blocks`` residual blocks per
    level and one downsampling between levels, so the downsampling factor is
    ``f = 2^(len(channel_mult) - 1)`` and latents have shape (latent_channels, resolution / f,
    resolution / f). ``groups`` is the GroupNorm group count (reduced where it does not divide).
    """

    in_channels: int = 3
    resolution: int = 32
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    latent_channels: int = 4
    groups: int = 32

    def __post_init__(self):
        super().__post_init__()
        for name in ("in_channels", "resolution", "base_channels", "num_res_blocks", "latent_channels",
                     "groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"AutoencoderConfig.{name} must be a positive integer, got {value!r}")
        if not self.channel_mult or not all(isinstance(m, int) and m >= 1 for m in self.channel_mult):
            raise ValueError(f"AutoencoderConfig.channel_mult must be positive integers, "
                             f"got {self.channel_mult!r}")
        if self.resolution % self.factor:
            raise ValueError(f"resolution {self.resolution} is not divisible by {self.factor}, "
                             f"the downsampling factor of channel_mult {self.channel_mult}")

    @property
    def factor(self) -> int:
        """The downsampling factor f = 2^(len(channel_mult) - 1) (Rombach et al. 2022, sec. 3.1)."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(latent_channels, resolution / f, resolution / f)."""
        return self.latent_channels, self.resolution // self.factor, self.resolution // self.factor


class ResnetBlock(nn.Module):
    """``out = skip(x) + conv2(SiLU(GN(conv1(SiLU(GN(x))))))`` with ``skip`` the identity or a 1x1
    convolution (He et al. 2016; the block of Rombach et al. 2022's autoencoder). ``conv2`` starts
    at zero, so each block starts as its skip path (Goyal et al. 2017)."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = GroupNorm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = GroupNorm(out_ch, groups)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


def _output_head(channels: int, out_channels: int, groups: int) -> nn.Sequential:
    """GroupNorm, SiLU and a 3x3 convolution to ``out_channels``: the end of encoder and decoder."""
    return nn.Sequential(GroupNorm(channels, groups), nn.SiLU(),
                         nn.Conv2d(channels, out_channels, 3, padding=1))


class Autoencoder(nn.Module):
    """KL-regularised autoencoder (Rombach et al. 2022, sec. 3.1 and appendix G).

    ``encode(x) -> (mean, logvar)`` of q(z | x), each (B, latent_channels, H/f, W/f);
    ``decode(z) -> x_hat`` of shape (B, C, H, W); ``forward(x) -> (x_hat, mean, logvar)``.
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        cfg = self.config = config
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        encoder = [nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)]
        ch = widths[0]
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                encoder.append(ResnetBlock(ch, width, cfg.groups))
                ch = width
            if level < len(widths) - 1:
                encoder.append(Downsample(ch))
        encoder += [ResnetBlock(ch, ch, cfg.groups), _output_head(ch, 2 * cfg.latent_channels, cfg.groups)]
        self.encoder = nn.Sequential(*encoder)

        decoder = [nn.Conv2d(cfg.latent_channels, ch, 3, padding=1), ResnetBlock(ch, ch, cfg.groups)]
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(cfg.num_res_blocks):
                decoder.append(ResnetBlock(ch, width, cfg.groups))
                ch = width
            if level > 0:
                decoder.append(Upsample(ch))
        decoder.append(_output_head(ch, cfg.in_channels, cfg.groups))
        self.decoder = nn.Sequential(*decoder)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images it encodes."""
        return (self.config.in_channels, self.config.resolution, self.config.resolution)

    @property
    def factor(self) -> int:
        """The downsampling factor f: latents are f times smaller than images in height and width."""
        return self.config.factor

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior q(z | x) = N(mean, diag(exp(logvar))): ``(mean, logvar)``, logvar clamped to
        :data:`LOGVAR_RANGE`."""
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels or x.shape[2] % c.factor or x.shape[3] % c.factor:
            raise ValueError(f"expected images of shape (B, {c.in_channels}, H, W) with H and W divisible by "
                             f"{c.factor}, got {tuple(x.shape)}")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The reconstruction D(z), unbounded (the data lie in [-1, 1])."""
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"expected latents of shape (B, {self.config.latent_channels}, h, w), "
                             f"got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(D(z), mean, logvar)``. In training mode z is a reparametrised sample of the posterior,
        ``z = mean + exp(logvar / 2) * n`` with ``n ~ N(0, I)`` drawn from ``generator`` (Kingma &
        Welling 2014, sec. 2.4), so the loss is differentiable in the encoder; in eval mode z is the
        posterior mean (its mode), so the output is deterministic."""
        mean, logvar = self.encode(x)
        z = mean
        if self.training:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * noise
        return self.decode(z), mean, logvar

"""ADM-style UNet: the noise-conditional image network ``F(x, c_noise, y)``.

The layout is the DDPM UNet (Ho et al. 2020, appendix B: a PixelCNN++ / Wide-ResNet backbone with
self-attention at 16x16) with the changes of Dhariwal & Nichol 2021, sec. 3 ("ADM"): scale-shift
("adaptive group") normalisation, multi-head attention, optional BigGAN up/down-sampling residual
blocks, and a learned-variance output (Nichol & Dhariwal 2021, sec. 3.1). The noise level enters as a
float ``c_noise`` of shape (B,) -- the DDPM timestep, ``1000 t`` or ``ln(sigma) / 4`` (Karras et al.
2022, Table 1) -- so one network serves every schedule.

The encoder half (:class:`Encoder`) is shared with the noise-aware classifier (:mod:`.classifier`);
the blocks every network uses are in :mod:`.layers`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConditionEmbedding, GroupNorm, JSONConfig, zero_init
from .text import CrossAttention, TextConfig, TextEncoder

__all__ = ["UNet", "UNetConfig", "UNET_PRESETS", "EncoderConfig", "Encoder", "ResBlock", "AttentionBlock"]


def _resample(x: torch.Tensor, mode: str | None) -> torch.Tensor:
    if mode == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    if mode == "down":
        return F.avg_pool2d(x, 2)
    return x


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding ``emb``.

    ``h = conv1(SiLU(GN(x)))``, then either ``h = GN(h) (1 + s) + b`` with ``(s, b) = Linear(SiLU(emb))``
    (scale-shift norm, Dhariwal & Nichol 2021, sec. 3) or ``h = GN(h + Linear(SiLU(emb)))`` (Ho et al.
    2020); ``out = skip(x) + conv2(Dropout(SiLU(h)))`` with ``conv2`` zero-initialised.
    ``resample="up"/"down"`` resamples both paths inside the block (BigGAN, Brock et al. 2019,
    appendix B; ADM's ``resblock_updown``).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, *, dropout: float,
                 scale_shift_norm: bool, groups: int, resample: str | None = None):
        super().__init__()
        self.scale_shift_norm = scale_shift_norm
        self.resample = resample
        self.norm1 = GroupNorm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch if scale_shift_norm else out_ch)
        self.norm2 = GroupNorm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(x))
        h, x = _resample(h, self.resample), _resample(x, self.resample)
        h = self.conv1(h)
        e = self.emb_proj(F.silu(emb))[:, :, None, None]
        if self.scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


class AttentionBlock(nn.Module):
    """``x + proj(MultiHead(GN(x)))``: self-attention over the H*W positions.

    ``softmax(q k^T / sqrt(d)) v`` per head (Vaswani et al. 2017, sec. 3.2) via
    ``scaled_dot_product_attention``; one head at 16x16 in DDPM (Ho et al. 2020, appendix B), several
    in ADM (Dhariwal & Nichol 2021, sec. 3). ``proj`` is zero-initialised.
    """

    def __init__(self, channels: int, num_heads: int, groups: int, context_dim: int | None = None):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} attention heads")
        self.num_heads = num_heads
        self.norm = GroupNorm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))
        self.cross = None
        if context_dim is not None:  # then attend to the caption's tokens (Rombach et al. 2022, sec. 3.3)
            self.norm_cross = nn.LayerNorm(channels)
            self.cross = CrossAttention(channels, context_dim, num_heads)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, context=None, pad=None) -> torch.Tensor:
        b, c, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, height * width)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, d)
        h = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(h.transpose(-1, -2).reshape(b, c, height, width))
        if self.cross is None:
            return x
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.cross(self.norm_cross(tokens), context, pad)
        return tokens.transpose(1, 2).reshape(b, c, height, width)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (Ho et al. 2020, appendix B)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution (Ho et al. 2020, appendix B)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(_resample(x, "up"))


class EmbedSequential(nn.Sequential):
    """A sequence of blocks that all take ``(x, emb)``; attention blocks also the caption tokens."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context=None, pad=None) -> torch.Tensor:
        for block in self:
            x = block(x, emb, context, pad) if isinstance(block, AttentionBlock) else block(x, emb)
        return x


@dataclass(frozen=True)
class EncoderConfig(JSONConfig):
    """Architecture of the UNet's down-sampling half, shared by :class:`UNet` and the classifier.

    ``attn_resolutions`` are feature-map sizes (in pixels) that get self-attention;
    ``head_channels``, when set, overrides ``num_heads`` with ``channels // head_channels`` heads;
    ``groups`` is the GroupNorm group count, reduced where it does not divide the channels.
    """

    in_channels: int = 3
    resolution: int = 32
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 1
    head_channels: int | None = None
    dropout: float = 0.1
    scale_shift_norm: bool = True
    resblock_updown: bool = False
    groups: int = 32
    text: dict | None = None  # a TextConfig dict: a text encoder, cross-attention in the attention blocks

    def __post_init__(self):
        super().__post_init__()
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.resolution % factor:
            raise ValueError(f"resolution {self.resolution} is not divisible by {factor}, "
                             f"the downsampling factor of channel_mult {self.channel_mult}")
        if self.base_channels % 2:
            raise ValueError(f"base_channels must be even for the sinusoidal embedding, got {self.base_channels}")
        sizes = [self.resolution // 2**i for i in range(len(self.channel_mult))]
        missing = sorted(set(self.attn_resolutions) - set(sizes))
        if missing:
            raise ValueError(f"attn_resolutions {missing} never occur; the feature-map sizes are {sizes}")

    def heads(self, channels: int) -> int:
        """Number of attention heads at a layer of ``channels`` channels."""
        return channels // self.head_channels if self.head_channels else self.num_heads


def _block_builders(cfg: EncoderConfig, emb_dim: int):
    """``block(in_ch, out_ch, resample=None)`` and ``attention(ch)`` with the config's settings bound."""
    block = partial(ResBlock, emb_dim=emb_dim, dropout=cfg.dropout,
                    scale_shift_norm=cfg.scale_shift_norm, groups=cfg.groups)
    return block, partial(_attention, cfg)


def _attention(cfg: EncoderConfig, channels: int) -> AttentionBlock:
    context_dim = None if cfg.text is None else TextConfig.from_dict(cfg.text).dim
    return AttentionBlock(channels, cfg.heads(channels), cfg.groups, context_dim)


class Encoder(nn.Module):
    """Input convolution, down-sampling stages and middle block of the UNet (Ho et al. 2020, appendix B).

    ``forward(x, emb)`` returns the middle block's output and the list of skip activations (the input
    convolution's and each stage's output), which the UNet's decoder consumes in reverse order.
    """

    def __init__(self, cfg: EncoderConfig, emb_dim: int):
        super().__init__()
        block, attention = _block_builders(cfg, emb_dim)
        ch = cfg.base_channels * cfg.channel_mult[0]
        self.in_channels = cfg.in_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.skip_channels = [ch]
        self.down = nn.ModuleList()
        res = cfg.resolution
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [block(ch, cfg.base_channels * mult)]
                ch = cfg.base_channels * mult
                if res in cfg.attn_resolutions:
                    layers.append(attention(ch))
                self.down.append(EmbedSequential(*layers))
                self.skip_channels.append(ch)
            if level < len(cfg.channel_mult) - 1:
                down = block(ch, ch, resample="down") if cfg.resblock_updown else Downsample(ch)
                self.down.append(EmbedSequential(down))
                self.skip_channels.append(ch)
                res //= 2
        self.middle = EmbedSequential(block(ch, ch), attention(ch), block(ch, ch))
        self.out_channels, self.out_resolution = ch, res
        self.factor = cfg.resolution // res

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context=None, pad=None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise ValueError(f"image size {tuple(x.shape[2:])} is not divisible by {self.factor}")
        h = self.conv_in(x)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb, context, pad)
            skips.append(h)
        return self.middle(h, emb, context, pad), skips


@dataclass(frozen=True)
class UNetConfig(EncoderConfig):
    """:class:`EncoderConfig` plus the UNet's outputs and conditioning.

    The output has ``out_channels`` (default ``in_channels``) channels, doubled when ``learn_sigma``
    (the extra channels parametrise the variance, Nichol & Dhariwal 2021, sec. 3.1).
    ``num_classes`` adds a class embedding with an extra null class (see :class:`ConditionEmbedding`);
    ``guidance_embedding`` an input for the guidance scale w of a guidance-distilled student.
    ``cond_channels``: channels of an image the network sees beside ``x`` (the degraded input of a
    conditional denoiser, SR3 / Palette, Saharia et al. 2022), concatenated to ``x`` before the
    input convolution; 0 (the default) builds exactly the unconditional network.
    """

    out_channels: int | None = None
    num_classes: int | None = None
    learn_sigma: bool = False
    guidance_embedding: bool = False
    cond_channels: int = 0

    @property
    def output_channels(self) -> int:
        return (self.out_channels or self.in_channels) * (2 if self.learn_sigma else 1)


class UNet(nn.Module):
    """ADM UNet ``F(x, c_noise, y, w) -> (B, out, H, W)`` (Dhariwal & Nichol 2021, sec. 3; Ho et al. 2020).

    The decoder mirrors the encoder with ``num_res_blocks + 1`` residual blocks per level, each fed
    the concatenation of the current features and one skip activation. The final convolution is
    zero-initialised, so a fresh network outputs exactly zero.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        cfg = self.config = config
        emb_dim = 4 * cfg.base_channels
        self.embed = ConditionEmbedding(cfg.base_channels, emb_dim, cfg.num_classes, cfg.guidance_embedding)
        self.text = None if cfg.text is None else TextEncoder(TextConfig.from_dict(cfg.text))
        # the condition is concatenated to x: the encoder reads in_channels + cond_channels
        self.encoder = Encoder(replace(cfg, in_channels=cfg.in_channels + cfg.cond_channels), emb_dim)
        block, attention = _block_builders(cfg, emb_dim)
        ch, res = self.encoder.out_channels, self.encoder.out_resolution
        skips = list(self.encoder.skip_channels)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [block(ch + skips.pop(), cfg.base_channels * mult)]
                ch = cfg.base_channels * mult
                if res in cfg.attn_resolutions:
                    layers.append(attention(ch))
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(block(ch, ch, resample="up") if cfg.resblock_updown else Upsample(ch))
                    res *= 2
                self.up.append(EmbedSequential(*layers))
        self.norm_out = GroupNorm(ch, cfg.groups)
        self.conv_out = zero_init(nn.Conv2d(ch, cfg.output_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor | None = None, w=None,
                text: torch.Tensor | None = None, condition: torch.Tensor | None = None) -> torch.Tensor:
        if (text is None) != (self.text is None):
            raise ValueError("a text-conditional network needs text tokens, and only such a network takes them")
        if (condition is None) != (self.config.cond_channels == 0):
            raise ValueError(f"this network needs a condition of shape (B, {self.config.cond_channels}, H, W)"
                             if condition is None else "a condition was given to a network built with cond_channels=0")
        if condition is not None:
            if condition.shape != (x.shape[0], self.config.cond_channels, *x.shape[2:]):
                raise ValueError(f"condition must have shape {(x.shape[0], self.config.cond_channels, *x.shape[2:])}, "
                                 f"got {tuple(condition.shape)}")
            x = torch.cat([x, condition.to(x.dtype)], dim=1)
        emb = self.embed(c_noise, y, x.shape[0], w)
        context, pad = self.text(text) if self.text is not None else (None, None)
        h, skips = self.encoder(x, emb, context, pad)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, context, pad)
        return self.conv_out(F.silu(self.norm_out(h)))


UNET_PRESETS: dict[str, UNetConfig] = {
    # The CIFAR-10 model of Ho et al. 2020 (appendix B): 35.7M parameters, additive embedding.
    "cifar10-ddpm": UNetConfig(in_channels=3, resolution=32, base_channels=128, channel_mult=(1, 2, 2, 2),
                               num_res_blocks=2, attn_resolutions=(16,), num_heads=1, dropout=0.1,
                               scale_shift_norm=False),
    # 8x8 one-channel digits (scikit-learn's): one downsampling, small enough for two CPU cores.
    "digits": UNetConfig(in_channels=1, resolution=8, base_channels=32, channel_mult=(1, 2),
                         num_res_blocks=2, attn_resolutions=(4,), num_heads=2, dropout=0.0),
    # 32x32 RGB toy shapes.
    "shapes32": UNetConfig(in_channels=3, resolution=32, base_channels=48, channel_mult=(1, 2, 2),
                           num_res_blocks=2, attn_resolutions=(8,), head_channels=32, dropout=0.1),
}

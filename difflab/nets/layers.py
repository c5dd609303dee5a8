"""Building blocks shared by difflab's networks: the JSON config mixin, the noise-level and class
embedding, float32 GroupNorm and zero initialisation."""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

__all__ = ["JSONConfig", "sinusoidal_embedding", "ConditionEmbedding", "GroupNorm", "zero_init"]


class JSONConfig:
    """Mixin for frozen dataclass configs: ``to_dict()`` gives JSON data, ``from_dict()`` inverts it."""

    def __post_init__(self):
        # JSON has no tuples: accept lists and store tuples, so configs stay hashable and comparable.
        for f in dataclasses.fields(self):
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))

    def to_dict(self) -> dict:
        """The config as plain JSON-serialisable data (tuples become lists)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict):
        """Rebuild a config from :meth:`to_dict` output; unknown keys are an error, missing keys default."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys are {sorted(names)}")
        return cls(**data)


def sinusoidal_embedding(c_noise: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of a float noise level, shape (B,) -> (B, dim).

    ``emb = [cos(c w_0), ..., cos(c w_{h-1}), sin(c w_0), ..., sin(c w_{h-1})]`` with
    ``w_i = max_period^(-i/h)``, ``h = dim/2`` (Vaswani et al. 2017, sec. 3.5; used for the DDPM
    timestep by Ho et al. 2020, appendix B).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) / half
                      * torch.arange(half, device=c_noise.device, dtype=torch.float32))
    args = c_noise.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ConditionEmbedding(nn.Module):
    """``emb = MLP(sinusoidal(c_noise)) + E[y] (+ MLP_w(sinusoidal(100 w)))``: noise level, an
    optional class, and for a guidance-distilled student its guidance scale w.

    The MLP is Linear-SiLU-Linear (Ho et al. 2020, appendix B); the class table is added to it
    (Dhariwal & Nichol 2021, sec. 3). Row ``num_classes`` of the table is a learned "null" class for
    classifier-free guidance (Ho & Salimans 2021, sec. 3.2): ``y = None``, ``y == -1`` and
    ``y == num_classes`` all select it.
    """

    def __init__(self, freq_dim: int, emb_dim: int, num_classes: int | None = None, guidance: bool = False):
        super().__init__()
        self.freq_dim = freq_dim
        self.num_classes = num_classes
        self.mlp = nn.Sequential(nn.Linear(freq_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label = None if num_classes is None else nn.Embedding(num_classes + 1, emb_dim)
        # A guidance-distilled student's scale w (Meng et al. 2023, sec. 4.1): its own sinusoidal
        # features and MLP, zero-initialised so the student starts as its teacher.
        self.guidance = None if not guidance else nn.Sequential(
            nn.Linear(freq_dim, emb_dim), nn.SiLU(), zero_init(nn.Linear(emb_dim, emb_dim)))

    def forward(self, c_noise, y: torch.Tensor | None, batch_size: int, w=None) -> torch.Tensor:
        device = self.mlp[0].weight.device
        c_noise = torch.as_tensor(c_noise, device=device).reshape(-1).expand(batch_size)
        emb = self.mlp(sinusoidal_embedding(c_noise, self.freq_dim))
        if (w is None) != (self.guidance is None):
            raise ValueError("the guidance scale w goes to a guidance-distilled network, and such a network needs it")
        if w is not None:
            w = torch.as_tensor(w, device=device, dtype=torch.float32).reshape(-1).expand(batch_size)
            emb = emb + self.guidance(sinusoidal_embedding(100 * w, self.freq_dim))
        if self.label is None:
            if y is not None:
                raise ValueError("class labels y were given to a network built with num_classes=None")
            return emb
        if y is None:
            y = torch.full((batch_size,), self.num_classes, device=device, dtype=torch.long)
        y = torch.as_tensor(y, device=device).long().reshape(-1).expand(batch_size)
        return emb + self.label(torch.where(y < 0, self.num_classes, y))


class GroupNorm(nn.GroupNorm):
    """GroupNorm (Wu & He 2018) computed in float32, so it is stable under bf16 autocast.

    The group count is reduced to the largest divisor of ``channels`` not above ``groups``.
    """

    def __init__(self, channels: int, groups: int = 32):
        groups = max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)
        super().__init__(groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a module's parameters, so a residual branch starts as the identity (Goyal et al. 2017)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module

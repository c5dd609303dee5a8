"""Networks: the ADM UNet, the Diffusion Transformer, a residual MLP for low-dimensional data,
DiffWave's non-causal WaveNet for 1-D sequences, a noise-aware classifier, and the text encoder with
cross-attention.

Every denoising network has the signature ``net(x, c_noise, y=None, w=None, text=None) -> Tensor``
(the WaveNet's is ``net(x, c_noise, y=None, w=None, condition=None)``) with ``x``'s shape
(``out_channels`` may differ for images and sequences), ``c_noise`` a float tensor of shape (B,),
``y`` optional class ids where ``-1`` / ``num_classes`` is the null class, ``w`` the guidance scale
of a guided student, ``text`` caption tokens (:mod:`.text`) and ``condition`` the WaveNet's local
conditioning channels (B, cond_channels, L). Configs are frozen dataclasses with ``to_dict()`` /
``from_dict()``; :func:`build_network` rebuilds a network from the JSON form.
"""
from __future__ import annotations

from torch import nn

from .classifier import ClassifierConfig, NoisyClassifier
from .dit import DiT, DiTConfig
from .mlp import MLPConfig, MLPDenoiserNet
from .unet import UNET_PRESETS, UNet, UNetConfig
from .wavenet import WaveNet, WaveNetConfig

__all__ = ["UNet", "UNetConfig", "UNET_PRESETS", "DiT", "DiTConfig", "MLPConfig", "MLPDenoiserNet",
           "WaveNet", "WaveNetConfig", "ClassifierConfig", "NoisyClassifier", "NETWORKS", "build_network",
           "count_parameters"]

NETWORKS = {
    "unet": (UNetConfig, UNet),
    "dit": (DiTConfig, DiT),
    "mlp": (MLPConfig, MLPDenoiserNet),
    "wavenet": (WaveNetConfig, WaveNet),
    "classifier": (ClassifierConfig, NoisyClassifier),
}


def build_network(kind: str, config: dict) -> nn.Module:
    """Build the network ``kind`` ("unet", "dit", "mlp", "wavenet" or "classifier") from its config's ``to_dict()`` form."""
    if kind not in NETWORKS:
        raise ValueError(f"unknown network kind {kind!r}; choose from {sorted(NETWORKS)}")
    config_cls, net_cls = NETWORKS[kind]
    return net_cls(config_cls.from_dict(config))


def count_parameters(module: nn.Module) -> int:
    """Total number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())

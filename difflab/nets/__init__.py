"""Networks: the ADM UNet, a residual MLP for low-dimensional data, and a noise-aware classifier.

Every denoising network has the signature ``net(x, c_noise, y=None) -> Tensor`` with ``x``'s shape
(``out_channels`` may differ for images), ``c_noise`` a float tensor of shape (B,) and ``y``
optional class ids where ``-1`` / ``num_classes`` is the null class. Configs are frozen dataclasses
with ``to_dict()`` / ``from_dict()``; :func:`build_network` rebuilds a network from the JSON form.
"""
from __future__ import annotations

from torch import nn

from .classifier import ClassifierConfig, NoisyClassifier
from .mlp import MLPConfig, MLPDenoiserNet
from .unet import UNET_PRESETS, UNet, UNetConfig

__all__ = ["UNet", "UNetConfig", "UNET_PRESETS", "MLPConfig", "MLPDenoiserNet", "ClassifierConfig",
           "NoisyClassifier", "NETWORKS", "build_network", "count_parameters"]

NETWORKS = {
    "unet": (UNetConfig, UNet),
    "mlp": (MLPConfig, MLPDenoiserNet),
    "classifier": (ClassifierConfig, NoisyClassifier),
}


def build_network(kind: str, config: dict) -> nn.Module:
    """Build the network ``kind`` ("unet", "mlp" or "classifier") from its config's ``to_dict()`` form."""
    if kind not in NETWORKS:
        raise ValueError(f"unknown network kind {kind!r}; choose from {sorted(NETWORKS)}")
    config_cls, net_cls = NETWORKS[kind]
    return net_cls(config_cls.from_dict(config))


def count_parameters(module: nn.Module) -> int:
    """Total number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())

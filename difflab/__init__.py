"""difflab: diffusion generative models in one readable, fast and verified library.

The names below are imported on first use (PEP 562), so ``import difflab`` and ``difflab --help``
stay fast and torch loads only when something needs it. The layers of the package, lowest first,
are described in docs/design.md.
"""
from __future__ import annotations

import importlib

from .version import __version__

#: Public name -> the module that defines it.
_NAMES = {
    "sample": "samplers", "generate": "samplers", "SAMPLERS": "samplers", "karras_sigmas": "schedules",
    "GaussianMixture": "exact", "NetworkDenoiser": "denoisers", "load": "pipeline", "TrainedModel": "pipeline",
    "train": "training", "TrainConfig": "training", "PRESETS": "training", "load_dataset": "training",
}
#: The subpackages and modules reachable as attributes (``difflab.editing.inpaint(...)``).
_MODULES = ("schedules", "denoisers", "exact", "samplers", "tuning", "io", "nets", "guidance", "editing",
            "likelihood", "training", "interop", "pipeline", "flow", "distill", "evaluation", "bench", "explore", "cli")

__all__ = ["__version__", *_NAMES, *_MODULES]


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'difflab' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

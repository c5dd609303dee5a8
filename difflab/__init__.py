"""difflab: diffusion generative models in one readable, fast and verified library."""
from .exact import GaussianMixture
from .samplers import SAMPLERS, sample
from .schedules import karras_sigmas

__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load a trained model directory (see DESIGN.md "Trained models")."""
    from .checkpoint import load as _load

    return _load(path, device=device)


__all__ = ["SAMPLERS", "sample", "karras_sigmas", "GaussianMixture", "load", "__version__"]

"""SDEdit (Meng et al. 2022): edit by perturbing a guide image with noise, then denoising it."""
from __future__ import annotations

import math

import torch

from ..samplers import sample
from ..samplers.stepping import noise_like

__all__ = ["sdedit"]


def sdedit(denoiser, x_guide: torch.Tensor, sigmas, *, strength: float = 0.5, sampler: str = "ddpm",
           generator=None, **options) -> torch.Tensor:
    """Stochastic Differential Editing (Meng et al. 2022, Algorithm 1): perturb the guide to the
    noise level of time t0 = ``strength`` and solve back to sigma = 0,

        x(t0) = x_guide + sigma(t0) z,    x0 = sample(x(t0), sigmas from sigma(t0) down),

    where time is the fraction of the ``sigmas`` schedule: of its n steps the last
    m = max(1, round(strength * n)) are run, from sigma(t0) = ``sigmas[n - m]``. With geometric
    sigmas (``loglinear_sigmas``, the VE SDE of Song et al. 2021 that Meng et al. use) this is their
    t0 up to rounding to the grid; ``strength=1`` starts at ``sigmas[0]``, i.e. plain sampling when
    sigma_max dwarfs the data. ``sampler`` is any name of ``difflab.SAMPLERS`` (``"em"`` is their
    reverse-SDE Euler–Maruyama; default ``"ddpm"``, the exact Gaussian transition); ``options``
    go to it. Small strength keeps the guide's content, large strength its realism (their Fig. 3).
    """
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    n = len(sigmas) - 1
    m = max(1, round(strength * n))
    tail = sigmas[n - m:]
    z = noise_like(x_guide, generator)
    x = z if math.isinf(float(tail[0])) else x_guide + float(tail[0]) * z  # strength 1 of a flow: pure noise
    return sample(denoiser, x, tail, sampler, generator=generator, **options)

"""Deterministic inversion: run the probability-flow ODE from the data up to sigma_max and back."""
from __future__ import annotations

import math

import torch

from ..samplers import STOCHASTIC, sample
from ..samplers.stepping import denoise, euler_step, heun_step

__all__ = ["invert", "reconstruct"]

_INVERTIBLE = ("ddim", "euler", "heun")


def _ode_grid(sigmas) -> torch.Tensor:
    """The positive sigmas: the ODE is integrated between sigma_min = the smallest of them and
    sigma_max, and the data x0 stands for x(sigma_min) (the final denoising to 0 is left out)."""
    grid = torch.as_tensor(sigmas)
    return grid[:-1] if float(grid[-1]) == 0 else grid


def invert(denoiser, x0: torch.Tensor, sigmas, *, sampler: str = "heun", cond=None) -> torch.Tensor:
    """x_T = x(sigma_max) from x0 = x(sigma_min) along the probability-flow ODE
    dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 4; Song et al. 2021, sec. 4.3),
    integrated *up* the positive ``sigmas`` in reverse order.

    ``"ddim"`` = ``"euler"`` is DDIM inversion (Song et al. 2021a, sec. 4.3 / eq. 13 run backwards;
    the name used by Mokady et al. 2023): x' = x + (sigma' - sigma)(x - D(x, sigma)) / sigma, first
    order. ``"heun"`` takes Heun's step (Karras et al. 2022, Alg. 1) upwards, second order.
    Denoiser calls: n - 1 (ddim/euler) or 2 (n - 1) (heun), n the number of positive sigmas.
    A last step up to sigma = inf (a flow's pure noise) is DDIM's, x_T = (x - D(x, sigma)) / sigma,
    the mirror of the first step of :func:`difflab.samplers.sample` from there.
    """
    if sampler not in _INVERTIBLE:
        raise ValueError(f"inversion supports the samplers {', '.join(_INVERTIBLE)}; got {sampler!r}")
    grid = [float(v) for v in _ode_grid(sigmas).flip(0)]
    x = x0
    for sigma, sigma_next in zip(grid[:-1], grid[1:]):
        if not 0 < sigma < sigma_next:
            raise ValueError(f"sigmas must decrease and be positive before the last; got {sigma_next} -> {sigma}")
        d0 = denoise(denoiser, x, sigma, cond)
        if math.isinf(sigma_next):  # up to pure noise (a flow's t = 1): the noise estimate itself
            x = (x - d0) / sigma
        elif sampler == "heun":
            x = heun_step(denoiser, x, d0, sigma, sigma_next, cond)
        else:
            x = euler_step(x, d0, sigma, sigma_next)
    return x


def reconstruct(denoiser, x_T: torch.Tensor, sigmas, *, sampler: str = "heun", **options) -> torch.Tensor:
    """x(sigma_min) from x_T = x(sigma_max): the probability-flow ODE integrated down the positive
    ``sigmas`` with a deterministic ``sampler`` (the mirror of :func:`invert`). With ``invert``'s
    sampler and sigmas, ``reconstruct(invert(x0)) -> x0`` as the steps grow, at the sampler's order.
    """
    if sampler in STOCHASTIC:
        raise ValueError(f"reconstruction needs a deterministic sampler; {sampler!r} draws noise")
    return sample(denoiser, x_T, _ode_grid(sigmas), sampler, **options)

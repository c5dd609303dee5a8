"""Euler, Heun and the EDM samplers on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma
(Karras et al. 2022, eq. 4 with sigma(t) = t, s(t) = 1)."""
from __future__ import annotations

import math

from .stepping import denoise, euler_step, heun_step, noise_like, report, steps


def euler(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None):
    """Euler's method on the probability-flow ODE: x' = x + (s' - s) (x - D(x, s)) / s.

    In the VE convention this is exactly DDIM with eta = 0 (Song et al. 2021a, eq. 13; Karras et
    al. 2022, sec. 3). Denoiser calls: ``len(sigmas) - 1``.
    """
    for i, s, s_next in steps(sigmas, progress, "euler"):
        d0 = denoise(denoiser, x, s, cond)
        report(callback, i, x, s, s_next, d0)
        x = euler_step(x, d0, s, s_next)
    return x


def heun(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None):
    """Deterministic EDM sampler: Heun's method with an Euler last step to sigma = 0
    (Karras et al. 2022, Algorithm 1). Denoiser calls: ``2 (len(sigmas) - 1) - 1`` when the last
    sigma is 0 (``2 (len(sigmas) - 1)`` otherwise)."""
    for i, s, s_next in steps(sigmas, progress, "heun"):
        d0 = denoise(denoiser, x, s, cond)
        report(callback, i, x, s, s_next, d0)
        x = heun_step(denoiser, x, d0, s, s_next, cond)
    return x


def edm_stochastic(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None,
                   S_churn: float = 40.0, S_tmin: float = 0.05, S_tmax: float = 50.0,
                   S_noise: float = 1.003):
    """Stochastic EDM sampler (Karras et al. 2022, Algorithm 2): at each step with S_tmin <= s <= S_tmax,
    raise the noise to s_hat = s (1 + gamma), gamma = min(S_churn / N, sqrt(2) - 1), by adding
    fresh noise of std sqrt(s_hat^2 - s^2) * S_noise, then take a Heun step from s_hat to s'.
    Denoiser calls: as :func:`heun`. Defaults are the paper's ImageNet-64 settings (Table 5)."""
    n = len(sigmas) - 1
    gamma_max = min(S_churn / n, math.sqrt(2) - 1)
    for i, s, s_next in steps(sigmas, progress, "edm_stochastic"):
        gamma = gamma_max if S_tmin <= s <= S_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(s_hat**2 - s**2) * S_noise * noise_like(x, generator)
        d0 = denoise(denoiser, x, s_hat, cond)
        report(callback, i, x, s_hat, s_next, d0)
        x = heun_step(denoiser, x, d0, s_hat, s_next, cond)
    return x

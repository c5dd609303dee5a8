"""Reverse-time SDE samplers of Song et al. (2021): Euler–Maruyama and predictor–corrector.

For x = x0 + sigma n the forward SDE is dx = sqrt(d sigma^2 / dt) dw; written in the "variance time"
tau = sigma^2 it is dx = dw_tau, and its reverse (Anderson 1982; Song et al. 2021, eq. 6) is
dx = -score(x, sigma) dtau + dw_tau, with score = (D(x, sigma) - x) / sigma^2.
"""
from __future__ import annotations

import math

import torch

from .brownian import DEFAULT_NOISE_KIND, make_noise
from .stepping import denoise, noise_like, report, steps


def _reverse_sde_step(x, d0, s, s_next, z):
    """One Euler–Maruyama step of the reverse SDE in tau = sigma^2, from s to s' > 0:
    x' = x + (s^2 - s'^2) score + sqrt(s^2 - s'^2) z (Song et al. 2021, eq. 47, VE "reverse diffusion")."""
    dtau = s**2 - s_next**2
    return x + dtau * (d0 - x) / s**2 + math.sqrt(dtau) * z


def em(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None,
       noise_kind: str = DEFAULT_NOISE_KIND):
    """Euler–Maruyama on the reverse-time SDE (Song et al. 2021, sec. 4.1); a last step to sigma = 0
    returns D(x, sigma) (their "denoising" final step, App. G). ``noise_kind``: "iid" or "brownian" (see
    :mod:`.brownian`). Denoiser calls: ``len(sigmas) - 1``."""
    z = make_noise(noise_kind, x, sigmas, generator)
    for i, s, s_next in steps(sigmas, progress, "em"):
        d0 = denoise(denoiser, x, s, cond)
        report(callback, i, x, s, s_next, d0)
        x = d0 if s_next == 0 else _reverse_sde_step(x, d0, s, s_next, z(s, s_next))
    return x


def _mean_norm(v):
    return v.reshape(v.shape[0], -1).norm(dim=1).mean()


def langevin_step(denoiser, x, s, snr, generator, cond):
    """One corrector step of annealed Langevin dynamics at noise level s with the step size set by a
    signal-to-noise ratio (Song et al. 2021, Algorithm 5): eps = 2 (snr |z| / |score|)^2,
    x' = x + eps score + sqrt(2 eps) z. The norms are batch means of per-sample norms, as in the
    paper's code: a per-sample ratio explodes for samples sitting where the score vanishes."""
    score = (denoise(denoiser, x, s, cond) - x) / s**2
    z = noise_like(x, generator)
    step = 2 * (snr * _mean_norm(z) / _mean_norm(score).clamp_min(torch.finfo(x.dtype).tiny)) ** 2
    return x + step * score + (2 * step).sqrt() * z


def pc(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None,
       snr: float = 0.16, corrector_steps: int = 1):
    """Predictor–corrector sampling (Song et al. 2021, Algorithm 1 with the reverse-diffusion predictor
    and Langevin corrector of Algorithms 4-5): each predictor step to s' > 0 is followed by
    ``corrector_steps`` Langevin steps at s'. A last step to sigma = 0 returns D(x, sigma).
    Denoiser calls: ``(len(sigmas) - 1) + corrector_steps * (number of steps ending at s' > 0)``."""
    for i, s, s_next in steps(sigmas, progress, "pc"):
        d0 = denoise(denoiser, x, s, cond)
        report(callback, i, x, s, s_next, d0)
        if s_next == 0:
            x = d0
            continue
        x = _reverse_sde_step(x, d0, s, s_next, noise_like(x, generator))
        for _ in range(corrector_steps):
            x = langevin_step(denoiser, x, s_next, snr, generator, cond)
    return x

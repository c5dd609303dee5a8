"""DDIM, DDPM and Euler ancestral: one denoising step to sigma_down plus fresh noise of std sigma_up.

In the VE convention the three are the same update (:func:`.stepping.ancestral_step`):

    x' = D + sigma_down (x - D) / sigma + sigma_up z,   sigma_down^2 + sigma_up^2 = sigma'^2,

with sigma_up = eta * sigma' sqrt(sigma^2 - sigma'^2) / sigma. DDIM (Song et al. 2021a, eq. 12) is
any eta (0 by default: deterministic); DDPM's ancestral sampler (Ho et al. 2020, Alg. 2 with the
posterior variance beta~) is eta = 1; Euler ancestral (Karras et al. 2022's name for it, as a step
of Euler's method to sigma_down) is eta = 1 with an optional noise multiplier.
"""
from __future__ import annotations

import math

import torch

from .brownian import DEFAULT_NOISE_KIND, make_noise
from .stepping import ancestral_step, denoise, noise_like, report, steps


def _upper_variance(x, s, s_next):
    """DDPM's other fixed variance sigma_t^2 = beta_t (Ho et al. 2020, sec. 3.2) on the VE scale:
    beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} = (s^2 - s'^2)/(1 + s^2), divided by alpha_bar_{t-1}."""
    return (s**2 - s_next**2) / (1 + s**2) * (1 + s_next**2)


def _ancestral_loop(denoiser, x, sigmas, eta, s_noise, generator, callback, progress, cond, name,
                    variance_fn=None, noise_kind=DEFAULT_NOISE_KIND):
    z = make_noise(noise_kind, x, sigmas, generator)
    for i, s, s_next in steps(sigmas, progress, name):
        d0 = denoise(denoiser, x, s, cond)
        report(callback, i, x, s, s_next, d0)
        if variance_fn is not None and s_next > 0:
            # The posterior mean with another reverse variance (fixed, learned or analytic),
            # evaluated at the step's input x, where the network saw it.
            var = variance_fn(x, s, s_next)
            x = d0 + (s_next / s) ** 2 * (x - d0)
            x = x + (torch.as_tensor(var, dtype=x.dtype, device=x.device).sqrt() * z(s, s_next)
                     if torch.is_tensor(var) else math.sqrt(var) * z(s, s_next))
            continue
        sigma_down, sigma_up = ancestral_step(s, s_next, eta)
        x = d0 + (sigma_down / s) * (x - d0)
        if sigma_up > 0:
            x = x + sigma_up * s_noise * z(s, s_next)
    return x


def ddim(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None,
         eta: float = 0.0, noise_kind: str = DEFAULT_NOISE_KIND):
    """DDIM (Song et al. 2021a, eq. 12 and 16) in the VE convention; eta = 0 is deterministic and
    equals :func:`euler`, eta = 1 equals :func:`ddpm`. ``noise_kind``: "iid" or "brownian" (see
    :mod:`.brownian`). Denoiser calls: ``len(sigmas) - 1``."""
    return _ancestral_loop(denoiser, x, sigmas, eta, 1.0, generator, callback, progress, cond, "ddim",
                           noise_kind=noise_kind)


def ddpm(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None,
         variance="posterior", noise_kind: str = DEFAULT_NOISE_KIND):
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) along ``sigmas`` (any subsequence of
    the training steps, as in Nichol & Dhariwal 2021, sec. 4): x' = posterior mean + noise.
    ``variance="posterior"`` uses beta~_t (= DDIM with eta = 1); ``"upper"`` uses beta_t (VP models);
    a callable ``fn(x, sigma, sigma_next)`` gives the noise variance on the VE scale — learned
    (Nichol & Dhariwal 2021) or Analytic-DPM (Bao et al. 2022) variances, see
    ``difflab.likelihood.ancestral_variance``. No noise is added on the last step to sigma = 0.
    ``noise_kind``: "iid" or "brownian" (see :mod:`.brownian`). Denoiser calls: ``len(sigmas) - 1``."""
    if callable(variance):
        fn = variance
    elif variance in ("posterior", "upper"):
        fn = _upper_variance if variance == "upper" else None
    else:
        raise ValueError(f"variance must be 'posterior', 'upper' or a callable, got {variance!r}")
    return _ancestral_loop(denoiser, x, sigmas, 1.0, 1.0, generator, callback, progress, cond, "ddpm",
                           variance_fn=fn, noise_kind=noise_kind)


def euler_ancestral(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None,
                    eta: float = 1.0, s_noise: float = 1.0, noise_kind: str = DEFAULT_NOISE_KIND):
    """Euler ancestral: an Euler step to sigma_down, then noise of std s_noise * sigma_up
    (Karras et al. 2022, sec. 4 discussion of ancestral samplers). ``noise_kind``: "iid" or "brownian"
    (see :mod:`.brownian`). Denoiser calls: ``len(sigmas) - 1``."""
    return _ancestral_loop(denoiser, x, sigmas, eta, s_noise, generator, callback, progress, cond,
                           "euler_ancestral", noise_kind=noise_kind)


def consistency(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None,
                sigma_min: float = 0.002):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1) for a consistency model f
    (``prediction="consistency"``), which maps any point of an ODE trajectory to its end:
    x0 = f(x, sigma_0), then at each later positive sigma re-noise and map again,

        x = x0 + sqrt(sigma^2 - sigma_min^2) z,    x0 = f(x, sigma).

    One step (``sigmas = [sigma_max, 0]``) is a single call. ``sigma_min`` is the model's (the
    boundary f(x, sigma_min) = x). Denoiser calls: ``len(sigmas) - 1``."""
    for i, s, s_next in steps(sigmas, progress, "consistency"):
        d0 = denoise(denoiser, x, s, cond)
        report(callback, i, x, s, s_next, d0)
        x = d0 if s_next == 0 else d0 + math.sqrt(max(s_next**2 - sigma_min**2, 0.0)) * noise_like(x, generator)
    return x

"""Singlestep stochastic DPM-Solver++ samplers: DPM-Solver++(2S) with ancestral steps and the
second-order SDE solver with a midpoint (the multistep SDE solvers, dpmpp_2m_sde and dpmpp_3m_sde,
are in :mod:`.dpm_solver`).

All work in the half log-SNR lambda = -log(sigma) with data prediction (Lu et al. 2022b). The
ancestral split (:func:`.stepping.ancestral_step`) turns a step sigma -> sigma' into a deterministic
DPM-Solver++ step to sigma_down and fresh noise of std sigma_up; with eta = 1 it is DDPM's posterior
(Ho et al. 2020, eq. 7), i.e. the reverse SDE's exact step for a denoiser held fixed. Noise comes
from :func:`.brownian.make_noise` (the option ``noise_kind="iid"`` or ``"brownian"``).
"""
from __future__ import annotations

import math

from .brownian import DEFAULT_NOISE_KIND, make_noise
from .dpm_solver import check_noise_options
from .stepping import ancestral_step, denoise, report, steps


def _first_order(x, d, s: float, s_down: float):
    """DPM-Solver++-1 (= DDIM) from s to s_down: x' = (s_down / s) x + (1 - s_down / s) D."""
    return (s_down / s) * x + (1 - s_down / s) * d


def dpmpp_2s_ancestral(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None,
                       eta: float = 1.0, s_noise: float = 1.0, noise_kind: str = DEFAULT_NOISE_KIND):
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1 with r = 1/2) to sigma_down, then ancestral
    noise of std s_noise * sigma_up (the split of :func:`.stepping.ancestral_step`, as in Euler
    ancestral). With h = log(sigma / sigma_down) and the midpoint sigma_m = sqrt(sigma sigma_down),

        u  = (sigma_m / sigma) x + (1 - sigma_m / sigma) D(x, sigma)
        x' = (sigma_down / sigma) x + (1 - sigma_down / sigma) D(u, sigma_m) + s_noise sigma_up z.

    eta = 0 is the deterministic DPM-Solver++(2S). A step with sigma_down = 0 (the last, to 0) is
    x' = D(x, sigma). Denoiser calls: 2 per step with sigma_down > 0, else 1
    (:func:`difflab.samplers.denoiser_calls`)."""
    check_noise_options(eta, s_noise)
    z = make_noise(noise_kind, x, sigmas, generator)
    for i, s, s_next in steps(sigmas, progress, "dpmpp_2s_ancestral"):
        d0 = denoise(denoiser, x, s, cond)
        report(callback, i, x, s, s_next, d0)
        s_down, s_up = ancestral_step(s, s_next, eta)
        if s_down == 0:
            x = d0
        else:
            s_mid = math.sqrt(s * s_down)
            d_mid = denoise(denoiser, _first_order(x, d0, s, s_mid), s_mid, cond)
            x = _first_order(x, d_mid, s, s_down)
        if s_up > 0:
            x = x + s_noise * s_up * z(s, s_next)
    return x


def dpmpp_sde(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None,
              eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5, noise_kind: str = DEFAULT_NOISE_KIND):
    """Stochastic DPM-Solver++ with a midpoint: a second-order singlestep solver of the reverse SDE
    (the data-prediction update of Lu et al. 2022b, Algorithm 1, with each stage an ancestral step,
    as Karras et al. 2022, sec. 4, make stochastic samplers of ODE solvers). With h = log(sigma /
    sigma'), the intermediate sigma_s = sigma e^(-r h), and (sd, su) = the ancestral split:

        u  = first-order step sigma -> sd(sigma, sigma_s) + s_noise su(sigma, sigma_s) z1
        D_r = (1 - 1/(2r)) D(x, sigma) + 1/(2r) D(u, sigma_s)
        x' = (sd / sigma) x + (1 - sd / sigma) D_r + s_noise su(sigma, sigma') z,

    sd, su in the last line those of the whole step. z1 and z are the noises of sigma -> sigma_s and
    sigma -> sigma' of one Brownian path in log sigma: z = sqrt(r) z1 + sqrt(1 - r) z2 with z2 the
    noise of sigma_s -> sigma', so the midpoint sees the first part of the noise the step adds. The 1/(2r) weights extrapolate D linearly in lambda over
    the whole step, where the reverse SDE's drift integrates D (the kernel 2 e^(-2(h - u)) of Lu et
    al. 2022b, App. B): second order in the ODE limit eta = 0. A last step to sigma' = 0 is
    x' = D(x, sigma). Denoiser calls: 2 per step, 1 on a last step to 0."""
    check_noise_options(eta, s_noise)
    if not 0 < r < 1:
        raise ValueError(f"r must lie in (0, 1), got {r}")
    z = make_noise(noise_kind, x, sigmas, generator)
    for i, s, s_next in steps(sigmas, progress, "dpmpp_sde"):
        d0 = denoise(denoiser, x, s, cond)
        report(callback, i, x, s, s_next, d0)
        if s_next == 0:
            x = d0
            continue
        s_mid = s ** (1 - r) * s_next**r
        sd1, su1 = ancestral_step(s, s_mid, eta)
        sd, su = ancestral_step(s, s_next, eta)
        z1 = z(s, s_mid) if su1 > 0 or su > 0 else None
        u = _first_order(x, d0, s, sd1)
        if su1 > 0:
            u = u + s_noise * su1 * z1
        d_mid = denoise(denoiser, u, s_mid, cond)
        x = _first_order(x, (1 - 1 / (2 * r)) * d0 + (1 / (2 * r)) * d_mid, s, sd)
        if su > 0:
            f = z.fraction(s, s_mid, s_next)
            x = x + s_noise * su * (math.sqrt(f) * z1 + math.sqrt(1 - f) * z(s_mid, s_next))
    return x

"""DPM-Solver (Lu et al. 2022a) and DPM-Solver++ (Lu et al. 2022b): exponential integrators of the
probability-flow ODE in the half log-SNR lambda = -log(sigma) (VE convention, alpha = 1).

With h = lambda' - lambda = log(sigma / sigma') the exact solution over a step is

    noise prediction (eps = (x - D)/sigma):  x' = x - sigma' int_0^h e^u eps(lambda + u) du
    data prediction (D):                     x' = e^-h x + int_0^h e^(u - h) D(lambda + u) du,

and the solvers differ in how they approximate eps or D inside the integral. The SDE solvers
(dpmpp_2m_sde, dpmpp_3m_sde) integrate D against the reverse SDE's drift kernel instead (Lu et al.
2022b, App. B), and add fresh noise. A step to sigma' = 0 is the limit h -> inf of the first-order
step, x' = D(x, sigma): every solver here ends that way.
"""
from __future__ import annotations

import math

from .brownian import DEFAULT_NOISE_KIND, make_noise
from .stepping import denoise, report, steps


def _eps(denoiser, x, s, cond):
    d0 = denoise(denoiser, x, s, cond)
    return (x - d0) / s, d0


def dpm_solver_1(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None):
    """DPM-Solver-1 (Lu et al. 2022a, eq. 3.7): x' = x - sigma'(e^h - 1) eps = x - (sigma - sigma') eps,
    which is DDIM (their Prop. 4.1). Denoiser calls: ``len(sigmas) - 1``."""
    for i, s, s_next in steps(sigmas, progress, "dpm_solver_1"):
        eps, d0 = _eps(denoiser, x, s, cond)
        report(callback, i, x, s, s_next, d0)
        x = x - (s - s_next) * eps
    return x


def dpm_solver_2(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None,
                 r1: float = 0.5):
    """DPM-Solver-2 (Lu et al. 2022a, Algorithm 1): an intermediate point at lambda + r1 h
    (sigma_1 = sigma^(1-r1) sigma'^r1),

        u  = x - (sigma - sigma_1) eps(x, sigma)
        x' = x - (sigma - sigma') eps - (sigma - sigma') / (2 r1) (eps(u, sigma_1) - eps(x, sigma)).

    Denoiser calls: 2 per step, 1 on a last step to sigma = 0."""
    for i, s, s_next in steps(sigmas, progress, "dpm_solver_2"):
        eps, d0 = _eps(denoiser, x, s, cond)
        report(callback, i, x, s, s_next, d0)
        if s_next == 0:
            x = d0
            continue
        s1 = s ** (1 - r1) * s_next**r1
        u = x - (s - s1) * eps
        eps_u, _ = _eps(denoiser, u, s1, cond)
        x = x - (s - s_next) * eps - (s - s_next) / (2 * r1) * (eps_u - eps)
    return x


def dpm_solver_3(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None,
                 r1: float = 1 / 3, r2: float = 2 / 3):
    """DPM-Solver-3 (Lu et al. 2022a, Algorithm 2), with sigma_i = sigma e^(-r_i h):

        u1 = x - (sigma - sigma_1) eps,                          D1 = eps(u1, sigma_1) - eps
        u2 = x - (sigma - sigma_2) eps - (r2/r1) sigma_2 (phi(r2 h) - 1) D1,  D2 = eps(u2, sigma_2) - eps
        x' = x - (sigma - sigma') eps - sigma' / r2 (phi(h) - 1) D2,

    where phi(h) = (e^h - 1)/h and sigma' phi(h) = (sigma - sigma')/h. Denoiser calls: 3 per step,
    1 on a last step to sigma = 0."""
    for i, s, s_next in steps(sigmas, progress, "dpm_solver_3"):
        eps, d0 = _eps(denoiser, x, s, cond)
        report(callback, i, x, s, s_next, d0)
        if s_next == 0:
            x = d0
            continue
        h = math.log(s / s_next)
        s1, s2 = s * math.exp(-r1 * h), s * math.exp(-r2 * h)
        u1 = x - (s - s1) * eps
        D1 = _eps(denoiser, u1, s1, cond)[0] - eps
        u2 = x - (s - s2) * eps - (r2 / r1) * ((s - s2) / (r2 * h) - s2) * D1
        D2 = _eps(denoiser, u2, s2, cond)[0] - eps
        x = x - (s - s_next) * eps - ((s - s_next) / h - s_next) / r2 * D2
    return x


def dpmpp_2m(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): with r = h_prev / h,

        D_hat = (1 + 1/(2r)) D(x, sigma) - 1/(2r) D_prev,    x' = (sigma'/sigma) x + (1 - sigma'/sigma) D_hat,

    first order (D_hat = D) on the first step and on a last step to sigma = 0.
    Denoiser calls: ``len(sigmas) - 1``."""
    d_prev, h_prev = None, None
    for i, s, s_next in steps(sigmas, progress, "dpmpp_2m"):
        d0 = denoise(denoiser, x, s, cond)
        report(callback, i, x, s, s_next, d0)
        if s_next == 0:
            x = d0
            continue
        h = math.log(s / s_next)
        d_hat = d0
        if d_prev is not None:
            r = h_prev / h
            d_hat = (1 + 1 / (2 * r)) * d0 - (1 / (2 * r)) * d_prev
        x = (s_next / s) * x + (1 - s_next / s) * d_hat
        d_prev, h_prev = d0, h
    return x


def exp_integrals(h: float) -> tuple[float, float, float]:
    """I_k = int_0^h u^k e^(u - h) du for k = 0, 1, 2, computed without cancellation for small h."""
    i0 = -math.expm1(-h)
    if h < 1e-2:  # series: I_1 = h^2/2 - h^3/6 + h^4/24, I_2 = h^3/3 - h^4/12
        return i0, h * h / 2 - h**3 / 6 + h**4 / 24 - h**5 / 120, h**3 / 3 - h**4 / 12 + h**5 / 60
    i1 = h - i0
    return i0, i1, h * h - 2 * i1


def dpmpp_3m(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None,
             variant: str = "official", lower_order_final: bool = True):
    """DPM-Solver++(3M): the multistep data-prediction solver of order 3 (Lu et al. 2022b, sec. 4 and
    the authors' reference code), with divided differences of the last three denoised values at
    lambda, lambda - h1, lambda - h1 - h2: f1 = D[0, -h1], f2 = D[0, -h1, -h1-h2], and
    I_k = int_0^h u^k e^(u-h) du (so I0 = 1 - e^-h):

        variant="taylor":   x' = e^-h x + I0 D + I1 f1 + (h1 I1 + I2) f2
        variant="official": x' = e^-h x + I0 D + I1 f1 + (h1 I1 + I2 / 2) f2

    "taylor" integrates the quadratic through the three points exactly: a true third-order method.
    "official" is the update of the reference implementation (and of diffusers and k-diffusion): its
    f2 term carries half the Taylor coefficient (it is phi_3 D2 with D2 = h^2 D''/2), so it is
    formally second order (see docs/samplers.md) but more stable in few steps, and more accurate
    than "taylor" below ~30 calls on our benchmarks. Second-order steps (the second step; the one
    before the last when ``lower_order_final`` and fewer than 15 steps) use I1 f1 ("taylor") or the
    2M coefficient I0 h/2 f1 ("official"); the first step is first order and a last step to sigma = 0
    is x' = D. Denoiser calls: ``len(sigmas) - 1``."""
    return _dpmpp_3m_loop(denoiser, x, sigmas, 0.0, 0.0, variant, lower_order_final, None, callback,
                          progress, cond, "dpmpp_3m")


def dpmpp_3m_sde(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None,
                 eta: float = 1.0, s_noise: float = 1.0, variant: str = "official",
                 lower_order_final: bool = True, noise_kind: str = DEFAULT_NOISE_KIND):
    """SDE-DPM-Solver++(3M): the third-order multistep solver of the SDE family of Lu et al. (2022b,
    App. B; eta = 1 is the reverse SDE, eta = 0 the probability-flow ODE). With h = log(sigma /
    sigma'), h_eta = (1 + eta) h and the divided differences f1, f2 of the last three denoised
    values (:func:`multistep_3m`),

        x' = e^-h_eta x + I0 D + (I1 / c) f1 + (h1 I1 / c + I2 / c^2) f2 + s_noise sigma' sqrt(1 - e^(-2 eta h)) z,

    c = 1 + eta, I_k = int_0^h_eta u^k e^(u - h_eta) du: the interpolating quadratic integrated
    exactly against the SDE's drift kernel. ``variant`` and ``lower_order_final`` are those of
    :func:`dpmpp_3m` ("official" halves the I2 term), so eta = 0 is ``dpmpp_3m`` exactly, and the
    first step with eta = 1 is DDPM's, the second SDE-DPM-Solver++(2M)'s. Below ~25 steps it is less
    accurate than :func:`dpmpp_2m_sde` (docs/samplers.md). A last step to 0 is x' = D(x, sigma).
    ``noise_kind``: "iid" or "brownian" (see :mod:`.brownian`). Denoiser calls: ``len(sigmas) - 1``."""
    check_noise_options(eta, s_noise)
    return _dpmpp_3m_loop(denoiser, x, sigmas, eta, s_noise, variant, lower_order_final,
                          make_noise(noise_kind, x, sigmas, generator), callback, progress, cond, "dpmpp_3m_sde")


def _dpmpp_3m_loop(denoiser, x, sigmas, eta, s_noise, variant, lower_order_final, z, callback, progress, cond,
                   name):
    _check_variant(variant)
    hist = []  # (lambda, D) of previous steps, newest last
    n = len(sigmas) - 1
    for i, s, s_next in steps(sigmas, progress, name):
        d0 = denoise(denoiser, x, s, cond)
        report(callback, i, x, s, s_next, d0)
        if s_next == 0:
            x = d0
            continue
        h = math.log(s / s_next)
        third = not (lower_order_final and n < 15 and i >= n - 2)
        x = multistep_3m(x, d0, hist, -math.log(s), h, 1 + eta, variant, third)
        if eta > 0 and s_noise > 0:
            x = x + s_noise * s_next * math.sqrt(-math.expm1(-2 * eta * h)) * z(s, s_next)
        hist = (hist + [(-math.log(s), d0)])[-2:]
    return x


def check_noise_options(eta: float, s_noise: float) -> None:
    """ValueError unless eta >= 0 and s_noise >= 0."""
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if not s_noise >= 0:
        raise ValueError(f"s_noise must be >= 0, got {s_noise}")


def _check_variant(variant: str) -> None:
    if variant not in ("official", "taylor"):
        raise ValueError(f"variant must be 'official' or 'taylor', got {variant!r}")


def multistep_3m(x, d0, hist, lam: float, h: float, c: float, variant: str, third: bool):
    """The deterministic part of one DPM-Solver++(3M) step from lambda to lambda + h, with drift
    factor c = 1 + eta (c = 1: the probability-flow ODE; c = 2: the reverse SDE). ``hist`` holds
    (lambda, D) of up to two earlier points; the step is first order without history, second order
    with one point or when ``third`` is false, else third order. With h_c = c h, I_k = I_k(h_c)
    (:func:`exp_integrals`) and the divided differences f1, f2 of :func:`dpmpp_3m`, integrating the
    interpolant D(lambda + u) = D + f1 u + f2 u (u + h1) against the kernel c e^(-c (h - u)) gives

        x' = e^-h_c x + I0 D + (I1 / c) f1 + (h1 I1 / c + I2 / c^2) f2,

    the "taylor" update; "official" halves the I2 term and uses the 2M coefficient I0 h / 2 on
    second-order steps (see :func:`dpmpp_3m`). c = 1 is :func:`dpmpp_3m`'s step; the SDE form is
    Lu et al. (2022b, App. B)'s SDE-DPM-Solver++ extended to three points."""
    i0, i1, i2 = exp_integrals(c * h)
    x = math.exp(-c * h) * x + i0 * d0
    if not hist:
        return x
    h1 = lam - hist[-1][0]
    f1 = (d0 - hist[-1][1]) / h1
    if len(hist) >= 2 and third:
        h2 = hist[-1][0] - hist[-2][0]
        f2 = (f1 - (hist[-1][1] - hist[-2][1]) / h2) / (h1 + h2)
        c2 = 1.0 if variant == "taylor" else 0.5
        return x + (i1 / c) * f1 + (h1 * i1 / c + c2 * i2 / c**2) * f2
    return x + (i1 / c if variant == "taylor" else 0.5 * h * i0) * f1


def dpmpp_2m_sde(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None,
                 eta: float = 1.0, s_noise: float = 1.0, noise_kind: str = DEFAULT_NOISE_KIND):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, sec. 5 and App. B), with h_eta = (1 + eta) h:

        x' = (sigma'/sigma) e^(-eta h) x + (1 - e^-h_eta) D + (1 - e^-h_eta) / (2r) (D - D_prev)
             + sigma' sqrt(1 - e^(-2 eta h)) s_noise z.

    With eta = 1 the first-order step is exactly DDPM's ancestral step; eta = 0 is DPM-Solver++(2M)
    with a midpoint correction. ``noise_kind``: "iid" or "brownian" (see :mod:`.brownian`).
    Denoiser calls: ``len(sigmas) - 1``."""
    z = make_noise(noise_kind, x, sigmas, generator)
    d_prev, h_prev = None, None
    for i, s, s_next in steps(sigmas, progress, "dpmpp_2m_sde"):
        d0 = denoise(denoiser, x, s, cond)
        report(callback, i, x, s, s_next, d0)
        if s_next == 0:
            x = d0
            continue
        h = math.log(s / s_next)
        decay = -math.expm1(-(1 + eta) * h)
        x = (s_next / s) * math.exp(-eta * h) * x + decay * d0
        if d_prev is not None:
            x = x + decay / (2 * (h_prev / h)) * (d0 - d_prev)
        if eta > 0:
            x = x + s_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise * z(s, s_next)
        d_prev, h_prev = d0, h
    return x

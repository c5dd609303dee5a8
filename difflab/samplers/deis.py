"""DEIS: the diffusion exponential integrator sampler of Zhang & Chen (2023), tAB-DEIS.

The probability-flow ODE of x = x0 + sigma n in the eps form is dx/dsigma = eps(x, sigma) with
eps = (x - D(x, sigma)) / sigma: in the VE convention it has no linear part left (the transition
Psi of the exponential integrator is the identity, Zhang & Chen 2023), and a step is

    x' = x + int_sigma^sigma' eps(x(s), s) ds.

tAB-DEIS (their Adams–Bashforth form, "polynomial extrapolation" of eps in t) replaces eps
inside the integral by the Lagrange polynomial through the last p values eps_j at the times t_j of
the paper's VP SDE (Song et al. 2021, linear beta from 0.1 to 20), and integrates it exactly:

    x' = x + sum_j C_j eps_j,    C_j = int_sigma^sigma' l_j(t(s)) ds,    l_j(t) = prod_(k != j) (t - t_k) / (t_j - t_k),

with t(sigma) the VP time of the noise level, sigma(t)^2 = exp(beta_d t^2 / 2 + beta_min t) - 1
(their C_ij, in the VE coordinates y = x / alpha where the VP model's eps form becomes this one).
C_j is computed by Gauss–Legendre quadrature in float64 in w = sqrt(t), C_j = int l_j(w^2)
dsigma/dw dw, where the integrand is analytic: in t, dsigma/dt ~ 1/sqrt(t) at t = 0, and in sigma,
t(sigma) turns from sigma^2 / beta_min to sigma sqrt(2 / beta_d) within sigma ~ 0.016. p = 1 is
DDIM; p ramps up with the history, and the step to sigma' = 0 is a step like any other (t(0) = 0
is finite), so DEIS lands on sigma = 0 at full order.
"""
from __future__ import annotations

import functools
import math

import torch

from .stepping import denoise, euler_step, report, steps

BETA_MIN, BETA_D = 0.1, 19.9
#: Gauss–Legendre nodes per step: the integrand's nearest complex singularity (E = 2 pi i) lies
#: ~0.3 off w's real interval, and 32 nodes integrate polynomials in t to ~2e-14 relative even over
#: a whole schedule at once (sigma from 80 to 0); steps are shorter, which converges faster.
QUADRATURE_NODES = 32


def vp_time(sigma: float) -> float:
    """t of the VP SDE with linear beta (Song et al. 2021, the VP SDE) at VE noise level sigma:
    beta_d t^2 / 2 + beta_min t = log(1 + sigma^2), solved without cancellation at small sigma."""
    ell = math.log1p(sigma * sigma)
    return 2 * ell / (BETA_MIN + math.sqrt(BETA_MIN**2 + 2 * BETA_D * ell))


@functools.lru_cache(maxsize=8)
def gauss_legendre(n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nodes and weights of n-point Gauss–Legendre quadrature on [-1, 1] (Golub & Welsch 1969:
    eigenvalues of the Jacobi matrix, weights 2 v_0^2), in float64."""
    k = torch.arange(1, n, dtype=torch.float64)
    off = k / torch.sqrt(4 * k * k - 1)
    nodes, vecs = torch.linalg.eigh(torch.diag(off, 1) + torch.diag(off, -1))
    return tuple(nodes.tolist()), tuple((2 * vecs[0] ** 2).tolist())


def _dsigma_dw(w: float) -> float:
    """d sigma / dw at w = sqrt(t): with E = beta_min w^2 + beta_d w^4 / 2 and sigma = sqrt(e^E - 1),
    dsigma/dw = e^E w (beta_min + beta_d w^2) / sigma (finite at w -> 0, where sigma ~ sqrt(beta_min) w)."""
    e = BETA_MIN * w * w + BETA_D * w**4 / 2
    return math.exp(e) * (BETA_MIN + BETA_D * w * w) / math.sqrt(math.expm1(e) / (w * w))


def deis_coefficients(sigma: float, sigma_next: float, sigmas_hist: list[float]) -> list[float]:
    """C_j = int_sigma^sigma' l_j(t(s)) ds for the Lagrange basis l_j in t through the points
    ``sigmas_hist`` (newest first; sigmas_hist[0] = sigma), by quadrature in w = sqrt(t). Their sum
    is sigma' - sigma."""
    ts = [vp_time(s) for s in sigmas_hist]
    w0, w1 = math.sqrt(vp_time(sigma)), math.sqrt(vp_time(sigma_next))
    nodes, weights = gauss_legendre(QUADRATURE_NODES)
    half, mid = (w1 - w0) / 2, (w1 + w0) / 2
    coeffs = [0.0] * len(ts)
    for node, weight in zip(nodes, weights):
        w = mid + half * node
        dsigma = weight * half * _dsigma_dw(w)
        for j, t_j in enumerate(ts):
            coeffs[j] += dsigma * math.prod((w * w - t_k) / (t_j - t_k) for k, t_k in enumerate(ts) if k != j)
    return coeffs


def deis(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None, order: int = 3):
    """tAB-DEIS of order 1-3 (Zhang & Chen 2023, the update with coefficients C_ij; see the module
    doc): with eps_j the last ``order`` values of (x - D) / sigma at t_j and C_j their Lagrange
    coefficients,

        x' = x + (sigma' - sigma) eps_0 + sum_(j >= 1) C_j (eps_j - eps_0)

    (the same update, written so that order 1 is Euler's step, x' = x + (sigma' - sigma) eps_0, to
    the last bit, which is DDIM with eta = 0). The order ramps up over the first steps; the last
    step, to sigma' = 0, is at full order (docs/samplers.md, "DEIS", has the measurement).
    Denoiser calls: ``len(sigmas) - 1``."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    hist = []  # (sigma, eps) of the last points, newest first
    for i, s, s_next in steps(sigmas, progress, "deis"):
        d0 = denoise(denoiser, x, s, cond)
        report(callback, i, x, s, s_next, d0)
        eps = (x - d0) / s
        hist = [(s, eps), *hist][:order]
        x = euler_step(x, d0, s, s_next)
        if len(hist) > 1:
            coeffs = deis_coefficients(s, s_next, [h[0] for h in hist])
            for c_j, (_, eps_j) in zip(coeffs[1:], hist[1:]):
                x = x + c_j * (eps_j - eps)
    return x

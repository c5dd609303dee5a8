"""ODE and SDE stepping shared by the samplers, the editors and the likelihood: the step loop over a
sigma sequence, one denoiser call, fresh noise, callbacks, the ancestral split, Euler and Heun steps
on the probability-flow ODE, and one Dormand–Prince RK5(4) step.

The probability-flow ODE of ``x = x0 + sigma n`` is ``dx/dsigma = (x - D(x, sigma)) / sigma``
(Karras et al. 2022, eq. 4 with sigma(t) = t, s(t) = 1); in ``s = log sigma`` it is
``dx/ds = x - D(x, e^s)``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["steps", "denoise", "noise_like", "report", "ancestral_step", "euler_step", "heun_step",
           "DOPRI_C", "DOPRI_A", "DOPRI_E", "dopri5_step"]


def steps(sigmas, progress: bool = False, desc: str = "sampling"):
    """Yield ``(i, sigma, sigma_next)`` as Python floats for each of the ``len(sigmas) - 1`` steps."""
    s = [float(v) for v in sigmas]
    for k in range(len(s) - 1):
        if s[k + 1] >= s[k] or s[k] <= 0:
            raise ValueError(f"sigmas must decrease and be positive before the last; got {s[k]} -> {s[k + 1]}")
    it = range(len(s) - 1)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc, leave=False)
    for i in it:
        yield i, s[i], s[i + 1]


def denoise(denoiser, x: torch.Tensor, sigma: float, cond: dict | None) -> torch.Tensor:
    """One call D(x, sigma) with sigma broadcast to shape (B,)."""
    return denoiser(x, x.new_full((x.shape[0],), sigma), **(cond or {}))


def noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of x's shape, dtype and device, drawn from ``generator``."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def report(callback, i: int, x, sigma: float, sigma_next: float, denoised) -> None:
    """Call ``callback`` (if any) with the step's dict: i, x, sigma, sigma_next, denoised."""
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step sigma -> sigma_next into a deterministic part down to ``sigma_down`` and fresh
    noise of std ``sigma_up`` with sigma_down^2 + sigma_up^2 = sigma_next^2.

    eta = 1 gives the DDPM posterior variance sigma_up^2 = s'^2 (s^2 - s'^2)/s^2 (Ho et al. 2020,
    eq. 7 in the VE convention); eta scales its std as in DDIM (Song et al. 2021a, eq. 16).
    """
    if sigma_next == 0:
        return 0.0, 0.0
    sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(max(sigma**2 - sigma_next**2, 0.0)) / sigma)
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def euler_step(x, d0, sigma: float, sigma_next: float):
    """Euler's step on the probability-flow ODE from sigma to sigma' given d0 = D(x, sigma):
    x' = x + (sigma' - sigma) (x - d0) / sigma. Downwards it is DDIM with eta = 0 (Song et al. 2021a,
    eq. 13); upwards (sigma' > sigma) it is DDIM inversion."""
    return x + (sigma_next - sigma) * (x - d0) / sigma


def heun_step(denoiser, x, d0, sigma: float, sigma_next: float, cond: dict | None):
    """Heun's 2nd-order step from sigma to sigma' given d0 = D(x, sigma) (Karras et al. 2022, Alg. 1
    lines 5-8): an Euler step, then the average of the slopes at both ends; a plain Euler step when
    sigma' = 0. One more denoiser call (none when sigma' = 0)."""
    slope = (x - d0) / sigma
    x_euler = x + (sigma_next - sigma) * slope
    if sigma_next == 0:
        return x_euler
    slope_next = (x_euler - denoise(denoiser, x_euler, sigma_next, cond)) / sigma_next
    return x + (sigma_next - sigma) * 0.5 * (slope + slope_next)


# Dormand–Prince RK5(4)7M (Dormand & Prince 1980): nodes C, stages A (the last row is the 5th-order
# solution, evaluated again as stage 7: "first same as last"), and E = b5 - b4, the weights of the
# embedded error estimate.
DOPRI_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
DOPRI_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
DOPRI_E = (35 / 384 - 5179 / 57600, 0.0, 500 / 1113 - 7571 / 16695, 125 / 192 - 393 / 640,
           -2187 / 6784 + 92097 / 339200, 11 / 84 - 187 / 2100, -1 / 40)


def _times(h, v: torch.Tensor) -> torch.Tensor:
    """h v, with a per-sample step h of shape (B,) broadcast over v's trailing dimensions."""
    if isinstance(h, torch.Tensor):
        h = h.reshape(-1, *[1] * (v.ndim - 1)).to(v.dtype)
    return h * v


def dopri5_step(f: Callable, y: tuple, k1: tuple, t, h):
    """One Dormand–Prince RK5(4) step of dy/dt = f(y, t) (Dormand & Prince 1980; Hairer, Norsett &
    Wanner 1993, sec. II.5). ``y`` and ``k1 = f(y, t)`` are tuples of tensors (an augmented state);
    ``t`` and ``h`` are floats, or (B,) tensors for a separate step per sample.

    Returns ``(y_new, f(y_new, t + h), err)``: the 5th-order solution, its derivative (reused as the
    next step's k1) and the embedded error estimate h sum_i E_i k_i, each a tuple like ``y``.
    Six calls of ``f``.
    """
    ks = [k1]
    for stage in range(1, 7):
        ys = tuple(y_j + _times(h, sum(a * k[j] for a, k in zip(DOPRI_A[stage], ks) if a != 0))
                   for j, y_j in enumerate(y))
        ks.append(f(ys, t + DOPRI_C[stage] * h))
    err = tuple(_times(h, sum(e * k[j] for e, k in zip(DOPRI_E, ks) if e != 0)) for j in range(len(y)))
    return ys, ks[6], err

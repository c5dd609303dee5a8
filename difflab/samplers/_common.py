"""Small helpers shared by every sampler: the step loop, one denoiser call, noise, callbacks."""
from __future__ import annotations

import math

import torch


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
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def report(callback, i: int, x, sigma: float, sigma_next: float, denoised) -> None:
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

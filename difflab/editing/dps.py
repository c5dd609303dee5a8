"""Diffusion posterior sampling (DPS; Chung et al. 2023) for y = A(x0) + noise_std n, A any
differentiable map (linear or not), and measurement operators to try it with.

DPS approximates the likelihood of a noisy state by that of its denoised estimate,
p(y | x) ~ N(y; A(D(x, sigma)), v I) (their sec. 3), so its gradient goes through the denoiser;
the posterior denoiser then follows from Tweedie's formula D = x + sigma^2 grad log p(x; sigma)
as in classifier guidance (docs/editing.md "DPS"). The operators return callables ``A(x)`` on
images ``(B, C, H, W)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..denoisers import append_dims
from ..samplers import sample
from .ddrm import Inpainting, SuperResolution

__all__ = ["dps", "dps_denoiser", "gaussian_blur", "saturation", "fourier_magnitude", "masking", "downsampling"]

#: The default step size: the scale with the least bias against the exact posterior, averaged over
#: the problems of benchmarks/dps.py (docs/editing.md "DPS").
DEFAULT_SCALE = 2.0


def dps_denoiser(denoiser, y: torch.Tensor, A, *, noise_std: float, scale: float = DEFAULT_SCALE):
    """The DPS posterior denoiser (Chung et al. 2023, sec. 3 and Algorithm 1, with their step
    size normalised by the residual):

        D_y(x, sigma) = x0_hat - sigma^2 zeta grad_x |y - A(x0_hat(x))|^2,    x0_hat = D(x, sigma),
        zeta = scale / max(|r| / sqrt(m), noise_std),                          r = y - A(x0_hat),

    per sample, with m the number of measured values. It is Tweedie's posterior mean with the
    likelihood N(y; A(x0_hat), v I) and 1 / (2 v) = zeta. Chung et al. divide their step by the
    residual norm |r| (the theoretical 1 / noise_std^2 is unstable); dividing by the RMS |r| / sqrt(m)
    keeps ``scale`` independent of the number of measurements, and ``noise_std`` bounds the
    division: below the noise level the residual no longer sets the step. At sigma = inf (pure
    noise) x carries nothing to guide. Gradients flow through ``denoiser`` and ``A`` even when the
    caller runs without autograd (inputs are cloned: inference tensors cannot be saved for backward).
    """
    m = y[0].numel()

    def d(x, sigma, **cond):
        with torch.inference_mode(False), torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            x0_hat = denoiser(x_in, sigma.clone(), **cond)
            sq = (y.clone() - A(x0_hat)).flatten(1).square().sum(1)  # |r|^2 per sample
            (grad,) = torch.autograd.grad(sq.sum(), x_in)
        rms = (sq.detach() / m).sqrt().clamp_min(noise_std)
        zeta = torch.where(rms > 0, scale / torch.where(rms > 0, rms, 1), 0)  # r = 0: no gradient either
        x0_hat = x0_hat.detach()
        guided = x0_hat - append_dims(zeta.to(sigma) * sigma.square(), x.ndim).to(x.dtype) * grad
        return torch.where(append_dims(torch.isinf(sigma), x.ndim), x0_hat, guided)

    return d


def dps(denoiser, y: torch.Tensor, A, x: torch.Tensor, sigmas, *, noise_std: float, scale: float = DEFAULT_SCALE,
        generator=None, sampler: str = "ddpm", **options) -> torch.Tensor:
    """Diffusion posterior sampling (Chung et al. 2023, Algorithm 1): a sample of x0 given
    y = A(x0) + noise_std n, from ``x`` at ``sigmas[0]`` (``sigmas[0] * noise``, as for
    :func:`difflab.sample`) to ``sigmas[-1]``.

    One run of ``sampler`` with :func:`dps_denoiser`. With ``"ddpm"`` (the default, the paper's
    ancestral step) a step sigma -> sigma' is the unguided step followed by

        x' <- x' - (sigma^2 - sigma'^2) zeta grad_x |y - A(x0_hat(x))|^2,

    the paper's line 7 with their step zeta_i = zeta' / |r| replaced by (sigma^2 - sigma'^2) zeta
    (:func:`dps_denoiser`), so that the guidance does not grow with the number of steps.
    ``A`` maps a batch x to a batch like ``y``; ``y`` may have batch size 1 (then every sample is
    a draw given the same measurement). ``scale = 0`` is unconditional sampling. ``options`` go to
    the sampler (``cond`` to the denoiser). One denoiser call and one backward pass per call of
    the sampler; the paper uses 1000 steps, and 100 are much better than 20 (docs/editing.md).
    """
    if noise_std < 0 or scale < 0:
        raise ValueError(f"noise_std and scale must be >= 0, got noise_std={noise_std}, scale={scale}")
    s = [float(v) for v in sigmas]
    if len(s) < 2 or any(b >= a for a, b in zip(s, s[1:])) or min(s[:-1]) <= 0 or s[-1] < 0:
        raise ValueError("sigmas must be at least two decreasing values, positive but the last (which may be 0)")
    with torch.no_grad():
        shape = tuple(A(x).shape)
    if tuple(y.shape) != shape and not (y.ndim == len(shape) and y.shape[0] == 1 and tuple(y.shape[1:]) == shape[1:]):
        raise ValueError(f"the measurement y has shape {tuple(y.shape)} but A(x) has shape {shape}; "
                         "they must match (y may have batch size 1)")
    d = dps_denoiser(denoiser, y, A, noise_std=noise_std, scale=scale)
    return sample(d, x, sigmas, sampler, generator=generator, **options)


def gaussian_blur(std: float):
    """A(x): the blur of images ``(B, C, H, W)`` by a Gaussian of ``std`` pixels, truncated at
    3 std, edges replicated (linear). The deblurring task of Chung et al. (2023, sec. 4)."""
    if not std > 0:
        raise ValueError(f"the blur's std must be positive, got {std}")
    radius = max(1, math.ceil(3 * std))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = (-0.5 * (t / std) ** 2).exp()
    kernel = kernel / kernel.sum()

    def A(x):
        c = x.shape[1]
        k = kernel.to(x)
        x = F.pad(x, (radius,) * 4, mode="replicate")
        x = F.conv2d(x, k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    return A


def saturation(k: float = 2.0):
    """A(x) = tanh(k x): a nonlinear, saturating sensor (values near +-1 lose their differences)."""
    if not k > 0:
        raise ValueError(f"the saturation's gain k must be positive, got {k}")
    return lambda x: torch.tanh(k * x)


def fourier_magnitude(oversample: int = 2):
    """A(x) = |F(pad(x))|: the magnitude of the unitary 2-D Fourier transform of the image
    zero-padded to ``oversample`` times its size (phase retrieval; Chung et al. 2023, sec. 4,
    oversampling 2). Nonlinear; x and its flips and shifts share it."""
    if not (isinstance(oversample, int) and oversample >= 1):
        raise ValueError(f"oversample must be an integer >= 1, got {oversample!r}")

    def A(x):
        h, w = x.shape[-2:]
        return torch.fft.fft2(x, s=(oversample * h, oversample * w), norm="ortho").abs()

    return A


def masking(mask):
    """A(x) = mask * x (inpainting, ``mask`` 1 where a pixel is seen); y has x's shape."""
    return Inpainting(mask).H


def downsampling(factor: int):
    """A(x): area downsampling by ``factor`` (block means; super-resolution), y of shape
    ``(B, C, H / factor, W / factor)``."""
    return SuperResolution(factor).H

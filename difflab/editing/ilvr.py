"""ILVR (Choi et al. 2021): sampling whose low frequencies follow a reference image."""
from __future__ import annotations

import torch

from ..samplers import sample, start_from_noise
from ..samplers.stepping import noise_like, steps
from .ddrm import SuperResolution

__all__ = ["ilvr", "low_pass"]


def low_pass(x: torch.Tensor, factor: int) -> torch.Tensor:
    """phi_N(x): area downsampling by ``factor`` over the last two dimensions, then nearest-neighbour
    upsampling, i.e. each ``factor x factor`` block replaced by its mean. This is H^+ H for block
    averaging H (:class:`SuperResolution`): an orthogonal projection, so phi_N(phi_N(x)) = phi_N(x).
    (Choi et al. resize bicubically; the projection makes their Algorithm 1's property exact.)"""
    op = SuperResolution(factor)
    return op.H_pinv(op.H(x))


def ilvr(denoiser, x_ref: torch.Tensor, sigmas, *, factor: int, sampler: str = "ddpm", generator=None,
         **options) -> torch.Tensor:
    """Iterative Latent Variable Refinement (Choi et al. 2021, Algorithm 1): after each step
    sigma -> sigma' of ``sampler`` (default ``"ddpm"``, the paper's ancestral step) give the sample
    the low frequencies of the reference noised to sigma',

        x' <- x' - phi_N(x') + phi_N(y'),    y' = x_ref + sigma' z,

    with phi_N = :func:`low_pass`. The output therefore satisfies phi_N(x0) = phi_N(x_ref) exactly;
    ``factor`` (N) sets how much is inherited (N = 1: the reference itself). The sampler restarts
    at each step (multistep samplers run as their one-step start); ``options`` go to it.
    """
    low_pass(x_ref, factor)  # checks factor and shape before any sampling
    x = start_from_noise(sigmas, noise_like(x_ref, generator))
    for i, _, sigma_next in steps(sigmas, desc="ilvr"):
        x = sample(denoiser, x, sigmas[i:i + 2], sampler, generator=generator, **options)
        y = x_ref + sigma_next * noise_like(x_ref, generator)
        x = x + low_pass(y - x, factor)
    return x

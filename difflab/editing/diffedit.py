"""DiffEdit (Couairon et al. 2023): semantic editing of a class-conditional model with an
automatically inferred mask.

1. Mask (sec. 3.2, step 1): noise the input at level sigma_m, x_k = x + sigma_m z_k, and compare
   the denoiser's predictions under the target and the source class,

       d = mean_k mean_channels |D(x_k, sigma_m | target) - D(x_k, sigma_m | source)|,

   (their difference of noise estimates, eps = (x - D) / sigma, is the same up to the factor
   1 / sigma_m, which the normalisation removes); M = 1 where d > threshold * max(d) per image.
2. Encoding (step 2): DDIM inversion of x from sigma_min up to sigma_r, the level of ``strength``,
   keeping the path x_sigma (with the null class when given, as the paper encodes unconditionally).
3. Decoding (step 3): DDIM from x_{sigma_r} down under the target class; after each step the
   pixels outside the mask are replaced by the encoding path at that level,
   y_sigma' = M y_sigma' + (1 - M) x_sigma', so they end on the input itself.
"""
from __future__ import annotations

import torch

from ..samplers.stepping import denoise, euler_step, noise_like

__all__ = ["diffedit", "diffedit_mask"]


def _labels(c, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(c, device=x.device).long().expand(x.shape[0])


@torch.no_grad()
def diffedit_mask(denoiser, x: torch.Tensor, source_class, target_class, sigma: float, *, noises: int = 10,
                  threshold: float = 0.5, generator=None) -> torch.Tensor:
    """DiffEdit's mask (Couairon et al. 2023, sec. 3.2, step 1), (B, 1, H, W) boolean, 1 = edit:
    the per-image normalised mean |D(x + sigma z, sigma | target) - D(x + sigma z, sigma | source)|
    over ``noises`` draws of z and the channels, thresholded at ``threshold``. Two identical classes
    give an empty mask (d = 0 everywhere)."""
    if noises < 1 or not 0 <= threshold < 1:
        raise ValueError(f"diffedit needs noises >= 1 and a threshold in [0, 1), got {noises} and {threshold}")
    source, target = _labels(source_class, x), _labels(target_class, x)
    d = torch.zeros_like(x[:, :1])
    for _ in range(noises):
        x_k = x + sigma * noise_like(x, generator)
        delta = denoise(denoiser, x_k, sigma, {"y": target}) - denoise(denoiser, x_k, sigma, {"y": source})
        d += delta.abs().mean(1, keepdim=True) / noises
    return d > threshold * d.amax((1, 2, 3), keepdim=True)  # d = 0 everywhere: 0 > 0, an empty mask


@torch.no_grad()
def diffedit(denoiser, x: torch.Tensor, source_class, target_class, sigmas, *, strength: float = 0.5,
             mask_noises: int = 10, threshold: float = 0.5, encode_class=None, mask: torch.Tensor | None = None,
             generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """DiffEdit (Couairon et al. 2023, sec. 3.2): returns (edited images, mask (B, 1, H, W)).

    ``sigmas``: a decreasing schedule ending at 0; of its n steps the last m = max(1, round(strength
    * n)) are run (as :func:`difflab.editing.sdedit`), from sigma_r = ``sigmas[n - m]``, which is
    also the mask's noise level. ``encode_class``: the class of the DDIM encoding (the null class of
    a classifier-free model for the paper's unconditional encoding; default the source class).
    ``mask``: use this mask instead of inferring one. Denoiser calls: 2 ``mask_noises`` + 2 (m - 1) + 1.
    """
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    sigmas = torch.as_tensor(sigmas)
    n = len(sigmas) - 1
    tail = [float(s) for s in sigmas[n - max(1, round(strength * n)):]]
    if mask is None:
        mask = diffedit_mask(denoiser, x, source_class, target_class, tail[0], noises=mask_noises,
                             threshold=threshold, generator=generator)
    encode = {"y": _labels(source_class if encode_class is None else encode_class, x)}
    target = {"y": _labels(target_class, x)}
    positive = [s for s in tail if s > 0]
    path = {positive[-1]: x}  # x stands for x(sigma_min), as in difflab.editing.invert
    for sigma, sigma_up in zip(positive[::-1][:-1], positive[::-1][1:]):  # DDIM inversion, upwards
        path[sigma_up] = euler_step(path[sigma], denoise(denoiser, path[sigma], sigma, encode), sigma, sigma_up)
    y = path[positive[0]]
    for sigma, sigma_next in zip(tail[:-1], tail[1:]):  # DDIM decoding under the target class
        d0 = denoise(denoiser, y, sigma, target)
        y = d0 if sigma_next == 0 else euler_step(y, d0, sigma, sigma_next)
        y = torch.where(mask, y, path.get(sigma_next, x))  # the background follows the encoding path
    return y, mask

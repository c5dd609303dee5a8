"""Inpainting with an unconditional denoiser: the replacement method and RePaint.

Both methods condition on the known pixels by the same move, which is one denoiser transform here
(:func:`replaced_denoiser`): before each denoiser call the known coordinates of ``x`` are replaced by
``x_known + sigma z`` with fresh ``z ~ N(0, I)``, a draw of the forward process at the current
sigma. ``mask`` is 1 where a pixel is known and kept, 0 where it is generated; the output keeps the
known pixels exactly, ``x0 = mask * x_known + (1 - mask) * x``.
"""
from __future__ import annotations

import math

import torch

from ..denoisers import append_dims
from ..samplers import sample, start_from_noise
from ..samplers.stepping import noise_like

__all__ = ["inpaint", "replaced_denoiser", "repaint_schedule", "check_mask", "observation_condition",
           "observed_denoiser"]


def check_mask(mask, x: torch.Tensor) -> torch.Tensor:
    """``mask`` as a boolean tensor on ``x``'s device; ValueError unless it broadcasts to ``x.shape``
    and holds only 0 and 1."""
    mask = torch.as_tensor(mask, device=x.device)
    try:
        fits = torch.broadcast_shapes(mask.shape, x.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the image shape {tuple(x.shape)}")
    if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask must hold only 0 (generate) and 1 (keep)")
    return mask.bool()


def replaced_denoiser(denoiser, x_known: torch.Tensor, mask: torch.Tensor, generator=None):
    """The denoiser of the replacement method (Song et al. 2021, App. I.2, "imputation"):

        D'(x, sigma) = m x_known + (1 - m) D(m (x_known + sigma z) + (1 - m) x, sigma),  z ~ N(0, I) fresh,

    so a sampler step taken with D' moves the unknown coordinates exactly as a step taken after
    replacing the known ones by a forward draw at the current sigma, and steers the known ones to
    ``x_known``. ``mask`` is boolean (see :func:`check_mask`). Each call consumes ``generator``.
    """
    def d(x, sigma, **cond):
        z = noise_like(x, generator)
        s = append_dims(sigma.to(x), x.ndim)
        x_noisy_known = torch.where(torch.isinf(s), z, x_known + s * z)  # at sigma = inf: the noise itself
        x0_hat = denoiser(torch.where(mask, x_noisy_known, x), sigma, **cond)
        return torch.where(mask, x_known, x0_hat)

    return d


def observation_condition(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The conditioning channels of an imputation model (CSDI, Tashiro et al. 2021): [mask * values,
    mask], (B, 2C, L) for signals (B, C, L); values where the mask is 0 never reach the network (NaN
    there is allowed)."""
    mask = torch.as_tensor(mask, device=values.device).to(values.dtype).expand_as(values)
    return torch.cat([torch.where(mask > 0, values, torch.zeros_like(values)), mask], dim=1)


def observed_denoiser(denoiser, values: torch.Tensor, mask: torch.Tensor):
    """The denoiser of an imputation model given observations: the network sees
    :func:`observation_condition` as its ``condition`` and the output keeps the observed values,

        D'(x, sigma) = m values + (1 - m) D(x, sigma | values, m),

    so the observed coordinates of a sampler's state follow values + sigma n, their law in training,
    and the sample ends on them exactly. ``values`` (B, C, L) holds one row per sample drawn; ``mask``
    broadcasts to it."""
    keep = check_mask(mask, values).expand_as(values)
    condition = observation_condition(values, keep)
    known = torch.where(keep, values, torch.zeros_like(values))

    def d(x, sigma, **cond):
        return torch.where(keep, known.to(x.dtype), denoiser(x, sigma, condition=condition.to(x.dtype), **cond))

    return d


def repaint_schedule(n: int, jump_length: int = 10, resamplings: int = 10) -> list[int]:
    """The indices into ``sigmas`` (0 = noisiest, n = the final sigma) that RePaint visits
    (Lugmayr et al. 2022, sec. 4.2 and their code's ``get_schedule_jump``): walk down one step at a
    time; on reaching each time ``t = 0, j, 2j, ...`` (counted from the end, t < n - j), jump back up
    ``j`` steps, ``resamplings - 1`` times, so each such stretch is traversed ``resamplings`` times."""
    jumps = {t: resamplings - 1 for t in range(0, n - jump_length, jump_length)}
    t, ts = n, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    # Their time t (n - 1 for the first step, -1 for the end) is the index n - 1 - t here.
    return [n - 1 - t for t in ts] + [n]


def _replace(denoiser, x_known, mask, sigmas, *, generator=None, sampler="ddpm", **options):
    """The whole sampler run once with :func:`replaced_denoiser`; its own history (multistep
    samplers) and every stage of multi-stage samplers see known pixels at their own sigma."""
    if sampler == "rk45":
        raise ValueError("method='replace' draws fresh noise at every denoiser call, which an adaptive "
                         "solver cannot integrate; choose a fixed-step sampler")
    d = replaced_denoiser(denoiser, x_known, mask, generator)
    x = start_from_noise(sigmas, noise_like(x_known, generator))
    return sample(d, x, sigmas, sampler, generator=generator, **options)


def _repaint(denoiser, x_known, mask, sigmas, *, generator=None, sampler="ddpm", jump_length=10,
             resamplings=10, **options):
    """RePaint (Lugmayr et al. 2022, Algorithm 1 with the jump schedule of sec. 4.2): a step down
    is one step of ``sampler`` with :func:`replaced_denoiser`; a step back up from sigma' to sigma
    is the forward transition x = x' + sqrt(sigma^2 - sigma'^2) z (their q(x_t | x_{t-1}) in the
    VE convention). A flow's sigma = inf is handled as by :func:`difflab.samplers.sample`: the
    state there is the unit noise."""
    for name, v in (("jump_length", jump_length), ("resamplings", resamplings)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    s = [float(v) for v in sigmas]
    d = replaced_denoiser(denoiser, x_known, mask, generator)
    path = repaint_schedule(len(s) - 1, jump_length, resamplings)
    x = start_from_noise(sigmas, noise_like(x_known, generator))
    for k, k_next in zip(path[:-1], path[1:]):
        if k_next > k:
            x = sample(d, x, sigmas[k:k_next + 1], sampler, generator=generator, **options)
        else:  # back up to pure noise (a flow's sigma = inf) the state is fresh noise
            x = start_from_noise(sigmas[k_next:], noise_like(x, generator)) if math.isinf(s[k_next]) else \
                x + math.sqrt(s[k_next] ** 2 - s[k] ** 2) * noise_like(x, generator)
    return x


_METHODS = {"replace": _replace, "repaint": _repaint}


def inpaint(denoiser, x_known: torch.Tensor, mask, sigmas, *, method: str = "repaint", generator=None,
            **options) -> torch.Tensor:
    """Fill in the pixels where ``mask`` is 0, keeping those where it is 1 (docs/design.md "Editing").

    ``method="replace"``: Song et al. (2021, App. I.2): one run of ``sampler`` (default ``"ddpm"``,
    any name of ``difflab.SAMPLERS`` but ``rk45``) whose every denoiser call sees the known pixels
    re-noised to its sigma with fresh noise (:func:`replaced_denoiser`).

    ``method="repaint"``: Lugmayr et al. (2022, Algorithm 1): the same steps, one at a time, with
    ``resamplings`` (their U, default 10) passes over every stretch of ``jump_length`` (j, default 10)
    steps, going back up by forward noising (:func:`repaint_schedule`). ``resamplings=1`` is the
    replacement method. The sampler restarts at every step, so multistep samplers run as their
    one-step start (``"ddpm"``, the paper's, is the default).

    Other ``options`` go to the sampler (e.g. ``eta`` for ``"ddim"``, ``cond`` for the denoiser).
    Returns ``mask * x_known + (1 - mask) * x`` with ``x`` the sampler's output.
    """
    if method not in _METHODS:
        raise ValueError(f"unknown inpainting method {method!r}; choose from {', '.join(_METHODS)}")
    keep = check_mask(mask, x_known)
    x = _METHODS[method](denoiser, x_known, keep, sigmas, generator=generator, **options)
    return torch.where(keep, x_known, x)

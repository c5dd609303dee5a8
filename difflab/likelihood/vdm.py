"""The continuous-time variational bound of Variational Diffusion Models (Kingma et al. 2021).

VDM's variance-preserving diffusion is z_t = alpha_t x + sigma_t eps with alpha_t^2 =
sigmoid(-gamma(t)), sigma_t^2 = sigmoid(gamma(t)) (eq. 3-4), gamma = -log SNR increasing on the
schedule's time. In difflab's convention (docs/design.md) the denoiser sees x_ve = z_t / alpha_t =
x + e^{gamma/2} eps. For 8-bit data x the bound is (eq. 11, with T -> infinity, sec. 5)

    -log p(x) <= L_prior + L_recon + L_inf,
    L_prior = KL(q(z_1 | x) || N(0, I))
            = 1/2 sum_i (alpha_1^2 (x_i^2 - 1) + softplus(-gamma_1)),
    L_recon = E_{q(z_0 | x)} [-log p(x | z_0)],  p(x_i | z_0) = softmax over the 256 levels v of
              -(z_0,i / alpha_0 - v)^2 / (2 e^{gamma_0})   (p(x_i | z_0,i) proportional to q(z_0,i | x_i), sec. 3.3),
    L_inf   = 1/2 E_{eps, t ~ U(0, 1)} [gamma'(t) ||eps - eps_hat(z_t; t)||^2]                      (eq. 17)
            = 1/2 E_{eps, t} [gamma'(t) e^{-gamma(t)} ||x - D(x_ve, e^{gamma/2})||^2].

L_inf depends on the schedule through its endpoints gamma_0, gamma_1 only (sec. 5.1): it is
1/2 int_{gamma_0}^{gamma_1} E ||eps - eps_hat||^2 dgamma, whatever the shape in between. So the bound
applies to any denoiser and any schedule with finite endpoints (its SNR defines the VP process); a
VDM model's own schedule (:class:`~difflab.schedules.LogSNRTable`) draws t so that the estimate has
low variance.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..denoisers import append_dims
from ..schedules import Schedule
from .ode import BIN_WIDTH, check_8bit_range

__all__ = ["quantize_8bit", "vdm_prior_kl", "vdm_decoder_nll", "vdm_gamma", "vdm_diffusion_loss", "vdm_elbo_terms",
           "vdm_elbo_bpd", "low_discrepancy_times"]

LEVELS = 256


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """x in [-1, 1] rounded to the nearest of the 256 levels k / 127.5 - 1 (the 8-bit value whose
    bin of width 2/255 holds x); a ValueError for data outside [-1, 1]."""
    check_8bit_range(x, "the 8-bit likelihood")
    return ((x + 1) / BIN_WIDTH).round() * BIN_WIDTH - 1


def vdm_prior_kl(x0: torch.Tensor, gamma_1) -> torch.Tensor:
    """KL(q(z_1 | x) || N(0, I)) in nats per sample (B,): 1/2 sum_i (sigma_1^2 + alpha_1^2 x_i^2 - 1
    - log sigma_1^2) = 1/2 sum_i (alpha_1^2 (x_i^2 - 1) + softplus(-gamma_1)) (VDM eq. 11, the prior
    loss). ``gamma_1``: a number or (B,) tensor, differentiable."""
    x0 = x0.double()
    g = append_dims(torch.as_tensor(gamma_1, dtype=torch.float64, device=x0.device).reshape(-1), x0.ndim)
    return 0.5 * (torch.sigmoid(-g) * (x0.square() - 1) + F.softplus(-g)).flatten(1).sum(1)


def vdm_decoder_nll(x0: torch.Tensor, z0_ve: torch.Tensor, gamma_0) -> torch.Tensor:
    """-log p(x | z_0) in nats per sample (B,) for x0 on the 8-bit levels (:func:`quantize_8bit`):
    each value's probability is the softmax over the 256 levels v of -(z0_ve - v)^2 / (2 e^{gamma_0}),
    where z0_ve = z_0 / alpha_0 = x + e^{gamma_0/2} eps (VDM sec. 3.3, p(x_i | z_0,i) proportional to
    q(z_0,i | x_i), normalised over the data's values). ``gamma_0``: number or (B,), differentiable."""
    x0, z = x0.double(), z0_ve.double()
    g = append_dims(torch.as_tensor(gamma_0, dtype=torch.float64, device=x0.device).reshape(-1), x0.ndim + 1)
    levels = torch.arange(LEVELS, dtype=torch.float64, device=x0.device) * BIN_WIDTH - 1
    logits = -0.5 * (z[..., None] - levels).square() * (-g).exp()
    index = ((x0 + 1) / BIN_WIDTH).round().long().clamp(0, LEVELS - 1)
    log_p = logits.gather(-1, index[..., None])[..., 0] - logits.logsumexp(-1)
    return -log_p.flatten(1).sum(1)


def vdm_gamma(schedule: Schedule, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gamma(t), dgamma/dt) of a schedule, gamma = -log SNR = 2 log(ve_sigma), float64; the slope
    by automatic differentiation of the schedule's own formula."""
    with torch.enable_grad():
        t = t.detach().to(torch.float64).requires_grad_(True)
        gamma = -schedule.log_snr(t)
        (slope,) = torch.autograd.grad(gamma.sum(), t)
    return gamma.detach(), slope


def low_discrepancy_times(n: int, generator=None, device=None) -> torch.Tensor:
    """n times t_i = (u + i / n) mod 1 with one u ~ U(0, 1): each marginally uniform, together one
    per interval of length 1/n (the low-discrepancy sampler of VDM's section "Variance minimization")."""
    u = torch.rand((), generator=generator, device=device, dtype=torch.float64)
    return torch.remainder(u + torch.arange(n, device=device, dtype=torch.float64) / n, 1.0)


def vdm_diffusion_loss(denoiser, x0: torch.Tensor, schedule: Schedule, t: torch.Tensor, noise: torch.Tensor,
                       cond: dict | None = None) -> torch.Tensor:
    """One draw of L_inf in nats per sample (B,) at the schedule's times t in [t_min, t_max] (B,):
    1/2 (t_max - t_min) gamma'(t) e^{-gamma} ||x0 - D(x0 + e^{gamma/2} n, e^{gamma/2})||^2, i.e.
    VDM eq. 17 for t ~ U(t_min, t_max), with the denoiser's x0-space error in place of the eps one."""
    span = schedule.t_max - schedule.t_min
    gamma, slope = vdm_gamma(schedule, t)
    sigma = (0.5 * gamma).exp()
    s = append_dims(sigma, x0.ndim).to(x0.dtype)
    x0_hat = denoiser(x0 + s * noise, sigma.to(x0.dtype), **(cond or {}))
    err = (x0.double() - x0_hat.double()).flatten(1).square().sum(1)
    return 0.5 * span * slope * (-gamma).exp() * err


def vdm_elbo_terms(denoiser, x0: torch.Tensor, schedule: Schedule, *, samples: int = 16, generator=None,
                   cond: dict | None = None, progress: bool = False) -> dict:
    """The continuous-time bound of VDM in nats for 8-bit data x0 in [-1, 1] (rounded to the levels
    by :func:`quantize_8bit`): see the module docstring. ``samples`` draws of t per image, stratified
    (t_j = t_min + (t_max - t_min) ((u + j / samples) mod 1), one u per image) with fresh noise each,
    and as many draws of z_0 for the reconstruction term. Denoiser calls: ``samples``.

    Returns a dict of (B,) tensors: ``prior``, ``decoder`` (L_recon), ``diffusion`` (L_inf, the
    mean of the draws), ``diffusion_stderr`` (its standard error over the draws, which are
    negatively correlated by the stratification, so an upper estimate), ``total``.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    gamma_0, gamma_1 = 2 * math.log(schedule.sigma_min), 2 * math.log(schedule.sigma_max)
    if not math.isfinite(gamma_0) or not math.isfinite(gamma_1):
        raise ValueError(f"the VDM bound needs a schedule with 0 < sigma_min < sigma_max < inf, got "
                         f"{schedule.sigma_min:g} and {schedule.sigma_max:g}")
    x0 = quantize_8bit(x0)
    B, device = x0.shape[0], x0.device
    u = torch.rand(B, generator=generator, device=device, dtype=torch.float64)
    draws, recon = [], torch.zeros(B, dtype=torch.float64, device=device)
    rounds = range(samples)
    if progress:
        from tqdm.auto import tqdm

        rounds = tqdm(rounds, desc="vdm elbo", leave=False)
    with torch.no_grad():
        for j in rounds:
            t = schedule.t_min + (schedule.t_max - schedule.t_min) * torch.remainder(u + j / samples, 1.0)
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=device)
            draws.append(vdm_diffusion_loss(denoiser, x0, schedule, t, noise, cond))
            eps_0 = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=device)
            recon += vdm_decoder_nll(x0, x0 + schedule.sigma_min * eps_0, gamma_0) / samples
    draws = torch.stack(draws, 1)
    diffusion = draws.mean(1)
    stderr = draws.std(1) / math.sqrt(samples) if samples > 1 else torch.full_like(diffusion, math.nan)
    prior = vdm_prior_kl(x0, gamma_1)
    return {"prior": prior, "decoder": recon, "diffusion": diffusion, "diffusion_stderr": stderr,
            "total": prior + recon + diffusion}


def vdm_elbo_bpd(denoiser, x0: torch.Tensor, schedule: Schedule, **options) -> torch.Tensor:
    """The bound of :func:`vdm_elbo_terms` in bits/dim (B,): total / (D ln 2). It is a probability
    of the 8-bit data already, so no dequantization offset enters."""
    return vdm_elbo_terms(denoiser, x0, schedule, **options)["total"] / (x0[0].numel() * math.log(2))

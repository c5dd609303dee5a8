"""Analytic-DPM: the optimal isotropic reverse variance from the model's noise prediction
(Bao et al. 2022, Theorem 1 and eq. 7-8, with the bounds of Theorem 2).

For the DDPM reverse step n -> s (s the previous step of the chain, lambda^2 = beta~ its posterior
variance, alpha_n = alpha_bar_n / alpha_bar_s, beta_bar = 1 - alpha_bar) the optimal variance is

    sigma*^2 = lambda^2 + (sqrt(beta_bar_n / alpha_n) - sqrt(beta_bar_s - lambda^2))^2 (1 - Gamma_n),
    Gamma_n  = E_{q(x_n)} ||eps_hat(x_n, n)||^2 / d,

Bao et al.'s score form (1 - beta_bar_n E||grad log q_n||^2 / d) with eps_hat = -sqrt(beta_bar_n) score.
Equivalently sigma*^2 = lambda^2 + c_0^2 Cov, with c_0 the x0 coefficient of the posterior mean and
Cov = (beta_bar_n / alpha_bar_n)(1 - Gamma_n) = E tr Cov(x0 | x_n) / d, which lies in [0, beta_bar_n /
alpha_bar_n] and, for data in [a, b]^d, in [0, ((b - a) / 2)^2] (Theorem 2): the estimate is clipped there.
"""
from __future__ import annotations

import torch

from .elbo import _chain

__all__ = ["analytic_dpm_gamma", "analytic_dpm_variance"]


def _batches(data, batch_size: int):
    """Tensors of data from a (N, ...) tensor or an iterable of tensors or (x, ...) tuples."""
    if torch.is_tensor(data):
        yield from data.split(batch_size)
        return
    for batch in data:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def analytic_dpm_gamma(denoiser, data, schedule, *, timesteps=None, batch_size: int = 256,
                       generator=None, progress: bool = False) -> torch.Tensor:
    """Monte Carlo Gamma_n = (1/M) sum_m ||eps_hat(x_{n,m}, n)||^2 / d over data x0_m and one draw
    x_n ~ q(x_n | x0_m) each (Bao et al. 2022, eq. 8), for every step of the chain (K,), float64.
    eps_hat = (x - D(x, sigma_n)) / sigma_n in difflab's convention. ``data``: a (N, ...) tensor or an
    iterable of batches (a DataLoader; tuples give their first element). Denoiser calls: K per batch."""
    chain = _chain(schedule, timesteps)
    total = torch.zeros(len(chain.t), dtype=torch.float64)
    count = 0
    batches = _batches(data, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="analytic-dpm", leave=False)
    with torch.no_grad():
        for x0 in batches:
            count += x0.shape[0]
            for k, t in enumerate(chain.t.tolist()):
                sigma = float(schedule.sigmas[t])
                x = x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
                eps_hat = (x - denoiser(x, x.new_full((x0.shape[0],), sigma))) / sigma
                total[k] += float(eps_hat.double().flatten(1).square().mean(1).sum())
    if count == 0:
        raise ValueError("analytic_dpm_gamma got no data")
    return total / count


def analytic_dpm_variance(gamma, schedule, *, timesteps=None, data_range: tuple[float, float] | None = None):
    """Per-step reverse variances (K,) of Analytic-DPM for the chain ``timesteps`` (Bao et al. 2022,
    Theorem 1; see the module docstring), from ``gamma`` of :func:`analytic_dpm_gamma` on the same
    chain. Clipped to [lambda^2, lambda^2 + (sqrt(beta_bar_n / alpha_n) - sqrt(beta_bar_s - lambda^2))^2]
    and, with ``data_range=(a, b)``, to lambda^2 + c_0^2 ((b - a) / 2)^2 (both Theorem 2; pass (-1, 1)
    for images). Step 0 (the decoder) keeps the fixed beta~ of training step 1, as in Bao et al.'s
    code. Usable as ``variance`` of :func:`elbo_terms` and :func:`ancestral_variance`."""
    chain = _chain(schedule, timesteps)
    gamma = torch.as_tensor(gamma, dtype=torch.float64)
    if gamma.shape != chain.t.shape:
        raise ValueError(f"gamma needs one value per chain step ({len(chain.t)}), got shape {tuple(gamma.shape)}")
    lam2 = chain.beta_tilde
    alpha_n = chain.a / chain.a_prev
    coef = ((1 - chain.a) / alpha_n).sqrt() - ((1 - chain.a_prev) - lam2).clamp_min(0).sqrt()
    excess = coef.square() * (1 - gamma).clamp(0, 1)
    if data_range is not None:
        a, b = data_range
        excess = torch.minimum(excess, chain.coef_x0.square() * ((b - a) / 2) ** 2)
    var = lam2 + excess
    var[0] = chain.decoder_var
    return var

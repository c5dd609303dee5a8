"""The variational bound of discrete-time diffusion models (Ho et al. 2020, eq. 5; Nichol &
Dhariwal 2021, eq. 4-7) and learned reverse variances (Nichol & Dhariwal 2021, sec. 3.1).

A reverse chain runs over training steps t_0 < t_1 < ... < t_{K-1} of a :class:`DiscreteVP`
(all T steps by default; a subsequence is a respaced model, Nichol & Dhariwal 2021, sec. 4). With
a_k = alpha_bar_{t_k}, a_{-1} = 1, step beta_k = 1 - a_k / a_{k-1} and beta~_k = beta_k (1 - a_{k-1}) / (1 - a_k),

    -log p(x0) <= L_prior + sum_k L_k,
    L_prior = KL(q(x_{t_{K-1}} | x0) || N(0, I)),
    L_k     = E_q KL(q(x_{t_{k-1}} | x_{t_k}, x0) || p(x_{t_{k-1}} | x_{t_k}))   (k >= 1),
    L_0     = -E_q log p(x0 | x_{t_0})    (the discretized Gaussian decoder, Ho et al. 2020, eq. 13),

each expectation estimated with one draw of x_{t_k}. The model's reverse step is
N(mu(x0_hat, x_t), sigma_k^2) with mu the posterior mean of q(x_{t_{k-1}} | x_t, x0) (Ho et al.
2020, eq. 7) at the denoiser's x0_hat. In difflab's convention the denoiser sees x = x_t / sqrt(a_k)
at sigma_k = sqrt((1 - a_k) / a_k) (docs/design.md); the step's variance is on the x_t scale, as in the papers.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.special import log_ndtr

from ..denoisers import append_dims
from ..schedules import DiscreteVP
from .ode import BIN_WIDTH, check_8bit_range

__all__ = ["normal_kl", "discretized_gaussian_log_likelihood", "fixed_variance",
           "interpolated_log_variance", "vlb_term_loss", "elbo_terms", "elbo_bpd", "ancestral_variance"]

_VARIANCES = ("fixed_small", "fixed_large")


class _Chain(NamedTuple):
    """Per-step quantities of a reverse chain over training steps ``t`` (K,), all float64."""
    t: torch.Tensor
    a: torch.Tensor            # alpha_bar at t_k
    a_prev: torch.Tensor       # alpha_bar at t_{k-1}; 1 for k = 0
    beta: torch.Tensor         # 1 - a / a_prev
    beta_tilde: torch.Tensor   # posterior variance; 0 for k = 0
    coef_x0: torch.Tensor      # posterior mean = coef_x0 x0 + coef_xt x_t (Ho et al. 2020, eq. 7)
    coef_xt: torch.Tensor
    decoder_var: float         # sigma_0^2 of the fixed variances: beta~ of training step 1


def _chain(schedule, timesteps=None) -> _Chain:
    if not isinstance(schedule, DiscreteVP):
        raise ValueError(f"the variational bound needs a DiscreteVP schedule, got {type(schedule).__name__}")
    T = schedule.T
    t = torch.arange(T) if timesteps is None else torch.as_tensor(timesteps).long().reshape(-1)
    if len(t) < 1 or int(t.min()) < 0 or int(t.max()) >= T or bool((t.diff() <= 0).any()):
        raise ValueError(f"timesteps must increase strictly within [0, {T - 1}], got {t.tolist()}")
    ab = schedule.alphas_cumprod
    a = ab[t]
    a_prev = torch.cat([a.new_ones(1), a[:-1]])
    beta = 1 - a / a_prev
    beta_tilde = beta * (1 - a_prev) / (1 - a)
    # Ho et al. (2020) and Nichol & Dhariwal (2021) clip sigma_0^2 to beta~ of step 1 (their code's
    # posterior_log_variance_clipped); Bao et al. (2022) do the same for every respacing.
    decoder_var = float(schedule.betas[1] * (1 - ab[0]) / (1 - ab[1]))
    return _Chain(t, a, a_prev, beta, beta_tilde, a_prev.sqrt() * beta / (1 - a),
                  (1 - beta).sqrt() * (1 - a_prev) / (1 - a), decoder_var)


def _position(chain: _Chain, t) -> torch.Tensor:
    """Position k in the chain of each training step in t (B,)."""
    t = torch.as_tensor(t).long().reshape(-1).cpu()
    k = torch.searchsorted(chain.t, t).clamp(max=len(chain.t) - 1)
    if bool((chain.t[k] != t).any()):
        raise ValueError(f"timesteps {sorted(set(t.tolist()) - set(chain.t.tolist()))} are not in the chain")
    return k


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise:
    (logvar2 - logvar1 + (e^logvar1 + (mean1 - mean2)^2) e^-logvar2 - 1) / 2."""
    logvar1, logvar2 = torch.as_tensor(logvar1).to(mean1), torch.as_tensor(logvar2).to(mean1)
    return 0.5 * (logvar2 - logvar1 - 1 + (logvar1.exp() + (mean1 - mean2).square()) * (-logvar2).exp())


def _log_normal_mass(lo, hi):
    """log(Phi(hi) - Phi(lo)) for lo < hi, without cancellation: mirrored into the left tail when lo > 0."""
    flip = lo > 0
    lo, hi = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_lo, log_hi = log_ndtr(lo), log_ndtr(hi)
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi))


def discretized_gaussian_log_likelihood(x0, mean, log_scale):
    """log of the mass N(mean, e^{2 log_scale}) puts on the 8-bit bin of x0 (Ho et al. 2020, eq. 13):
    [x0 - 1/255, x0 + 1/255], open to -inf at x0 = -1 and to +inf at x0 = 1. Elementwise; x0 in [-1, 1]."""
    check_8bit_range(x0, "the discretized decoder")
    inv_scale = (-torch.as_tensor(log_scale).to(mean)).exp()
    hi = torch.where(x0 > 1 - 1e-3, math.inf, (x0 - mean + BIN_WIDTH / 2) * inv_scale)
    lo = torch.where(x0 < -1 + 1e-3, -math.inf, (x0 - mean - BIN_WIDTH / 2) * inv_scale)
    return _log_normal_mass(lo, hi)


def _step_nll(x0, x, x0_hat, log_var, chain: _Chain, k):
    """Elementwise L_k in nats for samples at chain positions k (B,): the KL to the posterior for
    k >= 1, the decoder's -log-likelihood for k = 0. x is on difflab's scale (x0 + sigma n)."""
    x0, x, x0_hat, k = x0.double(), x.double(), x0_hat.double(), k.cpu()
    log_var = torch.as_tensor(log_var).to(x0)

    def per(v):
        return append_dims(v[k].to(x0), x0.ndim)

    x_t = per(chain.a).sqrt() * x
    mean_q = per(chain.coef_x0) * x0 + per(chain.coef_xt) * x_t
    mean_p = per(chain.coef_x0) * x0_hat + per(chain.coef_xt) * x_t
    first = append_dims(k == 0, x0.ndim).to(x0.device)
    # beta~ = 0 at k = 0: a finite stand-in keeps the unused branch (and its gradient) finite.
    log_beta_tilde = append_dims(torch.where(k == 0, chain.decoder_var, chain.beta_tilde[k]).to(x0), x0.ndim).log()
    kl = normal_kl(mean_q, log_beta_tilde, mean_p, log_var)
    decoder = -discretized_gaussian_log_likelihood(x0, x0_hat, 0.5 * log_var)
    return torch.where(first, decoder, kl)


def fixed_variance(schedule: DiscreteVP, kind: str = "fixed_small", timesteps=None) -> torch.Tensor:
    """Per-step reverse variances (K,) of DDPM (Ho et al. 2020, sec. 3.2): ``fixed_small`` beta~_k,
    ``fixed_large`` beta_k; step 0 (the decoder) uses beta~ of training step 1 for both."""
    if kind not in _VARIANCES:
        raise ValueError(f"variance must be one of {_VARIANCES}, a (K,) tensor or a callable; got {kind!r}")
    chain = _chain(schedule, timesteps)
    var = (chain.beta_tilde if kind == "fixed_small" else chain.beta).clone()
    var[0] = chain.decoder_var
    return var


def interpolated_log_variance(v, t, schedule: DiscreteVP, *, timesteps=None):
    """Learned log-variance (Nichol & Dhariwal 2021, eq. 15): frac log beta_t + (1 - frac) log beta~_t
    with frac = (v + 1) / 2 from the network's extra output v in [-1, 1]; t (B,) training steps of
    the chain ``timesteps`` (all steps by default); beta~ at step 0 clipped as in :func:`fixed_variance`."""
    chain = _chain(schedule, timesteps)
    k = _position(chain, t)
    max_log = chain.beta.log()[k]
    min_log = torch.where(k == 0, chain.decoder_var, chain.beta_tilde[k]).log()
    frac = (v + 1) / 2
    return frac * append_dims(max_log.to(v), v.ndim) + (1 - frac) * append_dims(min_log.to(v), v.ndim)


def vlb_term_loss(x0, x, t, x0_hat, log_variance, schedule: DiscreteVP):
    """Per-sample L_vlb term L_t in bits/dim (B,) for the hybrid loss L_simple + lambda L_vlb
    (Nichol & Dhariwal 2021, sec. 3.1, eq. 16): the KL of eq. 6 for t >= 1, the decoder's -log p(x0 | x_1)
    for t = 0, averaged over dimensions and divided by ln 2 (the scale of their code; T times the mean
    over uniform t is the bound in bits/dim). x = x0 + sigma_t n is difflab's noisy input at training
    step t (B,), x0_hat the denoiser's output and ``log_variance`` the model's (e.g.
    :func:`interpolated_log_variance`). The mean is detached: L_vlb trains only the variance."""
    chain = _chain(schedule)
    nll = _step_nll(x0, x, x0_hat.detach(), log_variance, chain, _position(chain, t))
    return (nll.flatten(1).mean(1) / math.log(2)).to(log_variance.dtype)


def _variance_fn(variance, schedule, chain: _Chain, timesteps):
    """(x, t, k) -> log-variance of chain step k, from a kind, a (K,) tensor or a callable."""
    if callable(variance):
        return lambda x, t, k: variance(x, t)
    table = fixed_variance(schedule, variance, timesteps) if isinstance(variance, str) else torch.as_tensor(variance)
    if table.shape != chain.t.shape:
        raise ValueError(f"a variance tensor needs one value per chain step ({len(chain.t)}), "
                         f"got shape {tuple(table.shape)}")
    log_table = table.double().log()
    return lambda x, t, k: log_table[k]


def elbo_terms(denoiser, x0, schedule: DiscreteVP, *, variance="fixed_small", timesteps=None,
               generator=None, clip_denoised: bool = False, cond: dict | None = None,
               progress: bool = False) -> dict:
    """The terms of the variational bound in nats for 8-bit data x0 in [-1, 1] (Ho et al. 2020, eq. 5;
    Nichol & Dhariwal 2021, eq. 4-7), one draw of x_t per term (see the module docstring).

    ``variance``: ``"fixed_small"`` (beta~), ``"fixed_large"`` (beta), a (K,) tensor of per-step
    variances (e.g. :func:`~difflab.likelihood.analytic_dpm_variance`), or a callable ``(x, t) ->
    log-variance`` broadcastable to x, given difflab's noisy x = x0 + sigma_t n and the training steps
    t (B,) (e.g. a learned variance through :func:`interpolated_log_variance`). ``timesteps``: the
    chain's training steps (default all T). ``clip_denoised`` clamps x0_hat to [-1, 1] (as the
    papers' evaluation code does). Denoiser calls: K.

    Returns a dict: ``prior`` (B,) L_prior, ``terms`` (B, K) with terms[:, k] = L_k (the decoder
    L_0 at k = 0), ``decoder`` (B,), ``total`` (B,) = prior + terms.sum(1), ``timesteps`` (K,).
    """
    check_8bit_range(x0, "the discretized decoder")
    chain = _chain(schedule, timesteps)
    log_var = _variance_fn(variance, schedule, chain, timesteps)
    B, K = x0.shape[0], len(chain.t)
    terms = torch.zeros(B, K, dtype=torch.float64, device=x0.device)
    positions = range(K)
    if progress:
        from tqdm.auto import tqdm

        positions = tqdm(positions, desc="elbo", leave=False)
    with torch.no_grad():
        for k in positions:
            t, sigma = int(chain.t[k]), float(schedule.sigmas[chain.t[k]])
            x = x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
            x0_hat = denoiser(x, x.new_full((B,), sigma), **(cond or {}))
            if clip_denoised:
                x0_hat = x0_hat.clamp(-1, 1)
            k_b = torch.full((B,), k)
            lv = log_var(x, torch.full((B,), t, device=x0.device), k)
            terms[:, k] = _step_nll(x0, x, x0_hat, lv, chain, k_b).flatten(1).sum(1)
    a_T = float(chain.a[-1])
    prior = normal_kl(math.sqrt(a_T) * x0.double(), math.log(1 - a_T), 0.0, 0.0).flatten(1).sum(1)
    return {"prior": prior, "terms": terms, "decoder": terms[:, 0], "total": prior + terms.sum(1),
            "timesteps": chain.t}


def elbo_bpd(denoiser, x0, schedule: DiscreteVP, **options) -> torch.Tensor:
    """The bound of :func:`elbo_terms` in bits/dim (B,): total / (D ln 2). The decoder already gives
    the probability of the 8-bit bins, so no dequantization offset enters (Ho et al. 2020, sec. 4.2)."""
    return elbo_terms(denoiser, x0, schedule, **options)["total"] / (x0[0].numel() * math.log(2))


def ancestral_variance(schedule: DiscreteVP, variance="fixed_small", *, timesteps=None):
    """The reverse variances of a chain as the noise of difflab's ancestral (``ddpm``) step:
    returns ``fn(x, sigma, sigma_next)`` giving the variance of the noise added in the step from
    sigma = sigma_{t_k} to sigma_next = sigma_{t_{k-1}} on difflab's scale, sigma_k^2 / alpha_bar_{t_{k-1}}
    (x = x_t / sqrt(alpha_bar)), and 0 for the last step to sigma_next = 0 (Ho et al. 2020,
    Algorithm 2). ``variance`` as in :func:`elbo_terms`. The step's mean is unchanged:
    x' = x0_hat + (sigma_next / sigma)^2 (x - x0_hat) is the posterior mean in either convention."""
    chain = _chain(schedule, timesteps)
    log_var = _variance_fn(variance, schedule, chain, timesteps)
    log_sigmas = schedule.log_sigmas[chain.t]

    def fn(x, sigma: float, sigma_next: float):
        if sigma_next == 0:
            return torch.zeros((), dtype=x.dtype, device=x.device)
        k = int((log_sigmas - math.log(sigma)).abs().argmin())
        if abs(float(log_sigmas[k]) - math.log(sigma)) > 1e-3 or k == 0 or \
                abs(float(log_sigmas[k - 1]) - math.log(sigma_next)) > 1e-3:
            raise ValueError(f"the step {sigma:.6g} -> {sigma_next:.6g} is not a step of the chain")
        t = torch.full((x.shape[0],), int(chain.t[k]), device=x.device)
        var = log_var(x, t, k).exp() / chain.a_prev[k]
        return var.to(x)

    return fn

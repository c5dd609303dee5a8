"""Learned reverse variances (improved DDPM, Nichol & Dhariwal 2021, sec. 3.1) for trained models.

A ``learn_sigma`` UNet outputs ``[eps, v]`` (twice the data channels); :class:`NetworkDenoiser`
uses the first half, and this module reads the second:

- :func:`hybrid_vlb_term` is the L_vlb part of the hybrid loss L_simple + lambda L_vlb (eq. 16),
  used by :func:`difflab.training.losses.denoising_loss` when ``TrainConfig.vlb_weight`` (lambda) > 0;
- :class:`LearnedVariance` / :func:`learned_log_variance_fn` give the learned log-variance as the
  callable ``(x, t) -> log sigma_t^2`` that ``difflab.likelihood.elbo_terms(variance=...)`` and
  ``ancestral_variance`` take, and :meth:`LearnedVariance.sampler_variance` the
  ``fn(x, sigma, sigma_next)`` of ``samplers.ddpm(variance=...)``.

Scale of the hybrid term: ``vlb_term_loss`` is L_t in bits/dim averaged over dimensions, and
L_vlb = T E_t[L_t], so lambda L_vlb is estimated per sample by ``lambda * T * L_t``; with
lambda = 1e-3 and T = 1000 this is L_t itself, the ``vb * num_timesteps / 1000`` of Nichol &
Dhariwal's code. The mean is detached inside ``vlb_term_loss``: L_vlb trains only v.
"""
from __future__ import annotations

import torch

from ..denoisers import append_dims
from ..schedules import DiscreteVP
from .elbo import ancestral_variance, interpolated_log_variance, vlb_term_loss

__all__ = ["timesteps_of_sigma", "hybrid_vlb_term", "LearnedVariance", "learned_log_variance_fn",
           "learns_sigma"]


def learns_sigma(model) -> bool:
    """Whether a TrainedModel / NetworkDenoiser / network outputs a learned variance."""
    net = getattr(getattr(model, "denoiser", model), "net", model)
    net = getattr(net, "module", net)  # DDP
    return bool(getattr(getattr(net, "config", None), "learn_sigma", False))


def timesteps_of_sigma(schedule: DiscreteVP, sigma: torch.Tensor) -> torch.Tensor:
    """The integer training steps t (B,) whose sigma_t is nearest to sigma (in log sigma)."""
    log_s = schedule.tables(sigma.device)[1]
    return (log_s[None, :] - sigma.to(torch.float64).log().reshape(-1, 1)).abs().argmin(1)


def hybrid_vlb_term(denoiser, x0, x, sigma, eps_out, v):
    """Per-sample T * L_t (B,) in bits/dim at the training step of sigma, for the hybrid loss:
    x = x0 + sigma n, ``eps_out`` the network's eps (the mean, detached inside) and ``v`` its
    variance output. Needs eps prediction on a :class:`DiscreteVP` schedule."""
    schedule = denoiser.schedule
    if not isinstance(schedule, DiscreteVP) or denoiser.prediction != "eps":
        raise ValueError("the hybrid loss needs eps prediction on a DiscreteVP schedule")
    t = timesteps_of_sigma(schedule, sigma)
    x0_hat = x - append_dims(sigma, x.ndim).to(x.dtype) * eps_out
    log_var = interpolated_log_variance(v, t.cpu(), schedule)
    return schedule.T * vlb_term_loss(x0, x, t.cpu(), x0_hat, log_var, schedule).to(eps_out.dtype)


class LearnedVariance:
    """The learned variance of a ``learn_sigma`` model (TrainedModel or NetworkDenoiser).

    ``self.denoiser`` is a denoiser that also remembers the network's v from its last call; the
    log-variance callable ``self(x, t)`` reuses that v when the call was at the same noise level and
    batch size (so ELBO and sampling cost one network call per step: the ``ddpm`` sampler asks for
    the variance after its denoiser call, passing the updated x), and otherwise runs the network on x.
    ``timesteps``: the chain (respaced steps, all T by default): the interpolation uses the chain's
    beta and beta~ (Nichol & Dhariwal 2021, sec. 4).
    """

    def __init__(self, model, timesteps=None):
        den = getattr(model, "denoiser", model)
        if not learns_sigma(den):
            raise ValueError("the model has no learned variance (its network was built without learn_sigma)")
        if not isinstance(den.schedule, DiscreteVP) or den.prediction != "eps":
            raise ValueError("learned variances need an eps-prediction model on a DiscreteVP schedule")
        self.base, self.schedule = den, den.schedule
        self.timesteps = None if timesteps is None else torch.as_tensor(timesteps).long()
        self._cache = None  # (sigma (B,), v)

    def _run(self, x, sigma, **cond):
        den = self.base
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(x.shape[0])
        x_in, c_noise, alpha = den.network_inputs(x, sigma)
        out = den.net(x_in, c_noise.to(x.dtype), **cond).to(x.dtype)
        c = x.shape[1]
        eps, v = out[:, :c], out[:, c:]
        self._cache = (sigma.detach().to(torch.float64), v.detach())
        return x - append_dims(sigma, x.ndim).to(x.dtype) * eps, v

    def denoiser(self, x, sigma, **cond):
        """x0_hat = x - sigma eps, remembering v."""
        return self._run(x, sigma, **cond)[0]

    def v(self, x, t) -> torch.Tensor:
        sigma = self.schedule.sigmas[torch.as_tensor(t).cpu().long()].to(x.device)
        if self._cache is not None:
            s, v = self._cache
            if s.shape == sigma.shape and torch.allclose(s, sigma.double(), rtol=1e-4):
                return v
        with torch.no_grad():
            return self._run(x, sigma)[1]

    def __call__(self, x, t) -> torch.Tensor:
        """log sigma_t^2 (B, ...) on the x_t scale for difflab's x = x0 + sigma_t n at steps t (B,)."""
        return interpolated_log_variance(self.v(x, t), torch.as_tensor(t).cpu(), self.schedule,
                                         timesteps=self.timesteps)

    def sampler_variance(self):
        """``fn(x, sigma, sigma_next)`` for ``samplers.ddpm(self.denoiser, ..., variance=fn)``."""
        return ancestral_variance(self.schedule, self, timesteps=self.timesteps)


def learned_log_variance_fn(model, timesteps=None) -> LearnedVariance:
    """The callable ``(x, t) -> log-variance`` of a learn_sigma model, for
    ``elbo_terms(variance=...)`` and ``ancestral_variance``; see :class:`LearnedVariance`."""
    return LearnedVariance(model, timesteps)

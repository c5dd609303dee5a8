"""Parametrizations and preconditioning: wrap any network into a Denoiser ``D(x, sigma) -> x0_hat``.

A network sees the *schedule's* input ``x_t = alpha x`` (VP) or ``x`` (VE/EDM) and a time input
``c_noise(sigma)``; it predicts one of

- ``eps``:   the noise n (Ho et al. 2020, eq. 11),           x0 = x - sigma eps
- ``x0``:    the clean data,                                  x0 = output
- ``v``:     v = alpha n - std x0 (Salimans & Ho 2022, sec. 4), x0 = (alpha x_t - std v)/(alpha^2 + std^2)
- ``score``: grad log p(x_t) = -n / std (Song et al. 2021),   x0 = x + sigma std * score
- ``flow``:  the velocity dx_t/dt = n - x0 of the linear path x_t = (1 - t) x0 + t n (flow matching,
             Lipman et al. 2023, eq. 21-23; rectified flow, Liu et al. 2023), on any schedule
             x0 = (x_t - std u)/(alpha + std) = (x - sigma u)/(1 + sigma)
- ``edm``:   EDM preconditioning (Karras et al. 2022, Table 1, sec. 5):
             D = c_skip x + c_out F(c_in x, c_noise), c_skip = sd^2/(sigma^2 + sd^2),
             c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1/sqrt(sigma^2 + sd^2), c_noise = log(sigma)/4.
- ``consistency``: a consistency model f(x, sigma) (Song et al. 2023, App. C): EDM's c_in and c_noise,
             c_skip = sd^2/((sigma - s_min)^2 + sd^2), c_out = sd (sigma - s_min)/sqrt(sigma^2 + sd^2),
             so f(x, s_min) = x exactly (the boundary condition), s_min the schedule's sigma_min.

Everything here is in the VE convention of docs/design.md: ``x = x0 + sigma n``. At sigma = inf
(pure noise, t = 1 of a :class:`~difflab.schedules.Flow`) x is the unit noise n itself, the limit
of x / sigma, and D(n, inf) = lim D(sigma n, sigma): a flow network's x0 = n - u(n, t=1).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .schedules import EDM, Schedule

__all__ = ["PREDICTIONS", "NetworkDenoiser", "CountingDenoiser", "AutocastDenoiser", "x0_from_prediction",
           "prediction_from_x0", "append_dims"]

PREDICTIONS = ("eps", "x0", "v", "score", "flow", "edm", "consistency")


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a (B,) tensor to (B, 1, ..., 1) with ``ndim`` dimensions in all."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def x0_from_prediction(prediction: str, out, x, sigma, alpha):
    """x0 from a network output, with x the VE input (x0 + sigma n), and sigma, alpha broadcastable."""
    std = alpha * sigma
    if prediction == "eps":
        return x - sigma * out
    if prediction == "x0":
        return out
    if prediction == "v":
        return (alpha * (alpha * x) - std * out) / (alpha**2 + std**2)
    if prediction == "score":
        return x + sigma * std * out
    if prediction == "flow":
        return (x - sigma * out) / (1 + sigma)
    raise ValueError(f"unknown prediction {prediction!r}; choose from {PREDICTIONS[:5]}")


def prediction_from_x0(prediction: str, x0, x, sigma, alpha, eps=None):
    """Inverse of :func:`x0_from_prediction`: the target a network of that kind should output.
    ``eps``: the noise n when it is known (training), which is exact where (x - x0) / sigma loses
    precision (sigma near 0)."""
    std = alpha * sigma
    eps = (x - x0) / sigma if eps is None else eps
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - std * x0
    if prediction == "score":
        return -eps / std
    if prediction == "flow":
        return eps - x0
    raise ValueError(f"unknown prediction {prediction!r}; choose from {PREDICTIONS[:5]}")


def consistency_coefficients(sigma, sigma_data: float, sigma_min: float):
    """c_skip, c_out of a consistency model (Song et al. 2023, App. C, eq. 24): c_skip(s_min) = 1 and
    c_out(s_min) = 0, so f(x, s_min) = x whatever the network outputs."""
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = sigma_data * (sigma - sigma_min) / (sigma**2 + sigma_data**2).sqrt()
    return c_skip, c_out


def edm_coefficients(sigma, sigma_data: float):
    """c_skip, c_out, c_in of Karras et al. (2022), Table 1 ("Ours")."""
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt()


class NetworkDenoiser(nn.Module):
    """A Denoiser built from ``net(x_in, c_noise, **cond)`` trained with ``prediction`` under ``schedule``.

    For ``prediction="edm"`` (or ``"consistency"``) the network is the raw F of the EDM (consistency)
    preconditioning and the schedule defaults to :class:`EDM`.
    """

    def __init__(self, net: nn.Module, schedule: Schedule | None = None, prediction: str = "eps",
                 sigma_data: float = 0.5):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose from {PREDICTIONS}")
        self.net, self.prediction, self.sigma_data = net, prediction, sigma_data
        self.schedule = schedule if schedule is not None else EDM()
        # std(t_max): what the network sees per unit of noise at pure noise (1 for a flow)
        self.std_at_pure_noise = float(self.schedule.std(torch.tensor(self.schedule.t_max, dtype=torch.float64)))
        self.reaches_pure_noise = math.isinf(self.schedule.sigma_max)

    def network_inputs(self, x, sigma):
        """(x_in, c_noise, alpha): what the network sees for a VE input x at noise level sigma. Rows
        at sigma = inf hold the unit noise (pure noise; a schedule that reaches it, i.e. a flow)
        and see x_in = std(t_max) x."""
        sigma = sigma.to(torch.float64)
        inf = torch.isinf(sigma)
        # checked where it costs no device synchronisation (and outside compiled graphs)
        if not sigma.is_cuda and not torch.compiler.is_compiling() and bool(inf.any()):
            self._check_pure_noise()
        if self.prediction in ("edm", "consistency"):
            _, _, c_in = edm_coefficients(sigma, self.sigma_data)
            return x * append_dims(c_in, x.ndim).to(x.dtype), 0.25 * sigma.log(), None
        alpha = self.schedule.alpha_of_ve_sigma(sigma)
        c_noise = self.schedule.c_noise(sigma)
        scale = torch.where(inf, self.std_at_pure_noise, alpha)
        return x * append_dims(scale, x.ndim).to(x.dtype), c_noise, alpha

    def forward(self, x, sigma, **cond):
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(x.shape[0])
        x_in, c_noise, alpha = self.network_inputs(x, sigma)
        out = self.net(x_in, c_noise.to(x.dtype), **cond).to(x.dtype)
        if out.ndim == x.ndim and out.shape[1] == 2 * x.shape[1]:
            # A learn_sigma network: [prediction, variance]; the variance is read through
            # difflab.likelihood.learned.
            out = out[:, :x.shape[1]]
        s = append_dims(sigma, x.ndim).to(x.dtype)
        if self.prediction == "edm":
            c_skip, c_out, _ = edm_coefficients(s, self.sigma_data)
            return c_skip * x + c_out * out
        if self.prediction == "consistency":
            c_skip, c_out = consistency_coefficients(s, self.sigma_data, self.schedule.sigma_min)
            return c_skip * x + c_out * out
        inf = append_dims(torch.isinf(sigma), x.ndim)
        a = append_dims(alpha, x.ndim).to(x.dtype)
        # the finite formula on safe values where sigma = inf (so no NaN reaches a gradient), then
        # the limit there: x0 = (x_in - std u) / std for velocity, the output itself for x0
        x0 = x0_from_prediction(self.prediction, out, x, torch.where(inf, 1, s), torch.where(inf, 1, a))
        if not self.reaches_pure_noise:  # no sigma = inf on this schedule
            return x0
        std = self.std_at_pure_noise
        return torch.where(inf, out if self.prediction == "x0" else (x_in - std * out) / std, x0)

    def _check_pure_noise(self) -> None:
        """ValueError unless sigma = inf makes sense: a schedule that reaches pure noise (alpha = 0
        at t_max, a flow) and a prediction with a finite limit there (flow or x0)."""
        if not self.reaches_pure_noise or self.prediction not in ("flow", "x0"):
            raise ValueError(f"sigma = inf needs a model that reaches pure noise (a flow schedule with flow or "
                             f"x0 prediction); this one has {type(self.schedule).__name__} and {self.prediction!r}")


class CountingDenoiser:
    """Wraps a denoiser and counts its calls (``.calls``) and evaluated samples (``.evals``)."""

    def __init__(self, denoiser):
        self.denoiser, self.calls, self.evals = denoiser, 0, 0

    def __call__(self, x, sigma, **cond):
        self.calls += 1
        self.evals += x.shape[0]
        return self.denoiser(x, sigma, **cond)


class AutocastDenoiser:
    """A denoiser whose calls run under ``torch.autocast(x's device type, dtype)``: the network's
    matrix products and convolutions in ``dtype`` (bfloat16 or float16), while the sampler's state
    x and the returned x0_hat stay in x's own dtype (the ODE is integrated in float32)."""

    def __init__(self, denoiser, dtype: torch.dtype):
        self.denoiser, self.dtype = denoiser, dtype

    def __call__(self, x, sigma, **cond):
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.denoiser(x, sigma, **cond).to(x.dtype)

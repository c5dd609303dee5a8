"""Log-likelihood by the probability-flow ODE (Song et al. 2021, sec. 4.3 and App. D.2), with the
instantaneous change of variables of Chen et al. (2018, Theorem 1).

In s = log(sigma) the probability-flow ODE of x = x0 + sigma n is (Karras et al. 2022, eq. 4)

    dx/ds = f(x, s) = x - D(x, e^s),     d log p_s(x(s)) / ds = -div f = -(d - tr dD/dx).

Integrating the augmented state [x, delta] with d delta/ds = div f from s = log sigma_min to
log sigma_max gives, for the smoothed data density p(.; sigma_min),

    log p(x; sigma_min) = log p(x(s_max); sigma_max) + delta(s_max),

and the model replaces p(.; sigma_max) by its prior N(0, sigma_max^2 I). The trace is exact (one
backward pass per dimension, batched) or Hutchinson's estimate eps^T (dD/dx) eps with probes fixed
for the whole solve (Grathwohl et al. 2019, FFJORD, sec. 3.1).
"""
from __future__ import annotations

import math

import torch

from ..samplers.stepping import dopri5_step

__all__ = ["ode_nll", "bits_per_dim", "dequantize", "BIN_WIDTH"]

#: Width of one 8-bit level of data scaled to [-1, 1]: x = k / 127.5 - 1, k = 0..255.
BIN_WIDTH = 2 / 255
_NOISES = ("rademacher", "gaussian")
_BASIS_ELEMENTS = 1 << 22  # size of the one-hot basis handed to one batched backward pass


def _trace_exact(d_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """tr dD/dx per sample: the backward passes for all unit vectors e_i, batched by vmap."""
    B, dim = x.shape[0], x[0].numel()
    chunk = max(1, min(dim, _BASIS_ELEMENTS // (B * dim)))
    trace = torch.zeros(B, dtype=torch.float64, device=x.device)
    for start in range(0, dim, chunk):
        idx = torch.arange(start, min(start + chunk, dim), device=x.device)
        rows = torch.arange(len(idx), device=x.device)
        basis = torch.zeros(len(idx), B, dim, dtype=d_out.dtype, device=x.device)
        basis[rows, :, idx] = 1
        (vjp,) = torch.autograd.grad(d_out, x, basis.reshape(len(idx), *x.shape), retain_graph=True,
                                     is_grads_batched=True)
        trace += vjp.reshape(len(idx), B, dim)[rows, :, idx].sum(0).double()
    return trace


def _trace_hutchinson(d_out: torch.Tensor, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """eps^T (dD/dx) eps for each probe eps: (B, P), one vector-Jacobian product per probe."""
    (vjp,) = torch.autograd.grad(d_out, x, probes, is_grads_batched=True)
    return (vjp * probes).flatten(2).sum(2).T.double()


def _drift(denoiser, x, log_sigma, probes, cond):
    """f = x - D(x, sigma) and div f = d - tr dD/dx, (B, 1) exact or (B, P) per probe."""
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        d_out = denoiser(x_, log_sigma.exp().to(x.dtype), **cond)
        trace = _trace_exact(d_out, x_)[:, None] if probes is None else _trace_hutchinson(d_out, x_, probes)
    return (x - d_out).detach(), x[0].numel() - trace


def _error_norm(x, x_new, err_x, d, d_new, err_d, rtol, atol):
    """Per sample: the larger of the RMS scaled error of x (Hairer, Norsett & Wanner 1993,
    sec. II.4) and the max scaled error of delta, so the log-density meets the tolerance by itself."""
    scale_x = atol + rtol * torch.maximum(x.abs(), x_new.abs())
    norm_x = (err_x / scale_x).flatten(1).square().mean(1).sqrt().double()
    norm_d = (err_d.abs() / (atol + rtol * torch.maximum(d.abs(), d_new.abs()))).amax(1)
    return torch.maximum(norm_x, norm_d)


def _integrate(fn, x, delta, t0, t_end, rtol, atol, max_steps, progress):
    """Adaptive Dormand–Prince from t0 to t_end, each sample with its own step size (so a sample's
    result does not depend on the rest of its batch). Returns x, delta and per-sample counters."""
    B = x.shape[0]
    t = torch.full((B,), t0, dtype=torch.float64, device=x.device)
    h = torch.full_like(t, min(0.05 * (t_end - t0), 0.5))
    steps, rejected = torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    k = fn(x, t, torch.arange(B, device=x.device))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=round(t_end - t0, 3), desc="ode_nll", leave=False)
    while not bool(done.all()):
        i = (~done).nonzero().squeeze(1)
        if bool((steps[i.cpu()] + rejected[i.cpu()] >= max_steps).any()):
            raise RuntimeError(f"ode_nll did not reach sigma_max in {max_steps} steps (rtol={rtol}, atol={atol})")
        h_i = torch.minimum(h[i], t_end - t[i])
        (x_new, d_new), k_new, (err_x, err_d) = dopri5_step(lambda y, t_: fn(y[0], t_, i), (x[i], delta[i]),
                                                            (k[0][i], k[1][i]), t[i], h_i)
        err = _error_norm(x[i], x_new, err_x, delta[i], d_new, err_d, rtol, atol)
        ok = err <= 1
        j = i[ok]
        x[j], delta[j], k[0][j], k[1][j] = x_new[ok], d_new[ok], k_new[0][ok], k_new[1][ok]
        finished = ok & (h_i >= t_end - t[i])
        t[j] = t[j] + h_i[ok]
        t[i[finished]], done[i[finished]] = t_end, True
        steps[j.cpu()] += 1
        rejected[i[~ok].cpu()] += 1
        h[i] = h_i * (0.9 * (err + 1e-16) ** -0.2).clamp(0.2, 10.0)
        if bar is not None:
            bar.update(round(float(t.min()) - t0, 3) - bar.n)
    if bar is not None:
        bar.close()
    return x, delta, steps, rejected


def _draw_probes(x, probes, noise, generator):
    shape = (probes, *x.shape)
    if noise == "gaussian":
        return torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
    return torch.randint(0, 2, shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1


def _check_args(sigma_min, sigma_max, trace, probes, noise):
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    if trace == "exact" and probes != 1:
        raise ValueError(f"probes applies to trace='hutchinson' only; the exact trace got probes={probes}")
    if probes < 1:
        raise ValueError(f"probes must be at least 1, got {probes}")
    if noise not in _NOISES:
        raise ValueError(f"hutchinson_noise must be one of {_NOISES}, got {noise!r}")


def ode_nll(denoiser, x, *, sigma_min: float = 0.002, sigma_max: float = 80.0, trace: str = "exact",
            probes: int = 1, rtol: float = 1e-5, atol: float = 1e-5, generator=None,
            hutchinson_noise: str = "rademacher", return_stats: bool = False, progress: bool = False,
            cond: dict | None = None, max_steps: int = 10_000):
    """Negative log-likelihood in nats (B,) of each x under the probability-flow ODE from sigma_min
    to sigma_max with the prior N(0, sigma_max^2 I): the density of the model's data smoothed by
    N(0, sigma_min^2 I) (docs/design.md "Likelihood"; Song et al. 2021, App. D.2; Chen et al. 2018).

        -log p(x) = -log N(x(s_max); 0, sigma_max^2 I) - int_{s_min}^{s_max} (d - tr dD/dx) ds,

    with s = log sigma and [x, delta] integrated by adaptive Dormand–Prince, per sample.

    ``trace="exact"`` differentiates D once per dimension (for low dimension). ``"hutchinson"``
    averages ``probes`` estimates eps^T (dD/dx) eps, eps Rademacher or Gaussian
    (``hutchinson_noise``) and drawn once per solve from ``generator``; every probe carries its own
    delta along the same path, so ``return_stats=True`` also gives the estimator's standard error
    std(delta_p) / sqrt(P) (NaN for one probe, 0 for the exact trace). The denoiser must treat
    batch elements independently. ``cond``: keyword arguments for every denoiser call.

    Returns the NLL, or with ``return_stats`` the pair (nll, stats), stats a dict of ``stderr``,
    ``prior_logp`` and ``delta_logp`` (B,), ``x_end`` (the point reached at sigma_max), and
    per-sample ``steps`` and ``rejected``.
    """
    _check_args(sigma_min, sigma_max, trace, probes, hutchinson_noise)
    cond = cond or {}
    eps = _draw_probes(x, probes, hutchinson_noise, generator) if trace == "hutchinson" else None
    B = x.shape[0]

    def fn(x_, t_, rows):  # rows: which samples of the batch x_ holds (the solver drops finished ones)
        cond_rows = {k: v[rows] if torch.is_tensor(v) and v.ndim and v.shape[0] == B else v
                     for k, v in cond.items()}
        return _drift(denoiser, x_, t_, None if eps is None else eps[:, rows], cond_rows)

    delta0 = torch.zeros(B, 1 if eps is None else probes, dtype=torch.float64, device=x.device)
    x_end, delta, steps, rejected = _integrate(fn, x.detach().clone(), delta0, math.log(sigma_min),
                                               math.log(sigma_max), rtol, atol, max_steps, progress)
    dim = x[0].numel()
    prior = (-0.5 * x_end.flatten(1).double().square().sum(1) / sigma_max**2
             - 0.5 * dim * math.log(2 * math.pi * sigma_max**2))
    nll = -(prior + delta.mean(1))
    if not return_stats:
        return nll
    P = delta.shape[1]
    stderr = delta.std(1) / math.sqrt(P) if P > 1 else torch.full_like(nll, 0.0 if eps is None else math.nan)
    return nll, {"stderr": stderr, "prior_logp": prior, "delta_logp": delta.mean(1), "x_end": x_end,
                 "steps": steps, "rejected": rejected}


def bits_per_dim(nll_nats, num_dims: int, *, dequantized_8bit: bool = True):
    """Bits per dimension from an NLL in nats: nll / (D ln 2), plus log2(127.5) for a density of
    8-bit data in [-1, 1] uniformly dequantized over bins of width 2/255 (:func:`dequantize`).

    Why the offset: the probability of the 8-bit image k is the integral of the density over its
    bin, P(k) = int_bin p >= (2/255)^D exp(E_u log p(x_k + u)) by Jensen (Theis et al. 2016,
    sec. 3.1), so -log2 P(k) / D <= nll / (D ln 2) + log2(255/2). Data uniform over
    the 256 levels gives exactly 8 bits/dim. (Song et al. 2021's code bins [0, 256) and adds 7 =
    log2(128); the two differ by log2(128/127.5) = 0.0056 bits/dim.)
    """
    bpd = nll_nats / (num_dims * math.log(2))
    return bpd + math.log2(1 / BIN_WIDTH) if dequantized_8bit else bpd


def check_8bit_range(x, what: str) -> None:
    """Raise a one-sentence ValueError unless x lies in [-1, 1], the range of scaled 8-bit data."""
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 or hi > 1:
        raise ValueError(f"{what} needs 8-bit data scaled to [-1, 1]; got values in [{lo:.4g}, {hi:.4g}]")


def dequantize(x, generator=None):
    """x + u, u ~ U(-1/255, 1/255) per element: 8-bit data in [-1, 1] spread uniformly over its bins
    of width 2/255 (the bins of Ho et al. 2020's discretized decoder, eq. 13), for :func:`ode_nll`
    and :func:`bits_per_dim` (Theis et al. 2016; Song et al. 2021, App. D.2)."""
    check_8bit_range(x, "dequantize")
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + (u - 0.5) * BIN_WIDTH

"""Adaptive Runge–Kutta (Dormand & Prince 1980, RK5(4)7M) on the probability-flow ODE in log sigma:
dx / d(log sigma) = x - D(x, sigma) (Karras et al. 2022, eq. 4; Song et al. 2021, sec. 4.3 use
RK45 on the same ODE)."""
from __future__ import annotations

import math

import torch

from .stepping import denoise, dopri5_step, report


def rk45(denoiser, x, sigmas, *, generator=None, callback=None, progress=False, cond=None,
         rtol: float = 1e-5, atol: float = 1e-5, sigma_min: float = 0.002, info: dict | None = None,
         max_steps: int = 10_000):
    """Integrate the probability-flow ODE adaptively from ``sigmas[0]`` to the smallest positive sigma
    in ``sigmas`` (``sigma_min`` if there is none); if ``sigmas[-1] == 0`` finish with x = D(x, sigma).

    The step is accepted when the RMS of err / (atol + rtol max(|x|, |x'|)) over all elements is
    <= 1 (Hairer, Norsett & Wanner 1993, sec. II.4). ``info``, if given, receives ``nfe`` (denoiser
    calls), ``steps`` (accepted) and ``rejected``. Denoiser calls: 6 per attempted step + 1 (+1 for
    the final denoising)."""
    s_list = [float(v) for v in sigmas]
    positive = [v for v in s_list if v > 0]
    s_start, s_end = s_list[0], (min(positive) if len(positive) > 1 else sigma_min)
    t, t_end = math.log(s_start), math.log(s_end)
    counter = {"nfe": 0, "steps": 0, "rejected": 0}

    def f(y, t_):
        counter["nfe"] += 1
        return (y[0] - denoise(denoiser, y[0], math.exp(t_), cond),)

    k1 = f((x,), t)
    h = -min(0.05 * (t - t_end), 0.5)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=round(t - t_end, 3), desc="rk45", leave=False)
    while t > t_end and counter["steps"] + counter["rejected"] < max_steps:
        h = max(h, t_end - t)  # h < 0: towards smaller sigma
        (x_new,), k_new, (err,) = dopri5_step(f, (x,), k1, t, h)
        scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        err_norm = float((err / scale).square().mean().sqrt())
        if err_norm <= 1:
            t, x, k1 = t + h, x_new, k_new
            counter["steps"] += 1
            report(callback, counter["steps"] - 1, x, math.exp(t - h), math.exp(t), x - k1[0])
            if bar is not None:
                bar.update(round(-h, 3))
        else:
            counter["rejected"] += 1
        h = h * min(10.0, max(0.2, 0.9 * (err_norm + 1e-16) ** -0.2))
    if bar is not None:
        bar.close()
    if t > t_end:
        raise RuntimeError(f"rk45 did not reach sigma={s_end} in {max_steps} steps (rtol={rtol}, atol={atol})")
    if s_list[-1] == 0:
        counter["nfe"] += 1
        x = denoise(denoiser, x, s_end, cond)
    if info is not None:
        info.update(counter)
    return x

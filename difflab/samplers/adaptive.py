"""Adaptive Runge–Kutta (Dormand & Prince 1980, RK5(4)7M) on the probability-flow ODE in log sigma:
dx / d(log sigma) = x - D(x, sigma) (Karras et al. 2022, eq. 4; Song et al. 2021, sec. 4.3 use
RK45 on the same ODE)."""
from __future__ import annotations

import math

import torch

from ._common import denoise, report

# Dormand–Prince tableau: nodes C, stages A, 5th-order weights B5 (= last row of A, FSAL),
# and B5 - B4, the embedded error estimate.
C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
E = (35 / 384 - 5179 / 57600, 0.0, 500 / 1113 - 7571 / 16695, 125 / 192 - 393 / 640,
     -2187 / 6784 + 92097 / 339200, 11 / 84 - 187 / 2100, -1 / 40)


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

    def f(x_, t_):
        counter["nfe"] += 1
        return x_ - denoise(denoiser, x_, math.exp(t_), cond)

    k1 = f(x, t)
    h = -min(0.05 * (t - t_end), 0.5)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=round(t - t_end, 3), desc="rk45", leave=False)
    while t > t_end and counter["steps"] + counter["rejected"] < max_steps:
        h = max(h, t_end - t)  # h < 0: towards smaller sigma
        ks = [k1]
        for stage in range(1, 7):
            xs = x + h * sum(a * k for a, k in zip(A[stage], ks) if a != 0)
            ks.append(f(xs, t + C[stage] * h))
        x_new = xs  # stage 7 is evaluated at the 5th-order solution (FSAL)
        err = h * sum(e * k for e, k in zip(E, ks) if e != 0)
        scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        err_norm = float((err / scale).square().mean().sqrt())
        if err_norm <= 1:
            t, x, k1 = t + h, x_new, ks[6]
            counter["steps"] += 1
            report(callback, counter["steps"] - 1, x, math.exp(t - h), math.exp(t), x - k1)
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

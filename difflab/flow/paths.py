"""The flow ODE of the linear path x_t = (1 - t) x0 + t n in flow time t (Lipman et al. 2023;
Liu et al. 2023): the velocity field of a denoiser, Euler's method in t, and straightness."""
from __future__ import annotations

import torch

from ..denoisers import append_dims

__all__ = ["velocity", "euler_flow", "straightness"]


def velocity(denoiser, x_t: torch.Tensor, t, **cond) -> torch.Tensor:
    """u(x_t, t) = E[n - x0 | x_t] of the linear path, from any denoiser D(x, sigma) of the VE
    convention: with sigma = t / (1 - t) and x = x_t / (1 - t),

        x_t = (1 - t) x0_hat + t n_hat   =>   u = n_hat - x0_hat = (x_t - D(x, sigma)) / t,

    and at t = 1 (pure noise) u = x_t - D(x_t, inf). ``t``: a float or (B,) tensor in (0, 1]."""
    t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device).reshape(-1).expand(x_t.shape[0])
    if bool(((t <= 0) | (t > 1)).any()):
        raise ValueError("the flow velocity is defined for 0 < t <= 1")
    one = t == 1
    sigma = torch.where(one, torch.inf, t / (1 - t))
    x = torch.where(append_dims(one, x_t.ndim), x_t, x_t / append_dims(1 - t, x_t.ndim).to(x_t.dtype))
    if bool(one.any()) and not bool(one.all()):
        raise ValueError("t = 1 (pure noise) must hold for the whole batch or none of it")
    d0 = denoiser(x, sigma.to(x_t.dtype), **cond)
    return (x_t - d0) / append_dims(t, x_t.ndim).to(x_t.dtype)


def euler_flow(denoiser, noise: torch.Tensor, steps: int, *, cond: dict | None = None,
               trajectory: list | None = None) -> torch.Tensor:
    """Euler's method on dx_t/dt = u(x_t, t) from x_1 = noise to t = 0 on the uniform grid
    t_i = 1 - i/steps: x_{t'} = x_t + (t' - t) u(x_t, t) (Liu et al. 2023, sec. 2.1). It is the
    same update as difflab's ``euler`` (= DDIM) on ``time_uniform_sigmas(Flow(), steps)``
    (docs/flow.md derives it; tests/test_flow.py checks it). ``trajectory``, if given, receives
    (t, x_t, u) for every step."""
    ts = torch.linspace(1, 0, steps + 1, dtype=torch.float64).tolist()
    x = noise
    with torch.no_grad():
        for t, t_next in zip(ts[:-1], ts[1:]):
            u = velocity(denoiser, x, t, **(cond or {}))
            if trajectory is not None:
                trajectory.append((t, x, u))
            x = x + (t_next - t) * u
    return x


def straightness(denoiser, noise: torch.Tensor, steps: int = 64, *, cond: dict | None = None) -> float:
    """Straightness of the flow from ``noise`` (Liu et al. 2023, Definition 2.2):
    S = int_0^1 E |(x_1 - x_0) - u(x_t, t)|^2 dt, zero exactly when every trajectory is a straight
    line traversed at constant speed (then one Euler step is exact). Estimated along Euler
    trajectories of ``steps`` steps (the integral by the left Riemann sum at the grid points) and
    reported per dimension (the squared norm divided by the data dimension)."""
    trajectory = []
    x0 = euler_flow(denoiser, noise, steps, cond=cond, trajectory=trajectory)
    displacement = noise - x0  # x_1 - x_0
    per_step = [(displacement - u).flatten(1).square().mean(1).mean() for _, _, u in trajectory]
    return float(torch.stack(per_step).mean())

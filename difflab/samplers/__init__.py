"""Samplers: pure functions ``(denoiser, x, sigmas, *, generator, callback, progress, cond, **options) -> x``.

``SAMPLERS`` maps each name of docs/design.md to its function; :func:`sample` is the single entry
point, :func:`generate` draws many samples from fresh noise in batches. The steps they share are in
:mod:`.stepping`.
"""
from __future__ import annotations

import contextlib
import inspect
import math

import torch

from .adaptive import rk45
from .ancestral import consistency, ddim, ddpm, euler_ancestral
from .deis import deis
from .dpm_solver import dpm_solver_1, dpm_solver_2, dpm_solver_3, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m, dpmpp_3m_sde
from .dpm_solver_sde import dpmpp_2s_ancestral, dpmpp_sde
from .ode import edm_stochastic, euler, heun
from .sde import em, pc
from ..schedules import karras_sigmas, loglinear_sigmas, time_uniform_sigmas
from .stepping import ancestral_step, denoise, report
from .unipc import unipc

SAMPLERS = {
    "euler": euler, "heun": heun, "ddim": ddim, "ddpm": ddpm, "euler_ancestral": euler_ancestral,
    "edm_stochastic": edm_stochastic, "dpm_solver_1": dpm_solver_1, "dpm_solver_2": dpm_solver_2,
    "dpm_solver_3": dpm_solver_3, "dpmpp_2m": dpmpp_2m, "dpmpp_3m": dpmpp_3m,
    "dpmpp_2m_sde": dpmpp_2m_sde, "unipc": unipc, "em": em, "pc": pc, "rk45": rk45,
    "consistency": consistency, "deis": deis, "dpmpp_2s_ancestral": dpmpp_2s_ancestral, "dpmpp_sde": dpmpp_sde,
    "dpmpp_3m_sde": dpmpp_3m_sde,
}

#: Samplers that draw fresh noise while integrating (their output depends on ``generator``).
STOCHASTIC = frozenset({"ddpm", "euler_ancestral", "edm_stochastic", "dpmpp_2m_sde", "em", "pc", "consistency",
                        "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_3m_sde"})

_COMMON = {"denoiser", "x", "sigmas", "generator", "callback", "progress", "cond"}


def sampler_options(name: str) -> dict:
    """The options a sampler accepts beyond the common ones, with their defaults."""
    params = inspect.signature(SAMPLERS[name]).parameters
    return {k: p.default for k, p in params.items() if k not in _COMMON}


def denoiser_calls(name: str, sigmas, **options) -> int | None:
    """Denoiser calls the sampler makes for ``sigmas`` (None for rk45, whose count is adaptive).
    A start at sigma = inf adds the one call of the exact first step."""
    if math.isinf(float(sigmas[0])):
        rest = denoiser_calls(name, sigmas[1:], **options) if len(sigmas) > 2 else 0
        return None if rest is None else 1 + rest
    n = len(sigmas) - 1
    final_zero = float(sigmas[-1]) == 0
    if name in ("heun", "edm_stochastic"):
        return 2 * n - final_zero
    if name in ("dpm_solver_2", "dpm_solver_3", "dpmpp_sde"):
        k = 3 if name == "dpm_solver_3" else 2
        return k * n - (k - 1) * final_zero
    if name == "dpmpp_2s_ancestral":  # a second call on each step whose sigma_down > 0
        s = [float(v) for v in sigmas]
        eta = options.get("eta", 1.0)
        return n + sum(ancestral_step(a, b, eta)[0] > 0 for a, b in zip(s, s[1:]))
    if name == "pc":
        return n + options.get("corrector_steps", 1) * (n - final_zero)
    if name == "rk45":
        return None
    return n


def sample(denoiser, x, sigmas, sampler: str = "dpmpp_2m", *, generator=None, callback=None,
           progress: bool = False, grad: bool = False, **options):
    """Integrate from ``x`` at ``sigmas[0]`` (pass ``x = sigmas[0] * noise``) to ``sigmas[-1]``.

    ``sampler`` is a name in :data:`SAMPLERS`; ``options`` are that sampler's options (see
    :func:`sampler_options`) and ``cond``, a dict of keyword arguments passed to every denoiser call.
    ``sigmas[0] = inf`` starts from pure noise exactly (a flow model's t = 1): pass the unit noise
    ``x = noise`` itself, and the first step is :func:`_step_from_pure_noise`'s.
    Sampling runs under ``torch.no_grad()``, so a network denoiser builds no autograd graph across
    the steps (as k-diffusion's samplers do); ``grad=True`` keeps the caller's autograd mode, for
    gradients through the whole trajectory. A denoiser that needs gradients inside one call
    (classifier guidance) enables them itself.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    defaults = sampler_options(sampler)
    allowed = set(defaults) | {"cond"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"sampler {sampler!r} has no option(s) {sorted(unknown)}; it accepts {sorted(allowed)}")
    _check_option_values(sampler, options, defaults)
    if len(sigmas) < 2:
        raise ValueError("sigmas needs at least a start and an end value")
    with contextlib.nullcontext() if grad else torch.no_grad():
        if math.isinf(float(sigmas[0])):
            x, sigmas, callback = _step_from_pure_noise(denoiser, x, sigmas, options.get("cond"), callback)
            if len(sigmas) < 2:
                return x
        return SAMPLERS[sampler](denoiser, x, sigmas, generator=generator, callback=callback,
                                 progress=progress, **options)


#: Ranges of the numeric sampler options: (lowest, highest, whether the lowest itself is allowed).
_OPTION_RANGES = {"eta": (0, math.inf, True), "s_noise": (0, math.inf, True), "S_noise": (0, math.inf, True),
                  "S_churn": (0, math.inf, True), "S_tmin": (0, math.inf, True), "S_tmax": (0, math.inf, True),
                  "snr": (0, math.inf, False), "corrector_steps": (0, math.inf, True), "rtol": (0, math.inf, False),
                  "atol": (0, math.inf, False), "sigma_min": (0, math.inf, False), "r": (0, 1, False),
                  "order": (1, math.inf, True)}


def _check_option_values(sampler: str, options: dict, defaults: dict) -> None:
    """ValueError (one sentence, before any work) for an option value of the wrong type or range:
    numbers must be finite real numbers (integers where the ``defaults`` of :func:`sampler_options`
    have one) in the option's range, switches booleans."""
    for key, value in options.items():
        default = defaults.get(key)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"option {key} of {sampler!r} must be true or false, got {value!r}")
            continue
        if not isinstance(default, (int, float)):
            continue
        integral = isinstance(default, int)
        ok_type = isinstance(value, int) if integral else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type or not math.isfinite(value):
            kind = "an integer" if integral else "a finite number"
            raise ValueError(f"option {key} of {sampler!r} must be {kind}, got {value!r}")
        low, high, closed = _OPTION_RANGES.get(key, (-math.inf, math.inf, True))
        if value > high or value < low or (value == low and not closed):
            bound = f">= {low}" if closed else f"> {low}"
            raise ValueError(f"option {key} of {sampler!r} must be {bound}" + (f" and < {high}" if high < math.inf
                             else "") + f", got {value!r}")


def start_from_noise(sigmas, noise: torch.Tensor) -> torch.Tensor:
    """The state at ``sigmas[0]`` for a standard normal ``noise``: ``sigmas[0] * noise``, or the
    noise itself when sigmas[0] = inf (pure noise, where the state is the limit of x / sigma)."""
    sigma = float(sigmas[0])
    return noise if math.isinf(sigma) else sigma * noise


def _step_from_pure_noise(denoiser, n, sigmas, cond, callback):
    """The first step from sigma = inf (t = 1 of a flow), exact: x' = D(n, inf) + sigma' n.

    At sigma = inf the state is the unit noise n itself (x / sigma in the limit), and DDIM's step
    x' = D + (sigma'/sigma)(x - D) tends to D(n, inf) + sigma' n; Euler, DPM-Solver-1 and the first
    step of every multistep solver are the same first-order step, and a higher-order correction
    from a point at lambda = -inf vanishes. Stochastic samplers take this step too (their fresh
    noise and n have the same law). Returns the state at sigmas[1], the remaining sigmas and the
    callback with step numbers moved on by one. One denoiser call.
    """
    sigma_next = float(sigmas[1])
    d0 = denoise(denoiser, n, math.inf, cond)
    report(callback, 0, n, math.inf, sigma_next, d0)
    x = d0 if sigma_next == 0 else d0 + sigma_next * n
    shifted = None if callback is None else (lambda info: callback({**info, "i": info["i"] + 1}))
    return x, sigmas[1:], shifted


#: The samplers whose default sigmas are uniform in log-SNR: on the exact-mixture benchmark
#: (benchmarks/samplers/output.md) they are more accurate there than on Karras sigmas at every
#: budget from 5 to 50 calls on both problems (DPM-Solver++(2M): 1.6x and 2.3x at 10 calls); Euler,
#: Heun and the singlestep DPM-Solvers do better on Karras sigmas, the rest were not compared.
LOGSNR_SAMPLERS = frozenset({"dpmpp_2m", "dpmpp_3m", "unipc"})


def default_sigmas(schedule, steps: int, sampler: str | None = "dpmpp_2m") -> torch.Tensor:
    """The measured default sigma sequence of ``steps`` steps for ``sampler`` on a model trained
    with ``schedule`` (a :class:`~difflab.schedules.Schedule`): time-uniform from pure noise for a
    schedule that reaches it (a flow), else over the schedule's sigma range, uniform in log-SNR for
    :data:`LOGSNR_SAMPLERS` and Karras et al.'s (2022, eq. 5, rho = 7) otherwise."""
    if math.isinf(schedule.sigma_max):
        return time_uniform_sigmas(schedule, steps)
    make = loglinear_sigmas if sampler in LOGSNR_SAMPLERS else karras_sigmas
    return make(steps, schedule.sigma_min, schedule.sigma_max)


#: Default batch of :func:`generate`: about this many numbers per batch of x.
SAMPLE_BUDGET = 2**18


def generate(denoiser, shape, n: int, sigmas, sampler: str = "dpmpp_2m", *, noise=None, generator=None,
             cond: dict | None = None, batch_size: int | None = None, progress: bool = False,
             callback=None, **options) -> torch.Tensor:
    """n samples of one-sample shape ``shape``: :func:`sample` from ``x = sigmas[0] z``, z ~ N(0, I),
    in batches of ``batch_size`` (default: about :data:`SAMPLE_BUDGET` numbers each), under
    ``torch.inference_mode``, collected as float32 on the CPU.

    ``noise``: the standard normal z, (n, *shape), to start from (two models compared point by
    point); without it each batch's z is drawn from ``generator`` just before that batch is sampled,
    on ``sigmas``' device. ``cond`` values that are tensors with n rows are sliced with the batch;
    ``callback`` receives each step's dict with ``batch_start`` added. ``options`` go to the sampler.
    """
    shape = tuple(shape)
    if noise is not None and tuple(noise.shape) != (n, *shape):
        raise ValueError(f"noise must have shape {(n, *shape)}, got {tuple(noise.shape)}")
    batch_size = batch_size or max(1, SAMPLE_BUDGET // math.prod(shape))
    device = sigmas.device if torch.is_tensor(sigmas) else torch.device("cpu")
    out = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            z = (torch.randn((b, *shape), generator=generator, device=device) if noise is None
                 else noise[start:start + b].to(device, torch.float32))
            rows = {k: v[start:start + b].to(device) if torch.is_tensor(v) and v.ndim and len(v) == n else v
                    for k, v in (cond or {}).items()}
            report = None if callback is None else (lambda info, s=start: callback({**info, "batch_start": s}))
            x = sample(denoiser, start_from_noise(sigmas, z), sigmas, sampler, generator=generator, progress=progress,
                       callback=report, cond=rows or None, **options)
            out.append(x.float().cpu())
    return torch.cat(out)


__all__ = ["SAMPLERS", "STOCHASTIC", "SAMPLE_BUDGET", "LOGSNR_SAMPLERS", "sample", "generate", "default_sigmas",
           "start_from_noise", "sampler_options", "denoiser_calls",
           *SAMPLERS]

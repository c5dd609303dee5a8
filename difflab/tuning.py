"""Optimised sigma schedules: choose the n sigmas that make a given sampler closest to the exact
probability-flow ODE solution, for a given denoiser.

The idea is that of "Align Your Steps" (Sabour et al. 2024) and of DPM-Solver-v3's / Watson et
al.'s (2021) learned step schedules, in its simplest form: the schedule is a free parameter,
the objective is the RMS distance to a high-accuracy reference on calibration noises, and a
derivative-free optimiser (Nelder–Mead, Gao & Han 2012 adaptive parameters) searches it. The
first and last sigmas stay fixed, so the result is a drop-in replacement for ``karras_sigmas``.
Evaluate on other noises than the calibration ones: the benchmark does.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .samplers import sample
from .schedules import karras_sigmas

__all__ = ["sigmas_from_logits", "logits_from_sigmas", "optimize_sigmas", "reference_solution"]


def sigmas_from_logits(logits, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """n - 1 logits -> n decreasing sigmas from sigma_max to sigma_min (+ a trailing 0): the log-sigma
    decrements are the softmax of the logits times log(sigma_max / sigma_min)."""
    logits = np.asarray(logits, dtype=np.float64)
    w = np.exp(logits - logits.max())
    w /= w.sum()
    log_sigmas = math.log(sigma_max) - np.concatenate([[0.0], np.cumsum(w)]) * math.log(sigma_max / sigma_min)
    log_sigmas[-1] = math.log(sigma_min)
    return torch.tensor(np.concatenate([np.exp(log_sigmas), [0.0]]), dtype=torch.float64)


def logits_from_sigmas(sigmas) -> np.ndarray:
    """Inverse of :func:`sigmas_from_logits` (up to an additive constant) for sigmas ending in 0."""
    log_sigmas = np.log(np.asarray(sigmas, dtype=np.float64)[:-1])
    return np.log(-np.diff(log_sigmas))


def reference_solution(denoiser, x_T, sigma_min: float, sigma_max: float, steps: int = 1000):
    """High-accuracy probability-flow ODE solution: Heun (2nd order) on ``steps`` Karras sigmas."""
    return sample(denoiser, x_T.clone(), karras_sigmas(steps, sigma_min, sigma_max).double(), "heun")


def optimize_sigmas(denoiser, x_T, sampler: str, steps: int, *, sigma_min: float = 0.002,
                    sigma_max: float = 80.0, reference=None, init=None, maxiter: int = 4000,
                    **options) -> tuple[torch.Tensor, dict]:
    """Optimise ``steps`` sigmas (+ trailing 0) for ``sampler`` on calibration noises ``x_T`` (already
    scaled by sigma_max).

    Minimises log RMS(sample(x_T, sigmas) - reference), reference = :func:`reference_solution` unless
    given. ``init`` defaults to Karras sigmas (rho = 7). Returns (sigmas float64, info) with info
    holding the initial and final calibration errors and the number of sampler runs.
    """
    from scipy.optimize import minimize

    if steps < 2:
        raise ValueError("an optimised schedule needs at least 2 steps")
    if reference is None:
        reference = reference_solution(denoiser, x_T, sigma_min, sigma_max)
    init = karras_sigmas(steps, sigma_min, sigma_max).double() if init is None else torch.as_tensor(init)

    def objective(logits):
        try:
            out = sample(denoiser, x_T.clone(), sigmas_from_logits(logits, sigma_min, sigma_max), sampler, **options)
        except ValueError:  # a degenerate schedule (two equal sigmas)
            return 50.0
        err = float((out - reference).square().mean().sqrt())
        return math.log(err) if math.isfinite(err) and err > 0 else 50.0

    theta0 = logits_from_sigmas(init)
    result = minimize(objective, theta0, method="Nelder-Mead",
                      options={"maxiter": maxiter, "xatol": 1e-4, "fatol": 1e-5, "adaptive": True})
    best = sigmas_from_logits(result.x, sigma_min, sigma_max)
    info = {"initial_error": math.exp(objective(theta0)), "error": math.exp(result.fun), "runs": result.nfev}
    return best, info

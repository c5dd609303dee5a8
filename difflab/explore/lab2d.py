"""The 2-D lab: a sampler's trajectories over the noisy density, the denoiser's field, and the error
against the probability-flow ODE's solution, on exact Gaussian mixtures and trained 2-D models.

Everything is the library's: a problem is a denoiser ``D(x, sigma, y=None)`` (the exact mixture's,
:mod:`difflab.exact`, or a trained network's), guided by :func:`difflab.guidance.guided_denoiser`,
integrated by :func:`difflab.sample` from ``x_T = sigma_max z`` with ``z`` drawn by :func:`noise`,
along sigmas of :func:`difflab.karras_sigmas` (eq. 5 of Karras et al. 2022), :func:`difflab.
loglinear_sigmas` (uniform in log-SNR, Lu et al. 2022) or :func:`difflab.tuning.optimize_sigmas`.
The error is the RMS distance per dimension between the sampler's output and
:func:`difflab.tuning.reference_solution` (Heun on 1000 Karras steps) from the same ``x_T``, as in
``difflab bench samplers``.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..exact import GaussianMixture, ring_mixture
from ..guidance import guided_denoiser
from ..samplers import SAMPLERS, STOCHASTIC, denoiser_calls, sample
from ..schedules import karras_sigmas, loglinear_sigmas
from ..tuning import optimize_sigmas, reference_solution

__all__ = ["LAB_SAMPLERS", "SCHEDULES", "CURVE_STEPS", "Problem", "exact_problems", "model_problem", "noise",
           "lab_sigmas", "guided", "run_sampler", "trajectories", "density_frames", "field_frames", "error_curve",
           "sub_mixture", "Cache", "Lab2D"]

#: The fixed-step samplers (rk45 picks its own steps; consistency needs a consistency model).
LAB_SAMPLERS = tuple(name for name in SAMPLERS if name not in ("rk45", "consistency"))
SCHEDULES = ("karras", "logsnr", "optimised")
#: Step counts of the error curve (and the current one).
CURVE_STEPS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50)
DENSITY_GRID = 48  # density values per side of each frame's view (the page smooths them)
FIELD_GRID = 17  # denoiser arrows per side
CALIBRATION_NOISES = 64  # noises an optimised schedule is fitted on (other than the shown ones)
NETWORK_REFERENCE_STEPS = 200  # Heun steps of a trained model's reference solution (1000 for a mixture)
OPTIMISE_ITERATIONS = 400  # Nelder-Mead iterations of an optimised schedule: a few seconds on the CPU


@dataclass(frozen=True)
class Problem:
    """A 2-D problem: ``denoiser(x, sigma, y=None)`` with ``y`` in [0, num_classes) or None
    (unconditional), its sigma range, dtype and device; ``gmm`` and ``classes`` (the components of
    each class) for an exact mixture, whose density is then known."""

    name: str
    title: str
    denoiser: object
    sigma_min: float
    sigma_max: float
    class_names: tuple = ()
    gmm: GaussianMixture | None = None
    classes: tuple = ()
    dtype: torch.dtype = torch.float64
    device: torch.device = torch.device("cpu")
    reference_steps: int = 1000

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) or None

    def class_mixture(self, label: int) -> GaussianMixture:
        """The exact mixture of class ``label`` (:func:`sub_mixture` of its components)."""
        return sub_mixture(self.gmm, self.classes[label])


def sub_mixture(gmm: GaussianMixture, components) -> GaussianMixture:
    """The mixture of some of ``gmm``'s components, their weights renormalised: p(x | k in components)."""
    idx = torch.as_tensor(list(components))
    return GaussianMixture(gmm.means[idx], gmm.stds[idx], gmm.log_weights[idx].exp(), dtype=gmm.dtype)


def _class_denoiser(gmm: GaussianMixture, classes) -> object:
    """The exact class-conditional denoiser E[x0 | x, y] of a mixture whose classes are groups of
    components; ``y = None`` or the null label ``len(classes)`` gives E[x0 | x] (the label a
    classifier-free-guided network is trained to drop to)."""
    parts = [sub_mixture(gmm, c) for c in classes] + [gmm]

    def denoiser(x, sigma, y=None):
        if y is None:
            return gmm.denoiser(x, sigma)
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(len(x))
        out = torch.empty_like(x)
        for k, part in enumerate(parts):
            rows = y == k
            if rows.any():
                out[rows] = part.denoiser(x[rows], sigma[rows])
        return out

    return denoiser


def _mixture_problem(name, title, gmm, classes, class_names) -> Problem:
    """An exact problem on sigma in [0.002, 80], the range of the sampler benchmark."""
    classes = tuple(tuple(c) for c in classes)
    return Problem(name, title, _class_denoiser(gmm, classes), 0.002, 80.0, tuple(class_names), gmm, classes)


def exact_problems() -> dict[str, Problem]:
    """The exact mixtures of the lab, each component group a class: ``ring`` (``gmm2d`` of the sampler
    benchmark, one class per component), ``moons`` (two interleaved arcs of 7 Gaussians each) and
    ``unbalanced`` (two Gaussians of weights 0.8 / 0.2 and stds 0.8 / 0.3)."""
    t = torch.linspace(0, math.pi, 7, dtype=torch.float64)
    upper = torch.stack([t.cos(), t.sin()], 1)
    lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], 1)
    moons = 2.5 * (torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=torch.float64))
    problems = [
        _mixture_problem("ring", "8 Gaussians on a circle (the sampler benchmark's gmm2d)", ring_mixture(),
                         [(k,) for k in range(8)], [f"component {k}" for k in range(8)]),
        _mixture_problem("moons", "two moons, 7 Gaussians each", GaussianMixture(moons, 0.2),
                         [range(7), range(7, 14)], ["upper moon", "lower moon"]),
        _mixture_problem("unbalanced", "two Gaussians, weights 0.8 / 0.2",
                         GaussianMixture([[-2.0, 0.0], [3.0, 1.0]], [0.8, 0.3], [0.8, 0.2]),
                         [(0,), (1,)], ["wide, 80%", "narrow, 20%"]),
    ]
    return {p.name: p for p in problems}


def model_problem(name: str, model) -> Problem:
    """A trained 2-D model (:func:`difflab.load`'s) as a problem: its network denoiser (float32, on its
    device), classes if class-conditional (the null label for None), and its schedule's sigma range
    (sigma_max capped at 80 for a flow, which reaches pure noise). Its reference solution takes
    :data:`NETWORK_REFERENCE_STEPS` Heun steps: a network is slower than a mixture, and the samplers'
    errors at the lab's step counts are far above those of 200 second-order steps."""
    k = model.num_classes

    def denoiser(x, sigma, y=None):
        if k is not None and y is None:
            y = torch.full((len(x),), k, dtype=torch.long, device=x.device)  # the null label
        return model.denoiser(x, sigma) if k is None else model.denoiser(x, sigma, y=y)

    names = tuple(model.class_names or (f"class {c}" for c in range(k))) if k else ()
    return Problem(name, f"trained model {name} ({model.config.preset})", denoiser,
                   max(model.schedule.sigma_min, 0.002), min(model.schedule.sigma_max, 80.0), names,
                   dtype=torch.float32, device=model.device, reference_steps=NETWORK_REFERENCE_STEPS)


def noise(n: int, seed: int, problem: Problem) -> torch.Tensor:
    """The lab's standard normal z (n, 2): float64 draws of a generator seeded with ``seed``, cast to
    the problem's dtype and device; the sampler starts from ``x_T = sigma_max z``."""
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return z.to(problem.device, problem.dtype)


def lab_sigmas(schedule: str, steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """``steps`` sigmas and a trailing 0 in float64: Karras et al. (2022, eq. 5) with ``rho``, or
    uniform in log-SNR (Lu et al. 2022, sec. 3.3). Optimised schedules come from :class:`Lab2D`."""
    if schedule == "karras":
        return karras_sigmas(steps, sigma_min, sigma_max, rho=rho).double()
    if schedule == "logsnr":
        return loglinear_sigmas(steps, sigma_min, sigma_max).double()
    raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")


def guided(problem: Problem, label: int | None, guidance: float = 1.0):
    """The denoiser ``D(x, sigma)`` that the lab integrates: unconditional for ``label`` None, else
    classifier-free guided towards ``label`` with scale ``guidance`` (Ho & Salimans 2022, eq. 6:
    D_w = D(x) + w (D(x|y) - D(x)); w = 1 is the plain conditional) through
    :func:`difflab.guidance.guided_denoiser`."""
    if label is None:
        if guidance != 1:
            raise ValueError("a guidance scale needs a class to guide towards; choose a class")
        return lambda x, sigma: problem.denoiser(x, sigma)
    if problem.num_classes is None:
        raise ValueError(f"{problem.name} has no classes; it takes no class label")
    den, cond = guided_denoiser(problem.denoiser, y=label, num_classes=problem.num_classes,
                                guidance=None if guidance == 1 else guidance)
    return lambda x, sigma: den(x, sigma, y=cond["y"].to(x.device).expand(len(x)))


def run_sampler(denoiser, x_T: torch.Tensor, sigmas: torch.Tensor, sampler: str, seed: int = 0,
                callback=None) -> torch.Tensor:
    """:func:`difflab.sample` from ``x_T`` along ``sigmas`` (cast to x_T's dtype and device), the
    stochastic samplers drawing from a generator seeded with ``seed``."""
    gen = torch.Generator(x_T.device).manual_seed(seed)
    return sample(denoiser, x_T.clone(), sigmas.to(x_T.device, x_T.dtype), sampler, generator=gen, callback=callback)


def trajectories(denoiser, x_T: torch.Tensor, sigmas: torch.Tensor, sampler: str, seed: int = 0):
    """Run :func:`difflab.sample` and keep its path: ``frames`` (n_steps + 1, n, 2), the state at each
    sigma (the first x_T, the last the output), ``denoised`` (n_steps, n, 2), D(x; sigma) at the
    start of each step, and the ``output``. Stochastic samplers draw from a generator seeded with
    ``seed``."""
    frames, denoised = [], []

    def keep(info):
        frames.append(info["x"].clone())
        denoised.append(info["denoised"].clone())

    out = run_sampler(denoiser, x_T, sigmas, sampler, seed, keep)
    return {"frames": torch.stack(frames + [out]), "denoised": torch.stack(denoised), "output": out}


def view_half_widths(sigmas, extent: float) -> list[float]:
    """Half-width of the square view at each sigma: sqrt(extent^2 + (3 sigma)^2), so the view holds
    the data at small sigma and three standard deviations of the noise at large sigma."""
    return [math.sqrt(extent**2 + (3 * float(s)) ** 2) for s in sigmas]


def _grid(half_width: float, size: int, problem: Problem) -> torch.Tensor:
    """(size * size, 2) points of a square grid, row-major from the bottom-left: index iy * size + ix."""
    ticks = torch.linspace(-half_width, half_width, size, dtype=problem.dtype, device=problem.device)
    gy, gx = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)


def _frame_grids(problem: Problem, sigmas, half_widths, size: int):
    """Every frame's grid stacked, (frames * size * size, 2), and each row's sigma: one call for all."""
    x = torch.cat([_grid(h, size, problem) for h in half_widths])
    sigma = torch.as_tensor([float(s) for s in sigmas], dtype=problem.dtype, device=problem.device)
    return x, sigma.repeat_interleave(size * size)


def density_frames(problem: Problem, label, guidance: float, sigmas, half_widths, size: int = DENSITY_GRID):
    """log p(x; sigma) on each frame's grid, (frames, size, size) indexed [iy, ix], for an exact
    mixture (None for a network). With a class y and scale w it is the tilted density
    (1 - w) log p(x; sigma) + w log p(x | y; sigma), up to a constant, whose score classifier-free
    guidance follows (Ho & Salimans 2022, sec. 3.2)."""
    if problem.gmm is None:
        return None
    x, sigma = _frame_grids(problem, sigmas, half_widths, size)
    log_p = problem.gmm.log_prob(x, sigma)
    if label is not None:
        log_p = (1 - guidance) * log_p + guidance * problem.class_mixture(label).log_prob(x, sigma)
    return log_p.reshape(-1, size, size)


def field_frames(denoiser, problem: Problem, sigmas, half_widths, size: int = FIELD_GRID):
    """D(x; sigma) on each frame's grid (frames, size, size, 2); Tweedie's formula makes D - x =
    sigma^2 grad log p(x; sigma) (Efron 2011; Karras et al. 2022, eq. 3). At sigma = 0, D = x."""
    x, sigma = _frame_grids(problem, sigmas, half_widths, size)
    d, noisy = x.clone(), sigma > 0
    with torch.no_grad():
        d[noisy] = denoiser(x[noisy], sigma[noisy])
    return d.reshape(-1, size, size, 2)


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS distance per dimension, the sampler benchmark's error."""
    return float((a.double() - b.double()).square().mean().sqrt())


def error_curve(denoiser, x_T, reference, sampler: str, sigma_min: float, sigma_max: float, rho: float,
                steps_list=CURVE_STEPS, seed: int = 0) -> dict:
    """Error against ``reference`` over denoiser calls for Karras (``rho``) and log-SNR sigmas:
    ``{schedule: [{"steps", "nfe", "error"}, ...]}``."""
    curves = {}
    for schedule in ("karras", "logsnr"):
        rows = []
        for steps in steps_list:
            sigmas = lab_sigmas(schedule, steps, sigma_min, sigma_max, rho)
            out = run_sampler(denoiser, x_T, sigmas, sampler, seed)
            rows.append({"steps": steps, "nfe": denoiser_calls(sampler, sigmas), "error": rms(out, reference)})
        curves[schedule] = rows
    return curves


class Cache:
    """A small thread-safe LRU of slow values (reference solutions, optimised schedules); a value that
    two requests need at once is computed once."""

    def __init__(self, size: int = 32):
        self.size, self._items, self._lock, self._making = size, OrderedDict(), threading.Lock(), {}

    def get(self, key, make):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            lock = self._making.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            try:
                value = make()
            finally:
                with self._lock:
                    self._making.pop(key, None)
            with self._lock:
                self._items[key] = value
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return value


class Lab2D:
    """The 2-D lab's computations on :class:`Problem` s, with the reference solutions and optimised
    schedules cached (by problem name)."""

    def __init__(self):
        self.cache = Cache()

    def reference(self, problem: Problem, label, guidance: float, n: int, seed: int) -> torch.Tensor:
        """:func:`difflab.tuning.reference_solution` of the guided denoiser from ``sigma_max z``, with the
        problem's ``reference_steps``."""
        key = ("reference", problem.name, label, guidance, n, seed)
        x_T = problem.sigma_max * noise(n, seed, problem)
        return self.cache.get(key, lambda: reference_solution(guided(problem, label, guidance), x_T, problem.sigma_min,
                                                              problem.sigma_max, problem.reference_steps))

    def optimised_sigmas(self, problem: Problem, sampler: str, steps: int, label, guidance: float,
                         seed: int) -> torch.Tensor:
        """:func:`difflab.tuning.optimize_sigmas` for this sampler and number of steps, fitted on
        :data:`CALIBRATION_NOISES` noises of seed ``seed + 1`` (not the ones shown)."""
        if sampler in STOCHASTIC:
            raise ValueError(f"an optimised schedule is fitted to the ODE solution; {sampler} is stochastic, "
                             "choose a deterministic sampler or another schedule")

        def make():
            x_cal = problem.sigma_max * noise(CALIBRATION_NOISES, seed + 1, problem)
            den = guided(problem, label, guidance)
            ref = reference_solution(den, x_cal, problem.sigma_min, problem.sigma_max, problem.reference_steps)
            sigmas, _ = optimize_sigmas(den, x_cal, sampler, steps, sigma_min=problem.sigma_min,
                                        sigma_max=problem.sigma_max, reference=ref, maxiter=OPTIMISE_ITERATIONS)
            return sigmas

        return self.cache.get(("optimised", problem.name, sampler, steps, label, guidance, seed), make)

    def sigmas(self, problem, sampler, steps, schedule, rho, label, guidance, seed) -> torch.Tensor:
        if schedule == "optimised":
            return self.optimised_sigmas(problem, sampler, steps, label, guidance, seed)
        return lab_sigmas(schedule, steps, problem.sigma_min, problem.sigma_max, rho)

    def run(self, p: Problem, *, sampler: str, steps: int, schedule: str = "karras", rho: float = 7.0,
            label: int | None = None, guidance: float = 1.0, n: int = 500, seed: int = 0) -> dict:
        """What the 2-D plot shows for one setting: the sigmas and the number of denoiser calls, the
        frames and denoised points (:func:`trajectories`), and each frame's view, density and field.
        The error, which needs the reference solution, is :meth:`error`."""
        den = guided(p, label, guidance)
        sigmas = self.sigmas(p, sampler, steps, schedule, rho, label, guidance, seed)
        path = trajectories(den, p.sigma_max * noise(n, seed, p), sigmas, sampler, seed)
        views = view_half_widths(sigmas, self.extent(p, path["output"]))
        return {
            "problem": p.name, "sampler": sampler, "stochastic": sampler in STOCHASTIC,
            "sigmas": [float(s) for s in sigmas], "nfe": denoiser_calls(sampler, sigmas), "views": views,
            "frames": path["frames"], "denoised": path["denoised"],
            "density": density_frames(p, label, guidance, sigmas, views), "field": field_frames(den, p, sigmas, views),
        }

    @staticmethod
    def extent(problem: Problem, samples: torch.Tensor) -> float:
        """Half-width of the view at sigma = 0: the mixture's means plus three stds, or for a network
        1.2 times the largest coordinate of its samples."""
        if problem.gmm is not None:
            return float((problem.gmm.means.abs().amax(1) + 3 * problem.gmm.stds).max())
        return 1.2 * float(samples.abs().max().clamp_min(1.0))

    def error(self, p: Problem, *, sampler: str, steps: int, schedule: str = "karras", rho: float = 7.0,
              label: int | None = None, guidance: float = 1.0, n: int = 500, seed: int = 0) -> dict:
        """The error of one setting: the RMS distance per dimension between the sampler's output and
        the ``reference`` end points (:meth:`reference`, cached), with its number of denoiser calls."""
        den = guided(p, label, guidance)
        sigmas = self.sigmas(p, sampler, steps, schedule, rho, label, guidance, seed)
        reference = self.reference(p, label, guidance, n, seed)
        out = run_sampler(den, p.sigma_max * noise(n, seed, p), sigmas, sampler, seed)
        return {"reference": reference, "error": rms(out, reference), "nfe": denoiser_calls(sampler, sigmas),
                "schedule": schedule, "steps": steps, "stochastic": sampler in STOCHASTIC}

    def curve(self, p: Problem, *, sampler: str, steps: int, schedule: str = "karras", rho: float = 7.0,
              label: int | None = None, guidance: float = 1.0, n: int = 500, seed: int = 0) -> dict:
        """:func:`error_curve` of this sampler, step counts up to max(50, steps) (``schedule`` aside:
        the curves are Karras' and log-SNR's)."""
        x_T = p.sigma_max * noise(n, seed, p)
        reference = self.reference(p, label, guidance, n, seed)
        steps_list = sorted({s for s in CURVE_STEPS if s <= max(50, steps)} | {steps})
        return {"curves": error_curve(guided(p, label, guidance), x_T, reference, sampler, p.sigma_min,
                                      p.sigma_max, rho, steps_list, seed)}

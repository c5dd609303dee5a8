"""Sampler benchmark on exact Gaussian-mixture problems (``difflab bench samplers``, or :func:`run`).

Problems (equal weights, sigma from 80 down to 0.002, then the final denoising step to 0):
- ``gmm2d``: 8 isotropic Gaussians of std 0.3 with means evenly on a circle of radius 4;
- ``gmm64``: 10 isotropic Gaussians of std 0.5 in 64-D, means N(0, I) (seed 0) rescaled to norm 3.

Deterministic samplers are scored by the RMS distance per dimension between their output and a
float64 high-accuracy solution of the probability-flow ODE from the *same* noises (Heun with 2000
Karras steps, whose own error is estimated against 1000 steps and printed). Stochastic samplers
cannot be compared path by path; they are scored by the sliced Wasserstein distance of their
samples to exact draws of the mixture, beside the distance between two exact sample sets of the
same size (the noise floor).
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import torch

from ..evaluation.metrics import sliced_wasserstein
from ..exact import random_mixture, ring_mixture
from ..io import atomic
from ..io.images import save_figure
from ..samplers import STOCHASTIC, denoiser_calls, sample
from ..schedules import karras_sigmas, loglinear_sigmas
from ..tuning import optimize_sigmas, reference_solution

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
PROBLEMS = {"gmm2d": ring_mixture, "gmm64": random_mixture}
#: label -> (sampler, options) of the deterministic samplers compared.
DETERMINISTIC = {
    "euler": ("euler", {}), "heun": ("heun", {}), "dpm_solver_2": ("dpm_solver_2", {}),
    "dpm_solver_3": ("dpm_solver_3", {}), "dpmpp_2m": ("dpmpp_2m", {}), "dpmpp_3m": ("dpmpp_3m", {}),
    "dpmpp_3m_taylor": ("dpmpp_3m", {"variant": "taylor"}), "unipc": ("unipc", {}),
    "unipc_3": ("unipc", {"order": 3}),
}
STOCHASTIC_ORDER = ["ddpm", "euler_ancestral", "edm_stochastic", "dpmpp_2m_sde", "em", "pc"]
CALLS = (5, 8, 10, 15, 20, 50)
SCHEDULES = {
    "karras": lambda n: karras_sigmas(n, SIGMA_MIN, SIGMA_MAX, rho=7.0).double(),
    "logsnr": lambda n: loglinear_sigmas(n, SIGMA_MIN, SIGMA_MAX).double(),
}
#: (sampler, calls) pairs for which an optimised schedule is searched (see difflab.tuning).
OPTIMISED = [("dpmpp_2m", 10), ("dpmpp_3m", 10), ("unipc_3", 10), ("unipc_3", 5), ("unipc_3", 8),
             ("unipc_3", 15), ("unipc_3", 20)]


def steps_for_calls(name: str, calls: int) -> int:
    """The largest number of steps whose denoiser calls (Karras sigmas ending in 0) fit ``calls``."""
    n = 1
    while denoiser_calls(name, [1.0] * (n + 1) + [0.0]) <= calls:
        n += 1
    return n


def rms(a, b) -> float:
    return float((a - b).square().mean().sqrt())


def _noises(dim: int, n: int, seed: int) -> torch.Tensor:
    return SIGMA_MAX * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _empirical_order(rows, problem, sampler, schedule, lo=20, hi=50):
    """Log-log slope of error vs calls between the budgets ``lo`` and ``hi`` (actual calls used)."""
    pts = {}
    for r in rows:
        if (r["problem"], r["sampler"], r["schedule"]) == (problem, sampler, schedule):
            for budget in (lo, hi):
                if budget - 2 <= r["calls"] <= budget:
                    pts[budget] = (r["calls"], r["error"])
    if len(pts) < 2:
        return float("nan")
    (c0, e0), (c1, e1) = pts[lo], pts[hi]
    return math.log(e0 / e1) / math.log(c1 / c0)


def deterministic_table(problem: str, n_eval: int, calls=CALLS, optimise=True, cache=None, log=print):
    """Errors of every deterministic sampler (and diffusers' where installed) against the reference."""
    gmm = PROBLEMS[problem]()
    x_T = _noises(gmm.dim, n_eval, seed=0)
    ref = reference_solution(gmm, x_T, SIGMA_MIN, SIGMA_MAX, steps=2000)
    ref_err = rms(reference_solution(gmm, x_T, SIGMA_MIN, SIGMA_MAX, steps=1000), ref)
    log(f"[{problem}] reference: Heun, 2000 steps; its distance to 1000 steps is {ref_err:.1e}")
    rows = []
    for label, (sampler, opts) in DETERMINISTIC.items():
        for schedule, make in SCHEDULES.items():
            for c in calls:
                n = steps_for_calls(sampler, c)
                sig = make(n)
                out = sample(gmm, x_T.clone(), sig, sampler, **opts)
                rows.append(dict(problem=problem, sampler=label, schedule=schedule, steps=n,
                                 calls=denoiser_calls(sampler, sig), error=rms(out, ref)))
    rows += _diffusers_rows(problem, gmm, x_T, ref, calls, log)
    if optimise:
        rows += _optimised_rows(problem, gmm, x_T, ref, cache, log)
    return rows, ref_err


def _diffusers_rows(problem, gmm, x_T, ref, calls, log):
    from . import vs_diffusers

    if not vs_diffusers.available():
        log("diffusers is not installed: skipping its column (pip install diffusers)")
        return []
    rows = []
    for sampler in vs_diffusers.SCHEDULERS:
        for c in calls:
            n, info = steps_for_calls(sampler, c), {}
            out = vs_diffusers.run_diffusers(sampler, gmm, x_T.clone(), SCHEDULES["karras"](n), info=info)
            rows.append(dict(problem=problem, sampler=f"diffusers:{sampler}", schedule="karras", steps=n,
                             calls=info["nfe"], error=rms(out, ref)))
    return rows


def _optimised_rows(problem, gmm, x_T, ref, cache, log):
    """Optimise schedules on 256 calibration noises (seed 1), score them on the evaluation noises."""
    cache = {} if cache is None else cache
    x_cal = _noises(gmm.dim, 256, seed=1)
    ref_cal = None
    rows = []
    for label, c in OPTIMISED:
        sampler, opts = DETERMINISTIC[label]
        key = f"{problem}/{label}/{c}"
        if key not in cache:
            if ref_cal is None:
                ref_cal = reference_solution(gmm, x_cal, SIGMA_MIN, SIGMA_MAX, steps=1000)
            t0 = time.time()
            sig, info = optimize_sigmas(gmm, x_cal, sampler, steps_for_calls(sampler, c), sigma_min=SIGMA_MIN,
                                        sigma_max=SIGMA_MAX, reference=ref_cal, **opts)
            cache[key] = sig.tolist()
            log(f"[{problem}] optimised {label} @ {c} calls in {time.time() - t0:.0f}s: calibration error "
                f"{info['initial_error']:.3g} -> {info['error']:.3g}")
        sig = torch.tensor(cache[key], dtype=torch.float64)
        out = sample(gmm, x_T.clone(), sig, sampler, **opts)
        rows.append(dict(problem=problem, sampler=label, schedule="optimised", steps=len(sig) - 1,
                         calls=denoiser_calls(sampler, sig), error=rms(out, ref)))
    return rows


def stochastic_table(problem: str, n_samples: int, calls=(10, 20, 50, 100, 200)):
    """Sliced Wasserstein distance to exact draws for every stochastic sampler, with its noise floor."""
    gmm = PROBLEMS[problem]()
    gen = torch.Generator().manual_seed(3)
    exact, exact2 = gmm.sample(n_samples, gen), gmm.sample(n_samples, gen)
    floor = sliced_wasserstein(exact, exact2, generator=torch.Generator().manual_seed(4))
    rows = []
    for sampler in STOCHASTIC_ORDER:
        for c in calls:
            n = steps_for_calls(sampler, c)
            sig = SCHEDULES["karras"](n)
            gen = torch.Generator().manual_seed(5)
            out = sample(gmm, _noises(gmm.dim, n_samples, seed=6), sig, sampler, generator=gen)
            rows.append(dict(problem=problem, sampler=sampler, budget=c, steps=n, calls=denoiser_calls(sampler, sig),
                             sliced_w2=sliced_wasserstein(out, exact, generator=torch.Generator().manual_seed(4)),
                             noise_floor=floor, n=n_samples))
    return rows


def _write_csv(rows, path: Path):
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic.write_text(path, text.getvalue())


def _plot(rows, problem, path: Path):
    """Log-log error vs calls: one colour per algorithm; diffusers as crosses on difflab's colour,
    optimised schedules as stars on a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    series = {}
    for r in rows:
        if r["problem"] == problem and r["schedule"] in ("karras", "optimised"):
            series.setdefault((r["sampler"], r["schedule"]), []).append((r["calls"], r["error"]))
    labels = list(DETERMINISTIC)
    colours = plt.get_cmap("tab10")
    for (sampler, schedule), pts in sorted(series.items()):
        pts.sort()
        base = sampler.removeprefix("diffusers:")
        colour = colours(labels.index(base) % 10) if base in labels else "k"
        if sampler.startswith("diffusers:"):
            ax.loglog(*zip(*pts), "x", color=colour, ms=8, label=sampler)
        elif schedule == "optimised":
            ax.loglog(*zip(*pts), ":", marker="*", ms=9, color=colour, label=f"{sampler}, optimised sigmas")
        else:
            ax.loglog(*zip(*pts), "-", marker="o", ms=3, color=colour, label=sampler)
    ax.set_xlabel("denoiser calls")
    ax.set_ylabel("RMS error per dimension vs reference ODE solution")
    ax.set_title(f"{problem}: error vs calls (lines: Karras sigmas, rho=7, 0.002..80)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def plot_from_csv(csv_path, out_dir=None):
    """Redraw the error plots from a ``deterministic.csv`` written by :func:`run`."""
    with open(csv_path) as f:
        rows = [dict(r, calls=int(r["calls"]), steps=int(r["steps"]), error=float(r["error"])) for r in csv.DictReader(f)]
    out = Path(out_dir or Path(csv_path).parent)
    for p in sorted({r["problem"] for r in rows}):
        _plot(rows, p, out / f"errors_{p}.png")


def format_error_table(rows, problem, schedule="karras", calls=CALLS) -> str:
    """A markdown table: one row per sampler, one column per call budget, plus the empirical order."""
    samplers = []
    for r in rows:
        if r["problem"] == problem and r["schedule"] == schedule and r["sampler"] not in samplers:
            samplers.append(r["sampler"])
    head = "| sampler | " + " | ".join(f"{c} calls" for c in calls) + " | order (20→50) |"
    lines = [head, "|" + "---|" * (len(calls) + 2)]
    for s in samplers:
        err = {r["calls"]: r["error"] for r in rows if (r["problem"], r["sampler"], r["schedule"]) == (problem, s, schedule)}
        cells = []
        for c in calls:
            hit = [e for k, e in err.items() if k <= c and k > c - 3]
            cells.append(f"{hit[-1]:.2e}" if hit else "—")
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {_empirical_order(rows, problem, s, schedule):.2f} |")
    return "\n".join(lines)


def best_at(rows, problem, calls=10):
    """(sampler, schedule, error) of the most accurate difflab entry at exactly ``calls`` calls or fewer."""
    mine = [r for r in rows if r["problem"] == problem and not r["sampler"].startswith("diffusers:")
            and calls - 2 <= r["calls"] <= calls]
    return min(((r["sampler"], r["schedule"], r["error"]) for r in mine), key=lambda t: t[2])


def run(out_dir="benchmarks/samplers", problems=("gmm2d", "gmm64"), n_eval=1000, n_stochastic=4000,
        optimise=True, log=print):
    """Run the whole benchmark, write CSVs and plots under ``out_dir``, print markdown tables."""
    # The mixtures' matmuls are tiny: one thread avoids thread start-up costs that dominate them.
    torch.set_num_threads(1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "optimised_sigmas.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    det, sto = [], []
    for p in problems:
        rows, _ = deterministic_table(p, n_eval, optimise=optimise, cache=cache, log=log)
        det += rows
        sto += stochastic_table(p, n_stochastic)
        _plot(rows, p, out / f"errors_{p}.png")
    if optimise:
        atomic.write_text(cache_path, json.dumps(cache, indent=1))
    _write_csv(det, out / "deterministic.csv")
    _write_csv(sto, out / "stochastic.csv")
    for p in problems:
        for schedule in ("karras", "logsnr"):
            log(f"\n### {p}: RMS error per dimension vs the reference ODE solution ({schedule} sigmas)\n")
            log(format_error_table(det, p, schedule))
        base = [r["error"] for r in det if (r["problem"], r["sampler"], r["schedule"], r["calls"]) == (p, "dpmpp_2m", "karras", 10)][0]
        s, sched, e = best_at(det, p, 10)
        log(f"\n{p} @ 10 calls: DPM-Solver++(2M) on Karras sigmas {base:.3e}; best difflab: {s} on {sched} "
            f"sigmas {e:.3e} ({e / base:.2f}x)")
        log(f"\n### {p}: stochastic samplers, sliced W2 to {n_stochastic} exact samples (noise floor "
            f"{sto[[r['problem'] for r in sto].index(p)]['noise_floor']:.3f})\n")
        log("| sampler | " + " | ".join(f"≤{c} calls" for c in sorted({r['budget'] for r in sto if r['problem'] == p})) + " |")
        log("|---|" + "---|" * len({r['budget'] for r in sto if r['problem'] == p}))
        for s in STOCHASTIC_ORDER:
            vals = [f"{r['sliced_w2']:.3f}" for r in sto if (r["problem"], r["sampler"]) == (p, s)]
            log(f"| {s} | " + " | ".join(vals) + " |")
    log(f"\nwrote {out}/deterministic.csv, stochastic.csv, errors_*.png")
    return det, sto

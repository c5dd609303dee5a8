"""DEIS, Brownian-tree noise and the stochastic DPM-Solver++ samplers on the exact mixtures (issue 19).

    .venv/bin/python benchmarks/samplers_more.py [--n-eval 1000] [--n-stochastic 4000] [--threads 1]

(a) Deterministic: the RMS error per dimension against the probability-flow ODE solution from the
    same noises (float64; Heun with 2000 Karras steps, difflab.tuning.reference_solution) of DEIS
    orders 1-3 beside DPM-Solver++(2M), DPM-Solver++(3M) and UniPC at 5, 10, 20 and 50 denoiser
    calls, on Karras (rho = 7) and log-SNR-uniform sigmas from 80 to 0.002 (then 0), on gmm2d and
    gmm64 (difflab.bench.samplers). "deis_3 (last: D)" replaces DEIS's full-order step into 0 by
    x' = D(x, sigma_min), the other samplers' last step.
(b) Stochastic, with i.i.d. and Brownian-tree noise (the ``noise_kind`` option): the RMS difference
    between the outputs of 25 and 200 steps from the same noise and seed (the path difference), and
    the sliced W2 distance of the samples to exact draws of the mixture at 25 steps (mean over 3
    seeds) and 200 steps, beside that of two exact sample sets (the noise floor); and the sampler's
    wall time at 200 steps (one run on a shared machine: indicative only). Runs of one seed share one path (Brownian) or one noise stream (i.i.d.)
    across samplers, so their distances are not independent estimates.
(c) The cost of the tree: the time of dpmpp_sde's noise per step (two requests) for a batch of
    64 digits and one of 16 3x64x64 images, i.i.d. vs Brownian, beside one call of the digits UNet.
Writes benchmarks/samplers_more/output.md (the tables, also printed).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from difflab.bench.samplers import PROBLEMS, SIGMA_MAX, SIGMA_MIN, rms, steps_for_calls
from difflab.denoisers import NetworkDenoiser
from difflab.evaluation.metrics import sliced_wasserstein
from difflab.io import atomic
from difflab.nets import UNET_PRESETS, UNet
from difflab.samplers import denoiser_calls, sample
from difflab.samplers.brownian import make_noise
from difflab.schedules import karras_sigmas, loglinear_sigmas
from difflab.tuning import reference_solution

OUT = Path(__file__).resolve().parent / "samplers_more"
CALLS = (5, 10, 20, 50)
#: label -> (sampler, options)
DETERMINISTIC = {"deis_1": ("deis", {"order": 1}), "deis_2": ("deis", {"order": 2}), "deis_3": ("deis", {}),
                 "dpmpp_2m": ("dpmpp_2m", {}), "dpmpp_3m": ("dpmpp_3m", {}), "unipc": ("unipc", {})}
SCHEDULES = {"karras": lambda n: karras_sigmas(n, SIGMA_MIN, SIGMA_MAX).double(),
             "logsnr": lambda n: loglinear_sigmas(n, SIGMA_MIN, SIGMA_MAX).double()}
STOCHASTIC = ["ddpm", "euler_ancestral", "em", "dpmpp_2m_sde", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_3m_sde"]
STEPS = (25, 200)


def noises(dim: int, n: int, seed: int) -> torch.Tensor:
    return SIGMA_MAX * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def deterministic_table(problem: str, n_eval: int) -> list[str]:
    gmm = PROBLEMS[problem]()
    x_T = noises(gmm.dim, n_eval, seed=0)
    ref = reference_solution(gmm, x_T, SIGMA_MIN, SIGMA_MAX, steps=2000)
    lines = []
    for schedule, make in SCHEDULES.items():
        lines += [f"\n### (a) {problem}: RMS error vs the ODE solution, {schedule} sigmas\n",
                  "| sampler | " + " | ".join(f"{c} calls" for c in CALLS) + " |", "|---" * (len(CALLS) + 1) + "|"]
        rows = dict(DETERMINISTIC, **{"deis_3 (last: D)": ("deis", {})})
        for label, (name, opts) in rows.items():
            cells = []
            for c in CALLS:
                sig = make(steps_for_calls(name, c))
                assert denoiser_calls(name, sig) <= c
                if label.endswith("(last: D)"):
                    x = sample(gmm, x_T.clone(), sig[:-1], name, **opts)
                    out = gmm(x, torch.full((len(x),), float(sig[-2]), dtype=torch.float64))
                else:
                    out = sample(gmm, x_T.clone(), sig, name, **opts)
                cells.append(f"{rms(out, ref):.2e}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def stochastic_table(problem: str, n: int) -> list[str]:
    gmm = PROBLEMS[problem]()
    gen = torch.Generator().manual_seed(3)
    exact, exact2 = gmm.sample(n, gen), gmm.sample(n, gen)
    sw = lambda a: sliced_wasserstein(a, exact, generator=torch.Generator().manual_seed(4))
    floor = sw(exact2)
    x_T = noises(gmm.dim, n, seed=6)
    lines = [f"\n### (b) {problem}: i.i.d. vs Brownian noise, {n} samples (sliced W2 noise floor {floor:.3f})\n",
             "| sampler | noise | path diff 25 vs 200 steps | SW2 @25 (mean of 3 seeds) | SW2 @200 | time @200 (s) |",
             "|---|---|---|---|---|---|"]
    run = lambda name, noise, steps, seed: sample(gmm, x_T.clone(), SCHEDULES["karras"](steps), name,
                                                  generator=torch.Generator().manual_seed(seed), noise_kind=noise)
    for name in STOCHASTIC:
        for noise in ("iid", "brownian"):
            few = [run(name, noise, STEPS[0], seed) for seed in (5, 6, 7)]
            t0 = time.perf_counter()
            many = run(name, noise, STEPS[1], 5)
            seconds = time.perf_counter() - t0
            lines.append(f"| {name} | {noise} | {rms(few[0], many):.3f} | {statistics.mean(map(sw, few)):.3f} | "
                         f"{sw(many):.3f} | {seconds:.1f} |")
    return lines


def _median_time(fn, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cost_table() -> list[str]:
    """Milliseconds per step of the noise of dpmpp_sde (two requests a step, 25 Karras steps) beside
    one call of the digits UNet (untrained: the same cost) on the same batch."""
    config = UNET_PRESETS["digits"]
    den = NetworkDenoiser(UNet(config).eval(), prediction="edm")
    digits = torch.zeros(64, config.in_channels, config.resolution, config.resolution)
    with torch.no_grad():
        call = _median_time(lambda: den(digits, torch.full((64,), 3.0)), repeats=5)
    sig = karras_sigmas(25, SIGMA_MIN, SIGMA_MAX).tolist()[:-1]

    def per_step(x, noise):
        def run():
            z = make_noise(noise, x, sig, torch.Generator().manual_seed(2))
            for a, b in zip(sig, sig[1:]):
                z(a, math.sqrt(a * b)), z(math.sqrt(a * b), b)
        return _median_time(run, repeats=5) / (len(sig) - 1)

    lines = ["\n### (c) The cost of the tree: noise per step of dpmpp_sde (ms)\n",
             "| batch | i.i.d. | Brownian | one digits-UNet call |", "|---|---|---|---|"]
    for label, x in [(f"64 x 1x{config.resolution}x{config.resolution} (digits)", digits),
                     ("16 x 3x64x64", torch.zeros(16, 3, 64, 64))]:
        t = {noise: per_step(x, noise) for noise in ("iid", "brownian")}
        lines.append(f"| {label} | {1e3 * t['iid']:.2f} | {1e3 * t['brownian']:.2f} | "
                     + (f"{1e3 * call:.0f} |" if x is digits else "- |"))
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-eval", type=int, default=1000, help="noises of the deterministic table")
    p.add_argument("--n-stochastic", type=int, default=4000, help="samples of the stochastic table (gmm64: half)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    md = ["# DEIS, Brownian-tree noise, stochastic DPM-Solver++ (benchmarks/samplers_more.py)"]
    for problem in PROBLEMS:
        md += deterministic_table(problem, args.n_eval)
    for problem in PROBLEMS:
        md += stochastic_table(problem, args.n_stochastic if problem == "gmm2d" else args.n_stochastic // 2)
    md += cost_table()
    md.append(f"\n{args.threads} thread(s), {time.perf_counter() - t0:.0f} s in all; torch {torch.__version__}.")
    text = "\n".join(md) + "\n"
    print(text)
    OUT.mkdir(exist_ok=True)
    atomic.write_text(OUT / "output.md", text)


if __name__ == "__main__":
    main()

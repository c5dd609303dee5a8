"""Likelihood and reverse variances on digits (issue 6).

For a `digits-iddpm` model (cosine DiscreteVP, T = 1000, eps prediction, learned variances trained
with the hybrid loss): bits/dim of held-out digits by the variational bound under four reverse
variances (fixed small beta~, fixed large beta, learned, Analytic-DPM with Gamma estimated on train
digits) and by the probability-flow ODE (Hutchinson), and the sample quality of the `ddpm` sampler
at 10, 25, 50 and 100 steps (trailing spacing) under each variance.

Usage: .venv/bin/python benchmarks/likelihood.py --model RUN/model [--n-elbo 200] [--n-ode 32]
       [--n-samples 300] [--append-results]
Writes benchmarks/likelihood/{elbo.csv,ode.csv,samples.csv,output.md}.
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch

from difflab.pipeline import load
from difflab.training.data import load_dataset
from difflab.evaluation.digits import evaluate_digits
from difflab.likelihood.learned import LearnedVariance
from difflab.likelihood import (analytic_dpm_gamma, analytic_dpm_variance, ancestral_variance, bits_per_dim,
                                dequantize, elbo_terms, ode_nll)
from difflab.samplers import ddpm
from difflab.schedules import discrete_sigmas

HERE = Path(__file__).resolve().parent
OUT = HERE / "likelihood"
VARIANCES = ("fixed_small", "fixed_large", "learned", "analytic")
STEPS = (10, 25, 50, 100)


def trailing_timesteps(T: int, n: int) -> torch.Tensor:
    """The increasing training steps of discrete_sigmas(schedule, n, "trailing")."""
    return ((T - torch.arange(n, dtype=torch.float64) * (T / n)).round() - 1).long().flip(0)


def elbo_chain(T: int, k: int) -> torch.Tensor:
    """A respaced chain of k + 1 steps: 0 (the decoder) and the trailing steps T/k - 1, ..., T - 1."""
    return torch.cat([torch.zeros(1, dtype=torch.long), trailing_timesteps(T, k)]).unique()


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--n-elbo", type=int, default=200)
    ap.add_argument("--elbo-k", type=int, default=100, help="steps of the respaced ELBO chain (1000: full)")
    ap.add_argument("--n-gamma", type=int, default=500)
    ap.add_argument("--n-ode", type=int, default=32)
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--n-samples", type=int, default=300)
    ap.add_argument("--parts", default="elbo,ode,samples,report",
                    help="comma-separated: elbo, ode, samples, report (report reads the CSVs)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(exist_ok=True)
    model = load(args.model)
    den, schedule, T = model.denoiser, model.schedule, model.schedule.T
    parts = set(args.parts.split(","))
    lines = [f"model: {args.model} (preset {model.config.preset}, {model.config.steps} steps)"]
    test = load_dataset("digits", split="test").x[: args.n_elbo].float()
    train = load_dataset("digits", split="train").x[: args.n_gamma].float()
    D = test[0].numel()

    # Analytic-DPM Gamma on every training step any chain below uses.
    chain = elbo_chain(T, args.elbo_k)
    needed = torch.cat([chain] + [trailing_timesteps(T, n) for n in STEPS]).unique()
    t0 = time.time()
    if parts & {"elbo", "samples"}:
        gamma_all = analytic_dpm_gamma(den, train, schedule, timesteps=needed,
                                       generator=torch.Generator().manual_seed(1))
        print(f"Analytic-DPM Gamma: {len(needed)} steps x {len(train)} train digits, {time.time() - t0:.0f} s",
              flush=True)

    def clipped(d):  # x0_hat clamped to [-1, 1], as the papers' sampling and evaluation code does
        return lambda x, sigma, **c: d(x, sigma, **c).clamp(-1, 1)

    def analytic(ts):
        g = gamma_all[torch.searchsorted(needed, ts)]
        return analytic_dpm_variance(g, schedule, timesteps=ts, data_range=(-1, 1))

    # ELBO bits/dim under each variance (same x_t draws: same generator seed).
    elbo_rows = []
    for name in VARIANCES if "elbo" in parts else ():
        t0 = time.time()
        lv = LearnedVariance(model, timesteps=chain) if name == "learned" else None
        var = lv if name == "learned" else analytic(chain) if name == "analytic" else name
        with torch.no_grad():
            r = elbo_terms(lv.denoiser if lv else den, test, schedule, variance=var, timesteps=chain,
                           generator=torch.Generator().manual_seed(0), clip_denoised=True)
        bpd = r["total"] / (D * math.log(2))
        dec = r["decoder"] / (D * math.log(2))
        prior = r["prior"] / (D * math.log(2))
        elbo_rows.append({"variance": name, "K": len(chain), "n": len(test), "bpd": f"{bpd.mean():.4f}",
                          "stderr": f"{bpd.std() / math.sqrt(len(bpd)):.4f}", "decoder_bpd": f"{dec.mean():.4f}",
                          "prior_bpd": f"{prior.mean():.5f}", "seconds": f"{time.time() - t0:.0f}"})
        print(elbo_rows[-1], flush=True)
    if elbo_rows:
        write_csv(OUT / "elbo.csv", elbo_rows)

    # ODE bits/dim (Hutchinson), dequantized.
    ode_rows = []
    if "ode" in parts:
        t0 = time.time()
        x = dequantize(test[: args.n_ode], generator=torch.Generator().manual_seed(2))
        nll, st = ode_nll(den, x, sigma_min=float(schedule.sigmas[0]), sigma_max=float(schedule.sigmas[-1]),
                          trace="hutchinson", probes=args.probes, rtol=1e-4, atol=1e-4,
                          generator=torch.Generator().manual_seed(3), return_stats=True)
        bpd = bits_per_dim(nll, D)
        ode_rows.append({"n": len(x), "probes": args.probes, "rtol": 1e-4, "bpd": f"{bpd.mean():.4f}",
                         "stderr_over_images": f"{bpd.std() / math.sqrt(len(bpd)):.4f}",
                         "hutchinson_stderr_bpd": f"{(st['stderr'] / (D * math.log(2))).mean():.4f}",
                         "steps_mean": f"{st['steps'].double().mean():.1f}", "seconds": f"{time.time() - t0:.0f}"})
        print(ode_rows[-1], flush=True)
        write_csv(OUT / "ode.csv", ode_rows)

    # Samples with ddpm under each variance.
    sample_rows = []
    for n in STEPS if "samples" in parts else ():
        ts = trailing_timesteps(T, n)
        sigmas = discrete_sigmas(schedule, n, "trailing")
        assert torch.allclose(sigmas[:-1].double(), schedule.sigmas[ts.flip(0)].float().double())
        for name in VARIANCES:
            t0 = time.time()
            gen = torch.Generator().manual_seed(10)
            x = float(sigmas[0]) * torch.randn(args.n_samples, 1, 8, 8, generator=gen)
            dfn = den
            if name == "fixed_small":
                var = "posterior"
            elif name == "fixed_large":
                var = "upper"
            elif name == "learned":
                lv = LearnedVariance(model, timesteps=ts)
                dfn, var = lv.denoiser, lv.sampler_variance()
            else:
                var = ancestral_variance(schedule, analytic(ts), timesteps=ts)
            with torch.no_grad():
                out = ddpm(clipped(dfn), x, sigmas, generator=gen, variance=var).clamp(-1, 1)
            ev = evaluate_digits(out)
            hist = ev["class_histogram"]
            sample_rows.append({"steps": n, "variance": name, "fd": f"{ev['fd']:.2f}",
                                "reference_fd": f"{ev['reference_fd']:.2f}", "class_min": min(hist),
                                "class_max": max(hist), "seconds": f"{time.time() - t0:.1f}"})
            print(sample_rows[-1], flush=True)
    if sample_rows:
        write_csv(OUT / "samples.csv", sample_rows)
    if "report" not in parts:
        return
    elbo_rows, sample_rows = read_csv(OUT / "elbo.csv"), read_csv(OUT / "samples.csv")
    ode_rows = read_csv(OUT / "ode.csv") if (OUT / "ode.csv").exists() else []

    md = ["# Likelihood and variances on digits", "", *lines, "",
          "| variance | ELBO bits/dim (K=%d, x0_hat clipped) | stderr | decoder | prior |" % len(chain), "|---|---|---|---|---|"]
    md += [f"| {r['variance']} | {r['bpd']} | {r['stderr']} | {r['decoder_bpd']} | {r['prior_bpd']} |"
           for r in elbo_rows]
    if ode_rows:
        r = ode_rows[0]
        md += ["", f"ODE bits/dim: {r['bpd']} (n = {r['n']}, {r['probes']} Rademacher probes, stderr over images "
               f"{r['stderr_over_images']}, Hutchinson stderr {r['hutchinson_stderr_bpd']}, {r['seconds']} s)"]
    md += ["", "FD (n = %d) of ddpm samples (x0_hat clipped; class count min-max in brackets); reference FD %s"
           % (args.n_samples, sample_rows[0]["reference_fd"]), "",
           "| steps | " + " | ".join(VARIANCES) + " |", "|---" * (len(VARIANCES) + 1) + "|"]
    for n in STEPS:
        cells = {r["variance"]: r for r in sample_rows if int(r["steps"]) == n}
        md.append(f"| {n} | " + " | ".join(f"{cells[v]['fd']} ({cells[v]['class_min']}-{cells[v]['class_max']})"
                                            for v in VARIANCES) + " |")
    (OUT / "output.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

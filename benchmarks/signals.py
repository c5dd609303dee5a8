"""1-D signals measured against the exact process (issue 15).

    python benchmarks/signals.py [--part ar1|tones|all] [--out benchmarks/signals] [--work benchmarks/out/signals]

ar1 (a stationary Gaussian AR(1), phi = 0.9, 64 steps; its law is exactly N(0, phi^|i-j|)):
- the `ar1` preset (unconditional DiffWave network) and the `ar1-csdi` preset (an imputation model:
  observed values and mask as extra channels, CSDI) are trained on the built-in data;
- the network's denoiser against the exact one (`difflab.exact.Gaussian`) on held-out noisy signals:
  RMS of D_net - D_exact beside the RMS of D_exact - x0 (the least possible error) per sigma;
- covariance: relative Frobenius error of the sample covariance of N samples against the exact
  Toeplitz covariance, beside the same for N exact draws (the floor: sampling error alone);
- forecasts of held-out windows at horizons 1, 8 and 32 from their first 64 - h steps: (a) the
  unconditional model through RePaint inpainting (the future is the unknown part), (b) the
  imputation model through its conditioning channels, and exact conditional draws (the Schur
  complement), all with the same number of samples per forecast: CRPS (the same sample estimator
  for all three), 50% / 90% interval coverage.

tones (8 kHz, 128 ms): the `tones` preset; the fundamental frequencies of its samples against the
data's (mean, quartiles, and the two-sample Kolmogorov-Smirnov distance), and a figure of
spectrograms of samples beside data (--out/tones_spectrograms.png) and WAV files of a few samples.

Trained models go to --work (git-ignored; reused when present), tables to --out. Time it alone:
two torch processes on 2 cores slow each other.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import difflab
from difflab.evaluation import crps_samples, fundamental_frequency, interval_coverage
from difflab.exact import Gaussian, ar1_covariance
from difflab.io import atomic
from difflab.io.signals import save_fan_chart, save_spectrograms, write_wav
from difflab.training import PRESETS, train
from difflab.training.data import AR1_PHI, TONES_RATE, load_dataset

QUICK = False  # --quick: short trainings and few forecasts, to check the script
HORIZONS = (1, 8, 32)
SIGMAS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)


def _train(name: str, work: Path, log) -> tuple[difflab.TrainedModel, float]:
    out = work / name
    record = out / "train_seconds.json"
    if not record.exists():
        config = PRESETS[name].replace(steps=30, warmup_steps=5) if QUICK else PRESETS[name]
        t0 = time.perf_counter()
        train(config, out, progress=False, device="cpu")
        atomic.write_text(record, json.dumps({"seconds": time.perf_counter() - t0, "steps": config.steps}))
    info = json.loads(record.read_text())
    log(f"  {name}: {info['steps']} steps in {info['seconds']:.0f} s")
    return difflab.load(out, device="cpu"), info["seconds"]


def _relative_frobenius(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def ar1(work: Path, out: Path, log=print) -> str:
    torch.manual_seed(0)
    model, seconds = _train("ar1", work, log)
    csdi, csdi_seconds = _train("ar1-csdi", work, log)
    length = model.data_shape[1]
    exact = Gaussian(0.0, ar1_covariance(length, AR1_PHI))
    test = load_dataset("ar1", split="test").x
    lines = [f"## ar1: a stationary Gaussian AR(1), phi = {AR1_PHI}, {length} steps",
             "", f"Training on 2 CPU cores: `ar1` {seconds:.0f} s, `ar1-csdi` {csdi_seconds:.0f} s.", ""]

    # the denoiser against the exact one
    gen = torch.Generator().manual_seed(1)
    x0 = test[:500]
    lines += ["| sigma | RMS(D_net - D_exact) | RMS(D_exact - x0) |", "|---|---|---|"]
    for s in SIGMAS:
        x = x0 + s * torch.randn(x0.shape, generator=gen)
        sig = torch.full((len(x),), s)
        with torch.no_grad():
            d_net = model.denoiser(x, sig)
        d_exact = exact.denoiser(x, sig)
        rms = lambda v: float(v.double().square().mean().sqrt())  # noqa: E731
        lines.append(f"| {s:g} | {rms(d_net - d_exact):.4f} | {rms(d_exact - x0):.4f} |")
        log(f"  sigma {s:g}: net vs exact {rms(d_net - d_exact):.4f}, exact vs x0 {rms(d_exact - x0):.4f}")

    # the covariance of samples
    n = 200 if QUICK else 2000
    cov = ar1_covariance(length, AR1_PHI)
    samples = model.sample(n, seed=0, steps=20).double()[:, 0]
    error = _relative_frobenius(torch.cov(samples.T), cov)
    floors = [_relative_frobenius(torch.cov(exact.sample(n, torch.Generator().manual_seed(10 + k)).T), cov)
              for k in range(5)]
    floor = float(np.mean(floors))
    lines += ["", f"Covariance of {n} samples (DPM-Solver++(2M), 20 steps) against phi^|i-j|: relative Frobenius "
              f"error **{error:.4f}**; {n} exact draws: {floor:.4f} (mean of 5 draws of {n}), ratio "
              f"**{error / floor:.2f}x** (target: within 2x). Marginal variance of the samples "
              f"{float(samples.var()):.3f} (exact 1), lag-1 correlation "
              f"{float(torch.corrcoef(torch.stack([samples[:, :-1].flatten(), samples[:, 1:].flatten()]))[0, 1]):.3f} "
              f"(exact {AR1_PHI})."]
    log(f"  covariance error {error:.4f} vs floor {floor:.4f} ({error / floor:.2f}x)")

    # forecasts
    series = 20 if QUICK else 100
    draws = 10 if QUICK else 50
    windows = test[:series]
    lines += ["", f"Forecasts of {series} held-out windows, {draws} samples each (CRPS: the same sample "
              "estimator for all; exact = draws of the Schur-complement conditional; (a) the `ar1` model "
              "through RePaint, 50 DDPM steps, jump 10, 5 resamplings; (b) the `ar1-csdi` model through its "
              "conditioning channels, DPM-Solver++(2M), 20 steps):", "",
              "| horizon | CRPS exact | CRPS (a) RePaint | ratio (a) | CRPS (b) CSDI | ratio (b) | 90% cov. exact / (a) / (b) "
              "| 50% cov. exact / (a) / (b) | seconds (a) / (b) |", "|---|---|---|---|---|---|---|---|---|"]
    for h in HORIZONS:
        past, future = windows[..., :length - h], windows[..., length - h:]
        known = torch.arange(length) < length - h
        exact_draws = torch.stack([
            exact.sample_conditional(known, w[0, :length - h].double(), draws, torch.Generator().manual_seed(i))
            for i, w in enumerate(windows)], 1)[:, :, None].float()  # (S, series, 1, h)
        t0 = time.perf_counter()
        a = model.forecast(past, h, draws, method="repaint", steps=50, jump_length=10, resamplings=5, seed=0)
        ta = time.perf_counter() - t0
        t0 = time.perf_counter()
        b = csdi.forecast(past, h, draws, seed=0)
        tb = time.perf_counter() - t0
        scores = {k: (float(crps_samples(v, future).mean()), interval_coverage(v, future, 0.9),
                      interval_coverage(v, future, 0.5)) for k, v in (("exact", exact_draws), ("a", a), ("b", b))}
        e, sa, sb = scores["exact"], scores["a"], scores["b"]
        lines.append(f"| {h} | {e[0]:.4f} | {sa[0]:.4f} | {sa[0] / e[0]:.3f} | {sb[0]:.4f} | {sb[0] / e[0]:.3f} | "
                     f"{e[1]:.1%} / {sa[1]:.1%} / {sb[1]:.1%} | {e[2]:.1%} / {sa[2]:.1%} / {sb[2]:.1%} | "
                     f"{ta:.0f} / {tb:.0f} |")
        log(f"  horizon {h}: CRPS exact {e[0]:.4f}, (a) {sa[0]:.4f} ({sa[0] / e[0]:.3f}x), (b) {sb[0]:.4f} "
            f"({sb[0] / e[0]:.3f}x); 90% coverage {e[1]:.1%} / {sa[1]:.1%} / {sb[1]:.1%}")
        if h == 32:
            save_fan_chart(past[0, 0], b[:, 0, 0], out / "ar1_forecast.png", truth=future[0, 0],
                           title=f"ar1-csdi: {draws} forecasts of 32 steps (median, 50% and 90% bands)")
    lines += ["", "Target: CRPS within 1.1x of the exact conditional's. Figure: `benchmarks/signals/ar1_forecast.png`."]
    return "\n".join(lines)


def tones(work: Path, out: Path, log=print) -> str:
    model, seconds = _train("tones", work, log)
    n = 16 if QUICK else 200
    t0 = time.perf_counter()
    x = model.sample(n, seed=0, steps=20)
    ms = (time.perf_counter() - t0) / n * 1000
    data = load_dataset("tones", split="test", size=n).x
    f_model, f_data = fundamental_frequency(x, TONES_RATE), fundamental_frequency(data, TONES_RATE)
    from scipy.stats import ks_2samp

    ks = ks_2samp(f_model, f_data)
    save_spectrograms(x, data, TONES_RATE, out / "tones_spectrograms.png")
    for i in range(3):
        write_wav(out / f"tones_sample_{i}.wav", x[i], TONES_RATE)
    q = lambda f: " / ".join(f"{v:.0f}" for v in np.percentile(f, [25, 50, 75]))  # noqa: E731
    peak = float(x.abs().amax((1, 2)).mean())
    lines = [f"## tones: 8 kHz, {model.data_shape[1]} samples", "",
             f"Training on 2 CPU cores: {seconds:.0f} s. Sampling (DPM-Solver++(2M), 20 steps): {ms:.0f} ms per tone.", "",
             "| fundamental frequency (Hz) | mean | quartiles | peak amplitude |", "|---|---|---|---|",
             f"| {n} samples | {f_model.mean():.0f} | {q(f_model)} | {peak:.2f} |",
             f"| {n} test tones | {f_data.mean():.0f} | {q(f_data)} | {float(data.abs().amax((1, 2)).mean()):.2f} |",
             "", f"Two-sample Kolmogorov-Smirnov distance of the f0 distributions: {ks.statistic:.3f} "
             f"(p = {ks.pvalue:.3g}). Figure: `benchmarks/signals/tones_spectrograms.png`; three samples as "
             "`benchmarks/signals/tones_sample_*.wav`."]
    log(f"  f0 mean {f_model.mean():.0f} vs {f_data.mean():.0f} Hz, KS {ks.statistic:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("ar1", "tones", "all"), default="all")
    parser.add_argument("--out", default="benchmarks/signals", type=Path)
    parser.add_argument("--work", default="benchmarks/out/signals", type=Path)
    parser.add_argument("--quick", action="store_true", help="short trainings (checks the script)")
    args = parser.parse_args()
    global QUICK
    QUICK = args.quick
    args.out.mkdir(parents=True, exist_ok=True)
    sections = []
    if args.part in ("ar1", "all"):
        print("ar1:")
        sections.append(ar1(args.work, args.out))
    if args.part in ("tones", "all"):
        print("tones:")
        sections.append(tones(args.work, args.out))
    text = "# Signals: AR(1) against its exact law, tones (benchmarks/signals.py)\n\n" + "\n\n".join(sections) + "\n"
    atomic.write_text(args.out / ("output.md" if args.part == "all" else f"output_{args.part}.md"), text)
    print("\n" + text)


if __name__ == "__main__":
    main()

"""`difflab eval`: sample quality (Fréchet distance, class match) or held-out bits/dim of a digits
model; forecast scores (CRPS, coverage, PIT) or the pitch distribution of a signal model."""
from __future__ import annotations

from pathlib import Path

from .common import (DEFAULT_SAMPLER, UserError, add_model_options, add_sampling_options, check_positive,
                     check_sampler, load_model, sampler_options)


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="sample quality of a digits model (FD and classifier) or a signal model "
                       "(forecast CRPS, pitch)",
                       description="Digits models: the Fréchet distance of N samples to the digits train set in the "
                       "features of a reference classifier, beside the held-out test digits' value. Models of the "
                       "built-in ar1 or sines signals: forecasts of N test windows at horizons 1, 8 and 32 (CRPS, "
                       "interval coverage, PIT histogram; for ar1 beside the exact Gaussian forecast's CRPS). "
                       "tones: the fundamental frequencies of N samples and N test tones.")
    p.add_argument("dir", type=Path, metavar="DIR", help="trained model directory (digits, ar1, sines or tones)")
    p.add_argument("--n", type=int, default=300, metavar="N", help="number of samples, or test windows to forecast "
                   "(default: %(default)s, the size of the held-out reference)")
    p.add_argument("--samples", type=int, default=100, metavar="S", help="ar1 and sines: samples per forecast "
                   "(default: %(default)s)")
    p.add_argument("--sampler", metavar="NAME", help=f"sampler name (default: {DEFAULT_SAMPLER}; forecasts: the "
                   "imputation method's own, see 'difflab forecast --help')")
    p.add_argument("--steps", type=int, metavar="K", help="sampling steps (default: a distilled model's own, else 20; "
                   "forecasts: the imputation method's own)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: %(default)s)")
    p.add_argument("--guidance", type=float, metavar="W", help="classifier-free guidance scale (conditional models)")
    p.add_argument("--nll", action="store_true", help="instead: bits/dim of N held-out test images by the "
                   "probability-flow ODE (and the ELBO for DiscreteVP models, VDM's continuous-time bound for "
                   "LogSNRTable models)")
    p.add_argument("--elbo-samples", type=int, default=64, metavar="S", help="with --nll on a LogSNRTable (VDM) "
                   "model: times t per image of the continuous-time bound (default: %(default)s)")
    p.add_argument("--trace", choices=("exact", "hutchinson"), default="exact", help="with --nll: the divergence "
                   "trace (default: %(default)s)")
    p.add_argument("--probes", type=int, metavar="P", help="with --nll --trace hutchinson: probes per image")
    add_sampling_options(p)
    add_model_options(p)
    p.set_defaults(func=run)


def run(args) -> None:
    """`difflab eval DIR`: :func:`difflab.evaluation.evaluate_digits` of N samples (and the class
    match of a conditional model)."""
    from ..evaluation import classify, evaluate_digits, format_digits_eval

    if args.nll:
        return _eval_nll(args)
    if args.sampler is not None:
        check_sampler(args.sampler)
    check_positive(n=args.n, steps=args.steps, samples=args.samples)
    model = load_model(args, args.dir)
    if model.data_kind == "signal":
        return _eval_signals(args, model)
    if args.n < 2:
        raise UserError("--n must be at least 2 for a Fréchet distance")
    if model.config.data != "digits":
        raise UserError(f"eval supports models of the built-in digits, ar1, sines and tones data only for now; "
                        f"{args.dir} was trained on {model.config.data!r}")
    y = model.labels(None, args.n)  # conditional models: every class in turn
    x = model.sample(args.n, sampler=args.sampler or DEFAULT_SAMPLER, steps=args.steps, seed=args.seed, y=y,
                     guidance=args.guidance, progress=True, schedule=args.schedule, **sampler_options(args))
    result = evaluate_digits(x)
    print(format_digits_eval(result))
    if y is not None:
        accuracy = (classify(x) == y).double().mean().item()
        print(f"class match: {accuracy:.1%} of samples are classified as the digit they were conditioned on")


def _eval_nll(args) -> None:
    """Bits/dim of held-out test images: the probability-flow ODE on dequantized data (and the ELBO
    for a DiscreteVP model, VDM's continuous-time bound for a LogSNRTable one), as mean +- standard
    error over the images."""
    import math

    import torch

    from ..likelihood import bits_per_dim, dequantize, elbo_bpd, ode_nll, vdm_elbo_bpd
    from ..schedules import DiscreteVP, LogSNRTable
    from ..training import BUILTINS, load_dataset

    check_positive(n=args.n, probes=args.probes, elbo_samples=args.elbo_samples)
    if args.n < 2:
        raise UserError("--n must be at least 2 for a standard error")
    model = load_model(args, args.dir)  # the likelihood runs in float32 whatever --dtype says
    if model.config.data not in BUILTINS or model.data_kind != "image":
        raise UserError(f"eval --nll needs a model of a built-in image data set (held-out test images); "
                        f"{args.dir} was trained on {model.config.data!r}")
    x = load_dataset(model.config.data, split="test").x[:args.n].to(model.device)
    gen = torch.Generator(model.device).manual_seed(args.seed)
    lo, hi = model.schedule.sigma_min, model.schedule.sigma_max
    nll = ode_nll(model.denoiser, dequantize(x, gen), sigma_min=lo, sigma_max=hi, trace=args.trace,
                  probes=args.probes or 1, generator=gen, progress=True)
    unconditional = " (the null label's unconditional density)" if model.num_classes else ""
    print(f"{len(x)} held-out {model.config.data} images, sigma {lo:g}..{hi:g}, {args.trace} trace{unconditional}")

    def report(name, bpd):
        bpd = bpd.double()
        print(f"{name}: {bpd.mean():.3f} ± {bpd.std() / math.sqrt(len(bpd)):.3f} bits/dim (mean ± standard error)")

    report("ODE (dequantized, bins of 2/255)", bits_per_dim(nll, x[0].numel()))
    if isinstance(model.schedule, DiscreteVP):
        elbo = elbo_bpd(model.denoiser, x, model.schedule, generator=gen, progress=True)
        report(f"ELBO ({model.schedule.T} steps, discretized decoder)", elbo)
    if isinstance(model.schedule, LogSNRTable):
        elbo = vdm_elbo_bpd(model.denoiser, x, model.schedule, samples=args.elbo_samples, generator=gen, progress=True)
        report(f"ELBO (continuous time, VDM; {args.elbo_samples} t per image)", elbo)


FORECAST_HORIZONS = (1, 8, 32)  # eval forecasts the last h steps of each test window for those h < L
QUARTILES = (0.25, 0.5, 0.75)


def _eval_signals(args, model) -> None:
    """Models of built-in signals: forecast scores (ar1, sines) or the pitch distribution (tones)."""
    from ..training import load_dataset

    if model.config.data not in ("ar1", "sines", "tones"):
        raise UserError(f"eval supports signal models of the built-in ar1, sines and tones data; {args.dir} was "
                        f"trained on {model.config.data!r}")
    if args.schedule != "auto" or args.guidance is not None:
        raise UserError("--schedule and --guidance apply to digits models only")
    test = load_dataset(model.config.data, split="test")
    if model.config.data == "tones":
        return _eval_pitch(args, model, test)
    return _eval_forecasts(args, model, test.x[:args.n])


def _eval_forecasts(args, model, x) -> None:
    """A table of forecast scores of the test windows ``x`` (N, C, L) at each horizon h < L, the
    forecast conditioned on the first L - h steps; for ar1 beside the CRPS of the exact Gaussian
    conditional (Schur complement, :meth:`difflab.exact.Gaussian.conditional`) and their ratio."""
    from ..evaluation.signals import forecast_scores

    length = x.shape[-1]
    exact = model.config.data == "ar1" and x.shape[1] == 1
    print(f"{len(x)} {model.config.data} test windows of {length} steps, {args.samples} samples per forecast")
    print(f"{'horizon':>7}  {'CRPS':>7}" + (f"  {'exact':>7}  {'ratio':>5}" if exact else "")
          + f"  {'cover 50%':>9}  {'cover 90%':>9}  PIT histogram (10 bins, 1 = calibrated)")
    for h in (h for h in FORECAST_HORIZONS if h < length):
        past, future = x[..., :length - h], x[..., length - h:]
        samples = model.forecast(past, h, args.samples, sampler=args.sampler, steps=args.steps, seed=args.seed,
                                 progress=True, **sampler_options(args))
        scores = forecast_scores(samples, future)
        row = f"{h:>7}  {scores['crps']:>7.4f}"
        if exact:
            crps = _ar1_exact_crps(past, future)
            row += f"  {crps:>7.4f}  {scores['crps'] / crps:>5.2f}"
        pit = " ".join(f"{v:.2f}" for v in scores["pit"])
        print(f"{row}  {scores['coverage_50']:>9.1%}  {scores['coverage_90']:>9.1%}  {pit}")


def _ar1_exact_crps(past, future) -> float:
    """Mean CRPS of the exact forecast of the built-in AR(1) windows: the Gaussian law of the future
    given the past, with closed-form CRPS per point (Gneiting et al. 2005)."""
    import torch

    from ..evaluation.signals import crps_gaussian
    from ..exact import Gaussian, ar1_covariance
    from ..training.data import AR1_PHI

    length = past.shape[-1] + future.shape[-1]
    law = Gaussian(0.0, ar1_covariance(length, AR1_PHI))
    mean, cov = law.conditional(torch.arange(length) < past.shape[-1], past.reshape(len(past), -1))
    return float(crps_gaussian(mean, cov.diagonal().sqrt(), future.reshape(len(future), -1)).mean())


def _eval_pitch(args, model, test) -> None:
    """The fundamental frequency (mean, standard deviation, quartiles) of N samples beside N test tones."""
    import numpy as np

    from ..evaluation.signals import fundamental_frequency

    rate = model.sample_rate or test.sample_rate
    x = model.sample(args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, progress=True,
                     **sampler_options(args))
    print(f"fundamental frequency (Hz) at {rate} Hz")
    print(f"{'':<16}{'mean':>8}{'std':>8}" + "".join(f"{f'{q:.0%}':>8}" for q in QUARTILES))
    for name, signals in ((f"{args.n} samples", x), (f"{min(args.n, len(test.x))} test tones", test.x[:args.n])):
        f0 = fundamental_frequency(signals, rate)
        quartiles = "".join(f"{v:>8.1f}" for v in np.quantile(f0, QUARTILES))
        print(f"{name:<16}{f0.mean():>8.1f}{f0.std():>8.1f}{quartiles}")

"""`difflab eval`: sample quality (Fréchet distance, class match) or held-out bits/dim of a model."""
from __future__ import annotations

from pathlib import Path

from .common import (DEFAULT_SAMPLER, UserError, add_model_options, add_sampling_options, check_positive,
                     check_sampler, load_model, sampler_options)


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="sample quality of a digits model (FD and classifier)",
                       description="Fréchet distance of N samples to the digits train set in the "
                       "features of a reference classifier, beside the held-out test digits' value.")
    p.add_argument("dir", type=Path, metavar="DIR", help="trained model directory (digits models only for now)")
    p.add_argument("--n", type=int, default=300, metavar="N", help="number of samples (default: %(default)s, "
                   "the size of the held-out reference)")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, metavar="NAME", help="sampler name (default: %(default)s)")
    p.add_argument("--steps", type=int, metavar="K", help="sampling steps (default: a distilled model's own, else 20)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: %(default)s)")
    p.add_argument("--guidance", type=float, metavar="W", help="classifier-free guidance scale (conditional models)")
    p.add_argument("--nll", action="store_true", help="instead: bits/dim of N held-out test images by the "
                   "probability-flow ODE (and the ELBO for DiscreteVP models)")
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
    check_positive(n=args.n, steps=args.steps)
    if args.n < 2:
        raise UserError("--n must be at least 2 for a Fréchet distance")
    model = load_model(args, args.dir)
    if model.config.data != "digits":
        raise UserError(f"eval supports models of the built-in digits data only for now; {args.dir} "
                        f"was trained on {model.config.data!r}")
    y = model.labels(None, args.n)  # conditional models: every class in turn
    x = model.sample(args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, y=y,
                     guidance=args.guidance, progress=True, schedule=args.schedule, **sampler_options(args))
    result = evaluate_digits(x)
    print(format_digits_eval(result))
    if y is not None:
        accuracy = (classify(x) == y).double().mean().item()
        print(f"class match: {accuracy:.1%} of samples are classified as the digit they were conditioned on")


def _eval_nll(args) -> None:
    """Bits/dim of held-out test images: the probability-flow ODE on dequantized data (and the ELBO
    for a DiscreteVP model), as mean +- standard error over the images."""
    import math

    import torch

    from ..likelihood import bits_per_dim, dequantize, elbo_bpd, ode_nll
    from ..schedules import DiscreteVP
    from ..training import BUILTINS, load_dataset

    check_positive(n=args.n, probes=args.probes)
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

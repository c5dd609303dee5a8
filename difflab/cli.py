"""The `difflab` command line: a thin layer over the library, one small function per command.

Every command has `--help`. Exit status: 0 on success, 2 with one line `difflab: error: ...` on a
user error (bad options, a missing model directory, unreadable data: the library raises ValueError
subclasses for those, caught here); genuine bugs still show their traceback. torch and matplotlib
are imported inside the commands, so building the parser and printing help stay cheap.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROG = "difflab"
DEFAULT_SAMPLER = "dpmpp_2m"
EDIT_TILE_PX = 64  # edit figures show each image at least this many pixels wide


class UserError(ValueError):
    """A mistake in the command line, reported as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `difflab sample: error: ... (see --help)`, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --- commands -------------------------------------------------------------------------------------


def cmd_demo(args) -> None:
    """`difflab demo`: see :func:`difflab.demo.run`."""
    from . import demo

    demo.run(args.out, steps=args.steps)


def cmd_train(args) -> None:
    """`difflab train`: a preset, a TOML file or the resumed run's config, plus overrides, to
    :func:`difflab.train.train`."""
    from .config import PRESETS, load_config
    from .train import train

    if args.config is not None:
        config = load_config(args.config)
    elif args.preset is not None:
        if args.preset not in PRESETS:
            raise UserError(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
        config = PRESETS[args.preset]
    elif args.resume:
        from .checkpoint import find_model_dir, read_config

        config, _ = read_config(find_model_dir(args.out))
    else:
        raise UserError("give --preset NAME or --config FILE.toml (or --resume to continue a run)")
    overrides = dict(_parse_set(item) for item in args.set)
    flags = {"data": args.data, "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
             "cond_drop": args.cond_drop}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    model_dir = train(config.replace(**overrides), args.out, resume=args.resume)
    print(f"model saved in {model_dir}")


def _parse_set(item: str) -> tuple[str, str]:
    """`key=value` -> (key, value), with dashes in the key read as underscores."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects key=value, got {item!r}")
    return key.strip().replace("-", "_"), value.strip()


def cmd_sample(args) -> None:
    """`difflab sample`: :meth:`TrainedModel.sample`, written as a PNG grid / scatter plot and/or .npz."""
    from . import imageio, load

    if args.out is None and args.npz is None:
        raise UserError("give --out FILE.png, --npz FILE.npz or both")
    _check_sampler(args.sampler)
    _check_positive(n=args.n, steps=args.steps, batch_size=args.batch_size)
    model = load(args.dir)
    classifier = _guidance_classifier(args.classifier, args.classifier_scale, model.device)
    x = model.sample(args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, y=args.class_id,
                     guidance=args.guidance, classifier=classifier, classifier_scale=args.classifier_scale or 1.0,
                     batch_size=args.batch_size, progress=True)
    if args.out is not None:
        if x.ndim == 4:
            imageio.save_grid(x, args.out)
        elif x.ndim == 2 and x.shape[1] == 2:
            imageio.save_scatter(x, args.out, title=f"{args.n} samples, {args.sampler}, {args.steps} steps")
        else:
            raise UserError(f"cannot draw samples of shape {tuple(x.shape[1:])} as a PNG; use --npz only")
        print(f"wrote {args.out}")
    if args.npz is not None:
        import numpy as np

        arrays = {"x": x.cpu().numpy()}
        labels = model.labels(args.class_id, args.n, classifier)  # the ids sample() used
        if labels is not None:
            arrays["y"] = labels.numpy()
        Path(args.npz).parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.npz, **arrays)
        print(f"wrote {args.npz} (x: {arrays['x'].shape})")


def _guidance_classifier(path, scale, device):
    """The ``log p(y | x, sigma)`` of a classifier directory for classifier guidance, or None."""
    if path is None:
        if scale is not None:
            raise UserError("--classifier-scale needs --classifier DIR")
        return None
    from .train_classifier import load_classifier

    return load_classifier(path, device)[1]


def cmd_train_classifier(args) -> None:
    from .train_classifier import train_classifier

    _check_positive(steps=args.steps, batch_size=args.batch_size)
    flags = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    meta = train_classifier(args.data, args.out, **{k: v for k, v in flags.items() if v is not None})
    accuracy = ", ".join(f"{a:.1%} at sigma {s}" for s, a in meta["accuracy"].items())
    print(f"held-out accuracy ({meta['accuracy_split']} split, {meta['num_classes']} classes): {accuracy}")
    print(f"classifier saved in {args.out}")


def cmd_info(args) -> None:
    """`difflab info [DIR]`: presets and samplers, or one model's configuration."""
    if args.dir is None:
        _print_presets()
        _print_samplers()
        return
    from . import load
    from .nets import count_parameters

    model = load(args.dir)
    c = model.config
    classes = f"{model.num_classes} classes" if model.num_classes else "unconditional"
    print(f"{args.dir}: preset {c.preset}, trained {model.step} steps")
    print(f"  data      {c.data} ({model.data_kind}, shape {model.data_shape}, {classes})")
    print(f"  network   {c.network}, {count_parameters(model.net):,} parameters")
    print(f"  diffusion {model.schedule.to_dict()}, prediction {c.prediction}, weighting {c.weighting}")
    print("  config:")
    for key, value in c.to_dict().items():
        print(f"    {key:<16} {value}")


def _print_presets() -> None:
    import torch

    from .config import PRESETS
    from .nets import UNET_PRESETS, UNet, count_parameters

    print("training presets (difflab train --preset NAME):")
    for name, config in PRESETS.items():
        print(f"  {name:<14} {_describe_preset(config)}")
    print("UNet presets (network only):")
    with torch.device("meta"):  # counts parameters without allocating them
        for name, net_config in UNET_PRESETS.items():
            params = count_parameters(UNet(net_config))
            print(f"  {name:<14} {params / 1e6:6.2f}M parameters, {net_config.resolution}x"
                  f"{net_config.resolution}x{net_config.in_channels}")


def _describe_preset(config) -> str:
    import torch

    from .nets import build_network, count_parameters

    net = dict(config.net, **({"num_classes": config.num_classes} if config.num_classes else {}))
    with torch.device("meta"):
        params = count_parameters(build_network(config.network, net))
    return (f"{config.network} {params / 1e6:.2f}M parameters, data {config.data or '(give --data)'}, "
            f"{config.steps:,} steps of batch {config.batch_size}")


def _print_samplers() -> None:
    from .samplers import SAMPLERS, STOCHASTIC, sampler_options

    print("samplers (--sampler NAME):")
    for name, fn in SAMPLERS.items():
        options = ", ".join(f"{k}={v}" for k, v in sampler_options(name).items())
        kind = "stochastic" if name in STOCHASTIC else "deterministic"
        print(f"  {name:<16} {kind:<13} {options or '-'}")
        print(f"  {'':<16} {_summary(fn.__doc__)}")


def _summary(doc: str | None, width: int = 96) -> str:
    """The first paragraph of a docstring on one line, cut at a word boundary to ``width`` characters."""
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    return text if len(text) <= width else text[: text.rfind(" ", 0, width - 3)] + " ..."


def cmd_eval(args) -> None:
    """`difflab eval DIR`: :func:`difflab.evaluate.evaluate_digits` of N samples (and the class
    match of a conditional model)."""
    from . import load
    from .evaluate import classify, evaluate_digits, format_digits_eval

    if args.nll:
        return _eval_nll(args)
    _check_sampler(args.sampler)
    _check_positive(n=args.n, steps=args.steps)
    if args.n < 2:
        raise UserError("--n must be at least 2 for a Fréchet distance")
    model = load(args.dir)
    if model.config.data != "digits":
        raise UserError(f"eval supports models of the built-in digits data only for now; {args.dir} "
                        f"was trained on {model.config.data!r}")
    y = model.labels(None, args.n)  # conditional models: every class in turn
    x = model.sample(args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, y=y,
                     guidance=args.guidance, progress=True)
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

    from . import load
    from .data import BUILTINS, load_dataset
    from .likelihood import bits_per_dim, dequantize, elbo_bpd, ode_nll
    from .schedules import DiscreteVP

    _check_positive(n=args.n, probes=args.probes)
    if args.n < 2:
        raise UserError("--n must be at least 2 for a standard error")
    model = load(args.dir)
    if model.config.data not in BUILTINS or model.data_kind != "image":
        raise UserError(f"eval --nll needs a model of a built-in image data set (held-out test images); "
                        f"{args.dir} was trained on {model.config.data!r}")
    x = load_dataset(model.config.data, split="test").x[:args.n]
    gen = torch.Generator().manual_seed(args.seed)
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


# --- edit: each method returns the figure's rows (each (B, C, H, W)) and their names ---------------


def cmd_edit(args) -> None:
    import torch

    from . import imageio, load
    from .schedules import karras_sigmas

    _check_positive(n=args.n, steps=args.steps)
    if getattr(args, "sampler", None) is not None:
        _check_sampler(args.sampler)
    model = load(args.model_dir)
    if model.data_kind != "image":
        raise UserError(f"edit needs an image model; {args.model_dir} was trained on {model.config.data!r} points")
    x = _edit_inputs(args, model.data_shape).to(model.device)
    sigmas = karras_sigmas(args.steps, model.schedule.sigma_min, model.schedule.sigma_max).to(model.device)
    gen = torch.Generator(model.device).manual_seed(args.seed)
    with torch.inference_mode():
        rows, names = _EDITORS[args.editor](model.denoiser, x, sigmas, gen, args)
    scale = max(1, -(-EDIT_TILE_PX // min(x.shape[-2:])))  # small images (digits) are upscaled
    imageio.save_grid(torch.cat(rows).clamp(-1, 1).cpu(), args.out, nrow=len(x), scale=scale)
    print(f"wrote {args.out} (rows: {' | '.join(names)})")


def _edit_inputs(args, shape):
    """The images to edit, (B, C, H, W) in [-1, 1], checked against the model's (C, H, W)."""
    from . import imageio
    from .data import BUILTINS, load_dataset

    if args.from_data is not None:
        x, what = load_dataset(args.from_data, split="test" if args.from_data in BUILTINS else "train").x, args.from_data
    elif args.input.suffix.lower() in (".npz", ".npy"):
        x, what = load_dataset(args.input).x, args.input
    else:
        x, what = imageio.load_image(args.input, channels=shape[0])[None], args.input
    x = x[:args.n]
    if tuple(x.shape[1:]) != tuple(shape):
        raise UserError(f"{what} holds data of shape {'x'.join(map(str, x.shape[1:]))} but the model makes "
                        f"{'x'.join(map(str, shape))} images; resize the input to match")
    return x


def _edit_mask(args, x, gen):
    """Boolean mask broadcasting to x, True where the pixel is known and kept: --mask (white = keep),
    else --mask-kind center (the middle half of each side generated) or random (half the pixels)."""
    import torch

    from . import imageio

    h, w = x.shape[-2:]
    if args.mask is not None:
        mask = imageio.load_image(args.mask, channels=1)
        if mask.shape[-2:] != (h, w):
            raise UserError(f"the mask {args.mask} is {mask.shape[-1]}x{mask.shape[-2]} pixels but the "
                            f"images are {w}x{h}")
        return (mask > 0)[None].to(x.device)
    if args.mask_kind == "random":
        return torch.rand((len(x), 1, h, w), generator=gen, device=x.device) < 0.5
    keep = torch.ones((1, 1, h, w), dtype=torch.bool, device=x.device)
    keep[..., h // 4:h - h // 4, w // 4:w - w // 4] = False
    return keep


def _sampler_option(args) -> dict:
    return {} if args.sampler is None else {"sampler": args.sampler}


def _edit_inpaint(denoiser, x, sigmas, gen, args):
    from .editing import inpaint

    _check_positive(jump_length=args.jump_length, resamplings=args.resamplings)
    options = {k: v for k, v in {"jump_length": args.jump_length, "resamplings": args.resamplings}.items()
               if v is not None}
    if options and args.method == "replace":
        raise UserError("--jump-length and --resamplings apply to --method repaint only")
    keep = _edit_mask(args, x, gen)
    out = inpaint(denoiser, x, keep, sigmas, method=args.method, generator=gen, **options, **_sampler_option(args))
    return [x, x.where(keep, 0.0), out], ("input", "known pixels (grey: generated)", args.method)


def _edit_sdedit(denoiser, x, sigmas, gen, args):
    from .editing import sdedit

    out = sdedit(denoiser, x, sigmas, strength=args.strength, generator=gen, **_sampler_option(args))
    return [x, out], ("guide", f"SDEdit at strength {args.strength}")


def _edit_ilvr(denoiser, x, sigmas, gen, args):
    from .editing import ilvr, low_pass

    out = ilvr(denoiser, x, sigmas, factor=args.factor, generator=gen, **_sampler_option(args))
    return [x, low_pass(x, args.factor), out], ("reference", f"its low frequencies (factor {args.factor})", "ILVR")


def _edit_invert(denoiser, x, sigmas, gen, args):
    from .editing import invert, reconstruct

    x_T = invert(denoiser, x, sigmas, **_sampler_option(args))
    out = reconstruct(denoiser, x_T, sigmas, **_sampler_option(args))
    rmse = (out - x).double().square().mean().sqrt().item()
    print(f"reconstruction RMSE {rmse:.4g} (invert then reconstruct, {len(sigmas) - 1} steps)")
    return [x, x_T / sigmas[0], out], ("input", "inverted noise x_T / sigma_max", "reconstruction")


def _edit_ddrm(denoiser, x, sigmas, gen, args):
    import torch

    from .editing import Colorization, Inpainting, SuperResolution, ddrm

    if args.task != "inpaint" and (args.mask is not None or args.mask_kind is not None):
        raise UserError("--mask and --mask-kind apply to --task inpaint only")
    operators = {"sr2": lambda: SuperResolution(2), "sr4": lambda: SuperResolution(4),
                 "colorize": Colorization, "inpaint": lambda: Inpainting(_edit_mask(args, x, gen))}
    op = operators[args.task]()
    y = op.H(x)
    y = y + args.sigma_y * torch.randn(y.shape, generator=gen, device=y.device)
    out = ddrm(denoiser, y, op, sigmas, sigma_y=args.sigma_y, generator=gen)
    return [x, op.H_pinv(y), out], ("input", f"measurement ({args.task}, sigma_y {args.sigma_y})", "DDRM")


_EDITORS = {"inpaint": _edit_inpaint, "sdedit": _edit_sdedit, "ilvr": _edit_ilvr, "invert": _edit_invert,
            "ddrm": _edit_ddrm}


def cmd_bench_samplers(args) -> int:
    """`difflab bench samplers ...`: the options and the run belong to :mod:`difflab.bench_samplers`."""
    from . import bench_samplers

    parser = _Parser(prog=f"{PROG} bench samplers", description=bench_samplers.__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_samplers.add_arguments(parser)
    return bench_samplers.run_cli(parser.parse_args(args.rest))


def _check_sampler(name: str) -> None:
    from .samplers import SAMPLERS

    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")


def _check_positive(**values) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")


# --- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (no heavy imports)."""
    parser = _Parser(prog=PROG, description="Diffusion models: train, sample, evaluate, benchmark.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", help="train a small digits model and draw figures (about 5 minutes on CPU)",
                       description="Train the digits preset, then write samples, the forward and "
                       "reverse processes, a sampler comparison and FD / accuracy numbers.")
    p.add_argument("--out", default="difflab-demo", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--steps", type=int, metavar="N", help="training steps (default: the digits preset's)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model from a preset or a TOML config",
                       description="Train a model; the directory --out receives the model, samples/ "
                       "and log.csv. See 'difflab info' for the presets.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", metavar="NAME", help="a preset name (see 'difflab info')")
    source.add_argument("--config", type=Path, metavar="FILE.toml", help="a TOML config file (its key preset = NAME starts "
                        "from a preset)")
    p.add_argument("--data", metavar="PATH", help="data set: a built-in name, an image folder, .npy or .npz")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="run directory")
    p.add_argument("--steps", type=int, metavar="N", help="training steps")
    p.add_argument("--batch-size", type=int, metavar="B", help="batch size")
    p.add_argument("--seed", type=int, metavar="S", help="random seed")
    p.add_argument("--cond-drop", type=float, metavar="P", help="probability of dropping the class label "
                   "(classifier-free guidance training)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out "
                   "(with its saved config unless --preset or --config is given)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw samples from a trained model",
                       description="Draw samples; write a PNG grid (a scatter plot for 2-D data) "
                       "and/or the raw array as .npz (key x, and y for class-conditional samples).")
    p.add_argument("dir", type=Path, metavar="DIR", help="trained model directory")
    p.add_argument("--n", type=int, required=True, metavar="N", help="number of samples")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, metavar="NAME", help="sampler name (default: %(default)s; "
                   "see 'difflab info')")
    p.add_argument("--steps", type=int, default=20, metavar="K", help="sampling steps (default: %(default)s)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed")
    p.add_argument("--out", type=Path, metavar="FILE.png", help="PNG file (a grid of images, or a scatter plot of 2-D points)")
    p.add_argument("--npz", type=Path, metavar="FILE", help="also save the samples as .npz")
    p.add_argument("--class", dest="class_id", type=int, metavar="C", help="class id (conditional models)")
    p.add_argument("--guidance", type=float, metavar="W", help="classifier-free guidance scale (1: plain conditional)")
    p.add_argument("--classifier", type=Path, metavar="CLS_DIR", help="classifier guidance with a classifier from "
                   "'difflab train-classifier' (unconditional models too)")
    p.add_argument("--classifier-scale", type=float, metavar="S", help="classifier guidance scale (default: 1)")
    p.add_argument("--batch-size", type=int, metavar="B", help="samples per network batch")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("train-classifier", help="train a noise-aware classifier for classifier guidance",
                       description="Train a classifier p(y | x, sigma) on noisy labelled images "
                       "(Dhariwal & Nichol 2021) for 'difflab sample --classifier DIR'.")
    p.add_argument("--data", default="digits", metavar="PATH", help="labelled image data: a built-in name or a "
                   "path (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    p.add_argument("--steps", type=int, metavar="N", help="training steps")
    p.add_argument("--batch-size", type=int, metavar="B", help="batch size")
    p.add_argument("--lr", type=float, metavar="LR", help="learning rate")
    p.add_argument("--seed", type=int, metavar="S", help="random seed")
    p.set_defaults(func=cmd_train_classifier)

    _add_edit_parser(sub)

    p = sub.add_parser("info", help="list presets and samplers, or describe a trained model",
                       description="Without DIR: the presets with their parameter counts and the "
                       "samplers with their options. With DIR: the model's configuration.")
    p.add_argument("dir", type=Path, metavar="DIR", nargs="?", help="trained model directory")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("eval", help="sample quality of a digits model (FD and classifier)",
                       description="Fréchet distance of N samples to the digits train set in the "
                       "features of a reference classifier, beside the held-out test digits' value.")
    p.add_argument("dir", type=Path, metavar="DIR", help="trained model directory (digits models only for now)")
    p.add_argument("--n", type=int, default=300, metavar="N", help="number of samples (default: %(default)s, "
                   "the size of the held-out reference)")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, metavar="NAME", help="sampler name (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, metavar="K", help="sampling steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: %(default)s)")
    p.add_argument("--guidance", type=float, metavar="W", help="classifier-free guidance scale (conditional models)")
    p.add_argument("--nll", action="store_true", help="instead: bits/dim of N held-out test images by the "
                   "probability-flow ODE (and the ELBO for DiscreteVP models)")
    p.add_argument("--trace", choices=("exact", "hutchinson"), default="exact", help="with --nll: the divergence "
                   "trace (default: %(default)s)")
    p.add_argument("--probes", type=int, metavar="P", help="with --nll --trace hutchinson: probes per image")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="benchmarks", description="Benchmarks that write tables and figures.")
    bench = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True, parser_class=_Parser)
    # The benchmark defines its own options; its module (and torch) load only when it runs.
    p = bench.add_parser("samplers", help="compare every sampler against exact solutions",
                         add_help=False, prefix_chars="\0")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench_samplers)
    return parser


def _add_edit_parser(sub) -> None:
    p = sub.add_parser("edit", help="inpaint, SDEdit, ILVR, invert or restore (DDRM) images with a model",
                       description="Edit images with a trained image model; writes a PNG whose rows are "
                       "the input, the mask or measurement, and the output.")
    methods = p.add_subparsers(dest="editor", metavar="METHOD", required=True, parser_class=_Parser)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="trained image model directory")
    source = common.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, metavar="FILE", help="an image file, or a .npz/.npy batch")
    source.add_argument("--from-data", metavar="NAME", help="take test images of a data set (e.g. digits)")
    common.add_argument("--n", type=int, default=16, metavar="N", help="images taken from --from-data or a batch "
                        "(default: %(default)s)")
    common.add_argument("--out", type=Path, required=True, metavar="OUT.png", help="the PNG figure")
    common.add_argument("--steps", type=int, default=20, metavar="K", help="sampling steps (default: %(default)s)")
    common.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: %(default)s)")
    sampler = argparse.ArgumentParser(add_help=False)
    sampler.add_argument("--sampler", metavar="NAME", help="sampler (default: the method's own)")
    mask = argparse.ArgumentParser(add_help=False)
    kinds = mask.add_mutually_exclusive_group()
    kinds.add_argument("--mask", type=Path, metavar="MASK.png", help="white = keep, black = generate")
    kinds.add_argument("--mask-kind", choices=("center", "random"), help="a synthetic mask (default: center)")

    def method(name, help, parents):
        q = methods.add_parser(name, help=help, description=help, parents=parents)
        q.set_defaults(func=cmd_edit)
        return q

    q = method("inpaint", "fill in masked pixels (RePaint, Lugmayr et al. 2022; or replacement, Song et al. 2021)",
               [common, mask, sampler])
    q.add_argument("--method", choices=("repaint", "replace"), default="repaint", help="(default: %(default)s)")
    q.add_argument("--jump-length", type=int, metavar="J", help="RePaint's jump length (default: 10)")
    q.add_argument("--resamplings", type=int, metavar="U", help="RePaint's resamplings (default: 10)")
    q = method("sdedit", "noise the input and denoise it (SDEdit, Meng et al. 2022)", [common, sampler])
    q.add_argument("--strength", type=float, default=0.5, metavar="T", help="noise level t0 in (0, 1] "
                   "(default: %(default)s)")
    q = method("ilvr", "sample with the input's low frequencies (ILVR, Choi et al. 2021)", [common, sampler])
    q.add_argument("--factor", type=int, default=4, metavar="N", help="downsampling factor (default: %(default)s)")
    method("invert", "invert to noise by the probability-flow ODE and reconstruct; prints the RMSE",
           [common, sampler])
    q = method("ddrm", "restore from a degraded measurement (DDRM, Kawar et al. 2022)", [common, mask])
    q.add_argument("--task", choices=("sr2", "sr4", "colorize", "inpaint"), default="sr2",
                   help="super-resolution x2/x4, colorization, or inpainting (default: %(default)s)")
    q.add_argument("--sigma-y", type=float, default=0.0, metavar="S", help="measurement noise (default: %(default)s)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("difflab")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `difflab info | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return status or 0


if __name__ == "__main__":
    sys.exit(main())

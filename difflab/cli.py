"""The `difflab` command line: a thin layer over the library, one small function per command.

Every command has `--help`. Exit status: 0 on success, 2 with one line `difflab: error: ...` on a
user error (bad options, a missing model directory, unreadable data: the library raises ValueError
subclasses for those, caught here); genuine bugs still show their traceback. torch and matplotlib
are imported inside the commands, so building the parser and printing help stay cheap.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "difflab"
DEFAULT_SAMPLER = "dpmpp_2m"


class UserError(ValueError):
    """A mistake in the command line, reported as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `difflab sample: error: ... (see --help)`, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --- commands -------------------------------------------------------------------------------------


def cmd_demo(args) -> None:
    from . import demo

    demo.run(args.out, steps=args.steps)


def cmd_train(args) -> None:
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
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects key=value, got {item!r}")
    return key.strip().replace("-", "_"), value.strip()


def cmd_sample(args) -> None:
    from . import imageio, load

    if args.out is None and args.npz is None:
        raise UserError("give --out FILE.png, --npz FILE.npz or both")
    _check_sampler(args.sampler)
    _check_positive(n=args.n, steps=args.steps, batch_size=args.batch_size)
    model = load(args.dir)
    x = model.sample(args.n, sampler=args.sampler, steps=args.steps, seed=args.seed,
                     y=args.class_id, guidance=args.guidance, batch_size=args.batch_size, progress=True)
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
        if model.num_classes is not None:
            arrays["y"] = model.labels(args.class_id, args.n).numpy()  # the ids sample() used
        Path(args.npz).parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.npz, **arrays)
        print(f"wrote {args.npz} (x: {arrays['x'].shape})")


def cmd_info(args) -> None:
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
    from . import load
    from .evaluate import classify, evaluate_digits, format_digits_eval

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


def cmd_bench_samplers(args) -> int:
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
    p.add_argument("--batch-size", type=int, metavar="B", help="samples per network batch")
    p.set_defaults(func=cmd_sample)

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
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="benchmarks", description="Benchmarks that write tables and figures.")
    bench = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True, parser_class=_Parser)
    # The benchmark defines its own options; its module (and torch) load only when it runs.
    p = bench.add_parser("samplers", help="compare every sampler against exact solutions",
                         add_help=False, prefix_chars="\0")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench_samplers)
    return parser


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
    return status or 0


if __name__ == "__main__":
    sys.exit(main())

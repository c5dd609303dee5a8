"""`difflab train` and `difflab train-classifier`."""
from __future__ import annotations

from pathlib import Path

from .common import UserError, check_finite, check_output, check_positive, parse_set, removed_on_error


def add_parser(sub) -> None:
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
    p.add_argument("--keep", type=int, metavar="K", help="keep the K latest checkpoints in DIR/checkpoints/ "
                   "(default 1: only DIR/model, the latest)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out "
                   "(with its saved config unless --preset or --config is given)")
    p.add_argument("--compile", nargs="?", const="default", choices=("none", "default", "reduce-overhead",
                   "max-autotune"), metavar="MODE", help="torch.compile the training step's forward and "
                   "backward (MODE: default; reduce-overhead = CUDA graphs on a GPU; none)")
    p.add_argument("--autoencoder", type=Path, metavar="AE_DIR", help="train on this autoencoder's latents "
                   "(latent diffusion; from 'difflab train-autoencoder')")
    p.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.set_defaults(func=run)

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
    p.set_defaults(func=run_classifier)


def run(args) -> None:
    """`difflab train`: a preset, a TOML file or the resumed run's config, plus overrides, to
    :func:`difflab.training.train`."""
    from ..training import PRESETS, load_config, train

    if args.config is not None:
        config = load_config(args.config)
    elif args.preset is not None:
        if args.preset not in PRESETS:
            raise UserError(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
        config = PRESETS[args.preset]
    elif args.resume:
        from ..training import find_model_dir, read_config

        config, _ = read_config(find_model_dir(args.out))
    else:
        raise UserError("give --preset NAME or --config FILE.toml (or --resume to continue a run)")
    check_output(args.out, "--out", folder=True)
    flags = {"data": args.data, "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
             "cond_drop": args.cond_drop, "compile": args.compile, "keep": args.keep,
             "autoencoder": None if args.autoencoder is None else str(args.autoencoder.resolve())}
    # --set first, so that each of its values is checked even where a flag overrides it
    config = config.replace(**dict(parse_set(item) for item in args.set))
    config = config.replace(**{k: v for k, v in flags.items() if v is not None})
    with removed_on_error(args.out):
        model_dir = train(config, args.out, resume=args.resume, device=args.device)
    print(f"model saved in {model_dir}")


def run_classifier(args) -> None:
    from ..training import train_classifier

    check_positive(steps=args.steps, batch_size=args.batch_size)
    check_finite(lr=args.lr)
    check_output(args.out, "--out", folder=True)
    flags = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    with removed_on_error(args.out):
        meta = train_classifier(args.data, args.out, **{k: v for k, v in flags.items() if v is not None})
    accuracy = ", ".join(f"{a:.1%} at sigma {s}" for s, a in meta["accuracy"].items())
    print(f"held-out accuracy ({meta['accuracy_split']} split, {meta['num_classes']} classes): {accuracy}")
    print(f"classifier saved in {args.out}")

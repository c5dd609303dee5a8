"""`difflab train-autoencoder`: the KL-regularised autoencoder of latent diffusion."""
from __future__ import annotations

from pathlib import Path

from .common import UserError, check_output, check_positive, parse_set, removed_on_error


def add_parser(sub) -> None:
    p = sub.add_parser("train-autoencoder", help="train the autoencoder of a latent diffusion model",
                       description="Train a KL-regularised convolutional autoencoder (Rombach et al. 2022) "
                       "and write autoencoder.safetensors and autoencoder.json (with the latent scale "
                       "factor and the held-out reconstruction PSNR) to --out.")
    p.add_argument("--preset", metavar="NAME", help="a preset: digits-ae or shapes-ae (without one, --data "
                   "is trained with the default config)")
    p.add_argument("--data", metavar="PATH", help="image data: a built-in name, an image folder, .npy or "
                   ".npz")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    p.add_argument("--steps", type=int, metavar="N", help="training steps")
    p.add_argument("--batch-size", type=int, metavar="B", help="batch size")
    p.add_argument("--seed", type=int, metavar="S", help="random seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. kl_weight=1e-5 or net.latent_channels=8 (repeatable)")
    p.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.set_defaults(func=run)


def run(args) -> None:
    """A preset (or the default config for --data alone) plus overrides, to
    :func:`difflab.training.autoencoder.train_autoencoder`."""
    from ..training.autoencoder import AE_PRESETS, AutoencoderTrainConfig, train_autoencoder

    check_positive(steps=args.steps, batch_size=args.batch_size)
    if args.preset is not None and args.preset not in AE_PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; choose from {', '.join(AE_PRESETS)}")
    if args.preset is None and args.data is None:
        raise UserError(f"give --preset NAME ({', '.join(AE_PRESETS)}) or --data PATH")
    config = AutoencoderTrainConfig() if args.preset is None else AE_PRESETS[args.preset]
    overrides = dict(parse_set(item) for item in args.set)
    flags = {"data": args.data, "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    config = config.replace(**overrides)
    check_output(args.out, "--out", folder=True)
    with removed_on_error(args.out):
        meta = train_autoencoder(config, args.out, device=args.device)
    shape = "x".join(map(str, meta["latent_shape"]))
    metrics = meta["metrics"]
    print(f"latent scale factor: {meta['scale_factor']:.5g} (latents {shape})")
    print(f"held-out reconstruction ({meta['metrics_split']} split): PSNR {metrics['psnr_db']:.2f} dB, "
          f"MSE {metrics['mse']:.4g}")
    print(f"autoencoder saved in {args.out}")

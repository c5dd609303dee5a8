"""`difflab cascade BASE_DIR SR_DIR ...`: cascaded sampling (Ho et al. 2022) through
:func:`difflab.pipeline.cascade`; writes a figure whose rows are the stages' outputs."""
from __future__ import annotations

from pathlib import Path

from .common import add_model_options, check_finite, check_output, check_positive, check_sampler, load_model


def add_parser(sub) -> None:
    p = sub.add_parser("cascade", help="sample a base model and pass it through super-resolution models",
                       description="Cascaded diffusion (Ho et al. 2022): sample the base model, then each "
                       "super-resolution model conditioned on the previous stage's output; writes a PNG whose rows "
                       "are the stages (each stage up-sampled to the last one's size).")
    p.add_argument("model_dirs", type=Path, nargs="+", metavar="DIR", help="the base model, then super-resolution "
                   "models (task super-resolution), lowest resolution first")
    p.add_argument("--n", type=int, default=16, metavar="N", help="samples (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png", help="the PNG figure")
    p.add_argument("--npz", type=Path, metavar="FILE.npz", help="also the final samples, key x")
    p.add_argument("--aug-level", type=float, default=0.0, metavar="S", help="conditioning augmentation: the std of "
                   "the noise added to each stage's input (default: %(default)s, plain conditioning)")
    p.add_argument("--sampler", metavar="NAME", help="sampler of every stage (default: dpmpp_2m)")
    p.add_argument("--steps", type=int, default=20, metavar="K", help="steps per stage (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: %(default)s)")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ..io import atomic
    from ..io import images as imageio
    from ..pipeline import cascade

    check_positive(n=args.n, steps=args.steps)
    check_finite(aug_level=(args.aug_level, 0))
    if args.sampler is not None:
        check_sampler(args.sampler)
    check_output(args.out, "--out")
    models = [load_model(args, d) for d in args.model_dirs]
    options = {"steps": args.steps, **({} if args.sampler is None else {"sampler": args.sampler})}
    stages = cascade(models, args.n, aug_level=args.aug_level, seed=args.seed, **options)
    size = stages[-1].shape[-2:]
    rows = [F.interpolate(s, size=size, mode="nearest") for s in stages]
    imageio.save_grid(torch.cat(rows), args.out, nrow=args.n,
                      scale=max(1, -(-64 // size[0])))
    if args.npz is not None:
        atomic.write_with(args.npz, lambda f: np.savez(f, x=stages[-1].numpy()))
    print(f"wrote {args.out} (rows: {' | '.join('x'.join(map(str, s.shape[-2:])) for s in stages)})")

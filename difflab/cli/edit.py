"""`difflab edit METHOD`: inpaint, SDEdit, ILVR, invert or restore (DDRM, DPS) images with a model.

Each method returns the figure's rows (each (B, C, H, W)) and their names. ``super-resolution``,
``colorization``, ``inpainting`` and ``uncropping`` restore with a conditional denoiser trained for
that task (SR3 / Palette), ``diffedit`` edits with a class-conditional model (docs/conditional.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import (UserError, add_model_options, check_finite, check_output, check_positive, check_sampler,
                     load_model)

EDIT_TILE_PX = 64  # edit figures show each image at least this many pixels wide


def add_parser(sub, parser_class) -> None:
    p = sub.add_parser("edit", help="inpaint, SDEdit, ILVR, invert or restore (DDRM, DPS) images with a model",
                       description="Edit images with a trained image model; writes a PNG whose rows are "
                       "the input, the mask or measurement, and the output.")
    methods = p.add_subparsers(dest="editor", metavar="METHOD", required=True, parser_class=parser_class)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="trained image model directory")
    source = common.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, metavar="FILE", help="an image file, or a .npz/.npy batch")
    source.add_argument("--from-data", metavar="NAME", help="take test images of a data set (e.g. digits)")
    common.add_argument("--n", type=int, default=16, metavar="N", help="images taken from --from-data or a batch "
                        "(default: %(default)s)")
    common.add_argument("--out", type=Path, required=True, metavar="OUT.png", help="the PNG figure")
    common.add_argument("--steps", type=int, metavar="K", help="sampling steps (default: 20; dps: 100, as it "
                        "needs many, docs/editing.md)")
    common.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: %(default)s)")
    common.add_argument("--schedule", default="auto", metavar="NAME|FILE.json",
                        help="sigma schedule: auto, karras, logsnr, uniform, or a JSON list of sigmas "
                        "(default: %(default)s)")
    add_model_options(common)
    sampler = argparse.ArgumentParser(add_help=False)
    sampler.add_argument("--sampler", metavar="NAME", help="sampler (default: the method's own)")
    mask = argparse.ArgumentParser(add_help=False)
    kinds = mask.add_mutually_exclusive_group()
    kinds.add_argument("--mask", type=Path, metavar="MASK.png", help="white = keep, black = generate")
    kinds.add_argument("--mask-kind", choices=("center", "random"), help="a synthetic mask (default: center)")

    def method(name, help, parents):
        q = methods.add_parser(name, help=help, description=help, parents=parents)
        q.set_defaults(func=run)
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
    q = method("dps", "restore from a linear or nonlinear measurement (DPS, Chung et al. 2023)", [common, mask])
    q.add_argument("--operator", choices=tuple(_DPS_OPERATORS), default="blur",
                   help="the measurement: Gaussian blur, tanh(2x) saturation, Fourier magnitude (phase retrieval), "
                   "inpainting or area downsampling (default: %(default)s)")
    q.add_argument("--noise-std", type=float, default=0.05, metavar="S",
                   help="std of the noise added to the measurement (default: %(default)s)")
    q.add_argument("--scale", type=float, metavar="Z", help="DPS step size (default: the library's, the least biased "
                   "in benchmarks/dps.py)")
    q.add_argument("--blur-std", type=float, default=1.0, metavar="PX",
                   help="blur std in pixels (default: %(default)s)")
    q.add_argument("--factor", type=int, default=2, metavar="N", help="downsampling factor (default: %(default)s)")
    q = method("diffedit", "edit the input from one class to another inside an inferred mask (DiffEdit, "
               "Couairon et al. 2023; class-conditional models)", [common])
    q.add_argument("--source", type=int, required=True, metavar="C", help="the input's class")
    q.add_argument("--target", type=int, required=True, metavar="C", help="the class to edit to")
    q.add_argument("--strength", type=float, default=0.5, metavar="T", help="encoding level, a fraction of the steps "
                   "in (0, 1] (default: %(default)s)")
    q.add_argument("--threshold", type=float, default=0.5, metavar="P", help="mask threshold in [0, 1), a fraction "
                   "of the largest difference (default: %(default)s)")
    q.add_argument("--guidance", type=float, metavar="W", help="classifier-free guidance scale of the decoding "
                   "(default: none)")
    # conditional denoisers (SR3 / Palette, docs/conditional.md): the input is degraded as the model was trained
    for task, what in _TASKS.items():
        q = method(task, f"{what} with a model trained for it (task {task}; Saharia et al. 2022)",
                   [common, sampler] + ([mask] if task == "inpainting" else []))
        if task == "super-resolution":
            q.add_argument("--aug-level", type=float, default=0.0, metavar="S",
                           help="noise std added to the low-resolution input (conditioning augmentation; "
                           "default: %(default)s)")


_TASKS = {"super-resolution": "restore the input from its block means", "colorization": "colour the input's gray "
          "version", "inpainting": "fill in masked pixels", "uncropping": "fill in the input's removed border"}


def run(args) -> None:
    import torch

    from ..io import images as imageio

    if args.steps is None:
        args.steps = 100 if args.editor == "dps" else 20
    check_positive(n=args.n, steps=args.steps)
    check_finite(strength=getattr(args, "strength", None), sigma_y=(getattr(args, "sigma_y", None), 0),
                 noise_std=(getattr(args, "noise_std", None), 0), scale=getattr(args, "scale", None),
                 blur_std=getattr(args, "blur_std", None))
    if getattr(args, "sampler", None) is not None:
        check_sampler(args.sampler)
    check_output(args.out, "--out")
    model = load_model(args, args.model_dir)
    if model.data_kind != "image":
        raise UserError(f"edit needs an image model; {args.model_dir} was trained on {model.config.data!r} points")
    latent = model.autoencoder is not None
    if latent and args.editor in ("ilvr", "ddrm", "dps"):
        raise UserError(f"{args.editor} restores pixels through a measurement operator, but this latent model denoises "
                        "latents; use inpaint, sdedit or invert (docs/latent.md)")
    x = _edit_inputs(args, model.image_shape).to(model.device)
    sigmas = model.sigmas(args.steps, args.schedule, sampler=getattr(args, "sampler", None))
    gen = torch.Generator(model.device).manual_seed(args.seed)
    # a latent model edits the latents of the images (masks pooled to the latent grid) and decodes
    args.latent_factor = model.image_shape[-1] // model.data_shape[-1] if latent else 1
    args.model_task = model.config.task, model.config.sr_factor  # what a conditional denoiser was trained for
    args.num_classes = model.config.num_classes
    with torch.inference_mode(args.editor != "dps"):  # DPS takes gradients through the network
        rows, names = _EDITORS[args.editor](model.sampling_denoiser(), model.encode(x) if latent else x, sigmas,
                                            gen, args)
        if latent:
            rows = [x] + [model.decode(r).to(x.device) for r in rows[1:]]
    scale = max(1, -(-EDIT_TILE_PX // min(x.shape[-2:])))  # small images (digits) are upscaled
    imageio.save_grid(torch.cat(rows).clamp(-1, 1).cpu(), args.out, nrow=len(x), scale=scale)
    print(f"wrote {args.out} (rows: {' | '.join(names)})")


def _edit_inputs(args, shape):
    """The images to edit, (B, C, H, W) in [-1, 1], checked against the model's (C, H, W)."""
    from ..io import images as imageio
    from ..training import BUILTINS, load_dataset

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
    else --mask-kind center (the middle half of each side generated) or random (half the pixels).
    For a latent model (x latents, ``args.latent_factor`` f > 1) the pixel mask is made at f times
    x's size and a latent cell is known where all its f x f pixels are."""
    import torch
    import torch.nn.functional as F

    from ..io import images as imageio

    f = getattr(args, "latent_factor", 1)
    h, w = x.shape[-2] * f, x.shape[-1] * f
    if args.mask is not None:
        mask = imageio.load_image(args.mask, channels=1)
        if mask.shape[-2:] != (h, w):
            raise UserError(f"the mask {args.mask} is {mask.shape[-1]}x{mask.shape[-2]} pixels but the "
                            f"images are {w}x{h}")
        keep = (mask > 0)[None].to(x.device)
    elif args.mask_kind == "random":
        keep = torch.rand((len(x), 1, h, w), generator=gen, device=x.device) < 0.5
    else:
        keep = torch.ones((1, 1, h, w), dtype=torch.bool, device=x.device)
        keep[..., h // 4:h - h // 4, w // 4:w - w // 4] = False
    return keep if f == 1 else F.avg_pool2d(keep.float(), f) == 1


def _sampler_option(args) -> dict:
    return {} if args.sampler is None else {"sampler": args.sampler}


def _edit_inpaint(denoiser, x, sigmas, gen, args):
    from ..editing import inpaint

    check_positive(jump_length=args.jump_length, resamplings=args.resamplings)
    options = {k: v for k, v in {"jump_length": args.jump_length, "resamplings": args.resamplings}.items()
               if v is not None}
    if options and args.method == "replace":
        raise UserError("--jump-length and --resamplings apply to --method repaint only")
    keep = _edit_mask(args, x, gen)
    out = inpaint(denoiser, x, keep, sigmas, method=args.method, generator=gen, **options, **_sampler_option(args))
    return [x, x.where(keep, 0.0), out], ("input", "known pixels (grey: generated)", args.method)


def _edit_sdedit(denoiser, x, sigmas, gen, args):
    from ..editing import sdedit

    out = sdedit(denoiser, x, sigmas, strength=args.strength, generator=gen, **_sampler_option(args))
    return [x, out], ("guide", f"SDEdit at strength {args.strength}")


def _edit_ilvr(denoiser, x, sigmas, gen, args):
    from ..editing import ilvr, low_pass

    out = ilvr(denoiser, x, sigmas, factor=args.factor, generator=gen, **_sampler_option(args))
    return [x, low_pass(x, args.factor), out], ("reference", f"its low frequencies (factor {args.factor})", "ILVR")


def _edit_invert(denoiser, x, sigmas, gen, args):
    from ..editing import invert, reconstruct

    x_T = invert(denoiser, x, sigmas, **_sampler_option(args))
    out = reconstruct(denoiser, x_T, sigmas, **_sampler_option(args))
    rmse = (out - x).double().square().mean().sqrt().item()
    print(f"reconstruction RMSE {rmse:.4g} (invert then reconstruct, {len(sigmas) - 1} steps)")
    return [x, x_T / sigmas[0], out], ("input", "inverted noise x_T / sigma_max", "reconstruction")


def _edit_ddrm(denoiser, x, sigmas, gen, args):
    import torch

    from ..editing import Colorization, Inpainting, SuperResolution, ddrm

    if args.task != "inpaint" and (args.mask is not None or args.mask_kind is not None):
        raise UserError("--mask and --mask-kind apply to --task inpaint only")
    operators = {"sr2": lambda: SuperResolution(2), "sr4": lambda: SuperResolution(4),
                 "colorize": Colorization, "inpaint": lambda: Inpainting(_edit_mask(args, x, gen))}
    op = operators[args.task]()
    y = op.H(x)
    y = y + args.sigma_y * torch.randn(y.shape, generator=gen, device=y.device)
    out = ddrm(denoiser, y, op, sigmas, sigma_y=args.sigma_y, generator=gen)
    return [x, op.H_pinv(y), out], ("input", f"measurement ({args.task}, sigma_y {args.sigma_y})", "DDRM")


def _edit_dps(denoiser, x, sigmas, gen, args):
    import torch

    from ..editing import dps
    from ..samplers import start_from_noise

    if args.operator != "inpaint" and (args.mask is not None or args.mask_kind is not None):
        raise UserError("--mask and --mask-kind apply to --operator inpaint only")
    A, show = _DPS_OPERATORS[args.operator](args, x, gen)
    y = A(x)
    y = y + args.noise_std * torch.randn(y.shape, generator=gen, device=y.device)
    start = start_from_noise(sigmas, torch.randn(x.shape, generator=gen, device=x.device))
    options = {} if args.scale is None else {"scale": args.scale}
    out = dps(denoiser, y, A, start, sigmas, noise_std=args.noise_std, generator=gen, **options)
    return [x, show(y), out], ("input", f"measurement ({args.operator}, noise std {args.noise_std})", "DPS")


def _dps_blur(args, x, gen):
    from ..editing import gaussian_blur

    return gaussian_blur(args.blur_std), lambda y: y


def _dps_saturate(args, x, gen):
    from ..editing import saturation

    return saturation(), lambda y: y


def _dps_magnitude(args, x, gen):
    import torch
    import torch.nn.functional as F

    from ..editing import fourier_magnitude

    def show(y):  # log magnitude, centred, pooled back to the image size, per image to [-1, 1]
        m = F.avg_pool2d(torch.fft.fftshift(y, dim=(-2, -1)).log1p(), 2)
        lo, hi = m.amin((1, 2, 3), keepdim=True), m.amax((1, 2, 3), keepdim=True)
        return 2 * (m - lo) / (hi - lo).clamp_min(1e-12) - 1

    return fourier_magnitude(2), show


def _dps_inpaint(args, x, gen):
    from ..editing import masking

    return masking(_edit_mask(args, x, gen)), lambda y: y


def _dps_downsample(args, x, gen):
    from ..editing import SuperResolution, downsampling

    return downsampling(args.factor), SuperResolution(args.factor).H_pinv


_DPS_OPERATORS = {"blur": _dps_blur, "saturate": _dps_saturate, "magnitude": _dps_magnitude, "inpaint": _dps_inpaint,
                  "downsample": _dps_downsample}

def _edit_task(denoiser, x, sigmas, gen, args):
    """A conditional denoiser's restoration of the degraded input (:func:`difflab.training.tasks.restore`)."""
    import torch

    from ..training.tasks import degrade, restore, upsample

    task, factor = args.model_task
    if task != args.editor:
        raise UserError(f"{args.model_dir} is a model of task {task!r}; edit {args.editor} needs one trained with "
                        f"task {args.editor!r}")
    check_finite(aug_level=(getattr(args, "aug_level", 0.0), 0))
    if task == "inpainting":
        mask = _edit_mask(args, x, gen).to(x.dtype)
        y = x * mask
    else:
        y, mask = degrade(task, x, factor=factor, generator=gen)
    out = restore(denoiser, task, y, sigmas, shape=x.shape[1:], factor=factor, mask=mask,
                  aug_level=getattr(args, "aug_level", 0.0), generator=gen, **_sampler_option(args))
    shown = torch.nn.functional.interpolate(y, scale_factor=factor) if task == "super-resolution" else y
    return [x, shown, out.to(x.device)], ("input", f"degraded ({task})", "SR3" if task == "super-resolution" else
                                          "Palette")


def _edit_diffedit(denoiser, x, sigmas, gen, args):
    from ..editing import diffedit
    from ..guidance import cfg

    k = args.num_classes
    if k is None:
        raise UserError(f"diffedit needs a class-conditional model (num_classes set); {args.model_dir} has none")
    for name in ("source", "target"):
        if not 0 <= getattr(args, name) < k:
            raise UserError(f"--{name} must be a class in [0, {k - 1}], got {getattr(args, name)}")
    check_finite(guidance=args.guidance)
    if args.guidance is not None:
        denoiser = cfg(denoiser, args.guidance, num_classes=k)
    out, mask = diffedit(denoiser, x, args.source, args.target, sigmas, strength=args.strength,
                         threshold=args.threshold, generator=gen)
    print(f"mask covers {mask.float().mean().item():.1%} of the pixels")
    return [x, x.where(mask, -1.0), out], ("input", "mask (the input where edited)", f"DiffEdit to {args.target}")


_EDITORS = {**{task: _edit_task for task in _TASKS}, "diffedit": _edit_diffedit, "inpaint": _edit_inpaint,
            "sdedit": _edit_sdedit, "ilvr": _edit_ilvr, "invert": _edit_invert, "ddrm": _edit_ddrm, "dps": _edit_dps}

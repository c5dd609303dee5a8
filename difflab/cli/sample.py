"""`difflab sample`: draw samples from a trained model."""
from __future__ import annotations

from pathlib import Path

from .common import (DEFAULT_SAMPLER, UserError, add_model_options, add_sampling_options, check_finite,
                     check_output, check_positive, check_sampler, load_model, sampler_options)

SIGNALS_SHOWN = 8  # the PNG of signals draws the first 8


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="draw samples from a trained model",
                       description="Draw samples; write a PNG grid (a scatter plot for 2-D data, line plots "
                       "for signals), the raw array as .npz (key x, and y for class-conditional samples) and/or, "
                       "for signals, one WAV file per sample.")
    p.add_argument("dir", type=Path, metavar="DIR", help="trained model directory")
    p.add_argument("--n", type=int, required=True, metavar="N", help="number of samples")
    p.add_argument("--sampler", metavar="NAME", help="sampler name (default: a distilled model's own, else "
                   f"{DEFAULT_SAMPLER}; see 'difflab info')")
    p.add_argument("--steps", type=int, metavar="K", help="sampling steps (default: a distilled model's own, else 20)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed")
    p.add_argument("--out", type=Path, metavar="FILE.png", help="PNG file (a grid of images, a scatter plot of 2-D "
                   f"points, or line plots of the first {SIGNALS_SHOWN} signals)")
    p.add_argument("--npz", type=Path, metavar="FILE", help="also save the samples as .npz")
    p.add_argument("--wav", type=Path, metavar="DIR", help="signals: write sample_000.wav, ... (16-bit PCM) to DIR")
    p.add_argument("--sample-rate", type=int, metavar="HZ", help="with --wav: samples per second (default: the "
                   "model's, e.g. 8000 for tones)")
    p.add_argument("--class", dest="class_id", type=int, metavar="C", help="class id (conditional models)")
    p.add_argument("--prompt", metavar="TEXT", help='a caption, e.g. "red circle top left" (text-conditional models)')
    p.add_argument("--guidance", type=float, metavar="W", help="classifier-free guidance scale (1: plain conditional)")
    p.add_argument("--classifier", type=Path, metavar="CLS_DIR", help="classifier guidance with a classifier from "
                   "'difflab train-classifier' (unconditional models too)")
    p.add_argument("--classifier-scale", type=float, metavar="S", help="classifier guidance scale (default: 1)")
    p.add_argument("--batch-size", type=int, metavar="B", help="samples per network batch (default: from the free "
                   "GPU memory, or about 2^18 numbers on the CPU)")
    add_sampling_options(p)
    add_model_options(p)
    p.set_defaults(func=run)


def run(args) -> None:
    """`difflab sample`: :meth:`TrainedModel.sample`, written as a PNG grid / scatter plot / line plots,
    .npz and/or WAV files."""
    from ..io import images as imageio
    from ..io.signals import save_signals, write_wav

    if args.out is None and args.npz is None and args.wav is None:
        raise UserError("give --out FILE.png, --npz FILE.npz, --wav DIR (signals) or several")
    if args.sampler is not None:
        check_sampler(args.sampler)
    check_positive(n=args.n, steps=args.steps, batch_size=args.batch_size, sample_rate=args.sample_rate)
    check_finite(guidance=args.guidance, classifier_scale=args.classifier_scale)
    check_output(args.out, "--out")
    check_output(args.npz, "--npz")
    check_output(args.wav, "--wav", folder=True)
    model = load_model(args, args.dir)
    if model.imputes:
        raise UserError(f"{args.dir} is an imputation model: it samples missing values given observed ones; use "
                        "'difflab forecast' or 'difflab impute'")
    sample_rate = _wav_sample_rate(args, model)
    classifier = _guidance_classifier(args.classifier, args.classifier_scale, model.device)
    x = model.sample(args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, y=args.class_id,
                     guidance=args.guidance, classifier=classifier, classifier_scale=args.classifier_scale or 1.0,
                     batch_size=args.batch_size, progress=True, schedule=args.schedule, prompt=args.prompt,
                     **sampler_options(args))
    how = f"{args.sampler or 'default sampler'}, {args.steps or 'default'} steps"
    if args.out is not None:
        if x.ndim == 4:
            imageio.save_grid(x, args.out)
        elif x.ndim == 2 and x.shape[1] == 2:
            imageio.save_scatter(x, args.out, title=f"{args.n} samples, {how}")
        elif model.data_kind == "signal":
            shown = f"{args.n} samples" if args.n <= SIGNALS_SHOWN else f"{SIGNALS_SHOWN} of {args.n} samples"
            save_signals(x, args.out, title=f"{shown}, {how}", max_signals=SIGNALS_SHOWN)
        else:
            raise UserError(f"cannot draw samples of shape {tuple(x.shape[1:])} as a PNG; use --npz only")
        print(f"wrote {args.out}")
    if args.npz is not None:
        import numpy as np

        from ..io import atomic

        arrays = {"x": x.cpu().numpy()}
        labels = model.labels(args.class_id, args.n, classifier)  # the ids sample() used
        if labels is not None:
            arrays["y"] = labels.numpy()
        atomic.write_with(args.npz, lambda f: np.savez(f, **arrays))
        print(f"wrote {args.npz} (x: {arrays['x'].shape})")
    if args.wav is not None:
        digits = max(3, len(str(args.n - 1)))
        for i, signal in enumerate(x):
            write_wav(args.wav / f"sample_{i:0{digits}d}.wav", signal, sample_rate)
        print(f"wrote {args.n} WAV files to {args.wav} ({sample_rate} Hz, 16-bit)")


def _wav_sample_rate(args, model) -> int | None:
    """The sample rate of --wav files: --sample-rate, else the model's; None without --wav."""
    if args.wav is None:
        if args.sample_rate is not None:
            raise UserError("--sample-rate applies to --wav only")
        return None
    if model.data_kind != "signal":
        raise UserError(f"--wav writes signals as audio; {args.dir} makes {model.data_kind.rstrip('s')}s")
    rate = args.sample_rate or model.sample_rate
    if rate is None:
        raise UserError(f"{args.dir} has no sample rate (it was not trained on audio); give --sample-rate HZ")
    return int(rate)


def _guidance_classifier(path, scale, device):
    """The ``log p(y | x, sigma)`` of a classifier directory for classifier guidance, or None."""
    if path is None:
        if scale is not None:
            raise UserError("--classifier-scale needs --classifier DIR")
        return None
    from ..training import load_classifier

    return load_classifier(path, device)[1]

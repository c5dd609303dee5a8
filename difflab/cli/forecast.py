"""`difflab forecast` and `difflab impute`: sample forecasts and imputations of signals
(:meth:`TrainedModel.forecast`, :meth:`TrainedModel.impute`), written as an .npz of the samples and
their quantiles and as a figure of one series; with the realised values (--truth), their scores
(:func:`difflab.evaluation.signals.forecast_scores`: CRPS, interval coverage, PIT histogram).

Input files hold signals (N, C, L), (N, L) (one channel each) or (L,) (one series) as .npy, .npz
(key x, else the first array) or .csv (one series per row, no header; or one column, one series).
"""
from __future__ import annotations

from pathlib import Path

from .common import (DEFAULT_SAMPLER, UserError, add_model_options, add_option_argument, check_output,
                     check_positive, check_sampler, load_model, sampler_options)

LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)  # the quantiles written beside the samples
SUFFIXES = (".npy", ".npz", ".csv")
FILE_HELP = ".npy, .npz (key x) or .csv (a series per row) of signals (N, C, L), (N, L) or (L,)"


def add_parser(sub) -> None:
    p = sub.add_parser("forecast", help="sample forecasts of signals given their past",
                       description="Sample the next H steps of each series of a context file; write the samples "
                       "and their quantiles (.npz) and/or a fan chart (PNG). With --truth, print the CRPS, the "
                       "coverage of the 50% and 90% intervals and the PIT histogram.")
    p.add_argument("dir", type=Path, metavar="DIR", help="trained signal model directory")
    p.add_argument("--context", type=Path, required=True, metavar="FILE", help=f"the past: {FILE_HELP}")
    p.add_argument("--horizon", type=int, required=True, metavar="H", help="steps to forecast, 1 to the model's "
                   "window - 1; the last window - H steps of the context are used")
    p.add_argument("--truth", type=Path, metavar="FILE", help="the realised future (N, C, H), or shaped like the "
                   "context: score the forecast")
    _add_sampling_arguments(p)
    p.set_defaults(func=run_forecast)

    p = sub.add_parser("impute", help="sample the missing values (NaN) of signals",
                       description="Sample the missing values, marked NaN, of signals of the model's window; "
                       "observed values are kept exactly. Writes the samples, their quantiles and the mask "
                       "(.npz) and/or a figure (PNG). With --truth, print the scores at the missing values.")
    p.add_argument("dir", type=Path, metavar="DIR", help="trained signal model directory")
    p.add_argument("--data", type=Path, required=True, metavar="FILE", help=f"{FILE_HELP}, NaN where missing")
    p.add_argument("--truth", type=Path, metavar="FILE", help="the complete signals, shaped like --data: score "
                   "the samples at the missing values")
    _add_sampling_arguments(p)
    p.set_defaults(func=run_impute)


def _add_sampling_arguments(p) -> None:
    """The outputs and sampling options that forecast and impute share."""
    p.add_argument("--samples", type=int, default=100, metavar="S", help="samples per series (default: %(default)s)")
    p.add_argument("--out", type=Path, metavar="FILE.png", help="figure of one series (--series), first channel")
    p.add_argument("--npz", type=Path, metavar="FILE.npz", help="the samples (S, N, C, *), their quantiles "
                   f"(5, N, C, *) at the levels {', '.join(map(str, LEVELS))}, and levels")
    p.add_argument("--series", type=int, default=0, metavar="K", help="the series drawn by --out "
                   "(default: %(default)s)")
    p.add_argument("--method", choices=("auto", "condition", "repaint", "replace"), default="auto",
                   help="condition (imputation models), repaint or replace (any model); auto picks condition "
                   "for an imputation model, else repaint (default: %(default)s)")
    p.add_argument("--sampler", metavar="NAME", help=f"sampler (default: {DEFAULT_SAMPLER} for condition, ddpm "
                   "for repaint and replace)")
    p.add_argument("--steps", type=int, metavar="K", help="sampling steps (default: 20 for condition, 50 for "
                   "repaint and replace)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed")
    p.add_argument("--batch-size", type=int, metavar="B", help="signals sampled at once (default: about 2^18 "
                   "numbers)")
    add_option_argument(p)
    add_model_options(p)


def run_forecast(args) -> None:
    """`difflab forecast`: :meth:`TrainedModel.forecast` of every series of --context."""
    from ..io.signals import save_fan_chart

    _check_options(args)
    context = read_signals(args.context)
    model = _signal_model(args, len(context))
    channels, length = model.data_shape
    _check_context(args, context, channels, length)
    truth = _read_truth(args.truth, (len(context), channels, args.horizon))
    samples = model.forecast(context, args.horizon, args.samples, **_sampling(args)).numpy()
    k, past = args.series, length - args.horizon
    _write(args, samples, {}, lambda path: save_fan_chart(
        context[k, 0, -past:], samples[:, k, 0], path, truth=None if truth is None else truth[k, 0],
        title=f"series {k}: {args.samples} samples of the next {args.horizon} steps"))
    if truth is not None:
        _print_scores(samples, truth, f"{truth.size} forecast values")


def run_impute(args) -> None:
    """`difflab impute`: :meth:`TrainedModel.impute` of the NaN values of every series of --data."""
    import numpy as np

    from ..io.signals import save_imputation

    _check_options(args)
    data = read_signals(args.data)
    missing = np.isnan(data)
    if np.isinf(data).any():
        raise UserError(f"{args.data} holds infinite values; mark missing values with NaN")
    if not missing.any():
        raise UserError(f"nothing to impute: {args.data} has no missing values (mark them with NaN)")
    if missing.all():
        raise UserError(f"{args.data}: every value is missing (NaN); impute needs some observed values")
    model = _signal_model(args, len(data))
    if data.shape[1:] != model.data_shape:
        raise UserError(f"{args.data} holds signals of {data.shape[1]} channel(s) x {data.shape[2]} steps, but "
                        f"the model's window is {model.data_shape[0]} channel(s) x {model.data_shape[1]} steps")
    truth = _read_truth(args.truth, data.shape)
    samples = model.impute(data, ~missing, args.samples, **_sampling(args)).numpy()
    k = args.series
    _write(args, samples, {"mask": ~missing}, lambda path: save_imputation(
        data[k, 0], ~missing[k, 0], samples[:, k, 0], path, truth=None if truth is None else truth[k, 0],
        title=f"series {k}: {args.samples} imputations of {int(missing[k, 0].sum())} missing values"))
    if truth is not None:
        _print_scores(samples[:, missing], truth[missing], f"{int(missing.sum())} missing values")


def _check_context(args, context, channels: int, length: int) -> None:
    """The context file against the model's window: its channels, enough steps before the horizon,
    and finite values where the window reads them."""
    import numpy as np

    if not 1 <= args.horizon < length:
        raise UserError(f"--horizon must lie in [1, {length - 1}] for this model's window of {length} steps, "
                        f"got {args.horizon}")
    past = length - args.horizon
    if context.shape[1] != channels:
        raise UserError(f"{args.context} holds signals of {context.shape[1]} channel(s), but the model's have "
                        f"{channels}")
    if context.shape[2] < past:
        raise UserError(f"{args.context} holds {context.shape[2]} steps per series; a horizon of {args.horizon} "
                        f"needs the last {past} (the model's window is {length})")
    if not np.isfinite(context[..., -past:]).all():
        raise UserError(f"{args.context}: the last {past} steps of every series must be finite (no NaN or inf)")


def read_signals(path: Path):
    """The signals in ``path`` (.npy, .npz, .csv) as a float64 array (N, C, L): (N, L) is read as N
    one-channel series, (L,) as one series. NaN stays NaN (missing values)."""
    import zipfile

    import numpy as np

    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"{path}: unsupported file type {suffix or '(none)'}; use {', '.join(SUFFIXES)}")
    try:
        if suffix == ".csv":
            x = _read_csv(path)
        elif suffix == ".npy":
            with open(path, "rb") as f:
                x = np.load(f, allow_pickle=False)
        else:
            with open(path, "rb") as f, np.load(f, allow_pickle=False) as arrays:  # closed when NumPy fails too
                if not arrays.files:
                    raise UserError(f"{path}: the .npz file holds no arrays")
                x = arrays["x" if "x" in arrays.files else arrays.files[0]]
    except UserError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise UserError(f"{path}: cannot read the array ({reason})") from e
    if x.dtype.kind not in "biuf":
        raise UserError(f"{path}: need an array of numbers, got dtype {x.dtype}")
    if x.ndim not in (1, 2, 3) or x.size == 0:
        raise UserError(f"{path}: need signals (N, C, L), (N, L) or (L,), got shape {x.shape}")
    x = x.astype(np.float64)
    return x[None, None] if x.ndim == 1 else x[:, None] if x.ndim == 2 else x


def _read_csv(path: Path):
    """A CSV file of numbers: one series per row, an empty cell or `nan` missing; a single column is
    one series."""
    import numpy as np

    rows = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append([float(cell) if cell.strip() else float("nan") for cell in line.split(",")])
        except ValueError:
            raise UserError(f"{path}, line {i}: not a comma-separated row of numbers (no header allowed)") from None
    lengths = sorted({len(row) for row in rows})
    if len(lengths) > 1:
        raise UserError(f"{path}: the rows have different lengths ({', '.join(map(str, lengths))})")
    x = np.array(rows, dtype=np.float64)
    return x[:, 0] if x.ndim == 2 and x.shape[1] == 1 else x


def _check_options(args) -> None:
    if args.out is None and args.npz is None:
        raise UserError("give --out FILE.png, --npz FILE.npz or both")
    check_output(args.out, "--out")
    check_output(args.npz, "--npz")
    if args.sampler is not None:
        check_sampler(args.sampler)
    check_positive(samples=args.samples, steps=args.steps, batch_size=args.batch_size)
    if args.series < 0:
        raise UserError(f"--series must be 0 or more, got {args.series}")


def _signal_model(args, n: int):
    """The model of DIR, which must make signals, once --series is known to pick one of n series."""
    model = load_model(args, args.dir)
    if model.data_kind != "signal":
        raise UserError(f"{args.command} needs a model of signals; {args.dir} makes {model.data_kind.rstrip('s')}s")
    if args.series >= n:
        raise UserError(f"--series {args.series} is out of range: the file holds {n} series")
    return model


def _read_truth(path, shape):
    """The realised values of --truth, read like the input and of ``shape``, or None."""
    import numpy as np

    if path is None:
        return None
    truth = read_signals(path)
    if truth.shape != tuple(shape):
        raise UserError(f"{path} holds signals of shape {truth.shape} (N, C, L); the samples need "
                        f"{tuple(shape)}")
    if not np.isfinite(truth).all():
        raise UserError(f"{path}: the true values must be finite (no NaN or inf)")
    return truth


def _sampling(args) -> dict:
    """The keyword arguments of :meth:`TrainedModel.impute` (and forecast) from the options."""
    return dict(method=args.method, sampler=args.sampler, steps=args.steps, seed=args.seed,
                batch_size=args.batch_size, progress=True, **sampler_options(args))


def _write(args, samples, extra: dict, figure) -> None:
    """--npz (samples, quantiles at LEVELS, levels, and ``extra``) and --out (``figure(path)``)."""
    import numpy as np

    from ..io import atomic

    if args.npz is not None:
        arrays = {"samples": samples, "quantiles": np.quantile(samples, LEVELS, axis=0).astype(samples.dtype),
                  "levels": np.array(LEVELS), **extra}
        atomic.write_with(args.npz, lambda f: np.savez(f, **arrays))
        print(f"wrote {args.npz} (samples: {samples.shape}, quantiles: {arrays['quantiles'].shape})")
    if args.out is not None:
        figure(args.out)
        print(f"wrote {args.out} (series {args.series}, first channel)")


def _print_scores(samples, truth, what: str) -> None:
    """CRPS, interval coverage and the PIT histogram of ``samples`` (S, *shape) at ``truth`` (*shape)."""
    from ..evaluation.signals import forecast_scores

    scores = forecast_scores(samples, truth)
    print(f"{what}: CRPS {scores['crps']:.4g}, coverage of the 50% interval {scores['coverage_50']:.1%}, "
          f"of the 90% interval {scores['coverage_90']:.1%}")
    print("PIT histogram (10 bins, 1 = calibrated): " + " ".join(f"{v:.2f}" for v in scores["pit"]))

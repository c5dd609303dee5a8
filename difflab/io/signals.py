"""1-D signals (time series and audio): WAV files, line plots, forecast fan charts, spectrograms.

Signals are float arrays `(N, C, L)` (or `(C, L)`, `(L,)` for one signal); audio lies in [-1, 1],
the convention of docs/design.md for images carried over to samples. Everything here is NumPy and
accepts torch tensors as well (:func:`as_numpy`); figures are drawn on bare Agg canvases, like
:func:`difflab.io.images.save_scatter`, and written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import atomic
from .images import DataError, save_figure

__all__ = ["as_numpy", "stft_db", "write_wav", "read_wav", "save_signals", "save_fan_chart", "save_imputation",
           "save_spectrograms"]

PCM16_SCALE = 32767  # write: x * 32767, symmetric so that +1 and -1 both fit in int16
AMIN = 1e-5  # floor of |STFT| before the logarithm: -100 dB (librosa's amplitude_to_db default)
TOP_DB = 80.0  # spectrogram plots show the 80 dB below each image's maximum
N_FFT, HOP = 256, 64  # their window and hop: 32 ms windows at 8 kHz
BAND_COLOR = "C0"


def as_numpy(x, dtype=np.float64) -> np.ndarray:
    """A torch tensor (any device or dtype, detached) or array-like as a NumPy array of ``dtype``."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=dtype)


def stft_db(x, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """Magnitude short-time Fourier transform in dB, `20 log10(max(|X|, 1e-5))`, shape `(..., F, T)`.

    `X[f, t] = sum_n w[n] x[t hop + n] exp(-2 pi i f n / n_fft)`, f = 0..n_fft/2, with the periodic
    Hann window `w[n] = 0.5 - 0.5 cos(2 pi n / n_fft)` (Harris 1978). Only frames lying inside the
    signal are taken, `1 + (L - n_fft) // hop` of them, frame t centred on sample `t hop + n_fft/2`:
    padding the ends (torch.stft's ``center=True``) would add a broadband click to every image.
    ``x``: `(..., L)`; a signal shorter than ``n_fft`` is completed with zeros to one frame.
    """
    x = as_numpy(x)
    if x.shape[-1] < n_fft:
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n_fft - x.shape[-1])])
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::hop, :]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    magnitude = np.abs(np.fft.rfft(frames * window, axis=-1))
    return np.swapaxes(20 * np.log10(np.maximum(magnitude, AMIN)), -1, -2)


def write_wav(path: str | Path, x, sample_rate: int) -> Path:
    """Write a signal `(C, L)` or `(L,)` in [-1, 1] as a 16-bit PCM WAV file, atomically.

    Values are clipped to [-1, 1] (NaN becomes 0) and mapped by `round(32767 x)`; :func:`read_wav`
    divides by 32768, the usual convention, so a round trip is exact to one quantisation step.
    """
    from scipy.io import wavfile

    x = np.nan_to_num(as_numpy(x), nan=0.0)
    if x.ndim not in (1, 2):
        raise ValueError(f"write_wav needs a signal (C, L) or (L,), got shape {x.shape}")
    pcm = np.round(np.clip(x, -1, 1) * PCM16_SCALE).astype(np.int16)
    return atomic.write_with(path, lambda f: wavfile.write(f, int(sample_rate), pcm.T if pcm.ndim == 2 else pcm))


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV file as `(float32 array (C, L) in [-1, 1], sample rate)`.

    Integer PCM is scaled by its full range: uint8 as `(u - 128) / 128`, int16 by 2^15, int32 (and
    24-bit, which scipy left-aligns in int32) by 2^31; float WAVs are returned as stored. Raises
    DataError for a missing, unreadable or corrupt file.
    """
    from scipy.io import wavfile

    try:
        sample_rate, data = wavfile.read(path)
    # scipy raises ValueError for malformed chunks, OSError/EOFError for truncated or missing files,
    # and struct.error for short headers; all mean "not a readable WAV file".
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: not a readable WAV file ({e})") from e
    if data.dtype == np.uint8:
        x = (data.astype(np.float32) - 128) / 128
    elif data.dtype in (np.int16, np.int32):
        x = data.astype(np.float32) / np.float32(2 ** (8 * data.dtype.itemsize - 1))
    elif data.dtype.kind == "f":
        x = data.astype(np.float32)
    else:
        raise DataError(f"{path}: unsupported WAV sample type {data.dtype}")
    return np.ascontiguousarray(x.reshape(len(x), -1).T), int(sample_rate)


def _first_channel(x, name: str) -> np.ndarray:
    """Signals `(N, C, L)` or `(N, L)` as `(N, L)`, keeping the first channel."""
    x = as_numpy(x)
    if x.ndim == 3:
        x = x[:, 0]
    if x.ndim != 2:
        raise ValueError(f"{name} needs signals (N, C, L) or (N, L), got shape {x.shape}")
    return x


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_signals(x, path: str | Path, reference=None, title: str | None = None, max_signals: int = 8) -> Path:
    """Write a PNG of up to ``max_signals`` signals `(N, C, L)` (first channel) as line plots in a
    column of small axes, with ``reference`` signals in a second column ("samples" vs "data")."""
    columns = [("samples", _first_channel(x, "save_signals")[:max_signals])]
    if reference is not None:
        columns.append(("data", _first_channel(reference, "save_signals")[:max_signals]))
    rows = max(len(c) for _, c in columns)
    fig = _figure(4 * len(columns), 0.9 * rows + 0.7)
    axes = fig.subplots(rows, len(columns), sharex=True, sharey=True, squeeze=False)
    for j, (name, signals) in enumerate(columns):
        axes[0, j].set_title(name, fontsize=9)
        for i in range(rows):
            ax = axes[i, j]
            if i < len(signals):
                ax.plot(signals[i], lw=0.7, color=f"C{j}")
            else:
                ax.set_axis_off()
            ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _draw_bands(ax, t: np.ndarray, samples: np.ndarray, quantiles) -> None:
    """The median of ``samples`` `(S, T)` over ``t`` and shaded central bands between the quantile
    pairs (q_i, q_{k-1-i}) of the sorted ``quantiles``, darker towards the centre."""
    q = sorted(quantiles)
    levels = np.quantile(samples, q + [0.5], axis=0)
    for i in range(len(q) // 2):
        mass = q[-1 - i] - q[i]
        ax.fill_between(t, levels[i], levels[-2 - i], color=BAND_COLOR, alpha=0.2 + 0.15 * i, linewidth=0,
                        label=f"{mass:.0%} interval")
    ax.plot(t, levels[-1], color=BAND_COLOR, lw=1.2, label="median")


def save_fan_chart(context, samples, path: str | Path, truth=None, quantiles=(0.05, 0.25, 0.75, 0.95),
                   title: str | None = None) -> Path:
    """Write a PNG fan chart of a probabilistic forecast: the known past ``context`` `(L0,)`, then
    for the ``samples`` `(S, H)` of the next H steps their median and the central intervals between
    the paired ``quantiles`` (default 90% and 50%), with the realised ``truth`` `(H,)` dashed."""
    context, samples = as_numpy(context).reshape(-1), as_numpy(samples)
    if samples.ndim != 2:
        raise ValueError(f"save_fan_chart needs forecast samples (S, H), got shape {samples.shape}")
    l0, h = len(context), samples.shape[1]
    fig = _figure(6, 3.3)
    ax = fig.add_subplot()
    ax.plot(np.arange(l0), context, color="k", lw=1.0, label="context")
    horizon = np.arange(l0, l0 + h)
    _draw_bands(ax, horizon, samples, quantiles)
    if truth is not None:
        ax.plot(horizon, as_numpy(truth).reshape(-1), "k--", lw=1.0, label="truth")
    ax.axvline(l0 - 0.5, color="0.6", lw=0.6)
    fig.legend(fontsize=7, frameon=False, loc="outside lower center", ncol=5)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def save_imputation(observed, mask, samples, path: str | Path, truth=None, quantiles=(0.05, 0.25, 0.75, 0.95),
                    title: str | None = None) -> Path:
    """Write a PNG of an imputation: ``samples`` `(S, L)` of the full series as median and central
    bands over its whole length, the ``observed`` values `(L,)` where ``mask`` `(L,)` is true as
    dots, and the complete ``truth`` `(L,)` dashed if given."""
    observed, samples = as_numpy(observed).reshape(-1), as_numpy(samples)
    mask = as_numpy(mask, bool).reshape(-1)
    if samples.ndim != 2 or samples.shape[1] != len(observed) or len(mask) != len(observed):
        raise ValueError(f"save_imputation needs observed (L,), mask (L,) and samples (S, L), got shapes "
                         f"{observed.shape}, {mask.shape} and {samples.shape}")
    t = np.arange(len(observed))
    fig = _figure(6, 3.3)
    ax = fig.add_subplot()
    _draw_bands(ax, t, samples, quantiles)
    if truth is not None:
        ax.plot(t, as_numpy(truth).reshape(-1), "k--", lw=0.8, label="truth")
    ax.plot(t[mask], observed[mask], "k.", ms=3, label="observed")
    fig.legend(fontsize=7, frameon=False, loc="outside lower center", ncol=5)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def save_spectrograms(samples, data, sample_rate: int, path: str | Path, n: int = 4) -> Path:
    """Write a PNG of the spectrograms (:func:`stft_db`, 80 dB range) of ``n`` samples (top row)
    and ``n`` data signals (bottom row), each `(N, C, L)` or `(N, L)`, first channel."""
    rows = [("samples", _first_channel(samples, "save_spectrograms")),
            ("data", _first_channel(data, "save_spectrograms"))]
    n = min(n, *(len(x) for _, x in rows))
    fig = _figure(2.4 * n + 0.4, 4.4)
    axes = fig.subplots(2, n, sharex=True, sharey=True, squeeze=False)
    for i, (name, signals) in enumerate(rows):
        for j in range(n):
            db = stft_db(signals[j], N_FFT, HOP)
            start = (N_FFT - HOP) / 2  # frame t covers hop samples around its centre t hop + n_fft/2
            extent = (start / sample_rate, (start + db.shape[1] * HOP) / sample_rate, 0, sample_rate / 2)
            axes[i, j].imshow(db, origin="lower", aspect="auto", extent=extent, cmap="magma",
                              vmin=db.max() - TOP_DB, vmax=db.max())
            axes[i, j].tick_params(labelsize=6)
        axes[i, 0].set_ylabel(f"{name}\nHz", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("s", fontsize=8)
    return save_figure(fig, path)

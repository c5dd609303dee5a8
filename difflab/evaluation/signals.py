"""Scores for 1-D signals: probabilistic forecasts judged by samples (CRPS, interval coverage, PIT)
and audio read from its spectrum (fundamental frequency, spectrogram).

Inputs are torch tensors or NumPy arrays; every result is NumPy (float64 arrays) or a Python float,
whatever the input, so a score never lands on a GPU or keeps an autograd graph. Samples come first:
`samples` has shape `(S, *shape)` and the observation `y` has shape `(*shape)`.
"""
from __future__ import annotations

import math

import numpy as np

from ..io.signals import as_numpy, stft_db

__all__ = ["crps_samples", "crps_gaussian", "interval_coverage", "pit_values", "pit_histogram", "forecast_scores",
           "fundamental_frequency", "spectrogram"]

SUBHARMONIC_FLOOR = 0.1  # a sub-multiple of the strongest peak is the fundamental if within -20 dB of it
MAX_HARMONIC = 8  # the strongest peak is taken to be at most the 8th harmonic
PAD_FACTOR = 4  # the FFT is at least 4x the signal length: bins 4x finer than the window's resolution


def _samples_and_obs(samples, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_numpy(samples), as_numpy(y)
    if x.shape[1:] != y.shape:
        raise ValueError(f"samples must have shape (S, *y.shape), got {x.shape} for y of shape {y.shape}")
    return x, y


def crps_samples(samples, y, fair: bool = False) -> np.ndarray:
    """Continuous ranked probability score of the sample forecast ``samples`` `(S, *shape)` at the
    observations ``y`` `(*shape)`, per point (float64 array `(*shape)`; lower is better).

    The kernel form CRPS(F, y) = E|X - y| - E|X - X'| / 2 (Gneiting & Raftery 2007, eq. 21) with F the
    empirical distribution of the S samples, i.e. all S^2 ordered pairs in E|X - X'|. With the
    samples sorted, x_(1) <= ... <= x_(S), the pair sum is sum_{i,j} |x_i - x_j| = 2 sum_i (2i - S - 1)
    x_(i), so each point costs O(S log S) instead of O(S^2). ``fair=True`` divides the pair sum by
    S(S - 1) instead of S^2, dropping the S zero diagonal pairs: the "fair" CRPS (Ferro 2014), whose
    expectation over ensembles of S draws from G equals CRPS(G, y), while the plain estimator exceeds
    it by E|X - X'| / (2S).
    """
    x, y = _samples_and_obs(samples, y)
    s = x.shape[0]
    if fair and s < 2:
        raise ValueError("the fair CRPS needs at least 2 samples")
    weights = (2 * np.arange(1, s + 1) - s - 1).reshape((s,) + (1,) * y.ndim)
    pair_sum = 2 * (weights * np.sort(x, axis=0)).sum(0)
    return np.abs(x - y).mean(0) - pair_sum / (2 * (s * (s - 1) if fair else s * s))


def crps_gaussian(mean, std, y) -> np.ndarray:
    """CRPS of the Gaussian forecast N(mean, std^2) at ``y``, in closed form (Gneiting et al. 2005,
    eq. 5): std [z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)] with z = (y - mean) / std; for std = 0
    the limit |y - mean|. Arguments broadcast; returns a float64 array of their broadcast shape."""
    from scipy.special import ndtr

    mean, std, y = as_numpy(mean), as_numpy(std), as_numpy(y)
    if np.any(std < 0):
        raise ValueError("std must be non-negative")
    positive = np.where(std > 0, std, 1.0)
    z = (y - mean) / positive
    phi = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    crps = positive * (z * (2 * ndtr(z) - 1) + 2 * phi - 1 / math.sqrt(math.pi))
    return np.where(std > 0, crps, np.abs(y - mean))


def interval_coverage(samples, y, level: float) -> float:
    """Fraction of points whose observation lies in the central ``level`` interval of its samples,
    between their empirical (1 - level)/2 and (1 + level)/2 quantiles (linear interpolation, ends
    included). A calibrated forecast covers about ``level`` of the points (Gneiting et al. 2007)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x, y = _samples_and_obs(samples, y)
    lo, hi = np.quantile(x, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return float(np.mean((y >= lo) & (y <= hi)))


def pit_values(samples, y) -> np.ndarray:
    """Probability integral transform F(y) of each point under its empirical sample distribution:
    the fraction of samples below y, samples equal to y counted half (the mid-point of the jump of
    the empirical CDF). Uniform on [0, 1] for a calibrated forecast (Dawid 1984; Gneiting et al.
    2007). Returns a float64 array `(*shape)`."""
    x, y = _samples_and_obs(samples, y)
    return (x < y).mean(0) + 0.5 * (x == y).mean(0)


def pit_histogram(pit, bins: int = 10) -> np.ndarray:
    """Histogram of PIT values over ``bins`` equal bins of [0, 1], as a density: each bin holds
    `bins * count / total`, so a uniform PIT gives 1 everywhere; a U shape means over-confident
    forecasts, a hump under-confident ones (Gneiting et al. 2007, section 3.1)."""
    pit = as_numpy(pit).reshape(-1)
    if pit.size == 0:
        raise ValueError("pit_histogram needs at least one PIT value")
    counts, _ = np.histogram(pit, bins=bins, range=(0.0, 1.0))
    return counts * bins / pit.size


def forecast_scores(samples, y) -> dict:
    """The scores of a sample forecast `(S, *shape)` against observations `(*shape)` as plain data:
    ``crps`` (mean of :func:`crps_samples`), ``coverage_50`` and ``coverage_90``
    (:func:`interval_coverage`) and ``pit`` (:func:`pit_histogram` of :func:`pit_values`, a list)."""
    x, y = _samples_and_obs(samples, y)
    return {"crps": float(crps_samples(x, y).mean()),
            "coverage_50": interval_coverage(x, y, 0.5),
            "coverage_90": interval_coverage(x, y, 0.9),
            "pit": pit_histogram(pit_values(x, y)).tolist()}


def _parabolic_peak(log_mag: np.ndarray, k: int) -> float:
    """Fractional bin of the peak at ``k``: the vertex of the parabola through the log magnitudes of
    bins k-1, k, k+1 (Smith & Serra 1987; exact for a Gaussian main lobe, close for Hann)."""
    if k == 0 or k == len(log_mag) - 1:
        return float(k)
    a, b, c = log_mag[k - 1], log_mag[k], log_mag[k + 1]
    denom = a - 2 * b + c
    return k + (0.5 * (a - c) / denom if denom < 0 else 0.0)


def _fundamental_bin(mag: np.ndarray, lo: int, hi: int) -> float:
    """The fundamental's fractional bin in one magnitude spectrum, searched over bins [lo, hi)."""
    log_mag = np.log(np.maximum(mag, 1e-300))
    k0 = lo + int(np.argmax(mag[lo:hi]))
    peak = _parabolic_peak(log_mag, k0)
    for k in range(min(MAX_HARMONIC, int(peak / max(lo, 1))), 1, -1):  # lowest candidate first
        target = peak / k
        a = max(lo, int(math.floor(target * 0.99)) - 2)
        b = min(hi, int(math.ceil(target * 1.01)) + 3)
        if b - a < 3:
            continue
        j = a + int(np.argmax(mag[a:b]))
        if a < j < b - 1 and mag[j] >= SUBHARMONIC_FLOOR * mag[k0]:
            return _parabolic_peak(log_mag, j)
    return peak


def fundamental_frequency(signals, sample_rate: float, fmin: float = 50.0) -> np.ndarray:
    """Fundamental frequency in Hz of each signal `(N, L)` or `(N, C, L)` (first channel), a float64
    array `(N,)`.

    The rule: remove the mean, apply a Hann window, take the magnitude of a zero-padded FFT (length
    the power of two >= 4L) and find the strongest peak above ``fmin``, refined by quadratic
    interpolation of the log magnitude (Smith & Serra 1987). The peak may be a harmonic when the
    fundamental is weaker, so the estimate moves down to the lowest sub-multiple peak / k
    (k = 2..8) at which the spectrum has a local maximum (within 1% + 2 bins of peak / k) no more
    than 20 dB below the strongest peak. For tones of a fundamental in [150, 1000] Hz plus decaying
    harmonics, 2048 samples at 8 kHz, this is within 0.1% (bins of 0.98 Hz before interpolation).
    """
    x = as_numpy(signals)
    if x.ndim == 3:
        x = x[:, 0]
    if x.ndim != 2:
        raise ValueError(f"fundamental_frequency needs signals (N, L) or (N, C, L), got shape {x.shape}")
    length = x.shape[1]
    n_fft = 1 << math.ceil(math.log2(PAD_FACTOR * length))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)
    mag = np.abs(np.fft.rfft((x - x.mean(1, keepdims=True)) * window, n=n_fft, axis=1))
    bin_hz = sample_rate / n_fft
    lo = max(1, math.ceil(fmin / bin_hz))
    return np.array([_fundamental_bin(m, lo, mag.shape[1]) * bin_hz for m in mag])


def spectrogram(signal, n_fft: int = 256, hop: int = 64) -> np.ndarray:
    """Magnitude STFT in dB of a signal `(..., L)`, shape `(..., n_fft/2 + 1, 1 + (L - n_fft) // hop)`
    (float64): Hann window, frames every ``hop`` samples inside the signal, `20 log10(max(|X|, 1e-5))`;
    the helper :func:`difflab.io.signals.stft_db` that the spectrogram figures use."""
    return stft_db(signal, n_fft, hop)

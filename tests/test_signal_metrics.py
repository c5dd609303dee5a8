"""Scores and files of 1-D signals: the sample CRPS against its Gaussian closed form and that closed
form against the integral that defines it, coverage and PIT of calibrated forecasts, fundamental
frequencies of synthetic tones, WAV round trips and the figures."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import integrate
from scipy.io import wavfile
from scipy.special import ndtr

from difflab.evaluation.signals import (crps_gaussian, crps_samples, forecast_scores, fundamental_frequency,
                                        interval_coverage, pit_histogram, pit_values, spectrogram)
from difflab.io.images import DataError
from difflab.io.signals import (read_wav, save_fan_chart, save_imputation, save_signals, save_spectrograms,
                                stft_db, write_wav)


def brute_crps(x: np.ndarray, y: float, fair: bool = False) -> float:
    """E|X - y| - E|X - X'| / 2 over all S^2 (or, fair, the S(S-1) off-diagonal) pairs, in O(S^2)."""
    s = len(x)
    return np.abs(x - y).mean() - np.abs(x[:, None] - x[None]).sum() / (2 * (s * (s - 1) if fair else s * s))


def test_crps_of_many_gaussian_draws_matches_the_closed_form():
    rng = np.random.default_rng(0)
    mean, std = 0.3, 1.7
    y = mean + std * np.linspace(-2.5, 2.5, 21)
    samples = mean + std * rng.standard_normal((20_000, len(y)))
    estimate, exact = crps_samples(samples, y), crps_gaussian(mean, std, y)
    assert estimate.shape == y.shape
    np.testing.assert_allclose(estimate, exact, rtol=0.03)
    assert estimate.mean() == pytest.approx(exact.mean(), rel=0.01)


def test_crps_of_one_sample_is_the_absolute_error_and_sorting_matches_all_pairs():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((1, 3, 4)), rng.standard_normal((3, 4))
    np.testing.assert_allclose(crps_samples(x, y), np.abs(x[0] - y))
    x = rng.standard_normal(7)
    for fair in (False, True):
        assert crps_samples(x[:, None], np.array([0.4]), fair=fair)[0] == pytest.approx(brute_crps(x, 0.4, fair))
    x[3] = x[5]  # ties do not change the sorted formula
    assert crps_samples(x, np.float64(0.4)) == pytest.approx(brute_crps(x, 0.4))


def test_fair_crps_is_unbiased_and_the_plain_one_is_not():
    rng = np.random.default_rng(2)
    s, n = 5, 40_000
    x, y = rng.standard_normal((s, n)), np.full(n, 0.5)
    plain, fair = crps_samples(x, y), crps_samples(x, y, fair=True)
    # the two differ only in the pair term: fair = plain - E|X - X'|_plain / (2 (S - 1))
    pair = 2 * (np.abs(x - y).mean(0) - plain)
    np.testing.assert_allclose(fair, plain - pair / (2 * (s - 1)))
    exact = float(crps_gaussian(0.0, 1.0, 0.5))
    assert fair.mean() == pytest.approx(exact, abs=0.01)
    # E|X - X'| = 2 / sqrt(pi) for N(0, 1): the plain estimator's bias is that over 2S
    assert plain.mean() - exact == pytest.approx(1 / (s * math.sqrt(math.pi)), abs=0.01)
    with pytest.raises(ValueError):
        crps_samples(x[:1], y, fair=True)


@pytest.mark.parametrize("mean,std,y", [(0.0, 1.0, 0.0), (1.0, 0.5, -0.3), (-2.0, 3.0, 4.0)])
def test_crps_gaussian_is_the_integral_of_the_squared_cdf_difference(mean, std, y):
    def cdf(x):
        return ndtr((x - mean) / std)

    below = integrate.quad(lambda x: cdf(x) ** 2, -np.inf, y)[0]
    above = integrate.quad(lambda x: (1 - cdf(x)) ** 2, y, np.inf)[0]
    assert float(crps_gaussian(mean, std, y)) == pytest.approx(below + above, rel=1e-7)
    assert float(crps_gaussian(mean, 0.0, y)) == abs(y - mean)


def test_calibrated_samples_cover_their_levels_and_have_uniform_pit():
    gen = torch.Generator().manual_seed(3)
    samples, y = torch.randn(200, 5000, generator=gen), torch.randn(5000, generator=gen)
    for level in (0.5, 0.9):
        assert interval_coverage(samples, y, level) == pytest.approx(level, abs=0.03)
    pit = pit_values(samples, y)
    assert pit.shape == (5000,) and pit.min() >= 0 and pit.max() <= 1
    np.testing.assert_allclose(pit_histogram(pit), 1.0, atol=0.2)
    over_confident = pit_histogram(pit_values(0.5 * samples, y))
    assert over_confident[0] > 1.5 and over_confident[-1] > 1.5 and over_confident[4:6].max() < 1
    scores = forecast_scores(samples, y)
    assert set(scores) == {"crps", "coverage_50", "coverage_90", "pit"} and len(scores["pit"]) == 10
    # the expected CRPS of N(0, 1) at y ~ N(0, 1): E|X - Y| - E|X - X'|/2 = 2/sqrt(pi) - 1/sqrt(pi)
    assert scores["crps"] == pytest.approx(1 / math.sqrt(math.pi), rel=0.01)


def test_pit_counts_ties_half():
    assert pit_values(np.array([0.0, 1.0, 1.0, 2.0]), np.float64(1.0)) == 0.5
    np.testing.assert_allclose(pit_histogram(np.array([0.05, 0.15, 0.95, 1.0]), bins=2), [1.0, 1.0])


def tones(f0: np.ndarray, rates, rng, n: int = 2048, sample_rate: int = 8000) -> np.ndarray:
    """Sums of harmonics k f0 below Nyquist with amplitudes ``rates(k)`` and random phases, plus noise."""
    t = np.arange(n) / sample_rate
    out = np.zeros((len(f0), n))
    for i, f in enumerate(f0):
        for k in range(1, int(sample_rate / 2 / f) + 1):
            out[i] += rates(k) * np.sin(2 * np.pi * k * f * t + rng.uniform(0, 2 * np.pi))
    return 0.5 * out / np.abs(out).max(1, keepdims=True) + 0.01 * rng.standard_normal(out.shape)


@pytest.mark.parametrize("rates", [lambda k: 0.6 ** (k - 1), lambda k: 1 / k, lambda k: (0.4, 1.0, 0.5)[k - 1]
                                   if k <= 3 else 0.3 / k], ids=["geometric", "sawtooth", "weak-fundamental"])
def test_fundamental_frequency_of_harmonic_tones(rates):
    rng = np.random.default_rng(4)
    f0 = rng.uniform(150, 1000, 40)
    estimate = fundamental_frequency(torch.from_numpy(tones(f0, rates, rng))[:, None], 8000)
    assert estimate.shape == (40,)
    np.testing.assert_allclose(estimate, f0, rtol=0.01)


def test_spectrogram_puts_a_tone_in_its_bin():
    t = np.arange(4000) / 8000
    db = spectrogram(torch.tensor(np.sin(2 * np.pi * 1000 * t))[None], n_fft=256, hop=64)
    assert db.shape == (1, 129, 1 + (4000 - 256) // 64)
    assert (db[0].argmax(0) == 32).all()  # 1000 Hz / (8000 Hz / 256)
    # a bin-centred unit sine peaks at amplitude 1/2 times the window sum n_fft/2; no leakage elsewhere
    np.testing.assert_allclose(db[0, 32], 20 * np.log10(256 / 4), atol=1e-6)
    assert db[0, 64:].max() < db[0, 32].max() - 100
    np.testing.assert_array_equal(db, stft_db(np.sin(2 * np.pi * 1000 * t)[None]))


def test_wav_round_trip_and_other_sample_types(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.uniform(-1.2, 1.2, (2, 1000))
    path = write_wav(tmp_path / "a.wav", x, 16000)
    back, rate = read_wav(path)
    assert rate == 16000 and back.dtype == np.float32 and back.shape == (2, 1000)
    np.testing.assert_allclose(back, np.clip(x, -1, 1), atol=1.5 / 32768)
    mono, _ = read_wav(write_wav(tmp_path / "m.wav", torch.tensor(x[0]), 8000))
    assert mono.shape == (1, 1000)
    for data, step in [(np.array([0, 128, 255], np.uint8), 1 / 128), (np.array([-2**31, 0, 2**31 - 1], np.int32), 1e-9),
                       (np.array([-0.5, 0.0, 0.25], np.float32), 0.0)]:
        wavfile.write(tmp_path / "t.wav", 8000, data)
        back, _ = read_wav(tmp_path / "t.wav")
        expected = [-0.5, 0.0, 0.25] if data.dtype.kind == "f" else [-1.0, 0.0, 1.0]
        np.testing.assert_allclose(back[0], expected, atol=step)


def test_unreadable_wav_raises_data_error(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    with pytest.raises(DataError, match="bad.wav"):
        read_wav(bad)
    with pytest.raises(DataError):
        read_wav(tmp_path / "missing.wav")


FIGURES = {
    "signals": lambda x, ref, s, d: save_signals(x, d / "s.png", reference=ref, title="signals"),
    "signals-alone": lambda x, ref, s, d: save_signals(x[:2], d / "s1.png"),
    "fan": lambda x, ref, s, d: save_fan_chart(x[0, 0, :60], s, d / "f.png", truth=s[0], title="fan"),
    "imputation": lambda x, ref, s, d: save_imputation(np.zeros(40), np.arange(40) % 3 == 0, s, d / "i.png",
                                                       truth=s[1]),
    "spectrograms": lambda x, ref, s, d: save_spectrograms(x, ref, 8000, d / "sp.png", n=4),
}


@pytest.mark.parametrize("name", FIGURES)
def test_figures_are_pngs(name, tmp_path):
    gen = torch.Generator().manual_seed(6)
    x, ref = torch.randn(10, 1, 300, generator=gen), torch.randn(3, 300, generator=gen)
    samples = torch.randn(50, 40, generator=gen).cumsum(1)
    with Image.open(FIGURES[name](x, ref, samples, tmp_path)) as img:
        img.load()
        assert img.format == "PNG" and min(img.size) > 100

"""1-D signals against mathematics: the AR(1) process, its exact Gaussian denoiser and conditional
law (Schur complement), forecasting by inpainting and by an imputation model's conditioning, the
observation masks and the masked loss of CSDI-style training."""
import math

import numpy as np
import pytest
import torch

from difflab.editing import inpaint, observation_condition, observed_denoiser
from difflab.evaluation import crps_gaussian, crps_samples
from difflab.exact import Gaussian, GaussianMixture, ar1_covariance
from difflab.samplers import default_sigmas, generate
from difflab.schedules import EDM
from difflab.training import load_dataset
from difflab.training.data import AR1_LENGTH, AR1_PHI, DataError
from difflab.training.losses import draw_observation_mask

PHI = AR1_PHI


def _relative_frobenius(a, b):
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


# --- the exact Gaussian oracle -----------------------------------------------------------------------


def test_isotropic_gaussian_equals_the_one_component_mixture():
    mean = torch.randn(6, dtype=torch.float64)
    g, m = Gaussian(mean, 0.7**2 * torch.eye(6)), GaussianMixture(mean[None], 0.7)
    x = torch.randn(5, 6, dtype=torch.float64)
    for sigma in (0.01, 0.5, 3.0, math.inf):
        torch.testing.assert_close(g.denoiser(x, torch.full((5,), sigma)), m.denoiser(x, torch.full((5,), sigma)))
    torch.testing.assert_close(g.log_prob(x, 0.3), m.log_prob(x, 0.3))


def test_gaussian_denoiser_is_tweedie():
    """D(x, sigma) = x + sigma^2 grad log p(x; sigma) (Efron 2011), with the AR(1) covariance."""
    g = Gaussian(torch.zeros(16), ar1_covariance(16, PHI))
    x = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    sigma = 0.8
    (score,) = torch.autograd.grad(g.log_prob(x, sigma).sum(), x)
    torch.testing.assert_close(g.denoiser(x.detach(), torch.full((4,), sigma)), x.detach() + sigma**2 * score)


def test_ar1_conditional_is_the_markov_closed_form():
    """Given the past of an AR(1), x_{t+h} ~ N(phi^h x_t, 1 - phi^(2h)): the Schur complement of the
    Toeplitz covariance reproduces it."""
    length, past = 24, 10
    g = Gaussian(0.0, ar1_covariance(length, PHI))
    known = torch.arange(length) < past
    values = torch.randn(3, past, dtype=torch.float64)
    mean, cov = g.conditional(known, values)
    h = torch.arange(1, length - past + 1, dtype=torch.float64)
    torch.testing.assert_close(mean, values[:, -1:] * PHI**h)
    torch.testing.assert_close(cov.diagonal(), 1 - PHI ** (2 * h))
    draws = g.sample_conditional(known, values[0], 20_000, torch.Generator().manual_seed(0))
    assert draws.shape == (20_000, length - past)
    assert (draws.mean(0) - mean[0]).abs().max() < 0.04
    assert _relative_frobenius(torch.cov(draws.T), cov) < 0.05


# --- the data ----------------------------------------------------------------------------------------


def test_ar1_data_has_the_toeplitz_covariance():
    """The built-in ar1 set's sample covariance is as close to phi^|i-j| as exact draws of its size."""
    n = 4000
    x = load_dataset("ar1", size=n).x.double()
    assert x.shape == (n, 1, AR1_LENGTH)
    cov = ar1_covariance(AR1_LENGTH, PHI)
    floor = _relative_frobenius(torch.cov(Gaussian(0.0, cov).sample(n, torch.Generator().manual_seed(1)).T), cov)
    error = _relative_frobenius(torch.cov(x[:, 0].T), cov)
    assert error < 1.5 * floor, (error, floor)
    train, test = load_dataset("ar1", size=50).x, load_dataset("ar1", split="test", size=50).x
    assert not torch.equal(train, test)


def test_sines_and_tones_are_documented():
    sines = load_dataset("sines", size=200)
    assert sines.kind == "signal" and sines.shape == (1, 64) and sines.x.abs().max() <= 1
    from difflab.evaluation import fundamental_frequency
    from difflab.training.data import TONES_F0, TONES_RATE

    tones = load_dataset("tones", size=64)
    assert tones.sample_rate == TONES_RATE == 8000 and tones.x.abs().max() <= 0.9 + 1e-6
    f0 = fundamental_frequency(tones.x, TONES_RATE)
    assert (f0 > TONES_F0[0] * 0.98).all() and (f0 < TONES_F0[1] * 1.02).all()


def test_signal_arrays_and_wav_folders(tmp_path):
    from difflab.io.signals import write_wav

    np.save(tmp_path / "s.npy", np.random.default_rng(0).normal(0, 5, (7, 2, 30)).astype(np.float32))
    ds = load_dataset(tmp_path / "s.npy")
    assert ds.kind == "signal" and ds.shape == (2, 30) and ds.x.abs().max() > 1  # any range
    with pytest.raises(DataError, match="apply to images"):
        load_dataset(tmp_path / "s.npy", resolution=8)
    bad = np.zeros((3, 1, 10), np.float32)
    bad[0, 0, 3] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(DataError, match="NaN"):
        load_dataset(tmp_path / "bad.npy")
    folder = tmp_path / "wavs"
    for i in range(3):
        write_wav(folder / f"{i}.wav", 0.5 * np.sin(np.arange(800 + 10 * i) / 5.0), 8000)
    with pytest.warns(UserWarning, match="shortest"):
        audio = load_dataset(folder)
    assert audio.kind == "signal" and audio.shape == (1, 800) and audio.sample_rate == 8000
    write_wav(folder / "odd.wav", np.zeros(900), 16000)
    with pytest.raises(DataError, match="sample rates"):
        load_dataset(folder)


# --- forecasting two ways, with the exact denoiser as the model ----------------------------------------


def _conditional_oracle(g: Gaussian, known: torch.Tensor, values: torch.Tensor):
    """The ideal imputation network: D(x, sigma | observations) of the conditional Gaussian law on the
    missing coordinates (one observed signal), as a denoiser of the full (B, 1, L) signal that takes
    the conditioning channels of :func:`observation_condition`."""
    mean, cov = g.conditional(known, values)
    missing = Gaussian(mean[0], cov)

    def d(x, sigma, condition):
        assert torch.equal(condition[:, 1].bool(), known.expand(len(x), -1))  # the mask channel
        out = x.clone()
        out[:, 0, ~known] = missing.denoiser(x[:, 0, ~known], sigma)
        return out.to(x.dtype)

    return d


def test_conditioned_forecast_of_the_exact_model_is_the_exact_conditional():
    """An ideal imputation model sampled through observed_denoiser draws the Schur-complement law:
    the observed values are kept exactly and the forecast's CRPS is the exact conditional's."""
    length, past, n = 32, 24, 4000
    g = Gaussian(0.0, ar1_covariance(length, PHI))
    known = torch.arange(length) < past
    truth = g.sample(1, torch.Generator().manual_seed(3))
    values = truth.float().reshape(1, 1, length).expand(n, -1, -1)
    keep = known.expand(n, 1, length)
    den = observed_denoiser(_conditional_oracle(g, known, truth[0, known]), values, keep)
    sigmas = default_sigmas(EDM(), 32, "heun")
    x = generate(den, (1, length), n, sigmas, "heun", generator=torch.Generator().manual_seed(0),
                 batch_size=n).double()
    assert torch.equal(x[:, 0, :past], values[:, 0, :past].double())
    mean, cov = g.conditional(known, truth[0, known])
    assert (x[:, 0, past:].mean(0) - mean[0]).abs().max() < 0.05
    assert _relative_frobenius(torch.cov(x[:, 0, past:].T), cov) < 0.08
    y = g.sample_conditional(known, truth[0, known], 1, torch.Generator().manual_seed(4))[0]
    exact = crps_gaussian(mean[0].numpy(), cov.diagonal().sqrt().numpy(), y.numpy()).mean()
    assert crps_samples(x[:, 0, past:], y).mean() == pytest.approx(exact, rel=0.05)


def test_repaint_forecast_with_the_exact_denoiser_approaches_the_conditional():
    """Forecasting = inpainting the future (docs/design.md): RePaint with the unconditional exact
    denoiser of the AR(1) gives the conditional law's mean and spread; the one-pass replacement
    method is measurably further off (its known bias)."""
    length, past, n = 32, 24, 2000
    g = Gaussian(0.0, ar1_covariance(length, PHI))
    known = torch.arange(length) < past
    truth = g.sample(1, torch.Generator().manual_seed(3)).float().reshape(1, 1, length)
    mean, cov = g.conditional(known, truth[0, 0, known].double())
    sigmas = default_sigmas(EDM(), 100, "ddpm")
    errors = {}
    for method, options in (("repaint", dict(jump_length=10, resamplings=10)), ("replace", {})):
        x = inpaint(g.denoiser, truth.expand(n, -1, -1), known.expand(n, 1, length), sigmas, method=method,
                    generator=torch.Generator().manual_seed(0), **options).double()
        assert torch.equal(x[:, :, known], truth[:, :, known].double().expand(n, -1, -1))
        errors[method] = (float((x[:, 0, past:].mean(0) - mean[0]).abs().max()),
                          _relative_frobenius(torch.cov(x[:, 0, past:].T), cov))
    assert errors["repaint"][0] < 0.07 and errors["repaint"][1] < 0.07, errors
    assert errors["replace"][0] + errors["replace"][1] > errors["repaint"][0] + errors["repaint"][1], errors


# --- CSDI training pieces --------------------------------------------------------------------------------


def test_observation_masks():
    x0 = torch.zeros(4000, 2, 40)
    mask = draw_observation_mask(x0, torch.Generator().manual_seed(0))
    assert mask.shape == x0.shape and torch.equal(mask[:, 0], mask[:, 1])  # shared by the channels
    m = mask[:, 0].bool()
    assert (~m).any(1).all() and m.any(1).float().mean() > 0.95  # something missing, nearly always something seen
    prefix = (m.int().diff(dim=1) <= 0).all(1) & m[:, 0]  # observed then missing: a forecast mask
    assert 0.45 < prefix.float().mean() < 0.62  # half forecasts (and a few scattered masks by chance)
    rate = m.float().mean(1)[~prefix]
    assert rate.max() < 0.99 and 0.45 < rate.mean() < 0.55  # r ~ U(0.1, 0.9), the mean 1/2


def test_observation_condition_hides_missing_values():
    values = torch.tensor([[[1.0, float("nan"), 3.0]]])
    mask = torch.tensor([[[1, 0, 1]]])
    c = observation_condition(values, mask)
    assert torch.equal(c, torch.tensor([[[1.0, 0.0, 3.0], [1.0, 0.0, 1.0]]]))


def test_masked_loss_counts_the_missing_values_only():
    """With task 'impute' the per-sample loss is the mean squared error over the missing values; the
    network sees the observed values (and the mask) as its condition."""
    from difflab.denoisers import NetworkDenoiser
    from difflab.nets import build_network
    from difflab.training import PRESETS
    from difflab.training.objectives import Denoising

    config = PRESETS["ar1-csdi"]
    net = build_network("wavenet", {**config.net, "residual_channels": 8, "layers": 2, "cond_channels": 2})
    for p in net.parameters():  # away from the zero output of initialisation
        torch.nn.init.normal_(p, std=0.1)
    student = NetworkDenoiser(net, EDM(), "edm", config.sigma_data)
    objective = Denoising(student, config)
    x0 = load_dataset("ar1", size=8).x
    batch = objective.draw(x0, None, None, torch.Generator().manual_seed(0), 0)
    assert torch.equal(batch["condition"][:, 1:], 1 - batch["loss_mask"])
    assert torch.equal(batch["condition"][:, :1], x0 * (1 - batch["loss_mask"]))
    _, per_sample = objective.loss(batch)
    # by hand: EDM weighting with EDM preconditioning is 1 (Karras et al. 2022, eq. 8)
    from difflab.training.losses import network_target

    s = batch["sigma"][:, None, None].float()
    x = x0 + s * batch["noise"]
    x_in, c_noise, alpha = student.network_inputs(x, batch["sigma"])
    out = net(x_in, c_noise.float(), condition=batch["condition"])
    sq = (out - network_target(student, x0, x, batch["sigma"], alpha)).square().float()
    lm = batch["loss_mask"]
    torch.testing.assert_close(per_sample, ((sq * lm).sum((1, 2)) / lm.sum((1, 2))).float())
    assert not torch.allclose(per_sample, sq.mean((1, 2)))  # the observed values do not count


# --- a trained network against the exact denoiser ----------------------------------------------------------


@pytest.mark.slow
def test_trained_ar1_network_approaches_the_exact_denoiser(tmp_path):
    """The `ar1` preset's network (1,000 of its 3,000 steps) against the exact linear denoiser
    Sigma (Sigma + sigma^2 I)^-1 x of the Toeplitz covariance: its excess error is a small part of
    the least possible error E|D_exact - x0| at every noise level (benchmarks/signals.py has the
    full run's numbers)."""
    import difflab
    from difflab.training import PRESETS, train

    train(PRESETS["ar1"].replace(steps=1000, ckpt_every=0, sample_every=0), tmp_path, progress=False, device="cpu")
    model = difflab.load(tmp_path, device="cpu")
    exact = Gaussian(0.0, ar1_covariance(AR1_LENGTH, PHI))
    x0 = load_dataset("ar1", split="test", size=500).x
    gen = torch.Generator().manual_seed(0)
    for sigma in (0.2, 0.5, 1.0, 2.0):
        x = x0 + sigma * torch.randn(x0.shape, generator=gen)
        s = torch.full((len(x),), sigma)
        with torch.no_grad():
            excess = (model.denoiser(x, s) - exact.denoiser(x, s)).square().mean().sqrt()
        least = (exact.denoiser(x, s) - x0).square().mean().sqrt()
        assert excess < 0.5 * least, (sigma, float(excess), float(least))

"""Tests for difflab.training.losses: training sigma distributions, weightings expressed across
parametrizations, and the loss of the exact denoiser as the irreducible minimum (posterior variance
for Gaussian data, Monte Carlo with stated tolerances)."""
import math

import pytest
import torch
from scipy import stats

from difflab.training.config import TrainConfig
from difflab.denoisers import NetworkDenoiser, append_dims, edm_coefficients, prediction_from_x0
from difflab.exact import GaussianMixture
from difflab.training.losses import (denoising_loss, diffusion_loss, draw_noise, drop_labels, loss_weight,
                            network_target, sample_training_sigmas, x0_weight)
from difflab.nets import MLPConfig, MLPDenoiserNet
from difflab.schedules import EDM, VE, ContinuousVP, DiscreteVP

f64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- training sigmas ----------------------------------------------------------------------------


def test_edm_sigmas_are_lognormal():
    """Karras et al. 2022, sec. 5: ln sigma ~ N(P_mean, P_std^2). n = 200k: the standard error of
    the mean is 1.2/447 = 0.0027, of the std 0.0019; tolerances are about 5 of them."""
    sigma = sample_training_sigmas(EDM(), 200_000, gen(), P_mean=-0.7, P_std=1.1)
    log_sigma = sigma.log()
    assert abs(log_sigma.mean().item() + 0.7) < 0.015
    assert abs(log_sigma.std().item() - 1.1) < 0.01


def test_discrete_sigmas_are_uniform_timesteps():
    """Ho et al. 2020, Algorithm 1: t ~ U{0..T-1}; sigma is exactly one of the schedule's sigmas."""
    schedule = DiscreteVP("linear", 1000)
    sigma = sample_training_sigmas(schedule, 100_000, gen())
    t = torch.searchsorted(schedule.sigmas, sigma)
    assert torch.equal(schedule.sigmas[t], sigma)
    counts = torch.bincount(t, minlength=1000).double()
    # chi-square test of uniformity over the 1000 steps at the 0.1% level
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3
    assert t.min() == 0 and t.max() == 999


@pytest.mark.parametrize("schedule", [ContinuousVP(), VE()], ids=["vp", "ve"])
def test_continuous_sigmas_have_uniform_time(schedule):
    """Song et al. 2021, eq. 7: t ~ U[t_min, t_max]; KS test at the 0.1% level."""
    sigma = sample_training_sigmas(schedule, 50_000, gen(1))
    t = schedule.t_of_ve_sigma(sigma).numpy()
    uniform = stats.uniform(schedule.t_min, schedule.t_max - schedule.t_min)
    assert stats.kstest(t, uniform.cdf).pvalue > 1e-3


# --- weightings ---------------------------------------------------------------------------------


def snr_vp(schedule, sigma):
    """SNR = alpha^2 / std^2 from the schedule's own alpha and std at the matching time."""
    t = schedule.t_of_ve_sigma(sigma)
    return schedule.alpha(t) ** 2 / schedule.std(t) ** 2


def test_min_snr_weights_have_the_papers_form():
    """Hang et al. 2023, sec. 3.4: eps min(SNR, g)/SNR, x0 min(SNR, g), v min(SNR, g)/(SNR + 1)."""
    schedule, gamma = DiscreteVP("cosine"), 5.0
    sigma = schedule.sigmas[::37]
    alpha = schedule.alpha_of_ve_sigma(sigma)
    snr = snr_vp(schedule, sigma)
    clipped = snr.clamp(max=gamma)
    expected = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}
    for prediction, want in expected.items():
        got = loss_weight("min_snr", prediction, sigma, alpha, gamma=gamma)
        torch.testing.assert_close(got, want, rtol=1e-8, atol=0)


def output_for(prediction, x0_hat, x, sigma, alpha, sigma_data=0.5):
    """The network output whose denoised estimate is x0_hat (the inverse of the parametrization)."""
    s = append_dims(sigma, x.ndim)
    if prediction == "edm":
        c_skip, c_out, _ = edm_coefficients(s, sigma_data)
        return (x0_hat - c_skip * x) / c_out
    return prediction_from_x0(prediction, x0_hat, x, s, append_dims(alpha, x.ndim))


@pytest.mark.parametrize("weighting", ["min_snr", "edm"])
@pytest.mark.parametrize("schedule", [DiscreteVP("linear"), EDM()], ids=["vp", "edm"])
def test_weights_equal_across_parametrizations_in_x0_space(schedule, weighting):
    """w ||F - target||^2 equals lambda(sigma) ||x0_hat - x0||^2 for every parametrization, with
    lambda = min(SNR, gamma) (Hang et al. 2023) or (sigma^2 + sd^2)/(sigma sd)^2 (Karras et al. 2022)."""
    g = gen(2)
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 3.0, 20.0], dtype=f64)
    x0 = torch.randn(6, 5, generator=g, dtype=f64)
    x0_hat = x0 + 0.3 * torch.randn(6, 5, generator=g, dtype=f64)
    x = x0 + sigma[:, None] * torch.randn(6, 5, generator=g, dtype=f64)
    alpha = schedule.alpha_of_ve_sigma(sigma)
    lam = {"min_snr": (1 / sigma**2).clamp(max=5.0), "edm": (sigma**2 + 0.25) / (0.5 * sigma) ** 2}[weighting]
    want = lam * (x0_hat - x0).square().sum(1)
    denoiser = NetworkDenoiser(torch.nn.Identity(), schedule, "eps")
    for prediction in ["eps", "x0", "v", "edm"]:
        denoiser.prediction = prediction
        target = network_target(denoiser, x0, x, sigma, alpha)
        out = output_for(prediction, x0_hat, x, sigma, alpha)
        w = loss_weight(weighting, prediction, sigma, alpha)
        torch.testing.assert_close(w * (out - target).square().sum(1), want, rtol=1e-9, atol=1e-12)


def test_edm_weighting_is_one_under_edm_preconditioning():
    """Karras et al. 2022, eq. 8 and Table 1: lambda(sigma) c_out(sigma)^2 = 1."""
    sigma = torch.logspace(-3, 2, 20, dtype=f64)
    torch.testing.assert_close(loss_weight("edm", "edm", sigma), torch.ones_like(sigma))
    torch.testing.assert_close(loss_weight("uniform", "v", sigma, sigma), torch.ones_like(sigma))


# --- the exact denoiser's loss ------------------------------------------------------------------

# (schedule, prediction, weighting): every parametrization under its usual schedule and weighting.
CASES = {
    "edm": (EDM(), "edm", "edm"),
    "ddpm-eps": (DiscreteVP("linear"), "eps", "uniform"),
    "ddpm-v-minsnr": (DiscreteVP("cosine"), "v", "min_snr"),
    "edm-x0-minsnr": (EDM(), "x0", "min_snr"),
}


def exact_net(gm, schedule, prediction, sigma_data=0.5, shift=0.0):
    """A fake network whose denoiser is the exact one of ``gm`` (plus ``shift``): undo the input
    scaling, denoise exactly, output the parametrization's target."""

    def net(x_in, c_noise, y=None):
        if prediction == "edm":
            sigma = (4 * c_noise).exp()
            x = x_in * append_dims(sigma**2 + sigma_data**2, x_in.ndim).sqrt()
            alpha = None
        elif isinstance(schedule, EDM):
            sigma, x, alpha = (4 * c_noise).exp(), x_in, torch.ones_like(c_noise)
        else:  # discrete: c_noise is the timestep
            sigma, alpha = schedule.ve_sigma(c_noise), schedule.alpha(c_noise)
            x = x_in / append_dims(alpha, x_in.ndim)
        x0_hat = gm.denoiser(x, sigma) + shift
        return output_for(prediction, x0_hat, x, sigma, alpha, sigma_data)

    return net


def gaussian_batch(n, dim, s=0.8, seed=0):
    gm = GaussianMixture(torch.full((1, dim), 0.3, dtype=f64), s)
    return gm, gm.sample(n, generator=gen(seed))


@pytest.mark.parametrize("case", CASES)
def test_exact_denoiser_loss_is_the_posterior_variance(case):
    """For x0 ~ N(mu, s^2 I), E[(E[x0|x] - x0)^2 | sigma] = s^2 sigma^2 / (s^2 + sigma^2) per
    coordinate, so E[loss_i / (lambda_i postvar_i)] = 1, each term a chi^2_D / D variable (variance
    2/D). D = 16, n = 20k: standard error 0.0025; tolerance 0.015."""
    schedule, prediction, weighting = CASES[case]
    config = TrainConfig(prediction=prediction, weighting=weighting, schedule=schedule.to_dict())
    s, dim = 0.8, 16
    gm, x0 = gaussian_batch(20_000, dim, s)
    denoiser = NetworkDenoiser(exact_net(gm, schedule, prediction), schedule, prediction)
    sigma, noise, _ = draw_noise(schedule, x0, None, config, gen(1))
    _, per_sample = denoising_loss(denoiser, x0, sigma, noise, None, config)
    alpha = schedule.alpha_of_ve_sigma(sigma)
    lam = x0_weight(weighting, prediction, sigma, alpha)
    ratio = per_sample.double() / (lam * s**2 * sigma**2 / (s**2 + sigma**2))
    assert abs(ratio.mean().item() - 1) < 0.015


@pytest.mark.parametrize("case", CASES)
def test_perturbed_denoiser_has_a_higher_loss(case):
    """Shifting the exact denoiser by delta adds lambda (delta^2 + 2 delta mean(E[x0|x] - x0)) per
    sample; with the same sigma and noise, mean((L' - L)/lambda) = delta^2 = 0.01 up to a standard
    error of about 2 delta sqrt(s^2/D/n) = 3.6e-4 (tolerance 0.002)."""
    schedule, prediction, weighting = CASES[case]
    config = TrainConfig(prediction=prediction, weighting=weighting, schedule=schedule.to_dict())
    gm, x0 = gaussian_batch(20_000, 16)
    sigma, noise, _ = draw_noise(schedule, x0, None, config, gen(3))
    losses = {}
    for delta in (0.0, 0.1):
        denoiser = NetworkDenoiser(exact_net(gm, schedule, prediction, shift=delta), schedule, prediction)
        losses[delta] = denoising_loss(denoiser, x0, sigma, noise, None, config)
    assert losses[0.1][0] > losses[0.0][0]
    lam = x0_weight(weighting, prediction, sigma, schedule.alpha_of_ve_sigma(sigma))
    excess = (losses[0.1][1].double() - losses[0.0][1].double()) / lam
    assert abs(excess.mean().item() - 0.01) < 0.002


def test_untrained_edm_network_has_unit_loss():
    """Karras et al. 2022, App. B.6: with data of std sigma_data the EDM target (x0 - c_skip x)/c_out
    has unit variance at every sigma, so a network that outputs 0 has expected loss 1. n = 20k,
    D = 8: the standard error is about sqrt(2/8/20000) = 0.0035 (tolerance 0.02)."""
    net = MLPDenoiserNet(MLPConfig(dim=8, hidden_channels=16, depth=1))  # zero-initialised output
    denoiser = NetworkDenoiser(net, EDM(), "edm", sigma_data=0.5)
    x0 = 0.5 * torch.randn(20_000, 8, generator=gen(4))
    loss, _ = diffusion_loss(denoiser, x0, None, TrainConfig(), gen(5))
    assert abs(loss.item() - 1) < 0.02


def test_label_dropout_rate_and_null_class():
    """Ho & Salimans 2022, Algorithm 1: each label becomes the null id with probability p."""
    y = torch.arange(100_000) % 7
    dropped = drop_labels(y, 0.1, 7, gen(6))
    hit = dropped == 7
    assert torch.equal(dropped[~hit], y[~hit])
    assert abs(hit.double().mean().item() - 0.1) < 0.005  # 5.3 standard errors
    assert drop_labels(y, 0.0, 7, gen(6)) is y


def test_diffusion_loss_is_a_pure_function_of_the_generator():
    net = MLPDenoiserNet(MLPConfig(dim=2, hidden_channels=16, depth=1, num_classes=3))
    torch.nn.init.normal_(net.proj_out.weight)
    denoiser = NetworkDenoiser(net, EDM(), "edm")
    config = TrainConfig(num_classes=3, cond_drop=0.2)
    x0, y = torch.randn(32, 2, generator=gen(7)), torch.arange(32) % 3
    a = diffusion_loss(denoiser, x0, y, config, gen(8))
    b = diffusion_loss(denoiser, x0, y, config, gen(8))
    assert torch.equal(a[1], b[1]) and a[1].shape == (32,) and math.isfinite(a[0].item())
    a[0].backward()
    assert net.proj_out.weight.grad is not None

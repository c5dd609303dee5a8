"""Tests for difflab.denoisers: every parametrization, under every kind of schedule, turns a
perfect network into the exact denoiser of a Gaussian mixture; prediction targets match their
definitions; EDM preconditioning meets the constraints of Karras et al. (2022, App. B.6)."""
import math

import pytest
import torch

from difflab.denoisers import (CountingDenoiser, NetworkDenoiser, append_dims, edm_coefficients,
                               prediction_from_x0, x0_from_prediction)
from difflab.exact import random_mixture, ring_mixture
from difflab.schedules import EDM, VE, ContinuousVP, DiscreteVP

f64 = torch.float64
SIGMAS = torch.tensor([0.02, 0.1, 0.5, 1.0, 2.5, 10.0, 40.0], dtype=f64)


def vp_alpha(sigma):
    """alpha of a variance-preserving process at VE noise level sigma: alpha^2 (1 + sigma^2) = 1."""
    return (1 + sigma**2).rsqrt()


# How each schedule's network input c_noise maps back to sigma, and alpha(sigma), written from the
# papers rather than through the schedule's own inverse where a closed form exists.
SCHEDULE_CASES = {
    "discrete-linear": (lambda: DiscreteVP("linear"), lambda s, c: s.ve_sigma(c), vp_alpha),
    "discrete-cosine": (lambda: DiscreteVP("cosine"), lambda s, c: s.ve_sigma(c), vp_alpha),
    # Song et al. 2021 feed 1000 t to the network; sigma = sqrt(1/alpha^2 - 1)
    "continuous-vp": (ContinuousVP, lambda s, c: torch.expm1(
        0.5 * (c / 1000) ** 2 * (s.beta_max - s.beta_min) + (c / 1000) * s.beta_min).sqrt(), vp_alpha),
    # Karras et al. 2022, Table 1: c_noise = log(sigma / 2) (VE), log(sigma) / 4 (EDM)
    "ve": (VE, lambda s, c: 2 * c.exp(), torch.ones_like),
    "edm": (EDM, lambda s, c: (4 * c).exp(), torch.ones_like),
}


def oracle_net(gm, schedule, prediction, sigma_of_c_noise, alpha_of_sigma, log=None):
    """A perfect network: undo the schedule's input scaling, denoise exactly, output the target."""

    def net(x_in, c_noise, **cond):
        sigma = sigma_of_c_noise(schedule, c_noise.to(f64))
        alpha = append_dims(alpha_of_sigma(sigma), x_in.ndim)
        x = x_in / alpha
        x0 = gm.denoiser(x, sigma)
        if log is not None:
            log.append((x_in, c_noise, sigma, cond))
        return prediction_from_x0(prediction, x0, x, append_dims(sigma, x.ndim), alpha)

    return net


def noisy_batch(gm, sigma, seed=0):
    """x = x0 + sigma n for x0 from the mixture, shaped (B, 2, D/2) to exercise broadcasting."""
    gen = torch.Generator().manual_seed(seed)
    x0 = gm.sample(sigma.shape[0], generator=gen)
    x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=gen, dtype=f64)
    return x.reshape(x.shape[0], 2, -1)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
@pytest.mark.parametrize("case", SCHEDULE_CASES)
def test_perfect_network_gives_exact_denoiser(case, prediction):
    make, sigma_of_c_noise, alpha_of_sigma = SCHEDULE_CASES[case]
    schedule, gm = make(), random_mixture(k=5, dim=4, seed=3)
    net = oracle_net(gm, schedule, prediction, sigma_of_c_noise, alpha_of_sigma)
    denoiser = NetworkDenoiser(net, schedule, prediction)
    x = noisy_batch(gm, SIGMAS)
    torch.testing.assert_close(denoiser(x, SIGMAS), gm.denoiser(x, SIGMAS), rtol=1e-9, atol=1e-9)


def test_perfect_network_gives_exact_denoiser_edm_preconditioning():
    sd = 0.7
    gm = ring_mixture()

    def net(x_in, c_noise):
        sigma = (4 * c_noise).exp()
        total = append_dims(sigma**2 + sd**2, x_in.ndim)
        x = x_in * total.sqrt()  # x_in = c_in x
        s = append_dims(sigma, x.ndim)
        c_skip, c_out = sd**2 / total, s * sd / total.sqrt()
        return (gm.denoiser(x, sigma) - c_skip * x) / c_out  # F's training target

    denoiser = NetworkDenoiser(net, prediction="edm", sigma_data=sd)
    x = noisy_batch(gm, SIGMAS)
    torch.testing.assert_close(denoiser(x, SIGMAS), gm.denoiser(x, SIGMAS), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", ["discrete-linear", "continuous-vp", "edm"])
def test_network_sees_the_schedules_input(case):
    make, sigma_of_c_noise, alpha_of_sigma = SCHEDULE_CASES[case]
    schedule, gm, log = make(), random_mixture(k=3, dim=4), []
    denoiser = NetworkDenoiser(oracle_net(gm, schedule, "eps", sigma_of_c_noise, alpha_of_sigma, log),
                               schedule, "eps")
    x = noisy_batch(gm, SIGMAS)
    denoiser(x, SIGMAS)
    x_in, _, sigma, _ = log[0]
    torch.testing.assert_close(sigma, SIGMAS, rtol=1e-10, atol=0)
    # VP networks see x_t = alpha x0 + std n, whose variance per unit-variance x0 is 1
    torch.testing.assert_close(x_in, x * append_dims(alpha_of_sigma(SIGMAS), x.ndim), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_discrete_network_receives_timestep_index(kind, dtype):
    schedule, seen = DiscreteVP(kind), []

    def net(x_in, c_noise):
        seen.append(c_noise)
        return torch.zeros_like(x_in)

    k = torch.tensor([0, 1, 2, 17, 500, 998, 999])
    NetworkDenoiser(net, schedule, "eps")(torch.zeros(len(k), 3, dtype=dtype), schedule.sigmas[k])
    assert seen[0].dtype == dtype
    assert torch.equal(seen[0], k.to(dtype))
    # halfway in log-sigma between two steps is half a step
    mid = (0.5 * (schedule.log_sigmas[40] + schedule.log_sigmas[41])).exp().reshape(1)
    NetworkDenoiser(net, schedule, "eps")(torch.zeros(1, 3, dtype=f64), mid)
    assert float(seen[1]) == pytest.approx(40.5, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Targets against their definitions


@pytest.mark.parametrize("alpha_kind", ["vp", "ve"])
def test_prediction_targets_match_definitions(alpha_kind):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 5, generator=gen, dtype=f64)
    n = torch.randn(6, 5, generator=gen, dtype=f64)
    sigma = SIGMAS[:6, None]
    alpha = vp_alpha(sigma) if alpha_kind == "vp" else torch.ones_like(sigma)
    std = alpha * sigma
    x_t = alpha * x0 + std * n  # the schedule's own noisy sample
    x = x_t / alpha  # VE convention: x0 + sigma n

    def target(p):
        return prediction_from_x0(p, x0, x, sigma, alpha)

    torch.testing.assert_close(target("eps"), n, rtol=1e-10, atol=1e-10)  # Ho et al. 2020
    torch.testing.assert_close(target("x0"), x0)
    torch.testing.assert_close(target("v"), alpha * n - std * x0, rtol=1e-10, atol=1e-10)  # Salimans & Ho 2022
    # score of q(x_t | x0) = N(alpha x0, std^2), by autograd of its log-density
    xt_req = x_t.clone().requires_grad_(True)
    log_q = torch.distributions.Normal(alpha * x0, std).log_prob(xt_req).sum()
    (score,) = torch.autograd.grad(log_q, xt_req)
    torch.testing.assert_close(score, -(x_t - alpha * x0) / std**2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(target("score"), score, rtol=1e-9, atol=1e-9)
    for p in ("eps", "x0", "v", "score"):
        torch.testing.assert_close(x0_from_prediction(p, target(p), x, sigma, alpha), x0, rtol=1e-9, atol=1e-9)


def test_unknown_prediction_raises():
    one = torch.ones(1)
    with pytest.raises(ValueError):
        x0_from_prediction("mu", one, one, one, one)
    with pytest.raises(ValueError):
        prediction_from_x0("mu", one, one, one, one)
    with pytest.raises(ValueError):
        NetworkDenoiser(torch.nn.Identity(), EDM(), "mu")


# ---------------------------------------------------------------------------------------------
# EDM preconditioning (Karras et al. 2022, App. B.6)


def test_edm_coefficients_satisfy_constraints_analytically():
    sd = 0.5
    sigma = torch.logspace(-3, 2, 50, dtype=f64)
    c_skip, c_out, c_in = edm_coefficients(sigma, sd)
    # unit-variance network input: c_in^2 (sd^2 + sigma^2) = 1 (eq. 114)
    torch.testing.assert_close(c_in**2 * (sd**2 + sigma**2), torch.ones_like(sigma), rtol=1e-12, atol=0)
    # unit-variance target: c_out^2 = (1 - c_skip)^2 sd^2 + c_skip^2 sigma^2 (eq. 117-123)
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2
    torch.testing.assert_close(target_var, torch.ones_like(sigma), rtol=1e-12, atol=0)
    # c_skip minimises c_out (eq. 131): any other choice gives a larger target scale
    for delta in (-1e-3, 1e-3):
        c = c_skip + delta
        assert ((1 - c) ** 2 * sd**2 + c**2 * sigma**2 > c_out**2).all()


@pytest.mark.parametrize("sigma", [0.05, 0.5, 5.0])
def test_edm_coefficients_monte_carlo(sigma):
    # x0 non-Gaussian (two points +-sd) with std sd; only second moments matter for the constraints
    sd, n_mc = 0.5, 200_000
    gen = torch.Generator().manual_seed(0)
    x0 = sd * (2 * torch.randint(0, 2, (n_mc,), generator=gen, dtype=f64) - 1)
    x = x0 + sigma * torch.randn(n_mc, generator=gen, dtype=f64)
    c_skip, c_out, c_in = edm_coefficients(torch.tensor(sigma, dtype=f64), sd)
    for y in (c_in * x, (x0 - c_skip * x) / c_out):
        sq = (y - y.mean()) ** 2
        se = float(sq.std()) / math.sqrt(n_mc)  # standard error of the sample variance
        assert abs(float(sq.mean()) - 1) < 5 * se
        assert 5 * se < 0.02  # tight enough to catch a 2% error in the scale


def test_edm_network_inputs():
    sd, seen = 0.5, []

    def net(x_in, c_noise):
        seen.append((x_in, c_noise))
        return torch.zeros_like(x_in)

    sigma = torch.tensor([0.01, 1.0, 80.0], dtype=f64)
    x = torch.randn(3, 4, dtype=f64)
    out = NetworkDenoiser(net, prediction="edm", sigma_data=sd)(x, sigma)
    x_in, c_noise = seen[0]
    torch.testing.assert_close(x_in, x / (sigma[:, None] ** 2 + sd**2).sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(c_noise, sigma.log() / 4, rtol=1e-12, atol=0)
    # with F = 0, D is the skip connection alone
    torch.testing.assert_close(out, sd**2 / (sigma[:, None] ** 2 + sd**2) * x, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------
# Plumbing


def test_cond_kwargs_reach_the_network_and_counting():
    log = []
    gm = random_mixture(k=3, dim=4)
    net = oracle_net(gm, EDM(), "x0", SCHEDULE_CASES["edm"][1], torch.ones_like, log)
    counting = CountingDenoiser(NetworkDenoiser(net, EDM(), "x0"))
    x = torch.randn(5, 4, dtype=f64)
    y = torch.tensor([0, 1, 2, 1, 0])
    out = counting(x, torch.full((5,), 0.3, dtype=f64), y=y)
    assert log[0][3].keys() == {"y"} and log[0][3]["y"] is y
    torch.testing.assert_close(out, gm.denoiser(x, torch.full((5,), 0.3, dtype=f64)), rtol=1e-12, atol=1e-12)
    counting(x[:2], torch.full((2,), 1.0, dtype=f64))
    assert (counting.calls, counting.evals) == (2, 7)
    assert log[1][3] == {}


def test_scalar_sigma_broadcasts_over_batch():
    gm = random_mixture(k=3, dim=4)
    make, sigma_of_c_noise, alpha_of_sigma = SCHEDULE_CASES["discrete-cosine"]
    schedule = make()
    denoiser = NetworkDenoiser(oracle_net(gm, schedule, "v", sigma_of_c_noise, alpha_of_sigma), schedule, "v")
    x = torch.randn(4, 4, dtype=f64)
    sigma = torch.tensor(0.8, dtype=f64)
    torch.testing.assert_close(denoiser(x, sigma), denoiser(x, sigma.expand(4).clone()), rtol=0, atol=0)
    torch.testing.assert_close(denoiser(x, sigma), gm.denoiser(x, sigma), rtol=1e-9, atol=1e-9)

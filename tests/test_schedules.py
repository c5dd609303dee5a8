"""Tests for difflab.schedules against the papers' formulas, computed independently here:
DDPM / cosine alpha_bar, the VP SDE's integral, exact inverses, Karras eq. 5, the spacings of
Lin et al. (2024, Table 2), forward-process moments (Monte Carlo) and Bayes' rule for posteriors."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate

from difflab.schedules import (EDM, VE, ContinuousVP, DiscreteVP, SubVP, ddpm_posterior,
                               discrete_sigmas, karras_sigmas, loglinear_sigmas, make_schedule,
                               q_sample, time_quadratic_sigmas, time_uniform_sigmas, ve_posterior)

f64 = torch.float64
BETA_KINDS = ("linear", "cosine", "scaled_linear", "sigmoid")
SCHEDULES = {
    **{f"discrete-{k}": (lambda k=k: DiscreteVP(k)) for k in BETA_KINDS},
    "continuous-vp": ContinuousVP,
    "subvp": SubVP,
    "ve": VE,
    "edm": EDM,
}
VP_FAMILY = ("discrete-linear", "discrete-cosine", "discrete-scaled_linear", "discrete-sigmoid",
             "continuous-vp")


def times(s, n=257):
    """A grid over the schedule's whole time range, including fractional discrete steps."""
    return torch.linspace(s.t_min, s.t_max, n, dtype=f64)


# ---------------------------------------------------------------------------------------------
# Beta schedules


def test_linear_alpha_bar_is_product_of_one_minus_beta():
    betas = np.linspace(1e-4, 0.02, 1000)  # Ho et al. 2020, sec. 4
    s = DiscreteVP("linear")
    np.testing.assert_allclose(s.betas.numpy(), betas, rtol=1e-12, atol=0)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-12, atol=0)
    np.testing.assert_allclose(s.alpha(torch.arange(1000, dtype=f64)).numpy() ** 2,
                               np.cumprod(1 - betas), rtol=1e-12, atol=0)


def test_scaled_linear_betas_are_linear_in_sqrt_beta():
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2  # Rombach et al. 2022
    np.testing.assert_allclose(DiscreteVP("scaled_linear").betas.numpy(), betas, rtol=1e-12, atol=0)


def test_cosine_alpha_bar_matches_nichol_dhariwal_eq17():
    T, s_off = 1000, 0.008
    t = np.arange(T + 1)
    f = np.cos((t / T + s_off) / (1 + s_off) * np.pi / 2) ** 2
    alpha_bar = f / f[0]  # alpha_bar(t) for t = 0..T; DiscreteVP index i is step t = i + 1
    paper_betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    clipped = paper_betas > 0.999
    sched = DiscreteVP("cosine", T=T)
    # Unclipped until the very end: the clip only touches the last steps, where alpha_bar -> 0.
    first_clip = int(np.argmax(clipped))
    assert clipped.any() and clipped[first_clip:].all() and first_clip >= T - 5
    np.testing.assert_allclose(sched.alphas_cumprod[:first_clip].numpy(), alpha_bar[1:first_clip + 1],
                               rtol=1e-10, atol=0)
    betas = sched.betas.numpy()
    assert (betas <= 0.999).all() and (betas > 0).all()
    np.testing.assert_array_equal(betas[clipped], 0.999)
    np.testing.assert_allclose(betas[~clipped], paper_betas[~clipped], rtol=1e-10, atol=1e-15)


def test_unknown_beta_schedule_raises():
    with pytest.raises(ValueError):
        DiscreteVP("quadratic")
    with pytest.raises(ValueError):
        make_schedule("quadratic")


# ---------------------------------------------------------------------------------------------
# Every schedule: inverses and identities


@pytest.mark.parametrize("name", SCHEDULES)
def test_log_snr_and_sigma_inverses_round_trip(name):
    s = SCHEDULES[name]()
    t = times(s)
    atol = 1e-8 * s.t_max  # t_min can be 0 for discrete schedules: relative there is ill-posed
    torch.testing.assert_close(s.t_of_log_snr(s.log_snr(t)), t, rtol=1e-8, atol=atol)
    torch.testing.assert_close(s.t_of_ve_sigma(s.ve_sigma(t)), t, rtol=1e-8, atol=atol)
    sigma = s.ve_sigma(t)
    torch.testing.assert_close(s.ve_sigma(s.t_of_ve_sigma(sigma)), sigma, rtol=1e-8, atol=0)
    # log_snr is the full log(alpha^2 / std^2) (Kingma et al. 2021), i.e. -2 log(sigma).
    torch.testing.assert_close(s.log_snr(t), torch.log(s.alpha(t) ** 2 / s.std(t) ** 2), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s.alpha_of_ve_sigma(sigma), s.alpha(t), rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", SCHEDULES)
def test_ve_sigma_is_std_over_alpha_and_increasing(name):
    s = SCHEDULES[name]()
    t = times(s)
    torch.testing.assert_close(s.std(t) / s.alpha(t), s.ve_sigma(t), rtol=1e-12, atol=0)
    assert (s.ve_sigma(t).diff() > 0).all()
    assert s.sigma_min == pytest.approx(float(s.ve_sigma(torch.tensor(s.t_min, dtype=f64))), rel=1e-12)
    assert s.sigma_max > s.sigma_min


@pytest.mark.parametrize("name", VP_FAMILY)
def test_vp_schedules_preserve_variance(name):
    s = SCHEDULES[name]()
    t = times(s)
    torch.testing.assert_close(s.alpha(t) ** 2 + s.std(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-12)
    # ... so alpha is a function of sigma alone: alpha = 1 / sqrt(1 + sigma^2).
    sigma = s.ve_sigma(t)
    torch.testing.assert_close(s.alpha_of_ve_sigma(sigma), (1 + sigma**2).rsqrt(), rtol=1e-10, atol=0)


def test_subvp_std_is_one_minus_alpha_squared():
    s, vp = SubVP(), ContinuousVP()
    t = times(s)
    torch.testing.assert_close(s.std(t), 1 - s.alpha(t) ** 2, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(s.alpha(t), vp.alpha(t), rtol=1e-14, atol=0)  # same mean as VP
    assert (s.std(t) < vp.std(t)).all()  # Song et al. 2021: sub-VP variance is bounded by VP's


@pytest.mark.parametrize("beta_min,beta_max", [(0.1, 20.0), (0.5, 5.0), (1.0, 1.0)])
def test_continuous_vp_alpha_closed_form_and_integral(beta_min, beta_max):
    s = ContinuousVP(beta_min, beta_max)
    for t in (1e-3, 0.1, 0.37, 0.8, 1.0):
        closed = math.exp(-0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min)
        # alpha(t) = exp(-1/2 int_0^t beta(s) ds) with beta(s) = b0 + s (b1 - b0) (Song et al. 2021, eq. 33)
        integral, _ = integrate.quad(lambda u: beta_min + u * (beta_max - beta_min), 0, t)
        assert float(s.alpha(t)) == pytest.approx(closed, rel=1e-12)
        assert float(s.alpha(t)) == pytest.approx(math.exp(-0.5 * integral), rel=1e-12)


def test_ve_sigma_is_geometric():
    smin, smax = 0.01, 50.0
    s = VE(smin, smax)
    t = torch.linspace(0, 1, 11, dtype=f64)
    sigma = s.ve_sigma(t)
    assert float(sigma[0]) == pytest.approx(smin, rel=1e-14)
    assert float(sigma[-1]) == pytest.approx(smax, rel=1e-14)
    ratios = sigma[1:] / sigma[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, (smax / smin) ** 0.1), rtol=1e-12, atol=0)
    torch.testing.assert_close(s.alpha(t), torch.ones_like(t))
    torch.testing.assert_close(EDM().ve_sigma(t), t)  # EDM: sigma(t) = t
    torch.testing.assert_close(EDM().alpha(t), torch.ones_like(t))


@pytest.mark.parametrize("schedule", [
    DiscreteVP("cosine"), DiscreteVP("linear", T=500, beta_end=0.03), DiscreteVP("sigmoid"),
    ContinuousVP(0.2, 15.0, t_min=1e-4), SubVP(0.1, 10.0), VE(0.02, 100.0), EDM(0.01, 50.0),
], ids=lambda s: type(s).__name__)
def test_make_schedule_rebuilds_from_dict(schedule):
    spec = json.loads(json.dumps(schedule.to_dict()))  # must survive plain JSON
    rebuilt = make_schedule(spec)
    assert type(rebuilt) is type(schedule)
    t = times(schedule, 33)
    for fn in ("alpha", "std", "ve_sigma", "log_snr"):
        torch.testing.assert_close(getattr(rebuilt, fn)(t), getattr(schedule, fn)(t), rtol=0, atol=0)
    sigma = schedule.ve_sigma(t)
    torch.testing.assert_close(rebuilt.c_noise(sigma), schedule.c_noise(sigma), rtol=0, atol=0)
    assert (rebuilt.t_min, rebuilt.t_max) == (schedule.t_min, schedule.t_max)


def test_make_schedule_short_names():
    assert isinstance(make_schedule("vp"), ContinuousVP) and not isinstance(make_schedule("vp"), SubVP)
    assert isinstance(make_schedule("subvp"), SubVP)
    assert isinstance(make_schedule("ve"), VE) and isinstance(make_schedule("edm"), EDM)
    for kind in BETA_KINDS:
        assert make_schedule(kind).kind == kind


# ---------------------------------------------------------------------------------------------
# Discrete schedules at fractional time


@pytest.mark.parametrize("kind", BETA_KINDS)
def test_discrete_integer_steps_reproduce_sigmas(kind):
    s = DiscreteVP(kind)
    k = torch.arange(s.T, dtype=f64)
    # exp(log(sigma)) round-trips to a few ulp, not bit for bit
    torch.testing.assert_close(s.ve_sigma(k), s.sigmas, rtol=1e-14, atol=0)
    np.testing.assert_allclose(s.sigmas.numpy(),
                               np.sqrt((1 - s.alphas_cumprod.numpy()) / s.alphas_cumprod.numpy()), rtol=1e-14)
    torch.testing.assert_close(s.t_of_ve_sigma(s.sigmas), k, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_discrete_fractional_steps_interpolate_log_sigma(kind):
    s = DiscreteVP(kind)
    t = torch.rand(500, generator=torch.Generator().manual_seed(0), dtype=f64) * (s.T - 1)
    expected = np.interp(t.numpy(), np.arange(s.T), np.log(s.sigmas.numpy()))
    np.testing.assert_allclose(s.ve_sigma(t).log().numpy(), expected, rtol=1e-12, atol=1e-13)
    # midpoint: geometric mean of neighbours
    mid = s.ve_sigma(torch.tensor(10.5, dtype=f64))
    assert float(mid) == pytest.approx(math.sqrt(float(s.sigmas[10] * s.sigmas[11])), rel=1e-13)


# ---------------------------------------------------------------------------------------------
# Sigma sequences


@pytest.mark.parametrize("n,rho", [(1, 7.0), (2, 7.0), (18, 7.0), (40, 3.0)])
def test_karras_sigmas_match_eq5(n, rho):
    smin, smax = 0.002, 80.0
    sig = karras_sigmas(n, smin, smax, rho=rho)
    assert sig.shape == (n + 1,) and sig[-1] == 0
    i = np.arange(n)
    expected = (smax ** (1 / rho) + i / max(n - 1, 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    np.testing.assert_allclose(sig[:-1].numpy(), expected, rtol=1e-6)
    assert (sig.diff() < 0).all()
    assert float(sig[0]) == pytest.approx(smax, rel=1e-6)
    if n > 1:
        assert float(sig[-2]) == pytest.approx(smin, rel=1e-6)


def test_loglinear_sigmas_equally_spaced_in_log():
    sig = loglinear_sigmas(25, 0.002, 80.0)
    assert sig.shape == (26,) and sig[-1] == 0
    logs = sig[:-1].double().log()
    steps = logs.diff()
    torch.testing.assert_close(steps, torch.full_like(steps, (math.log(0.002) - math.log(80.0)) / 24),
                               rtol=1e-5, atol=0)
    assert float(sig[0]) == pytest.approx(80.0, rel=1e-6) and float(sig[-2]) == pytest.approx(0.002, rel=1e-6)


@pytest.mark.parametrize("spacing", ["time_uniform", "time_quadratic"])
def test_time_spaced_sigmas(spacing):
    s = ContinuousVP()
    n = 12
    fn = time_uniform_sigmas if spacing == "time_uniform" else time_quadratic_sigmas
    sig = fn(s, n)
    assert sig.shape == (n + 1,) and sig[-1] == 0 and (sig.diff() < 0).all()
    t = s.t_of_ve_sigma(sig[:-1].double())
    u = t if spacing == "time_uniform" else t.sqrt()
    expected = torch.linspace(float(u[0]), float(u[-1]), n, dtype=f64)
    torch.testing.assert_close(u, expected, rtol=1e-5, atol=1e-6)
    assert float(t[0]) == pytest.approx(s.t_max, rel=1e-5) and float(t[-1]) == pytest.approx(s.t_min, rel=1e-4)


def lin_timesteps(T, n, spacing):
    """Timesteps of Lin et al. (2024, Table 2), 0-indexed, as in diffusers' DDIM scheduler."""
    if spacing == "linspace":
        return np.linspace(0, T - 1, n).round().astype(int)
    if spacing == "leading":
        return np.arange(n) * (T // n)
    return (np.round(np.arange(T, 0, -T / n)) - 1).astype(int)[::-1]


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("n", [1, 7, 10, 16, 50])
def test_discrete_sigmas_spacings(spacing, n):
    s = DiscreteVP("linear")
    sig = discrete_sigmas(s, n, spacing)
    assert sig.shape == (n + 1,) and sig[-1] == 0
    assert (sig.diff() < 0).all()
    steps = lin_timesteps(s.T, n, spacing)
    np.testing.assert_allclose(sig[:-1].numpy(), s.sigmas.numpy()[steps[::-1]].astype(np.float32), rtol=1e-6)
    picked = s.t_of_ve_sigma(sig[:-1].double()).round().long().tolist()
    if spacing == "trailing":
        assert s.T - 1 in picked
    if spacing == "leading":
        assert 0 in picked
    if spacing == "linspace":
        assert 0 in picked and (n == 1 or s.T - 1 in picked)  # linspace(0, T-1, 1) = [0]


def test_lin_table2_examples():
    # The printed rows of Lin et al. (2024, Table 2) for T = 1000, 10 steps (1-indexed there).
    s = DiscreteVP("linear")
    rows = {"linspace": [1, 112, 223, 334, 445, 556, 667, 778, 889, 1000],
            "leading": [1, 101, 201, 301, 401, 501, 601, 701, 801, 901],
            "trailing": [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]}
    for spacing, row in rows.items():
        sig = discrete_sigmas(s, 10, spacing)
        expected = s.sigmas[[r - 1 for r in reversed(row)]].float()
        torch.testing.assert_close(sig[:-1], expected, rtol=0, atol=0)


def test_sigma_sequences_reject_bad_arguments():
    s = DiscreteVP("linear")
    with pytest.raises(ValueError):
        karras_sigmas(0, 0.002, 80.0)
    with pytest.raises(ValueError):
        loglinear_sigmas(0, 0.002, 80.0)
    for n in (0, s.T + 1):
        with pytest.raises(ValueError):
            discrete_sigmas(s, n)
    with pytest.raises(ValueError):
        discrete_sigmas(s, 10, spacing="quadratic")


# ---------------------------------------------------------------------------------------------
# Forward process and posteriors


N_MC = 200_000


def moments_within(samples, mean, var, z=5.0):
    """Whether the sample mean and variance are within z standard errors of (mean, var)."""
    n = samples.numel()
    se_mean = math.sqrt(var / n)
    se_var = var * math.sqrt(2 / (n - 1))  # Var of the sample variance of a Gaussian
    return abs(float(samples.mean()) - mean) < z * se_mean and abs(float(samples.var()) - var) < z * se_var


@pytest.mark.parametrize("schedule,t", [(DiscreteVP("linear"), 100), (DiscreteVP("cosine"), 300.5),
                                        (ContinuousVP(), 0.3), (SubVP(), 0.3), (VE(), 0.5)],
                         ids=["discrete-linear", "discrete-cosine", "vp", "subvp", "ve"])
def test_q_sample_moments(schedule, t):
    x0_value = 3.0
    x0 = torch.full((N_MC, 1), x0_value, dtype=f64)
    xt = q_sample(schedule, x0, t, generator=torch.Generator().manual_seed(1))
    alpha, std = float(schedule.alpha(t)), float(schedule.std(t))
    assert moments_within(xt, alpha * x0_value, std**2)
    # The tolerance is tight enough to catch a 1% error in alpha or in std.
    assert not moments_within(xt, 1.01 * alpha * x0_value, std**2)
    assert not moments_within(xt, alpha * x0_value, (1.03 * std) ** 2)


def test_q_sample_with_given_noise_and_per_sample_time():
    s = ContinuousVP()
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 2, generator=gen, dtype=f64), torch.randn(4, 3, 2, generator=gen, dtype=f64)
    t = torch.tensor([0.01, 0.2, 0.5, 1.0], dtype=f64)
    xt = q_sample(s, x0, t, noise=noise)
    for i in range(4):
        torch.testing.assert_close(xt[i], s.alpha(t[i]) * x0[i] + s.std(t[i]) * noise[i], rtol=1e-14, atol=1e-14)
    # in the VE convention: x_t / alpha = x0 + sigma n
    x = xt / s.alpha(t)[:, None, None]
    torch.testing.assert_close(x, x0 + s.ve_sigma(t)[:, None, None] * noise, rtol=1e-12, atol=1e-12)


def bayes_posterior(x0, xt, ab_prev, beta_t):
    """q(x_{t-1} | x_t, x0) as the product of the Gaussians q(x_{t-1} | x0) and q(x_t | x_{t-1})."""
    prior_mean, prior_prec = math.sqrt(ab_prev) * x0, 1 / (1 - ab_prev)
    # q(x_t | x_{t-1}) = N(sqrt(1 - beta) x_{t-1}, beta) as a function of x_{t-1}:
    lik_mean, lik_prec = xt / math.sqrt(1 - beta_t), (1 - beta_t) / beta_t
    prec = prior_prec + lik_prec
    return (prior_prec * prior_mean + lik_prec * lik_mean) / prec, 1 / prec


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("t", [1, 2, 10, 250, 700, 999])
def test_ddpm_posterior_is_bayes_rule(kind, t):
    s = DiscreteVP(kind)
    ab_prev, beta_t = float(s.alphas_cumprod[t - 1]), float(s.betas[t])
    x0 = torch.tensor([-1.3, 0.0, 0.4, 2.0], dtype=f64)
    xt = torch.tensor([0.7, -2.1, 0.4, 1.5], dtype=f64)
    mean, var = ddpm_posterior(s, x0, xt, t)
    exp_mean, exp_var = bayes_posterior(x0, xt, ab_prev, beta_t)
    torch.testing.assert_close(mean, exp_mean, rtol=1e-9, atol=1e-12)
    assert var == pytest.approx(exp_var, rel=1e-9)

    # VE convention: x = x_t / alpha_t; x_{t-1} / alpha_{t-1} has mean/alpha_{t-1}, var/alpha_{t-1}^2.
    alpha_t, alpha_prev = math.sqrt(float(s.alphas_cumprod[t])), math.sqrt(ab_prev)
    ve_mean, ve_var = ve_posterior(x0, xt / alpha_t, float(s.sigmas[t]), float(s.sigmas[t - 1]))
    torch.testing.assert_close(ve_mean, mean / alpha_prev, rtol=1e-8, atol=1e-10)
    assert ve_var == pytest.approx(var / alpha_prev**2, rel=1e-8)


def test_ve_posterior_is_bayes_rule():
    # x' ~ N(x0, s'^2), x | x' ~ N(x', s^2 - s'^2): the posterior of x' is the product of two Gaussians.
    x0, x = torch.tensor([0.5, -1.0], dtype=f64), torch.tensor([3.0, 2.0], dtype=f64)
    for sigma, sigma_next in [(2.0, 1.0), (80.0, 40.0), (0.1, 0.099)]:
        prec = 1 / sigma_next**2 + 1 / (sigma**2 - sigma_next**2)
        exp_mean = (x0 / sigma_next**2 + x / (sigma**2 - sigma_next**2)) / prec
        mean, var = ve_posterior(x0, x, sigma, sigma_next)
        torch.testing.assert_close(mean, exp_mean, rtol=1e-10, atol=1e-12)
        assert var == pytest.approx(1 / prec, rel=1e-10)

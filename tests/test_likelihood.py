"""Likelihoods against exact answers: the probability-flow ODE NLL of Gaussian mixtures against
their smoothed log-density, Hutchinson's estimator against the exact trace, the variational bound
of Gaussian data against its closed form, and the discretization and variance helpers against
their definitions."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from difflab.exact import GaussianMixture, random_mixture, ring_mixture
from difflab.likelihood import (BIN_WIDTH, analytic_dpm_gamma, analytic_dpm_variance, ancestral_variance,
                                bits_per_dim, dequantize, discretized_gaussian_log_likelihood, elbo_bpd,
                                elbo_terms, fixed_variance, interpolated_log_variance, ode_nll,
                                vlb_term_loss)
from difflab.likelihood.elbo import _chain
from difflab.likelihood.ode import _drift
from difflab.samplers.stepping import ancestral_step
from difflab.schedules import DiscreteVP, ddpm_posterior

SMIN, SMAX = 0.002, 80.0


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module", params=["gmm2d", "gmm64"])
def mixture_nll(request):
    """A mixture, a few points drawn from it smoothed to sigma_min, and their exact-trace ODE NLL."""
    gmm, n = (ring_mixture(), 6) if request.param == "gmm2d" else (random_mixture(), 3)
    x = gmm.sample(n, torch.Generator().manual_seed(1), sigma=SMIN)
    nll, stats = ode_nll(gmm, x, return_stats=True)
    return gmm, x, nll, stats


# ---------------------------------------------------------------------------------------------
# Probability-flow ODE


def test_ode_nll_matches_smoothed_density(mixture_nll):
    gmm, x, nll, stats = mixture_nll
    exact = -gmm.log_prob(x, SMIN)
    # The flow of the exact denoiser carries p(.; sigma_min) onto p(.; sigma_max) exactly, so with
    # the true terminal density in place of the prior the identity holds up to the solver's error.
    identity = -(stats["delta_logp"] + gmm.log_prob(stats["x_end"], SMAX))
    assert (identity - exact).abs().max() / gmm.dim < 1e-4
    # The contract's value swaps p(.; sigma_max) for N(0, sigma_max^2 I); that mismatch is tiny.
    assert (nll - exact).abs().max() / gmm.dim < 1e-3
    assert torch.allclose(nll, -(stats["prior_logp"] + stats["delta_logp"]))
    assert bool((stats["stderr"] == 0).all())


def test_ode_nll_is_per_sample(mixture_nll):
    gmm, x, nll, _ = mixture_nll
    alone = ode_nll(gmm, x[1:2])
    assert torch.allclose(alone, nll[1:2], rtol=0, atol=1e-9)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_estimator_is_unbiased(noise):
    gmm = random_mixture(dim=8, std=0.4)
    x = gmm.sample(2, torch.Generator().manual_seed(2), sigma=0.5)
    log_sigma = torch.full((2,), math.log(0.5), dtype=torch.float64)
    _, div_exact = _drift(gmm, x, log_sigma, None, {})
    gen = torch.Generator().manual_seed(3)
    P = 20_000
    probes = torch.randn(P, *x.shape, generator=gen, dtype=x.dtype)
    if noise == "rademacher":
        probes = probes.sign()
    _, div = _drift(gmm, x, log_sigma, probes, {})  # (2, P): d - eps^T J eps per probe
    se = div.std(1) / math.sqrt(P)
    assert bool(((div.mean(1) - div_exact[:, 0]).abs() < 4 * se).all())
    assert bool((se > 0).all())


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_nll_within_its_standard_error(mixture_nll, noise):
    gmm, x, nll, _ = mixture_nll
    # 64 probes: near a component boundary dD/dx is close to rank one and eps^T J eps is skewed, so
    # fewer probes give a noisy standard error (the estimate itself stays unbiased).
    est, stats = ode_nll(gmm, x, trace="hutchinson", probes=64, hutchinson_noise=noise, return_stats=True,
                         generator=torch.Generator().manual_seed(4))
    assert bool((stats["stderr"] > 0).all())
    assert bool(((est - nll).abs() < 4 * stats["stderr"]).all())


def test_ode_nll_rejects_bad_arguments():
    gmm, x = ring_mixture(), torch.zeros(1, 2, dtype=torch.float64)
    for kwargs in [{"trace": "exactly"}, {"probes": 4}, {"trace": "hutchinson", "probes": 0},
                   {"sigma_min": 1.0, "sigma_max": 0.5}, {"trace": "hutchinson", "hutchinson_noise": "uniform"}]:
        with pytest.raises(ValueError):
            ode_nll(gmm, x, **kwargs)


# ---------------------------------------------------------------------------------------------
# Bits per dimension and dequantization


def test_bits_per_dim_of_uniform_8bit_data_is_8():
    # Uniform over the 256 levels, dequantized: uniform density on [-1 - 1/255, 1 + 1/255]^D.
    D = 12
    nll = torch.tensor(D * math.log(2 + BIN_WIDTH), dtype=torch.float64)
    assert math.isclose(float(bits_per_dim(nll, D)), 8.0, abs_tol=1e-12)
    assert math.isclose(float(bits_per_dim(nll, D, dequantized_8bit=False)), math.log2(2 + BIN_WIDTH))


def test_bits_per_dim_matches_bin_probabilities():
    # For a smooth density the mass of a bin of width w is log P = log(p(x) w) + w^2 p''/(24 p) + O(w^4):
    # the dequantized bpd of the density is -log2 P(bin) of the 8-bit level, up to that known term.
    s = 0.3
    x = torch.arange(-127, 128, 16, dtype=torch.float64) / 127.5
    mass = norm.cdf((x.numpy() + BIN_WIDTH / 2) / s) - norm.cdf((x.numpy() - BIN_WIDTH / 2) / s)
    nll_density = -torch.as_tensor(norm.logpdf(x.numpy() / s) - math.log(s))
    curvature = BIN_WIDTH**2 / 24 * (x**2 / s**4 - 1 / s**2)  # p''/p = x^2/s^4 - 1/s^2 for N(0, s^2)
    assert torch.allclose(bits_per_dim(nll_density, 1) - curvature / math.log(2),
                          -torch.as_tensor(mass).log2(), rtol=0, atol=1e-7)


def test_dequantize_stays_in_its_bin():
    x = torch.randint(0, 256, (64, 3)).double() / 127.5 - 1
    y = dequantize(x, torch.Generator().manual_seed(0))
    assert bool(((y - x).abs() <= BIN_WIDTH / 2).all()) and float((y - x).abs().max()) > 0.9 * BIN_WIDTH / 2
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        dequantize(x * 1.1)


# ---------------------------------------------------------------------------------------------
# Discretized decoder


@pytest.mark.parametrize("mean,log_scale", [(0.0, 0.0), (0.3, -5.0), (-0.98, -7.0), (1.7, -2.0), (0.5, 2.0)])
def test_discretized_decoder_sums_to_one(mean, log_scale):
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    logp = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean), torch.tensor(log_scale))
    assert math.isclose(float(logp.exp().sum()), 1.0, abs_tol=1e-10)
    # Against scipy's cdf on the interior bins (Ho et al. 2020, eq. 13).
    sd = math.exp(log_scale)
    lo, hi = (levels[1:-1].numpy() - mean - BIN_WIDTH / 2) / sd, (levels[1:-1].numpy() - mean + BIN_WIDTH / 2) / sd
    # Subtract upper-tail masses right of the mean: there cdf(hi) - cdf(lo) cancels to nothing.
    ref = np.where(lo > 0, norm.sf(lo) - norm.sf(hi), norm.cdf(hi) - norm.cdf(lo))
    ok = ref > 1e-300
    assert torch.allclose(logp[1:-1][ok], torch.as_tensor(ref[ok]).log(), rtol=1e-6, atol=1e-9)


def test_out_of_range_data_is_refused():
    schedule = DiscreteVP("linear", T=10)
    x0 = torch.tensor([[0.5, 1.2]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        discretized_gaussian_log_likelihood(x0, x0, torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        elbo_terms(lambda x, s: x, x0, schedule)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        vlb_term_loss(x0, x0, torch.tensor([3]), x0, torch.zeros(1, 2), schedule)


# ---------------------------------------------------------------------------------------------
# Variational bound on Gaussian data


def gaussian_problem(d=3, s=0.2):
    means = torch.tensor([[0.1, -0.2, 0.3, 0.0][:d]], dtype=torch.float64)
    return GaussianMixture(means, s), means[0], s


def expected_kl(x0, mean, s, schedule, chain, k, var):
    """E over x_t | x0 of KL(q(x_{t'} | x_t, x0) || N(mu(x0_hat), var)) for the exact denoiser of
    N(mean, s^2 I): x0_hat = mean + kappa (x - mean), kappa = s^2 / (s^2 + sigma^2), x = x0 + sigma n, so
    E|x0 - x0_hat|^2 = (1 - kappa)^2 |x0 - mean|^2 + kappa^2 sigma^2 d."""
    d = x0.shape[1]
    sigma = float(schedule.sigmas[chain.t[k]])
    kappa = s**2 / (s**2 + sigma**2)
    sq = (1 - kappa) ** 2 * (x0 - mean).square().sum(1) + kappa**2 * sigma**2 * d
    bt = float(chain.beta_tilde[k])
    return 0.5 * d * (math.log(var / bt) + bt / var - 1) + 0.5 * float(chain.coef_x0[k]) ** 2 * sq / var


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_elbo_terms_match_closed_form_on_gaussian_data(variance):
    gmm, mean, s = gaussian_problem()
    schedule = DiscreteVP("linear", T=1000)
    timesteps = torch.tensor([0, 1, 4, 20, 100, 300, 600, 999])  # a respaced chain
    gen = torch.Generator().manual_seed(5)
    x0 = gmm.sample(4000, gen).clamp(-1, 1)  # the closed form holds for any x0; the decoder needs [-1, 1]
    out = elbo_terms(gmm, x0, schedule, timesteps=timesteps, variance=variance, generator=gen)
    chain, var = _chain(schedule, timesteps), fixed_variance(schedule, variance, timesteps)
    for k in range(1, len(timesteps)):
        diff = out["terms"][:, k] - expected_kl(x0, mean, s, schedule, chain, k, float(var[k]))
        assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(len(diff)) + 1e-12, k
    a_T = float(schedule.alphas_cumprod[999])
    prior = 0.5 * (a_T * x0.square() + (1 - a_T) - 1 - math.log(1 - a_T)).sum(1)
    assert torch.allclose(out["prior"], prior)
    assert torch.allclose(out["total"], out["prior"] + out["terms"].sum(1))


def test_elbo_bounds_the_entropy_of_discretized_gaussian_data():
    """E[-ELBO] >= E[-log p_model] >= H(data) for any model (Gibbs): checked for 8-bit Gaussian data."""
    gmm, mean, s = gaussian_problem(d=2)
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    gen = torch.Generator().manual_seed(6)
    x0 = ((gmm.sample(1000, gen).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    h = 0.0  # entropy of the 8-bit data, a product over dimensions
    for m in mean.tolist():
        p = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, m), torch.tensor(math.log(s))).exp()
        h -= float((p * p.clamp_min(1e-300).log()).sum())
    schedule = DiscreteVP("linear", T=1000)
    timesteps = torch.linspace(0, 999, 40).round().long()
    for variance in ["fixed_small", "fixed_large"]:
        bound = elbo_terms(gmm, x0, schedule, timesteps=timesteps, variance=variance, generator=gen)["total"]
        assert float(bound.mean()) - 4 * float(bound.std()) / math.sqrt(len(bound)) > h
    bpd = elbo_bpd(gmm, x0[:8], schedule, timesteps=timesteps, generator=gen)
    assert bpd.shape == (8,) and bool((bpd > 0).all())


def test_chain_is_the_ddpm_posterior():
    schedule = DiscreteVP("cosine", T=50)
    chain = _chain(schedule)
    x0, x_t = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    for t in (1, 7, 49):
        mean, var = ddpm_posterior(schedule, x0, x_t, t)
        assert torch.allclose(chain.coef_x0[t] * x0 + chain.coef_xt[t] * x_t, mean)
        assert math.isclose(float(chain.beta_tilde[t]), var, rel_tol=1e-12)


# ---------------------------------------------------------------------------------------------
# Learned and analytic variances


def test_interpolated_log_variance_endpoints():
    schedule = DiscreteVP("linear", T=100)
    t = torch.tensor([0, 1, 50, 99])
    v = torch.ones(4, 1, 2, 2)
    hi, lo = interpolated_log_variance(v, t, schedule), interpolated_log_variance(-v, t, schedule)
    assert torch.allclose(hi[:, 0, 0, 0], schedule.betas[t].log().float())
    small = fixed_variance(schedule, "fixed_small")  # beta~, clipped to beta~_1 at t = 0
    assert torch.allclose(lo[:, 0, 0, 0], small[t].log().float())
    mid = interpolated_log_variance(torch.zeros_like(v), t, schedule)
    assert torch.allclose(mid, (hi + lo) / 2)


def test_hybrid_loss_gradient_reaches_the_variance_only():
    schedule = DiscreteVP("linear", T=100)
    gen = torch.Generator().manual_seed(7)
    x0 = torch.randint(0, 256, (4, 1, 2, 2), generator=gen).float() / 127.5 - 1
    t = torch.tensor([0, 1, 30, 99])
    x = x0 + schedule.sigmas[t].float().reshape(-1, 1, 1, 1) * torch.randn(x0.shape, generator=gen)
    x0_hat = (x0 + 0.05 * torch.randn(x0.shape, generator=gen)).requires_grad_()
    v = torch.zeros(x0.shape, requires_grad=True)
    loss = vlb_term_loss(x0, x, t, x0_hat, interpolated_log_variance(v, t, schedule), schedule)
    assert loss.shape == (4,) and loss.dtype == torch.float32
    loss.sum().backward()
    assert x0_hat.grad is None
    assert bool(torch.isfinite(v.grad).all()) and bool((v.grad.flatten(1).abs().sum(1) > 0).all())
    # At t >= 1 with the variance beta~ the term is |c0 (x0 - x0_hat)|^2 / (2 beta~) per dimension.
    chain = _chain(schedule)
    lv = chain.beta_tilde[t[1:]].log().float().reshape(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    got = vlb_term_loss(x0[1:], x[1:], t[1:], x0_hat[1:], lv, schedule)
    sq = (x0 - x0_hat.detach())[1:].double().square().flatten(1).mean(1)
    want = 0.5 * chain.coef_x0[t[1:]] ** 2 * sq / chain.beta_tilde[t[1:]] / math.log(2)
    assert torch.allclose(got.double(), want, rtol=1e-5)


def exact_reverse_variance(schedule, s, t, t_prev):
    """Var(x_{t'} | x_t) per dimension for x0 ~ N(m, s^2 I), from the joint Gaussian of (x_{t'}, x_t)."""
    a_t = float(schedule.alphas_cumprod[t])
    a_p = float(schedule.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
    var_p = a_p * s**2 + 1 - a_p
    cov = math.sqrt(a_t / a_p) * var_p
    return var_p - cov**2 / (a_t * s**2 + 1 - a_t)


def test_analytic_dpm_variance_is_the_exact_optimum_for_gaussian_data():
    gmm, _, s = gaussian_problem(d=4)
    schedule = DiscreteVP("linear", T=1000)
    timesteps = torch.tensor([0, 2, 10, 50, 200, 500, 999])
    sig2 = schedule.sigmas[timesteps] ** 2
    gamma_exact = sig2 / (s**2 + sig2)  # E|E[n | x]|^2 / d for Gaussian data
    gen = torch.Generator().manual_seed(8)
    gamma = analytic_dpm_gamma(gmm, gmm.sample(4000, gen), schedule, timesteps=timesteps, batch_size=1000,
                               generator=gen)
    assert torch.allclose(gamma, gamma_exact, rtol=0.03, atol=1e-3)
    var = analytic_dpm_variance(gamma_exact, schedule, timesteps=timesteps)
    chain = _chain(schedule, timesteps)
    for k in range(1, len(timesteps)):
        exact = exact_reverse_variance(schedule, s, int(timesteps[k]), int(timesteps[k - 1]))
        assert math.isclose(float(var[k]), exact, rel_tol=1e-9), k
    lam2 = chain.beta_tilde[1:]
    est = analytic_dpm_variance(gamma, schedule, timesteps=timesteps)[1:]
    assert bool((est >= lam2).all())
    # Theorem 2's upper bounds: Gamma = 0, and Cov(x0 | x_t) <= ((b - a) / 2)^2 for data in [a, b].
    top = analytic_dpm_variance(torch.zeros(len(timesteps)), schedule, timesteps=timesteps)[1:]
    assert bool((est <= top).all())
    # For DDPM (lambda^2 = beta~) that bound is beta / alpha of the step, not beta.
    step_beta = chain.beta[1:]
    assert torch.allclose(top, step_beta / (1 - step_beta), rtol=1e-9)
    boxed = analytic_dpm_variance(torch.zeros(len(timesteps)), schedule, timesteps=timesteps, data_range=(-1, 1))
    assert torch.allclose(boxed[1:], torch.minimum(top, lam2 + chain.coef_x0[1:] ** 2))
    assert torch.allclose(analytic_dpm_variance(torch.ones(len(timesteps)), schedule, timesteps=timesteps)[1:], lam2)


def test_analytic_variance_in_the_bound_beats_fixed_variances():
    """With the exact optimum each expected KL term is the smallest of any variance (closed form)."""
    gmm, mean, s = gaussian_problem()
    schedule = DiscreteVP("linear", T=1000)
    timesteps = torch.tensor([0, 5, 50, 300, 999])
    x0 = gmm.sample(2000, torch.Generator().manual_seed(9)).clamp(-1, 1)
    sig2 = schedule.sigmas[timesteps] ** 2
    analytic = analytic_dpm_variance(sig2 / (s**2 + sig2), schedule, timesteps=timesteps)
    out = elbo_terms(gmm, x0, schedule, timesteps=timesteps, variance=analytic,
                     generator=torch.Generator().manual_seed(10))
    chain = _chain(schedule, timesteps)
    for k in range(1, len(timesteps)):
        best = expected_kl(x0, mean, s, schedule, chain, k, float(analytic[k])).mean()
        diff = out["terms"][:, k] - expected_kl(x0, mean, s, schedule, chain, k, float(analytic[k]))
        assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(len(diff)) + 1e-12
        for kind in ("fixed_small", "fixed_large"):
            fixed = float(fixed_variance(schedule, kind, timesteps)[k])
            assert float(best) <= float(expected_kl(x0, mean, s, schedule, chain, k, fixed).mean()) + 1e-12


def test_ancestral_variance_matches_the_ddpm_sampler_steps():
    schedule = DiscreteVP("linear", T=100)
    timesteps = torch.tensor([0, 9, 39, 99])
    sigmas = schedule.sigmas[timesteps].flip(0).tolist() + [0.0]
    x = torch.zeros(2, 3, dtype=torch.float64)
    small, large = ancestral_variance(schedule, timesteps=timesteps), ancestral_variance(schedule, "fixed_large",
                                                                                         timesteps=timesteps)
    for s, s_next in zip(sigmas[:-2], sigmas[1:-1]):
        assert math.isclose(float(small(x, s, s_next)), ancestral_step(s, s_next)[1] ** 2, rel_tol=1e-9)
        # samplers/ancestral.py, variance="upper": beta (1 + sigma_next^2), beta = (s^2 - s'^2) / (1 + s^2).
        assert math.isclose(float(large(x, s, s_next)), (s**2 - s_next**2) / (1 + s**2) * (1 + s_next**2),
                            rel_tol=1e-9)
    assert float(small(x, sigmas[-2], 0.0)) == 0
    learned = ancestral_variance(schedule, lambda x, t: interpolated_log_variance(torch.ones_like(x), t, schedule,
                                                                                  timesteps=timesteps),
                                 timesteps=timesteps)
    assert torch.allclose(learned(x, sigmas[0], sigmas[1]), large(x, sigmas[0], sigmas[1]).expand(2, 3))
    with pytest.raises(ValueError, match="not a step"):
        small(x, sigmas[0], sigmas[2])

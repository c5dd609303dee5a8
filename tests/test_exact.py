"""Tests for difflab.exact: the Gaussian-mixture oracle against independent routes to the same
quantities: Tweedie's formula through autograd, quadrature, Bayes' rule with torch.distributions,
the orthogonality of the posterior mean, and sample moments."""
import math

import pytest
import torch

from difflab.exact import GaussianMixture, random_mixture, ring_mixture

f64 = torch.float64


def uneven_mixture(dim=2):
    """Three components with different weights and widths (the ring's symmetry hides mistakes)."""
    means = torch.tensor([[-2.0, 0.5], [1.5, 1.0], [0.5, -2.5]], dtype=f64)
    if dim > 2:
        means = torch.cat([means, torch.linspace(-1, 1, 3 * (dim - 2), dtype=f64).reshape(3, -1)], 1)
    return GaussianMixture(means, [0.3, 0.6, 1.1], weights=[0.2, 0.5, 0.3])


MIXTURES = {"ring": ring_mixture, "uneven": uneven_mixture, "random": lambda: random_mixture(k=6, dim=8)}


def points(gm, sigma, n=64, seed=0):
    return gm.sample(n, generator=torch.Generator().manual_seed(seed), sigma=sigma)


def autograd_score(gm, x, sigma):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(x, sigma).sum(), x)
    return grad


@pytest.mark.parametrize("name", MIXTURES)
@pytest.mark.parametrize("sigma", [0.05, 0.5, 2.0, 20.0])
def test_tweedie_formula(name, sigma):
    # Tweedie (Efron 2011; Karras et al. 2022, eq. 3): E[x0 | x] = x + sigma^2 grad log p(x; sigma)
    gm = MIXTURES[name]()
    x = points(gm, sigma)
    score = autograd_score(gm, x, sigma)
    torch.testing.assert_close(gm.score(x, sigma), score, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gm.denoiser(x, sigma), x + sigma**2 * score, rtol=1e-9, atol=1e-9)


def test_score_at_zero_noise():
    gm = uneven_mixture()
    x = points(gm, 0.0)
    torch.testing.assert_close(gm.score(x, 0.0), autograd_score(gm, x, 0.0), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gm.denoiser(x, 0.0), x, rtol=1e-12, atol=1e-12)  # nothing to remove


def test_per_sample_sigma_matches_scalar_sigma():
    gm = uneven_mixture()
    x = points(gm, 1.0, n=4)
    sigma = torch.tensor([0.1, 0.5, 1.0, 3.0], dtype=f64)
    batched = gm.denoiser(x, sigma)
    for i in range(4):
        torch.testing.assert_close(batched[i:i + 1], gm.denoiser(x[i:i + 1], float(sigma[i])), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", ["ring", "uneven"])
@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_log_prob_integrates_to_one(name, sigma):
    gm = MIXTURES[name]()
    # grid spacing well below the narrowest std (0.3): the Riemann sum of a Gaussian is then exact
    # to far below the tolerance; the box reaches > 5.5 std past every component
    h, lim = 0.04, 11.0
    u = torch.arange(-lim, lim + h / 2, h, dtype=f64)
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    total = float(gm.log_prob(grid, sigma).exp().sum() * h * h)
    assert total == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", MIXTURES)
def test_log_prob_and_class_posterior_are_bayes_rule(name):
    gm, sigma = MIXTURES[name](), 0.7
    x = points(gm, sigma, n=32)
    var = gm.stds**2 + sigma**2
    # log w_k + log N(x; mu_k, (s_k^2 + sigma^2) I), with torch.distributions as the reference
    log_joint = torch.stack([
        torch.distributions.MultivariateNormal(gm.means[k], var[k] * torch.eye(gm.dim, dtype=f64)).log_prob(x)
        for k in range(gm.num_components)], 1) + gm.log_weights
    torch.testing.assert_close(gm.log_prob(x, sigma), log_joint.logsumexp(1), rtol=1e-12, atol=1e-12)
    post = gm.class_posterior(x, sigma)
    torch.testing.assert_close(post.sum(1), torch.ones(32, dtype=f64), rtol=0, atol=1e-14)
    torch.testing.assert_close(post, (log_joint - log_joint.logsumexp(1, keepdim=True)).exp(), rtol=1e-10, atol=1e-14)
    assert torch.allclose(gm.log_weights.exp().sum(), torch.tensor(1.0, dtype=f64))


def test_component_denoisers_are_each_components_posterior_mean():
    gm, sigma = uneven_mixture(dim=3), 0.8
    x = points(gm, sigma, n=16)
    per = []
    for k in range(gm.num_components):
        # single Gaussian N(mu, s^2) observed with noise sigma: precision-weighted mean
        prior_prec, lik_prec = 1 / gm.stds[k] ** 2, 1 / sigma**2
        expected = (prior_prec * gm.means[k] + lik_prec * x) / (prior_prec + lik_prec)
        got = gm.denoiser(x, sigma, component=k)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        alone = GaussianMixture(gm.means[k:k + 1], gm.stds[k:k + 1])
        torch.testing.assert_close(got, alone.denoiser(x, sigma), rtol=1e-12, atol=1e-12)
        per.append(got)
    per = torch.stack(per, 1)  # (B, K, D)
    # law of total expectation: E[x0 | x] = sum_k p(k | x) E[x0 | x, k]
    mixed = torch.einsum("bk,bkd->bd", gm.class_posterior(x, sigma), per)
    torch.testing.assert_close(gm.denoiser(x, sigma), mixed, rtol=1e-12, atol=1e-12)
    ids = torch.arange(16) % gm.num_components
    torch.testing.assert_close(gm.denoiser(x, sigma, component=ids), per[torch.arange(16), ids], rtol=0, atol=0)


def test_denoiser_residual_is_orthogonal_to_functions_of_x():
    # E[x0 | x] is the L2 projection: E[(x0 - D(x)) g(x)] = 0 for every g. A denoiser for a slightly
    # wrong noise level violates it by many standard errors, so the check has teeth.
    gm, sigma, n = uneven_mixture(), 0.8, 200_000
    gen = torch.Generator().manual_seed(0)
    x0 = gm.sample(n, generator=gen)
    x = x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=f64)

    def worst_z(d):
        prod = (x0 - d) * x  # g(x) = x, per coordinate
        return float((prod.mean(0).abs() / (prod.std(0) / math.sqrt(n))).max())

    assert worst_z(gm.denoiser(x, sigma)) < 5
    assert worst_z(gm.denoiser(x, 1.1 * sigma)) > 10


@pytest.mark.parametrize("sigma", [0.0, 0.5, 2.0])
def test_sample_moments(sigma):
    gm, n = uneven_mixture(), 200_000
    x, labels = gm.sample(n, generator=torch.Generator().manual_seed(0), sigma=sigma, return_labels=True)
    w = gm.log_weights.exp()
    mean = w @ gm.means
    second = sum(w[k] * ((gm.stds[k] ** 2 + sigma**2) * torch.eye(2, dtype=f64) + torch.outer(gm.means[k], gm.means[k]))
                 for k in range(3))
    cov = second - torch.outer(mean, mean)
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - mean).abs() < 5 * se_mean).all()
    centred = x - mean
    prods = centred[:, :, None] * centred[:, None, :]  # (n, 2, 2): unbiased terms of the covariance
    se_cov = prods.std(0) / math.sqrt(n)
    assert ((prods.mean(0) - cov).abs() < 5 * se_cov).all()
    freq = torch.bincount(labels, minlength=3).to(f64) / n
    assert ((freq - w).abs() < 5 * (w * (1 - w) / n).sqrt()).all()
    # given its label, x is N(mu_k, (s_k^2 + sigma^2) I): standardised residuals are N(0, 1)
    z = ((x - gm.means[labels]) / (gm.stds[labels] ** 2 + sigma**2).sqrt()[:, None]).flatten()
    assert abs(float(z.mean())) < 5 / math.sqrt(z.numel())
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / (z.numel() - 1))


def test_sample_is_reproducible_with_generator():
    gm = ring_mixture()
    a = gm.sample(10, generator=torch.Generator().manual_seed(5))
    b = gm.sample(10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.dtype == f64 and a.shape == (10, 2)


def test_random_mixture_means():
    gm = random_mixture(k=10, dim=64, seed=0)
    assert gm.means.shape == (10, 64) and gm.num_components == 10
    torch.testing.assert_close(gm.means.norm(dim=1), torch.full((10,), 3.0, dtype=f64), rtol=1e-14, atol=0)
    assert torch.equal(gm.means, random_mixture(k=10, dim=64, seed=0).means)
    assert not torch.allclose(gm.means, random_mixture(k=10, dim=64, seed=1).means)
    torch.testing.assert_close(gm.stds, torch.full((10,), 0.5, dtype=f64))
    torch.testing.assert_close(gm.log_weights.exp(), torch.full((10,), 0.1, dtype=f64))


def test_ring_mixture_means():
    gm = ring_mixture(k=8, radius=4.0)
    torch.testing.assert_close(gm.means.norm(dim=1), torch.full((8,), 4.0, dtype=f64), rtol=1e-14, atol=0)
    angles = torch.atan2(gm.means[:, 1], gm.means[:, 0]).remainder(2 * math.pi)
    torch.testing.assert_close(angles.sort().values, torch.arange(8, dtype=f64) * math.pi / 4, rtol=0, atol=1e-12)


def test_bad_means_shape_raises():
    with pytest.raises(ValueError):
        GaussianMixture(torch.zeros(4), 1.0)

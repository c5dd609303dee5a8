"""DPS (Chung et al. 2023) and the exact posterior of a Gaussian mixture under a linear-Gaussian
measurement: the posterior against quadrature, importance weighting and the Schur complement; DPS
samples against it; its update against the closed-form gradient; gradients through nonlinear
operators; the operators' properties; errors; the command line."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

import difflab
from difflab.editing import (dps, dps_denoiser, downsampling, fourier_magnitude, gaussian_blur, masking,
                             saturation)
from difflab.exact import (FullCovarianceMixture, Gaussian, GaussianMixture, linear_gaussian_posterior,
                           random_mixture, ring_mixture)
from difflab.samplers.stepping import ancestral_step

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

f64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def karras(n):
    return difflab.karras_sigmas(n, 0.002, 80.0).double()


def uneven_mixture():
    """Three components with different weights and widths (the ring's symmetry hides mistakes)."""
    return GaussianMixture([[-2.0, 0.5], [1.5, 1.0], [0.5, -2.5]], [0.3, 0.6, 1.1], weights=[0.2, 0.5, 0.3])


def log_likelihood(x, M, y, s):
    """log N(y; M x, s^2 I) for each row of x."""
    r = y - x @ M.T
    return -0.5 * (r.square().sum(1) / s**2 + M.shape[0] * math.log(2 * math.pi * s**2))


# ---------------------------------------------------------------------------------------------
# The exact posterior


def test_posterior_density_and_evidence_match_quadrature():
    """log p(x | y) - log p(x) - log p(y | x) is the constant -log p(y), and p(y) is the integral
    of p(x) p(y | x) over a fine grid."""
    prior, M, y, s = uneven_mixture(), torch.tensor([[0.8, -0.5]], dtype=f64), torch.tensor([0.7], dtype=f64), 0.4
    post = linear_gaussian_posterior(prior, M, y, s)
    g = torch.linspace(-9, 9, 1201, dtype=f64)
    X = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    log_joint = prior.log_prob(X) + log_likelihood(X, M, y, s)
    log_evidence = torch.logsumexp(log_joint, 0) + 2 * math.log(float(g[1] - g[0]))
    gap = post.log_prob(X) - log_joint
    assert float(gap.max() - gap.min()) < 1e-9
    assert abs(float(gap.mean() + log_evidence)) < 1e-6


def test_posterior_matches_importance_weighting():
    """Component probabilities and mean in 5-D, against prior draws weighted by the likelihood."""
    prior = random_mixture(k=4, dim=5, norm=2.0, std=0.8, seed=3)
    M = torch.randn(3, 5, generator=gen(1), dtype=f64)
    y, s = prior.sample(1, generator=gen(2))[0] @ M.T + 0.5 * torch.randn(3, generator=gen(3), dtype=f64), 0.5
    post = linear_gaussian_posterior(prior, M, y, s)
    x, k = prior.sample(400_000, generator=gen(4), return_labels=True)
    w = torch.softmax(log_likelihood(x, M, y, s), 0)
    ess = float(1 / w.square().sum())
    assert ess > 1000
    component = torch.zeros(4, dtype=f64).index_add_(0, k, w)
    assert torch.allclose(component, post.log_weights.exp(), atol=5 / math.sqrt(ess))
    mean = (post.log_weights.exp()[:, None] * post.means).sum(0)
    assert torch.allclose(w @ x, mean, atol=8 / math.sqrt(ess))


def test_posterior_of_a_gaussian_is_the_schur_complement():
    """One full-covariance Gaussian observed without noise on two coordinates: the posterior keeps
    them and the others follow Gaussian.conditional; with noise it is the information form."""
    A = torch.randn(4, 4, generator=gen(5), dtype=f64)
    g = Gaussian([0.3, -0.2, 0.5, 0.0], A @ A.T + 0.5 * torch.eye(4, dtype=f64))
    known = torch.tensor([True, False, True, False])
    M, values = torch.eye(4, dtype=f64)[known], torch.tensor([1.0, -0.4], dtype=f64)
    post = linear_gaussian_posterior(g, M, values, 0.0)
    mean, cov = g.conditional(known, values)
    assert torch.allclose(post.means[0, known], values) and torch.allclose(post.means[0, ~known], mean[0])
    assert torch.allclose(post.covs[0][~known][:, ~known], cov) and post.covs[0][known].abs().max() < 1e-12
    s = 0.3
    post = linear_gaussian_posterior(g, M, values, s)
    info = torch.linalg.inv(g.cov) + M.T @ M / s**2
    cov = torch.linalg.inv(info)
    assert torch.allclose(post.covs[0], cov)
    assert torch.allclose(post.means[0], cov @ (torch.linalg.solve(g.cov, g.mean) + M.T @ values / s**2))


def test_full_covariance_mixture_is_an_exact_denoiser():
    """As a GaussianMixture it denoises identically; a posterior (full covariances) satisfies
    Tweedie's formula through autograd, its draws have its moments, and its marginal W1 is exact."""
    gm = uneven_mixture()
    full = FullCovarianceMixture.of(gm)
    x = gm.sample(50, generator=gen(1), sigma=1.0)
    for sigma in (0.05, 1.0, 10.0, math.inf):
        sig = torch.full((50,), sigma, dtype=f64)
        assert torch.allclose(full(x, sig), gm(x, sig), atol=1e-12)
    post = linear_gaussian_posterior(gm, torch.tensor([[1.0, 1.0]], dtype=f64), torch.tensor([0.5]), 0.5)
    for sigma in (0.1, 1.0, 5.0):
        x_in = post.sample(20, generator=gen(2), sigma=sigma).requires_grad_(True)
        (score,) = torch.autograd.grad(post.log_prob(x_in, sigma).sum(), x_in)
        d = post(x_in.detach(), torch.full((20,), sigma, dtype=f64))
        assert torch.allclose(d, x_in.detach() + sigma**2 * score, atol=1e-10)
    draws = post.sample(200_000, generator=gen(3))
    p = post.log_weights.exp()
    mean = p @ post.means
    cov = (p[:, None, None] * (post.covs + post.means[:, :, None] * post.means[:, None])).sum(0) - mean[:, None] * mean
    assert torch.allclose(draws.mean(0), mean, atol=0.02) and torch.allclose(draws.T.cov(), cov, atol=0.03)
    # W1 of all draws at 0 against N(0, 1) in each coordinate is E|X| = sqrt(2 / pi)
    unit = FullCovarianceMixture(torch.zeros(1, 2), torch.eye(2)[None])
    w1 = unit.marginal_wasserstein(torch.zeros(100, 2))
    assert torch.allclose(w1, torch.tensor(math.sqrt(2 / math.pi), dtype=f64), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# DPS against the exact posterior (the setups of benchmarks/dps.py, noise 0.1, 100 ddpm steps)


def blur16():
    M = 0.5 * torch.eye(16, dtype=f64)
    for i in range(16):
        M[i, (i + 1) % 16] = M[i, (i - 1) % 16] = 0.25
    return M


PROBLEMS = {  # prior, M, bound on the mean W1 per coordinate with the default scale
    # measured (n = 1000): exact draws 0.020 / 0.020; scale 2 (the default) 0.064 / 0.037; scale 1
    # 0.49 / 0.11; scale 0 (the prior) 3.3 / 0.65
    "2-D ring, blur": (ring_mixture, lambda: torch.tensor([[0.6, 0.4], [0.4, 0.6]], dtype=f64), 0.12),
    "16-D, half seen": (lambda: random_mixture(k=8, dim=16, norm=3.0, std=0.5),
                        lambda: torch.eye(16, dtype=f64)[::2], 0.07),
}


@pytest.mark.parametrize("name", PROBLEMS)
def test_dps_approaches_the_exact_posterior(name):
    make_prior, make_M, bound = PROBLEMS[name]
    prior, M, s, n = make_prior(), make_M(), 0.1, 1000
    y = prior.sample(1, generator=gen(0)) @ M.T + s * torch.randn(1, M.shape[0], generator=gen(5), dtype=f64)
    post = linear_gaussian_posterior(prior, M, y, s)
    start = 80.0 * torch.randn(n, prior.dim, generator=gen(3), dtype=f64)

    def w1(scale):
        options = {} if scale is None else {"scale": scale}
        out = dps(prior, y, lambda x: x @ M.T, start, karras(100), noise_std=s, generator=gen(4), **options)
        return float(post.marginal_wasserstein(out).mean())

    floor = float(post.marginal_wasserstein(post.sample(n, generator=gen(2))).mean())
    assert floor < bound / 3
    assert w1(None) < bound  # the default scale
    assert w1(0.0) > 4 * bound  # without the measurement: the prior


def test_dps_step_is_the_documented_update():
    """One ddpm step sigma -> sigma' moves x by -(sigma^2 - sigma'^2) zeta grad |y - M D(x)|^2
    against the unguided step, zeta = scale / max(rms(r), noise_std); for an exact Gaussian
    D(x) = mu + P (x - mu) with P = S (S + sigma^2 I)^-1, the gradient is -2 P^T M^T r."""
    A = torch.randn(3, 3, generator=gen(6), dtype=f64)
    g = Gaussian([0.5, 0.0, -0.5], A @ A.T + 0.1 * torch.eye(3, dtype=f64))
    M, sigma, sigma_next = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]], dtype=f64), 1.3, 0.9
    y, x = torch.tensor([[0.4, -1.0]], dtype=f64), sigma * torch.randn(5, 3, generator=gen(7), dtype=f64)
    sigmas = torch.tensor([sigma, sigma_next], dtype=f64)
    for s in (0.0, 2.0):  # 2.0: above the residuals' RMS, so the noise level sets zeta
        guided = dps(g, y, lambda v: v @ M.T, x, sigmas, noise_std=s, scale=1.5, generator=gen(8))
        plain = dps(g, y, lambda v: v @ M.T, x, sigmas, noise_std=s, scale=0.0, generator=gen(8))
        P = g.cov @ torch.linalg.inv(g.cov + sigma**2 * torch.eye(3, dtype=f64))
        r = y - (g.mean + (x - g.mean) @ P.T) @ M.T
        zeta = 1.5 / (r.square().mean(1, keepdim=True).sqrt()).clamp_min(s)
        expected = -(sigma**2 - sigma_next**2) * zeta * (-2 * r @ M @ P)
        assert torch.allclose(guided - plain, expected, atol=1e-12)
    sigma_down, _ = ancestral_step(sigma, sigma_next)
    assert sigma_down < sigma_next  # a stochastic step: the update above is not Euler's


def test_dps_from_pure_noise():
    """sigmas[0] = inf (a flow's start, x the unit noise): that step has nothing to guide."""
    gm, A = ring_mixture(), (lambda x: x[:, :1])
    sigmas = torch.cat([torch.tensor([math.inf], dtype=f64), karras(20)])
    out = dps(gm, torch.tensor([[4.0]], dtype=f64), A, torch.randn(200, 2, generator=gen(1), dtype=f64), sigmas,
              noise_std=0.1, generator=gen(2))
    assert out.isfinite().all() and (out[:, 0] - 4).abs().median() < 0.3


@pytest.mark.parametrize("make_A", [lambda: saturation(2.0), lambda: fourier_magnitude(2), lambda: gaussian_blur(0.8)],
                         ids=["saturation", "magnitude", "blur"])
@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode"])
def test_gradient_flows_through_the_operator_and_denoiser(make_A, mode):
    """The guided denoiser's correction is -sigma^2 zeta grad_x |y - A(D(x))|^2, checked by central
    differences, for nonlinear A on images, whatever the caller's autograd mode."""
    A, gm = make_A(), random_mixture(k=3, dim=1 * 4 * 4, norm=1.0, std=0.4)
    sigma, x = 0.7, 0.7 * torch.randn(2, 1, 4, 4, generator=gen(1), dtype=f64)
    y = A(gm.sample(1, generator=gen(2)).reshape(1, 1, 4, 4))
    sig = torch.full((2,), sigma, dtype=f64)
    d = dps_denoiser(gm, y, A, noise_std=0.01, scale=1.0)
    context = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]
    with context():
        correction = d(x, sig) - gm(x, sig)

    def f(v):
        return (y - A(gm(v, sig))).flatten(1).square().sum(1)

    grad = torch.zeros_like(x).flatten(1)
    h = 1e-6
    for i in range(x[0].numel()):
        e = torch.zeros_like(x).flatten(1)
        e[:, i] = h
        grad[:, i] = (f(x + e.view_as(x)) - f(x - e.view_as(x))) / (2 * h)
    zeta = 1.0 / (f(x) / y[0].numel()).sqrt().clamp_min(0.01)
    assert grad.abs().max() > 1e-3
    assert torch.allclose(correction.flatten(1), -sigma**2 * zeta[:, None] * grad, atol=1e-6)


def test_dps_with_a_saturating_measurement_follows_the_posterior():
    """y = tanh(x_1 / 2) + 0.05 n on the 8-mode ring: the exact posterior on a grid. Measured W1
    0.40 at the default scale (0.07 for exact draws on the grid), 1.7 without the measurement."""
    ring, s = ring_mixture(), 0.05
    A = lambda x: torch.tanh(0.5 * x[:, :1])  # noqa: E731
    y = A(torch.tensor([[4 * math.cos(math.pi / 4), 4 * math.sin(math.pi / 4)]], dtype=f64))
    g = torch.linspace(-6, 6, 601, dtype=f64)
    X = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    p = torch.softmax(ring.log_prob(X) - 0.5 * (A(X) - y).square().sum(1) / s**2, 0).reshape(601, 601)

    def w1(x):  # integral |F_n - F| per coordinate, F from the grid, averaged
        cdfs = (p.sum(1).cumsum(0), p.sum(0).cumsum(0))
        F_n = [torch.searchsorted(x[:, j].sort().values.contiguous(), g, right=True) / len(x) for j in range(2)]
        return sum(float((a - F).abs().sum() * (g[1] - g[0])) for a, F in zip(F_n, cdfs)) / 2

    start = 80.0 * torch.randn(2000, 2, generator=gen(0), dtype=f64)
    assert w1(dps(ring, y, A, start, karras(100), noise_std=s, generator=gen(3))) < 0.55
    assert w1(dps(ring, y, A, start, karras(100), noise_std=s, scale=0.0, generator=gen(3))) > 1.2


# ---------------------------------------------------------------------------------------------
# Operators


def test_operators():
    x = torch.randn(2, 3, 8, 8, generator=gen(1), dtype=f64)
    x2 = torch.randn(2, 3, 8, 8, generator=gen(2), dtype=f64)
    blur = gaussian_blur(1.0)
    assert torch.allclose(blur(2 * x - 3 * x2), 2 * blur(x) - 3 * blur(x2))  # linear
    assert torch.allclose(blur(torch.full_like(x, 0.3)), torch.full_like(x, 0.3))  # weights sum to 1
    assert blur(x).var() < 0.5 * x.var()
    magnitude = fourier_magnitude(2)
    assert magnitude(x).shape == (2, 3, 16, 16)
    assert torch.allclose(magnitude(x).square().sum((2, 3)), x.square().sum((2, 3)))  # Parseval
    assert torch.allclose(magnitude(x.flip(-1, -2)), magnitude(x))  # the phase (here a flip) is lost
    assert torch.allclose(saturation(2.0)(x), torch.tanh(2 * x))
    mask = torch.rand(1, 1, 8, 8, generator=gen(3)) < 0.5
    assert torch.equal(masking(mask)(x), x * mask)
    assert torch.allclose(downsampling(2)(x), x.reshape(2, 3, 4, 2, 4, 2).mean((3, 5)))


# ---------------------------------------------------------------------------------------------
# Errors a user can cause


def test_bad_inputs_raise_clear_errors():
    gm, A = ring_mixture(), (lambda x: x[:, :1])
    x, y = torch.zeros(4, 2, dtype=f64), torch.zeros(1, 1, dtype=f64)
    cases = [
        (lambda: dps(gm, torch.zeros(1, 2, dtype=f64), A, x, karras(5), noise_std=0.1), "has shape"),
        (lambda: dps(gm, torch.zeros(3, 1, dtype=f64), A, x, karras(5), noise_std=0.1), "batch size 1"),
        (lambda: dps(gm, y, A, x, karras(5), noise_std=-0.1), "noise_std and scale must be >= 0"),
        (lambda: dps(gm, y, A, x, karras(5), noise_std=0.1, scale=-1.0), "noise_std and scale must be >= 0"),
        (lambda: dps(gm, y, A, x, karras(5).flip(0), noise_std=0.1), "decreasing"),
        (lambda: dps(gm, y, A, x, torch.tensor([1.0]), noise_std=0.1), "at least two"),
        (lambda: dps(gm, y, A, x, torch.tensor([1.0, 0.0, 0.0]), noise_std=0.1), "decreasing"),
        (lambda: linear_gaussian_posterior(gm, torch.eye(3), torch.zeros(3), 0.1), "M must be"),
        (lambda: linear_gaussian_posterior(gm, torch.eye(2), torch.zeros(3), 0.1), "y holds 3 values"),
        (lambda: linear_gaussian_posterior(gm, torch.eye(2), torch.zeros(2), -1.0), "noise_std"),
        (lambda: gaussian_blur(0.0), "std must be positive"),
        (lambda: saturation(-1.0), "gain k must be positive"),
        (lambda: fourier_magnitude(0), "oversample"),
        (lambda: FullCovarianceMixture(torch.zeros(2, 3), torch.zeros(2, 2, 2)), "covs"),
    ]
    for call, phrase in cases:
        with pytest.raises(ValueError, match=phrase) as info:
            call()
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# The command line


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An unconditional digits model after two steps of an 8-channel UNet (quality is not the point)."""
    pytest.importorskip("difflab.training")
    from difflab.cli import main
    from test_cli_extra import TINY  # tests/ is on sys.path (pytest rootdir import)

    out = tmp_path_factory.mktemp("dps") / "digits"
    assert main(["train", "--preset", "digits", "--out", str(out), *TINY]) == 0
    return out


@pytest.mark.parametrize("operator", ["blur", "saturate", "magnitude", "inpaint", "downsample"])
def test_cli_dps_writes_a_figure(capsys, tiny_model, tmp_path, operator):
    from test_cli import run

    png = tmp_path / "dps.png"
    status, out, err = run(capsys, "edit", "dps", tiny_model, "--from-data", "digits", "--n", 2, "--steps", 2,
                           "--operator", operator, "--noise-std", 0.05, "--scale", 1, "--out", png)
    assert status == 0, err
    assert "DPS" in out
    with Image.open(png) as img:
        assert img.size == (2 * 65 + 1, 3 * 65 + 1)  # input, measurement, output rows of 8x8 digits at 64 px
        assert np.asarray(img).std() > 0


def test_cli_dps_user_errors(capsys, tiny_model, tmp_path):
    from test_cli import assert_user_error, run

    common = ["edit", "dps", tiny_model, "--from-data", "digits", "--n", 2, "--steps", 2, "--out", tmp_path / "o.png"]
    assert_user_error(run(capsys, *common, "--noise-std", -1), "--noise-std")
    assert_user_error(run(capsys, *common, "--operator", "blur", "--mask-kind", "random"), "--operator inpaint")
    assert_user_error(run(capsys, *common, "--operator", "downsample", "--factor", 3), "does not divide")
    assert_user_error(run(capsys, *common, "--blur-std", 0), "std must be positive")

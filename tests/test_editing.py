"""Editing methods against mathematics: the exact conditional of a correlated Gaussian, the exact
output law of the replacement method and RePaint for a linear denoiser, distribution tests on exact
mixtures, convergence of ODE inversion, DDRM data consistency and the operators' SVDs."""
import math

import pytest
import torch

import difflab
from difflab.editing import (Colorization, Inpainting, LinearOperator, SuperResolution, ddrm, ilvr, inpaint,
                             invert, low_pass, reconstruct, repaint_schedule, replaced_denoiser, sdedit)
from difflab.exact import GaussianMixture, random_mixture, ring_mixture
from difflab.evaluation.metrics import sliced_wasserstein
from difflab.samplers import STOCHASTIC
from difflab.samplers.stepping import ancestral_step

SMIN, SMAX = 0.002, 80.0


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def karras(n):
    return difflab.karras_sigmas(n, SMIN, SMAX).double()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class Gaussian:
    """Exact denoiser of N(mu, Sigma) with full covariance: D(x, sigma) = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu)."""

    def __init__(self, mu, cov):
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.cov = torch.as_tensor(cov, dtype=torch.float64)
        self.eig, self.Q = torch.linalg.eigh(self.cov)

    def A(self, sigma):
        return self.Q @ torch.diag(self.eig / (self.eig + sigma**2)) @ self.Q.T

    def __call__(self, x, sigma):
        shrink = self.eig / (self.eig + sigma[:, None] ** 2)
        return self.mu + (((x - self.mu) @ self.Q) * shrink) @ self.Q.T

    def conditional(self, k, u, a):
        """Mean and covariance of x_u given x_k = a."""
        S = self.cov
        gain = S[u][:, k] @ torch.linalg.inv(S[k][:, k])
        return self.mu[u] + gain @ (a - self.mu[k]), S[u][:, u] - gain @ S[k][:, u]


def replacement_law(g: Gaussian, k, u, a, sigmas, path):
    """Exact mean and covariance of the unknown coordinates after the replacement method / RePaint
    with the DDPM step, for a linear denoiser: walking ``path``, a step down is
    x_u' = (sd/s) x_u + (1 - sd/s) D_u(x_u, a + s z) + su xi (linear in x_u, z, xi), a step up adds
    variance s^2 - s'^2. Start: x_u ~ N(0, sigma_0^2 I)."""
    s = [float(v) for v in sigmas]
    eye = torch.eye(len(u), dtype=torch.float64)
    m, P = torch.zeros(len(u), dtype=torch.float64), s[0] ** 2 * eye
    for i, j in zip(path[:-1], path[1:]):
        if j < i:
            P = P + (s[j] ** 2 - s[i] ** 2) * eye
            continue
        sigma_down, sigma_up = ancestral_step(s[i], s[j], 1.0)
        A = g.A(s[i])
        c = 1 - sigma_down / s[i]
        F = (sigma_down / s[i]) * eye + c * A[u][:, u]
        m = F @ m + c * ((eye - A[u][:, u]) @ g.mu[u] + A[u][:, k] @ (a - g.mu[k]))
        P = F @ P @ F.T + (c * s[i]) ** 2 * A[u][:, k] @ A[u][:, k].T + sigma_up**2 * eye
    return m, P


def assert_moments(x, mean, var, n_se=4.0):
    """Sample mean and variance of 1-D draws ``x`` agree with (mean, var) to ``n_se`` standard errors."""
    N = x.numel()
    assert abs(float(x.mean()) - float(mean)) < n_se * math.sqrt(float(var) / N), (float(x.mean()), float(mean))
    assert abs(float(x.var()) / float(var) - 1) < n_se * math.sqrt(2 / N), (float(x.var()), float(var))


def sw_vs_floor(out, exact_a, exact_b):
    """(SW(out, exact_a), SW(exact_b, exact_a)): the distance and the noise floor of two exact sets."""
    return (sliced_wasserstein(out, exact_a, generator=gen(1)), sliced_wasserstein(exact_b, exact_a, generator=gen(1)))


CORR = Gaussian([0.5, -0.3], [[1.0, 0.9], [0.9, 1.0]])  # correlation 0.9
A_KNOWN = 1.5  # x_0 = 1.5 known, x_1 generated: exact conditional N(0.6, 0.19)


def inpaint_corr(g, n, N, **kw):
    x_known = torch.tensor([[A_KNOWN, 0.0]], dtype=torch.float64).expand(N, 2)
    mask = torch.tensor([1.0, 0.0])
    return inpaint(g, x_known, mask, karras(n), generator=gen(), **kw)[:, 1]


# ---------------------------------------------------------------------------------------------
# Inpainting


@pytest.mark.parametrize("method,opts", [("replace", {}), ("repaint", {"jump_length": 2, "resamplings": 2})])
def test_mask_all_ones_returns_the_input(method, opts):
    x = 5 * torch.randn(64, 2, dtype=torch.float64, generator=gen(3))  # not even near the data
    out = inpaint(ring_mixture(), x, torch.ones(2), karras(10), method=method, generator=gen(), **opts)
    assert torch.equal(out, x)


@pytest.mark.parametrize("sampler", sorted(set(difflab.SAMPLERS) - STOCHASTIC - {"rk45"}))
def test_mask_all_zeros_replace_is_plain_sampling(sampler):
    """The replacement denoiser composes with every sampler: with nothing known it is the sampler."""
    gmm, x_known = ring_mixture(), torch.zeros(64, 2, dtype=torch.float64)
    out = inpaint(gmm, x_known, torch.zeros(2), karras(12), method="replace", sampler=sampler, generator=gen())
    x_T = SMAX * torch.randn(64, 2, dtype=torch.float64, generator=gen())
    assert torch.equal(out, difflab.sample(gmm, x_T, karras(12), sampler))


@pytest.mark.parametrize("sampler", sorted(STOCHASTIC))
@pytest.mark.parametrize("method", ["replace", "repaint"])
def test_every_stochastic_sampler_inpaints(sampler, method):
    x_known = torch.tensor([[4.0, 0.0]], dtype=torch.float64).expand(64, 2)
    out = inpaint(ring_mixture(), x_known, torch.tensor([1, 0]), karras(12), method=method, sampler=sampler,
                  generator=gen(), **({"jump_length": 3, "resamplings": 2} if method == "repaint" else {}))
    assert torch.equal(out[:, 0], x_known[:, 0]) and out.isfinite().all()


@pytest.mark.parametrize("method,opts", [("replace", {}), ("repaint", {"jump_length": 5, "resamplings": 3})])
def test_mask_all_zeros_samples_the_data(method, opts):
    """With nothing known both methods are unconditional samplers: sliced Wasserstein to exact
    draws within twice the distance between two exact sets."""
    gmm, N = ring_mixture(), 2000
    out = inpaint(gmm, torch.zeros(N, 2, dtype=torch.float64), torch.zeros(2), karras(100), method=method,
                  generator=gen(), **opts)
    sw, floor = sw_vs_floor(out, gmm.sample(N, generator=gen(1)), gmm.sample(N, generator=gen(2)))
    assert sw < 2 * floor, (sw, floor)


def test_replaced_denoiser_sees_known_pixels_at_the_current_noise():
    """Song et al. 2021, App. I.2: each call sees the known pixels as x_known + sigma z with fresh
    z ~ N(0, I) and the others unchanged, and returns x_known on the known pixels. (The Gaussian
    tests below cannot see this noise: for a linear denoiser it adds O(step^2) variance.)"""
    inputs, N = [], 4000
    def spy(x, sigma):
        inputs.append(x.clone())
        return torch.zeros_like(x)
    x_known, x = (torch.randn(N, 3, dtype=torch.float64, generator=gen(i)) for i in (1, 2))
    mask = torch.tensor([True, False, True])
    d = replaced_denoiser(spy, x_known, mask, gen())
    sigma = torch.full((N,), 2.5, dtype=torch.float64)
    out = d(x, sigma)
    d(x, sigma)
    z = (inputs[0][:, mask] - x_known[:, mask]) / 2.5
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05
    assert not torch.equal(inputs[0], inputs[1])  # fresh noise at every call
    assert torch.equal(inputs[0][:, ~mask], x[:, ~mask])
    assert torch.equal(out[:, mask], x_known[:, mask]) and not out[:, ~mask].any()


def test_replace_is_exact_for_independent_coordinates():
    """Theory: when the unknown coordinates are independent of the known ones, D_u ignores the known
    ones and the replacement method is plain sampling of the (conditional = marginal) law."""
    g = Gaussian([0.5, -0.3], [[1.0, 0.0], [0.0, 2.0]])
    x_u = inpaint_corr(g, 40, 4000, method="replace", sampler="heun")
    assert_moments(x_u, -0.3, 2.0)


def test_replace_follows_its_exact_law_and_is_biased_for_correlated_coordinates():
    """For a linear denoiser the replacement method's output is Gaussian with the moments of
    :func:`replacement_law`; the library matches it to Monte Carlo error. That law is not the
    conditional: for correlation 0.9 (exact N(0.6, 0.19)) it gives mean 0.29, var 0.28 at 50
    steps and mean 0.33, var 0.31 as the steps grow (1000), a bias that does not vanish."""
    n, N = 50, 4000
    mean, var = replacement_law(CORR, [0], [1], torch.tensor([A_KNOWN]), karras(n), list(range(n + 1)))
    assert_moments(inpaint_corr(CORR, n, N, method="replace"), mean, var)
    exact_mean, exact_var = CORR.conditional([0], [1], torch.tensor([A_KNOWN]))
    mean_inf, var_inf = replacement_law(CORR, [0], [1], torch.tensor([A_KNOWN]), karras(1000), list(range(1001)))
    assert float(exact_mean - mean_inf) > 0.25 and float(var_inf / exact_var) > 1.5


def test_repaint_approaches_the_exact_conditional():
    """RePaint (j = 1) with U resamplings: the library matches the exact law of the algorithm, and
    the conditional-mean error falls like 1/U (-0.28, -0.047, -0.010 for U = 1, 5, 20 at 200
    steps; exact mean 0.6, var 0.19). The variance approaches the DDPM sampler's own at that many
    steps (ratio 0.95 at U = 20), which tends to 1 as the steps grow."""
    n, N = 200, 3000
    exact_mean, exact_var = CORR.conditional([0], [1], torch.tensor([A_KNOWN]))
    errors = []
    for U in (1, 5, 20):
        x_u = inpaint_corr(CORR, n, N, method="repaint", jump_length=1, resamplings=U)
        mean, var = replacement_law(CORR, [0], [1], torch.tensor([A_KNOWN]), karras(n), repaint_schedule(n, 1, U))
        assert_moments(x_u, mean, var)
        errors.append(abs(float(x_u.mean() - exact_mean)))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.04 and abs(float(x_u.var() / exact_var) - 1) < 0.12


def test_repaint_with_one_resampling_is_the_replacement_method():
    x_known, mask = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64).expand(32, 3), torch.tensor([1, 0, 1])
    gmm = GaussianMixture(torch.randn(4, 3, generator=gen(5)), 0.4)
    kw = dict(sampler="ddpm")
    a = inpaint(gmm, x_known, mask, karras(15), method="repaint", resamplings=1, generator=gen(), **kw)
    b = inpaint(gmm, x_known, mask, karras(15), method="replace", generator=gen(), **kw)
    assert torch.equal(a, b)


def test_repaint_schedule_walks_each_stretch_u_times():
    n, j, U = 30, 4, 3
    path = repaint_schedule(n, j, U)
    assert path[0] == 0 and path[-1] == n
    assert all(abs(b - a) == 1 for a, b in zip(path[:-1], path[1:]))
    downs = [a for a, b in zip(path[:-1], path[1:]) if b > a]
    jump_ends = {n - 1 - t for t in range(0, n - j, j)}  # where the paper's jumps start
    resampled = {k for e in jump_ends for k in range(e - j, e)}
    assert all(downs.count(k) == (U if k in resampled else 1) for k in range(n))
    assert repaint_schedule(n, j, 1) == list(range(n + 1))


# ---------------------------------------------------------------------------------------------
# SDEdit


def test_sdedit_strength_one_samples_the_data():
    gmm, N = ring_mixture(), 2000
    out = sdedit(gmm, torch.zeros(N, 2, dtype=torch.float64), karras(100), strength=1.0, generator=gen())
    sw, floor = sw_vs_floor(out, gmm.sample(N, generator=gen(1)), gmm.sample(N, generator=gen(2)))
    assert sw < 2 * floor, (sw, floor)


def test_sdedit_trades_faithfulness_for_realism():
    """Guide: a point off the ring (radius 5.2, next to the mode at angle 0). Small strength stays
    within a few sigma(t0) of it; strength 0.4 (sigma(t0) = 1.2, the guide's distance to the
    ring) lands on that mode (measured 98%, mean radius 4.14: realistic and faithful);
    the distance to the guide grows with strength."""
    gmm, N = ring_mixture(), 500
    guide = torch.tensor([[5.2, 0.0]], dtype=torch.float64).expand(N, 2)
    sigmas = karras(50)
    dist = {}
    for strength in (0.1, 0.4, 1.0):
        out = sdedit(gmm, guide, sigmas, strength=strength, generator=gen())
        dist[strength] = float((out - guide).norm(dim=1).mean())
        if strength == 0.1:
            sigma_t0 = float(sigmas[50 - 5])
            assert dist[strength] < 3 * sigma_t0 * math.sqrt(2)
        if strength == 0.4:
            assert (gmm.class_posterior(out, 0.0).argmax(1) == 0).float().mean() > 0.9
            assert abs(float(out.norm(dim=1).mean()) - 4.0) < 0.25  # measured 4.14; the ring: 4
    assert dist[0.1] < dist[0.4] < dist[1.0]


# ---------------------------------------------------------------------------------------------
# ILVR


def test_ilvr_output_has_the_references_low_frequencies():
    """phi_N(x0) = phi_N(x_ref) exactly (the filter is a projection); N = 1 returns the reference;
    the high frequencies come from the model: the output is as likely under the data as exact draws."""
    gmm = random_mixture(k=4, dim=16, norm=3.0, std=0.5, seed=1)
    ref = gmm.sample(8, generator=gen(1)).reshape(8, 1, 4, 4)
    out = ilvr(gmm, ref, karras(30), factor=2, generator=gen())
    assert torch.allclose(low_pass(out, 2), low_pass(ref, 2), atol=1e-12)
    assert not torch.allclose(out, ref, atol=1e-3)
    exact_lp = gmm.log_prob(gmm.sample(256, generator=gen(2))).mean()
    assert float(gmm.log_prob(out).mean()) > float(exact_lp) - 5
    assert torch.allclose(ilvr(gmm, ref, karras(10), factor=1, generator=gen()), ref, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Inversion


@pytest.mark.parametrize("sampler,order", [("ddim", 1), ("heun", 2)])
def test_inversion_round_trip_converges(sampler, order):
    """invert then reconstruct returns x0 with an error that shrinks with the steps at the method's
    order (measured on gmm64: ddim 0.27, 0.065, 0.021; heun 0.084, 1.6e-3, 2.6e-5 for 10, 50, 200)."""
    gmm = random_mixture()
    x0 = gmm.sample(128, generator=gen())
    errors = []
    for n in (10, 50, 200):
        x_T = invert(gmm, x0, karras(n), sampler=sampler)
        errors.append(float((reconstruct(gmm, x_T, karras(n), sampler=sampler) - x0).square().mean().sqrt()))
    assert errors[0] > errors[1] > errors[2]
    assert math.log(errors[1] / errors[2]) / math.log(4) > order - 0.3, errors
    assert abs(float(x_T.std()) / SMAX - 1) < 0.05  # x_T ~ N(0, sigma_max^2 I) approximately


# ---------------------------------------------------------------------------------------------
# DDRM and operators

SHAPE = (3, 4, 6)
OPERATORS = {
    "inpainting": lambda: Inpainting((torch.rand(SHAPE, generator=gen(7)) > 0.5).double()),
    "sr2": lambda: SuperResolution(2),
    "colorization": lambda: Colorization(),
}


@pytest.mark.parametrize("name", OPERATORS)
def test_operator_svd_is_consistent(name):
    """H = U S V^T on random inputs, V orthogonal, singular values and H^+ equal those of the dense
    matrix built column by column."""
    op, D = OPERATORS[name](), math.prod(SHAPE)
    dense = op.H(torch.eye(D, dtype=torch.float64).reshape(D, *SHAPE)).reshape(D, -1).T
    x = torch.randn(5, *SHAPE, dtype=torch.float64, generator=gen())
    x_bar = op.Vt(x)
    assert torch.allclose(op.U(op.singular_values(x_bar) * x_bar), op.H(x), atol=1e-12)
    assert torch.allclose(op.H(x).reshape(5, -1), x.reshape(5, -1) @ dense.T, atol=1e-12)
    assert torch.allclose(op.V(x_bar), x, atol=1e-12) and torch.allclose(x_bar.norm(), x.norm())
    s = op.singular_values(x_bar[:1]).flatten().sort(descending=True).values
    svals = torch.linalg.svdvals(dense)
    assert torch.allclose(s[:len(svals)], svals, atol=1e-12) and not s[len(svals):].any()
    y = torch.randn(op.H(x).shape, dtype=torch.float64, generator=gen(1))
    pinv = (torch.linalg.pinv(dense) @ y.reshape(5, -1).T).T
    for h_pinv in (op.H_pinv, lambda v: LinearOperator.H_pinv(op, v)):
        assert torch.allclose(h_pinv(y).reshape(5, -1), pinv, atol=1e-12)


@pytest.mark.parametrize("name", OPERATORS)
def test_ddrm_noiseless_output_is_data_consistent(name):
    op = OPERATORS[name]()
    gmm = random_mixture(k=4, dim=math.prod(SHAPE), norm=3.0, std=0.5, seed=1)
    y = op.H(gmm.sample(16, generator=gen(1)).reshape(16, *SHAPE))
    out = ddrm(gmm, y, op, karras(20), generator=gen())
    assert torch.allclose(op.H(out), y, atol=1e-10)
    assert float((out - op.H_pinv(y)).abs().max()) > 0.1  # the null space was filled in


@pytest.mark.parametrize("op", [Inpainting(torch.ones(SHAPE)), SuperResolution(1)])
def test_ddrm_identity_returns_the_measurement(op):
    gmm = random_mixture(k=4, dim=math.prod(SHAPE), seed=1)
    y = torch.randn(4, *SHAPE, dtype=torch.float64, generator=gen())
    assert torch.allclose(ddrm(gmm, y, op, karras(10), generator=gen()), y, atol=1e-12)


def test_ddrm_zero_operator_with_eta_0_is_ddim():
    gmm, y = ring_mixture(), torch.zeros(64, 2, dtype=torch.float64)
    out = ddrm(gmm, y, Inpainting(torch.zeros(2)), karras(20), eta=0.0, generator=gen())
    x_T = SMAX * torch.randn(64, 2, dtype=torch.float64, generator=gen())
    assert torch.allclose(out, difflab.sample(gmm, x_T, karras(20), "ddim"), atol=1e-10)


def test_ddrm_follows_the_measurement_while_noisier_than_it():
    """Kawar et al. 2022, eq. 7-8 with eta_b = 1: while sigma >= sigma_y / s_i the seen spectral
    coordinates are exactly y_bar + sqrt(sigma^2 - sigma_y^2 / s_i^2) z (y is a state of the chain).
    Stop at sigma = 0.5 > sigma_y / s = 0.2 (2x super-resolution, sigma_y = 0.1) and check that law."""
    op, N, sigma_y = SuperResolution(2), 2000, 0.1
    gmm = random_mixture(k=4, dim=48, norm=3.0, std=0.5, seed=1)
    y = op.H(gmm.sample(1, generator=gen(1)).reshape(1, 3, 4, 4))
    y = (y + sigma_y * torch.randn(y.shape, dtype=torch.float64, generator=gen(2))).expand(N, 3, 2, 2)
    out = ddrm(gmm, y, op, difflab.karras_sigmas(10, 0.5, SMAX).double()[:-1], sigma_y=sigma_y, generator=gen())
    x_bar = op.Vt(out)
    s = op.singular_values(x_bar)
    seen = s > 0
    z = (x_bar[seen] - op.Ut(y)[seen] / s[seen]) / (0.5**2 - (sigma_y / s[seen]) ** 2).sqrt()
    assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1) < 0.03


def test_ddrm_noisy_measurement_uses_the_prior():
    """H = I, sigma_y = 0.3: the mean of DDRM samples lies far closer to the exact posterior mean
    (closed form for an isotropic mixture) than y does (measured 0.08 vs 1.22)."""
    gmm = random_mixture(k=4, dim=48, norm=3.0, std=0.5, seed=1)
    x = gmm.sample(1, generator=gen(1))
    y = x + 0.3 * torch.randn(x.shape, dtype=torch.float64, generator=gen(2))
    r = gmm.class_posterior(y, 0.3)  # p(k | y): the data smoothed by the measurement noise
    c = 0.25 / (0.25 + 0.09)  # Gaussian shrinkage s_k^2 / (s_k^2 + sigma_y^2)
    post_mean = r @ (gmm.means + c * (y - gmm.means))
    out = ddrm(gmm, y.expand(1000, -1), Inpainting(torch.ones(48)), karras(20), sigma_y=0.3, generator=gen())
    assert float((out.mean(0) - post_mean).norm()) < 0.3 * float((y - post_mean).norm())


# ---------------------------------------------------------------------------------------------
# Errors a user can cause


def test_bad_inputs_raise_clear_errors():
    gmm, x = ring_mixture(), torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="does not broadcast"):
        inpaint(gmm, x, torch.ones(3), karras(5))
    with pytest.raises(ValueError, match="only 0"):
        inpaint(gmm, x, torch.full((2,), 0.5), karras(5))
    with pytest.raises(ValueError, match="unknown inpainting method"):
        inpaint(gmm, x, torch.ones(2), karras(5), method="telea")
    with pytest.raises(ValueError, match="fixed-step"):
        inpaint(gmm, x, torch.ones(2), karras(5), method="replace", sampler="rk45")
    with pytest.raises(ValueError, match="resamplings"):
        inpaint(gmm, x, torch.ones(2), karras(5), resamplings=0)
    for strength in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
            sdedit(gmm, x, karras(5), strength=strength)
    img = torch.zeros(2, 3, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="does not divide"):
        ilvr(gmm, img, karras(5), factor=4)
    with pytest.raises(ValueError, match="does not divide"):
        SuperResolution(4).H(img)
    with pytest.raises(ValueError, match="integer >= 1"):
        SuperResolution(0)
    with pytest.raises(ValueError, match="eta and eta_b"):
        ddrm(gmm, x, Inpainting(torch.ones(2)), karras(5), eta=1.5)
    with pytest.raises(ValueError, match=r"shape \(B, 1, H, W\)"):
        ddrm(gmm, img, Colorization(), karras(5))
    with pytest.raises(ValueError, match="inversion supports"):
        invert(gmm, x, karras(5), sampler="dpmpp_2m")
    with pytest.raises(ValueError, match="deterministic"):
        reconstruct(gmm, x, karras(5), sampler="ddpm")

"""DEIS, Brownian-tree noise and the stochastic DPM-Solver++ samplers against mathematics: convergence
order to a high-accuracy ODE solution, equivalences, the exact integrals of their updates, the law
of the Brownian tree's increments, strong convergence to one path, and the law of the samples."""
import math

import pytest
import torch
from scipy import stats
from scipy.integrate import quad

import difflab
from difflab.denoisers import CountingDenoiser
from difflab.exact import GaussianMixture, random_mixture, ring_mixture
from difflab.samplers import SAMPLERS, STOCHASTIC, denoiser_calls, sampler_options
from difflab.samplers.brownian import BrownianTree, make_noise
from difflab.samplers.deis import deis_coefficients, vp_time
from difflab.samplers.dpm_solver import multistep_3m

pytestmark = pytest.mark.usefixtures("one_thread")

SMIN, SMAX = 0.002, 80.0
NEW = ("deis", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_3m_sde")
#: The samplers with a ``noise_kind`` option.
NOISY = ("ddim", "ddpm", "euler_ancestral", "em", "dpmpp_2m_sde", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_3m_sde")


def karras(n):
    return difflab.karras_sigmas(n, SMIN, SMAX).double()


def rms(a, b):
    return float((a - b).square().mean().sqrt())


def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def problem():
    """gmm64, 64 fixed noises and a tight adaptive (rtol = atol = 1e-10) solution of the ODE."""
    gmm = random_mixture()
    x_T = SMAX * torch.randn(64, gmm.dim, generator=seeded(0), dtype=torch.float64)
    ref = difflab.sample(gmm, x_T.clone(), torch.tensor([SMAX, SMIN, 0.0], dtype=torch.float64), "rk45",
                         rtol=1e-10, atol=1e-10)
    return gmm, x_T, ref


# ---------------------------------------------------------------------------------------------
# DEIS


@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_convergence_order(problem, order):
    """The log-log slope of the error between 100 and 400 steps is the order (measured 1.00, 1.92,
    2.76: the third order is still approaching its asymptote, 2.83 between 200 and 400)."""
    gmm, x_T, ref = problem
    errs = [rms(difflab.sample(gmm, x_T.clone(), karras(n), "deis", order=order), ref) for n in (100, 400)]
    slope = math.log(errs[0] / errs[1]) / math.log(4)
    assert abs(slope - order) < 0.35, (order, errs, slope)


def test_deis_order1_is_ddim(problem):
    gmm, x_T, _ = problem
    sig = karras(12)
    a = difflab.sample(gmm, x_T.clone(), sig, "deis", order=1)
    torch.testing.assert_close(a, difflab.sample(gmm, x_T.clone(), sig, "ddim"), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a, difflab.sample(gmm, x_T.clone(), sig, "euler"), rtol=0, atol=0)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 3, 10])
def test_deis_lands_on_zero(problem, order, n):
    """Every step is taken, the last one into sigma = 0, at the order the history allows; the
    result is finite and, with 10 steps, close to the ODE solution (errors 0.15, 0.09, 0.06)."""
    gmm, x_T, ref = problem
    seen = []
    out = difflab.sample(gmm, x_T.clone(), karras(n), "deis", order=order, callback=seen.append)
    assert [d["i"] for d in seen] == list(range(n)) and seen[-1]["sigma_next"] == 0.0
    assert torch.isfinite(out).all()
    if n == 10:
        assert rms(out, ref) < 0.2


def test_deis_coefficients_integrate_polynomials_exactly():
    """sum_j C_j P(t_j) = int P(t(s)) ds for P of degree < the number of points, steps into 0 too:
    the Lagrange basis reproduces P, and the quadrature integrates it to float64 precision."""
    pts = [0.8, 1.7, 3.1]
    for s, s_next in [(0.8, 0.35), (0.8, 0.0), (0.8, 0.79), (0.02, 0.01), (80.0, 57.0), (80.0, 0.0)]:
        for degree in range(3):
            coeffs = deis_coefficients(s, s_next, pts)
            poly = lambda t, k=degree: (t - 0.3) ** k
            got = sum(c * poly(vp_time(p)) for c, p in zip(coeffs, pts))
            # t(sigma) bends sharply near sigma = 0.016: tell quad where, and split long ranges.
            exact = -quad(lambda v: poly(vp_time(v)), s_next, s, epsabs=1e-15, epsrel=1e-13, limit=200,
                          points=[p for p in (0.016, 0.1, 1.0, 10.0) if s_next < p < s] or None)[0]
            assert got == pytest.approx(exact, rel=1e-12, abs=1e-15), (s, s_next, degree)


def test_vp_time_inverts_the_vp_sigma():
    for sigma in (1e-4, 0.002, 0.5, 3.0, 80.0):
        t = vp_time(sigma)
        assert math.sqrt(math.expm1(19.9 * t * t / 2 + 0.1 * t)) == pytest.approx(sigma, rel=1e-12)
    assert vp_time(0.0) == 0.0


# ---------------------------------------------------------------------------------------------
# The stochastic DPM-Solver++ samplers: equivalences and exact integrals


def test_dpmpp_3m_sde_eta0_is_dpmpp_3m(problem):
    gmm, x_T, _ = problem
    for n, variant in [(10, "official"), (10, "taylor"), (20, "official")]:
        a = difflab.sample(gmm, x_T.clone(), karras(n), "dpmpp_3m", variant=variant)
        b = difflab.sample(gmm, x_T.clone(), karras(n), "dpmpp_3m_sde", eta=0.0, variant=variant)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("noise", ["iid", "brownian"])
def test_dpmpp_3m_sde_first_steps_are_ddpm_and_2m_sde(problem, noise):
    """With the same generator: one step of SDE-DPM-Solver++(3M) is DDPM's ancestral step, two steps
    (the second is second order) are SDE-DPM-Solver++(2M)'s."""
    gmm, x_T, _ = problem
    one, two = torch.tensor([SMAX, 3.0], dtype=torch.float64), torch.tensor([SMAX, 3.0, 0.5], dtype=torch.float64)
    for sig, other in [(one, "ddpm"), (two, "dpmpp_2m_sde")]:
        a = difflab.sample(gmm, x_T.clone(), sig, "dpmpp_3m_sde", generator=seeded(4), noise_kind=noise)
        b = difflab.sample(gmm, x_T.clone(), sig, other, generator=seeded(4), noise_kind=noise)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("c", [1.0, 1.5, 2.0])
def test_multistep_3m_integrates_a_quadratic_exactly(c):
    """For D(lambda) a quadratic, the "taylor" update equals the exact solution of the mean dynamics
    dx/dlambda = c (D - x) over the step (c = 1 + eta): the quadrature of the SDE's drift kernel."""
    g = lambda lam: 0.3 + 1.7 * lam - 0.9 * lam**2
    lam, h, h1, h2, x = 0.4, 0.35, 0.3, 0.5, 1.3
    hist = [(lam - h1 - h2, torch.tensor(g(lam - h1 - h2), dtype=torch.float64)),
            (lam - h1, torch.tensor(g(lam - h1), dtype=torch.float64))]
    got = multistep_3m(torch.tensor(x, dtype=torch.float64), torch.tensor(g(lam), dtype=torch.float64), hist,
                       lam, h, c, "taylor", True)
    exact = math.exp(-c * h) * x + quad(lambda u: c * math.exp(-c * (h - u)) * g(lam + u), 0, h, epsabs=1e-15)[0]
    assert float(got) == pytest.approx(exact, rel=1e-12)


def test_dpmpp_sde_eta0_is_dpmpp_2s(problem):
    """Without noise the SDE solver with a midpoint is DPM-Solver++(2S), as is 2S ancestral."""
    gmm, x_T, _ = problem
    sig = karras(10)
    a = difflab.sample(gmm, x_T.clone(), sig, "dpmpp_sde", eta=0.0)
    b = difflab.sample(gmm, x_T.clone(), sig, "dpmpp_2s_ancestral", eta=0.0)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_3m_sde"])
def test_ode_limit_is_second_order_or_better(problem, name):
    """With eta = 0 each is its ODE solver: DPM-Solver++(2S) (second order; slope 2.0 measured) and
    DPM-Solver++(3M) as published (second order, docs/samplers.md; 2.3 measured)."""
    gmm, x_T, ref = problem
    errs = [rms(difflab.sample(gmm, x_T.clone(), karras(n), name, eta=0.0), ref) for n in (50, 100)]
    assert 1.6 < math.log(errs[0] / errs[1]) / math.log(2) < 3.0, errs


@pytest.mark.parametrize("name,options", [("dpmpp_2s_ancestral", {}), ("dpmpp_2s_ancestral", {"eta": 0.0}),
                                          ("dpmpp_2s_ancestral", {"eta": 1.5}), ("dpmpp_sde", {}),
                                          ("dpmpp_3m_sde", {}), ("deis", {})])
@pytest.mark.parametrize("ends_at_zero", [True, False])
def test_documented_call_count(problem, name, options, ends_at_zero):
    gmm, x_T, _ = problem
    sig = karras(8) if ends_at_zero else karras(8)[:-1]
    counted = CountingDenoiser(gmm)
    difflab.sample(counted, x_T[:4].clone(), sig, name, generator=seeded(0), **options)
    assert counted.calls == denoiser_calls(name, sig, **options)


def test_registry_and_options():
    assert set(NEW) <= set(SAMPLERS) and set(NEW) - {"deis"} <= STOCHASTIC and "deis" not in STOCHASTIC
    for name in NOISY:
        assert sampler_options(name)["noise_kind"] == "iid", name
    assert sampler_options("deis") == {"order": 3}


@pytest.mark.parametrize("name,options,match", [
    ("deis", {"order": 4}, "order"), ("dpmpp_sde", {"r": 1.0}, "r must"), ("dpmpp_sde", {"eta": -1.0}, "eta"),
    ("dpmpp_2s_ancestral", {"s_noise": -0.5}, "s_noise"), ("dpmpp_3m_sde", {"variant": "fast"}, "variant"),
    ("em", {"noise_kind": "pink"}, "noise_kind must be"),
    ("dpmpp_sde", {"noise_kind": "Brownian"}, "noise_kind must be")])
def test_bad_options(problem, name, options, match):
    gmm, x_T, _ = problem
    with pytest.raises(ValueError, match=match):
        difflab.sample(gmm, x_T[:2].clone(), karras(3), name, generator=seeded(0), **options)


# ---------------------------------------------------------------------------------------------
# The Brownian tree


@pytest.fixture(scope="module")
def tree():
    return BrownianTree(torch.zeros(20000, dtype=torch.float64), SMIN, SMAX, seed=1234)


def _normalised(tree, s, t):
    return (tree(t) - tree(s)) / math.sqrt(abs(math.log(t / s)))


# Disjoint intervals over the whole range: wide, a step of a 25-step schedule, a leaf or two wide.
INTERVALS = [(80.0, 10.0), (10.0, 9.1), (5.0, 4.997), (1.0, 0.3), (0.3, 0.29), (0.01, 0.002)]


def test_brownian_increments_are_standard_normal(tree):
    """Each normalised increment (W(t) - W(s)) / sqrt(|log t - log s|) over 20000 coordinates: KS
    against N(0, 1), and a two-sided chi-square check of its sample variance."""
    n = 20000
    for s, t in INTERVALS:
        z = _normalised(tree, s, t)
        assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3, (s, t)
        var_stat = float(z.square().sum())
        assert stats.chi2.cdf(var_stat, n) > 5e-4 and stats.chi2.sf(var_stat, n) > 5e-4, (s, t, var_stat / n)


def test_brownian_disjoint_increments_are_independent(tree):
    zs = [_normalised(tree, s, t) for s, t in INTERVALS]
    corr = torch.corrcoef(torch.stack(zs))
    off = corr - torch.eye(len(zs), dtype=corr.dtype)
    assert off.abs().max() < 4.5 / math.sqrt(20000), corr


def test_brownian_increments_add_up(tree):
    """W(t) - W(s) is the sum of the increments of any subdivision (here 7 uneven pieces)."""
    cuts = [20.0, 11.0, 6.3, 6.29, 2.0, 0.7, 0.5, 0.45]
    whole = tree(cuts[-1]) - tree(cuts[0])
    pieces = sum(tree(b) - tree(a) for a, b in zip(cuts, cuts[1:]))
    torch.testing.assert_close(pieces, whole, rtol=0, atol=1e-12)


def test_brownian_path_is_a_function_of_the_seed():
    """The value at a point does not depend on the order of queries; another seed, another path."""
    like = torch.zeros(500, dtype=torch.float64)
    a, b, c = (BrownianTree(like, SMIN, SMAX, seed=s) for s in (7, 7, 8))
    first = [a(s).clone() for s in (0.5, 30.0, 0.0021, 2.0)]
    second = [b(s).clone() for s in (2.0, 0.0021, 30.0, 0.5)][::-1]
    for u, v in zip(first, second):
        assert torch.equal(u, v)
    assert torch.equal(a(SMAX), torch.zeros_like(like))
    assert not torch.allclose(a(0.5), c(0.5))
    with pytest.raises(ValueError, match="outside"):
        a(100.0)


def test_brownian_noise_is_increments_of_one_path():
    """The sampler-facing noise of a step is the tree's normalised increment, and the midpoint
    combination sqrt(f) z1 + sqrt(1 - f) z2 of dpmpp_sde is the whole step's."""
    x = torch.zeros(1000, dtype=torch.float64)
    noise = make_noise("brownian", x, karras(10), seeded(3))
    z1, z2, z = noise(4.0, 2.0), noise(2.0, 1.0), noise(4.0, 1.0)
    f = noise.fraction(4.0, 2.0, 1.0)
    assert f == pytest.approx(0.5)
    torch.testing.assert_close(math.sqrt(f) * z1 + math.sqrt(1 - f) * z2, z, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Strong convergence: one path as the steps grow

GAUSS2 = GaussianMixture(torch.tensor([[1.0, -0.5]], dtype=torch.float64), 0.5)


def _path_errors(name, noise):
    x_T = SMAX * torch.randn(400, 2, generator=seeded(0), dtype=torch.float64)
    run = lambda n: difflab.sample(GAUSS2, x_T.clone(), karras(n), name, generator=seeded(5), noise_kind=noise)
    ref = run(1024)
    return [rms(run(n), ref) for n in (16, 32, 64, 128)]


@pytest.mark.parametrize("name", ["em", "dpmpp_sde", "ddpm", "dpmpp_3m_sde"])
def test_brownian_noise_converges_to_one_path(name):
    """Against 1024 steps on the same tree, the error falls at every doubling of the steps with a
    strong order (slope of the fit) of at least 0.6; measured 1.16, 0.80, 0.96, 1.5 on a Gaussian."""
    errs = _path_errors(name, "brownian")
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    slope = -torch.linalg.lstsq(torch.tensor([[1.0, k] for k in range(4)], dtype=torch.float64),
                                torch.tensor(errs, dtype=torch.float64).log2()[:, None]).solution[1, 0]
    assert slope > 0.6, (errs, float(slope))


@pytest.mark.parametrize("name", ["em", "dpmpp_sde"])
def test_iid_noise_does_not_converge_to_one_path(name):
    errs = _path_errors(name, "iid")
    assert errs[-1] > 0.7 * errs[0] and errs[-1] > 0.3, errs


# ---------------------------------------------------------------------------------------------
# The law of the samples

GAUSS1 = GaussianMixture(torch.tensor([[1.0]], dtype=torch.float64), 0.5)
N_LAW = 20000


def _moments(name, noise, n, seed, **options):
    x_T = SMAX * torch.randn(N_LAW, 1, generator=seeded(seed), dtype=torch.float64)
    out = difflab.sample(GAUSS1, x_T, karras(n), name, generator=seeded(seed + 1), noise_kind=noise, **options)
    return float(out.mean()), float(out.var())


@pytest.mark.parametrize("name", NOISY)
def test_brownian_noise_keeps_the_law(name):
    """On 1-D Gaussian data, 50 steps, independent seeds: the mean and variance of the samples with
    Brownian noise equal those with i.i.d. noise (the same discretisation bias) within 4.5 standard
    errors. ddim is run with eta = 1."""
    opts = {"eta": 1.0} if name == "ddim" else {}
    (m1, v1), (m2, v2) = _moments(name, "iid", 50, 10, **opts), _moments(name, "brownian", 50, 20, **opts)
    se_mean = math.sqrt((v1 + v2) / N_LAW)
    se_var = math.sqrt(2 / N_LAW) * math.sqrt(v1**2 + v2**2)
    assert abs(m1 - m2) < 4.5 * se_mean and abs(v1 - v2) < 4.5 * se_var, (m1, m2, v1, v2)


def test_law_check_catches_a_wrong_noise_scale():
    (_, v1), (_, v2) = _moments("euler_ancestral", "iid", 50, 10), _moments("euler_ancestral", "brownian", 50, 20,
                                                                               s_noise=1.1)
    assert abs(v1 - v2) > 4.5 * math.sqrt(2 / N_LAW) * math.sqrt(v1**2 + v2**2)


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_2s_ancestral"])
@pytest.mark.parametrize("noise", ["iid", "brownian"])
def test_samples_match_the_gaussian(name, noise):
    """With 100 steps the samples' mean and variance are the data's, N(1, 0.25), within 4.5 standard
    errors plus 3% of discretisation bias in the variance (measured <= 2.5%)."""
    m, v = _moments(name, noise, 100, 30)
    assert abs(m - 1) < 4.5 * 0.5 / math.sqrt(N_LAW) and abs(v / 0.25 - 1) < 4.5 * math.sqrt(2 / N_LAW) + 0.03, (m, v)


@pytest.mark.parametrize("name", ["dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_3m_sde"])
@pytest.mark.parametrize("noise", ["iid", "brownian"])
def test_new_samplers_converge_in_distribution_on_the_ring(name, noise):
    """On the 8-mode ring, 50 steps, 4000 samples: the modes are equally occupied (chi-square, 7
    degrees of freedom) and the spread around the modes is the components' 0.3 (within 4%)."""
    gmm, n = ring_mixture(), 4000
    x_T = SMAX * torch.randn(n, 2, generator=seeded(40), dtype=torch.float64)
    out = difflab.sample(gmm, x_T, karras(50), name, generator=seeded(41), noise_kind=noise)
    k = gmm.class_posterior(out, torch.zeros(n, dtype=torch.float64)).argmax(1)
    counts = torch.bincount(k, minlength=8).double()
    chi2 = float(((counts - n / 8) ** 2 / (n / 8)).sum())
    spread = float((out - gmm.means[k]).square().mean().sqrt())
    assert stats.chi2.sf(chi2, 7) > 1e-3 and abs(spread / 0.3 - 1) < 0.04, (chi2, spread)

"""Samplers against mathematics: convergence order to a high-accuracy ODE solution, exact
equivalences between samplers, and the distribution of stochastic samplers against exact draws."""
import math
import re

import pytest
import torch

import difflab
from difflab.denoisers import CountingDenoiser
from difflab.exact import random_mixture, ring_mixture
from difflab.evaluation.metrics import sliced_wasserstein
from difflab.samplers import SAMPLERS, STOCHASTIC, denoiser_calls

SMIN, SMAX = 0.002, 80.0


@pytest.fixture(scope="module")
def problem():
    """gmm64 with 256 fixed noises and its probability-flow ODE solution (Heun, 1500 steps)."""
    gmm = random_mixture()
    gen = torch.Generator().manual_seed(0)
    x_T = SMAX * torch.randn(256, gmm.dim, generator=gen, dtype=torch.float64)
    ref = difflab.sample(gmm, x_T.clone(), difflab.karras_sigmas(1500, SMIN, SMAX).double(), "heun")
    return gmm, x_T, ref


def rms(a, b):
    return float((a - b).square().mean().sqrt())


# (sampler, options, theoretical order). DPM-Solver++(3M) as published ("official") is formally
# second order (docs/samplers.md); its "taylor" variant is third order. UniPC-p's corrector raises
# its order to p + 1 (Zhao et al. 2023, Theorem 3.3), hence its wider upper margin.
ORDERS = [("euler", {}, 1), ("ddim", {}, 1), ("dpm_solver_1", {}, 1), ("heun", {}, 2),
          ("dpm_solver_2", {}, 2), ("dpmpp_2m", {}, 2), ("dpmpp_3m", {}, 2),
          ("dpm_solver_3", {}, 3), ("dpmpp_3m", {"variant": "taylor"}, 3), ("unipc", {"order": 3}, 3),
          ("unipc", {}, 2)]


@pytest.mark.parametrize("name,opts,order", ORDERS)
def test_convergence_order(problem, name, opts, order):
    """The log-log slope of the error between 20 and 50 steps (Karras sigmas) is the method's order.

    The window is pre-asymptotic for the third-order solvers (dpm_solver_3 measures 2.6 here and
    2.75 between 50 and 100 steps), hence the lower margin of 0.5: still far from the next order down."""
    gmm, x_T, ref = problem
    errs = [rms(difflab.sample(gmm, x_T.clone(), difflab.karras_sigmas(n, SMIN, SMAX).double(), name, **opts), ref)
            for n in (20, 50)]
    slope = math.log(errs[0] / errs[1]) / math.log(50 / 20)
    upper = order + (1.6 if name == "unipc" else 0.6)
    assert order - 0.5 < slope < upper, (name, opts, errs, slope)


def test_reference_is_converged(problem):
    gmm, x_T, ref = problem
    coarser = difflab.sample(gmm, x_T.clone(), difflab.karras_sigmas(750, SMIN, SMAX).double(), "heun")
    assert rms(coarser, ref) < 1e-4


def test_ddim_eta0_is_euler_and_dpm_solver_1(problem):
    """DDIM(eta=0) is Euler on the probability-flow ODE (Karras et al. 2022, sec. 3) and DPM-Solver-1
    is DDIM (Lu et al. 2022a, Prop. 4.1): three different update formulas, one trajectory."""
    gmm, x_T, _ = problem
    sig = difflab.karras_sigmas(12, SMIN, SMAX).double()
    out = {n: difflab.sample(gmm, x_T.clone(), sig, n) for n in ("euler", "ddim", "dpm_solver_1")}
    torch.testing.assert_close(out["ddim"], out["euler"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["dpm_solver_1"], out["ddim"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("other,opts", [("ddpm", {}), ("euler_ancestral", {}), ("dpmpp_2m_sde", {})])
def test_ddim_eta1_equals_ancestral_samplers(problem, other, opts):
    """With the same noise, DDIM(eta=1) is DDPM's ancestral sampler with the posterior variance, and
    so are Euler ancestral and (on its first-order steps) SDE-DPM-Solver++ — checked here on a
    single step, where 2M has no history."""
    gmm, x_T, _ = problem
    n = 1 if other == "dpmpp_2m_sde" else 15
    sig = torch.tensor([SMAX, 3.0] if n == 1 else difflab.karras_sigmas(n, SMIN, SMAX).tolist(), dtype=torch.float64)
    a = difflab.sample(gmm, x_T.clone(), sig, "ddim", eta=1.0, generator=torch.Generator().manual_seed(7))
    b = difflab.sample(gmm, x_T.clone(), sig, other, generator=torch.Generator().manual_seed(7), **opts)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_dpmpp_2m_sde_eta0_is_dpmpp_2m(problem):
    gmm, x_T, _ = problem
    sig = difflab.karras_sigmas(10, SMIN, SMAX).double()
    a = difflab.sample(gmm, x_T.clone(), sig, "dpmpp_2m")
    b = difflab.sample(gmm, x_T.clone(), sig, "dpmpp_2m_sde", eta=0.0)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_heun_matches_exact_linear_ode():
    """For a single Gaussian N(mu, s^2 I) the ODE solution is closed form:
    x(sigma') = mu + sqrt(s^2 + sigma'^2) / sqrt(s^2 + sigma^2) (x - mu)."""
    mu, s = torch.tensor([[1.0, -2.0]], dtype=torch.float64), 0.7
    gauss = difflab.GaussianMixture(mu, s)
    x_T = SMAX * torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = mu + s / math.sqrt(s**2 + SMAX**2) * (x_T - mu)
    for name in ("heun", "dpmpp_3m", "unipc", "dpm_solver_3"):
        out = difflab.sample(gauss, x_T.clone(), difflab.karras_sigmas(200, 1e-6, SMAX).double(), name)
        assert rms(out, exact) < 1e-3, name


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_documented_call_count(problem, name):
    gmm, x_T, _ = problem
    counted = CountingDenoiser(gmm)
    sig = difflab.karras_sigmas(8, SMIN, SMAX).double()
    info = {}
    opts = {"info": info} if name == "rk45" else {}
    difflab.sample(counted, x_T[:8].clone(), sig, name, generator=torch.Generator().manual_seed(0), **opts)
    expected = info["nfe"] if name == "rk45" else denoiser_calls(name, sig)
    assert counted.calls == expected


def test_rk45_reaches_tolerance(problem):
    gmm, x_T, ref = problem
    errs, nfes = [], []
    for tol in (1e-3, 1e-5):
        info = {}
        out = difflab.sample(gmm, x_T.clone(), torch.tensor([SMAX, SMIN, 0.0]), "rk45", rtol=tol, atol=tol, info=info)
        errs.append(rms(out, ref))
        nfes.append(info["nfe"])
    assert errs[1] < 10 * 1e-5 and errs[1] < errs[0] and nfes[1] > nfes[0]
    assert info["steps"] > 0 and (info["nfe"] - 2) == 6 * (info["steps"] + info["rejected"])


# ---------------------------------------------------------------------------------------------
# Stochastic samplers: the distribution of the output against exact draws of the mixture.

N_DIST = 6000
DIST_STEPS = 300


@pytest.fixture(scope="module")
def dist_problem():
    gmm = random_mixture()
    gen = torch.Generator().manual_seed(11)
    exact, exact2 = gmm.sample(N_DIST, gen), gmm.sample(N_DIST, gen)
    floor = sliced_wasserstein(exact, exact2, generator=torch.Generator().manual_seed(1))
    return gmm, exact, floor


def _sw_of(dist_problem, name, **opts):
    gmm, exact, _ = dist_problem
    gen = torch.Generator().manual_seed(12)
    x_T = SMAX * torch.randn(N_DIST, gmm.dim, generator=gen, dtype=torch.float64)
    out = difflab.sample(gmm, x_T, difflab.karras_sigmas(DIST_STEPS, SMIN, SMAX).double(), name,
                         generator=gen, **opts)
    return sliced_wasserstein(out, exact, generator=torch.Generator().manual_seed(1))


# Tolerance: 1.5x the distance between two independent exact sample sets of the same size.
SW_FACTOR = 1.5


# The consistency sampler needs a consistency function, not a denoiser: tests/test_distill.py.
@pytest.mark.parametrize("name", sorted(STOCHASTIC - {"consistency"}))
def test_stochastic_sampler_distribution(dist_problem, name):
    floor = dist_problem[2]
    assert _sw_of(dist_problem, name) < SW_FACTOR * floor


@pytest.mark.parametrize("name,opts", [("euler_ancestral", {"s_noise": 1.1}), ("edm_stochastic", {"S_noise": 1.1}),
                                       ("dpmpp_2m_sde", {"s_noise": 0.9})])
def test_distribution_test_catches_wrong_noise_scale(dist_problem, name, opts):
    """The tolerance above is tight enough: a noise scale off by 10% fails it."""
    floor = dist_problem[2]
    assert _sw_of(dist_problem, name, **opts) > SW_FACTOR * floor


# ---------------------------------------------------------------------------------------------
# Interface


def test_callback_progress_and_generator(problem):
    gmm, x_T, _ = problem
    seen = []
    sig = difflab.karras_sigmas(5, SMIN, SMAX).double()
    a = difflab.sample(gmm, x_T.clone(), sig, "euler_ancestral", generator=torch.Generator().manual_seed(1),
                       callback=seen.append, progress=True)
    b = difflab.sample(gmm, x_T.clone(), sig, "euler_ancestral", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert [d["i"] for d in seen] == list(range(5)) and set(seen[0]) >= {"x", "sigma", "sigma_next", "denoised"}


def test_bad_arguments(problem):
    gmm, x_T, _ = problem
    sig = difflab.karras_sigmas(5, SMIN, SMAX)
    with pytest.raises(ValueError, match="unknown sampler"):
        difflab.sample(gmm, x_T, sig, "nope")
    with pytest.raises(ValueError, match="no option"):
        difflab.sample(gmm, x_T, sig, "euler", eta=1.0)
    with pytest.raises(ValueError, match="decrease"):
        difflab.sample(gmm, x_T, sig.flip(0), "euler")


def test_ring_problem_first_step_is_data_mean():
    """At sigma = 80 the exact denoiser returns ~the data mean (0 for the ring), a sanity check of the
    oracle that every sampler's first step relies on."""
    gmm = ring_mixture()
    x = SMAX * torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert gmm.denoiser(x, torch.full((16,), 1e4, dtype=torch.float64)).abs().max() < 1e-2


def test_ddpm_variance_callable_matches_fixed_variances(problem):
    """A variance given as a callable goes through the same posterior mean: the posterior variance
    s'^2 (s^2 - s'^2) / s^2 as a callable reproduces variance="posterior" for the same noise."""
    gmm, x_T, _ = problem
    sig = difflab.karras_sigmas(12, SMIN, SMAX).double()
    a = difflab.sample(gmm, x_T.clone(), sig, "ddpm", generator=torch.Generator().manual_seed(3))
    b = difflab.sample(gmm, x_T.clone(), sig, "ddpm", generator=torch.Generator().manual_seed(3),
                       variance=lambda x, s, s_next: s_next**2 * (s**2 - s_next**2) / s**2)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="variance"):
        difflab.sample(gmm, x_T, sig, "ddpm", variance="learned-ish")


@pytest.mark.parametrize("sampler, options, words", [
    ("ddim", {"eta": -1}, "eta of 'ddim' must be >= 0"), ("ddim", {"eta": "abc"}, "must be a finite number"),
    ("dpmpp_2m_sde", {"eta": float("nan")}, "finite"), ("unipc", {"order": 0}, "order of 'unipc' must be >= 1"),
    ("unipc", {"order": 2.5}, "an integer"), ("pc", {"snr": -1}, "snr of 'pc' must be > 0"),
    ("pc", {"corrector_steps": -1}, ">= 0"), ("rk45", {"rtol": 0}, "rtol of 'rk45' must be > 0"),
    ("edm_stochastic", {"S_churn": -5}, ">= 0"), ("euler_ancestral", {"eta": -2}, ">= 0"),
    ("unipc", {"corrector": "yes"}, "true or false"), ("dpmpp_sde", {"r": 1.5}, "< 1"),
])
def test_bad_option_values_are_one_sentence_errors(sampler, options, words):
    gmm = ring_mixture()
    sigmas = difflab.karras_sigmas(4, 0.002, 80.0)
    with pytest.raises(ValueError, match=re.escape(words)):
        difflab.sample(gmm, 80 * torch.randn(3, 2), sigmas, sampler, **options)

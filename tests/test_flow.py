"""Flow matching and rectified flow against mathematics: the linear path's marginals, the velocity
of a Gaussian mixture in closed form, Euler in flow time = DDIM, the exact start from pure noise,
the quantile map in 1-D and the straightness of its reflow, the exact OT coupling, logit-normal
times, a trained flow against its irreducible loss, and reflow end to end."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import difflab
from difflab.denoisers import prediction_from_x0, x0_from_prediction
from difflab.exact import GaussianMixture, ring_mixture
from difflab.flow import euler_flow, straightness, velocity
from difflab.schedules import Flow, q_sample, time_uniform_sigmas
from difflab.training.losses import ot_pairing, sample_training_sigmas

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def mixture_velocity(gmm: GaussianMixture, x_t, t: float):
    """E[n - x0 | x_t] of x_t = (1 - t) x0 + t n by jointly Gaussian conditioning per component,
    written without difflab's denoiser: with V_k = (1 - t)^2 s_k^2 + t^2 and m_k = (1 - t) mu_k,
    E[x0 | x_t, k] = mu_k + (1 - t) s_k^2 / V_k (x_t - m_k), E[n | x_t, k] = t / V_k (x_t - m_k),
    mixed by the responsibilities r_k proportional to w_k N(x_t; m_k, V_k I)."""
    mu, s2, w = gmm.means, gmm.stds**2, gmm.log_weights.exp()
    V = (1 - t) ** 2 * s2 + t**2
    diff = x_t[:, None, :] - (1 - t) * mu[None]
    log_r = w.log() - 0.5 * gmm.dim * V.log() - 0.5 * diff.square().sum(-1) / V
    r = torch.softmax(log_r, dim=1)[..., None]
    x0 = mu[None] + ((1 - t) * s2 / V)[None, :, None] * diff
    n = (t / V)[None, :, None] * diff
    return (r * (n - x0)).sum(1)


def test_flow_schedule_is_the_linear_path():
    f = Flow()
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=F64)
    torch.testing.assert_close(f.alpha(t), 1 - t)
    torch.testing.assert_close(f.std(t), t)
    sigma = f.ve_sigma(t)
    assert sigma[0] == 0 and math.isinf(sigma[-1])
    torch.testing.assert_close(sigma[1:-1], t[1:-1] / (1 - t[1:-1]))
    torch.testing.assert_close(f.t_of_ve_sigma(sigma), t)
    x0, n = torch.randn(2, 5, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(q_sample(f, x0, torch.full((5,), 0.3, dtype=F64), noise=n), 0.7 * x0 + 0.3 * n)
    # the time-uniform grid: t = 1, 3/4, ..., 0 from pure noise
    torch.testing.assert_close(time_uniform_sigmas(f, 4).double(), torch.tensor([math.inf, 3.0, 1.0, 1 / 3, 0.0],
                                                                                dtype=F64), rtol=1e-6, atol=0)


def test_flow_parametrization_round_trip():
    g = torch.Generator().manual_seed(1)
    x0, n = torch.randn(2, 8, 4, dtype=F64, generator=g)
    sigma = torch.rand(8, 1, dtype=F64, generator=g) * 5 + 0.01
    alpha = 1 / (1 + sigma)  # the Flow schedule; the formula holds for any alpha
    x = x0 + sigma * n
    u = prediction_from_x0("flow", x0, x, sigma, alpha)
    torch.testing.assert_close(u, n - x0)
    torch.testing.assert_close(x0_from_prediction("flow", u, x, sigma, alpha), x0)
    torch.testing.assert_close(prediction_from_x0("flow", x0, x, sigma, alpha, eps=n), n - x0)


@pytest.mark.parametrize("t", [1.0, 0.9, 0.5, 0.1])
def test_velocity_of_a_mixture_matches_the_closed_form(t):
    gmm = ring_mixture()
    x_t = 3 * torch.randn(200, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(velocity(gmm, x_t, t), mixture_velocity(gmm, x_t, t), rtol=1e-9, atol=1e-9)


def test_euler_in_flow_time_is_ddim_on_the_flow_schedule():
    """Euler's method in t with the closed-form velocity, written out here, equals difflab's
    euler (= DDIM) on the time-uniform flow sigmas, and euler_flow, from the same noise."""
    gmm = ring_mixture()
    z = torch.randn(300, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    steps = 12
    x = z
    ts = torch.linspace(1, 0, steps + 1, dtype=F64).tolist()
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t) * mixture_velocity(gmm, x, t)
    sigmas = torch.tensor([math.inf] + [t / (1 - t) for t in ts[1:-1]] + [0.0], dtype=F64)
    torch.testing.assert_close(difflab.sample(gmm, z, sigmas, "euler"), x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(difflab.sample(gmm, z, sigmas, "ddim"), x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(euler_flow(gmm, z, steps), x, rtol=1e-10, atol=1e-10)


def test_the_start_from_pure_noise_is_exact():
    """The first step from sigma = inf is D(n, inf) + sigma' n; with one step it ends at the mean."""
    gmm = ring_mixture()
    z = torch.randn(50, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    calls = []
    out = difflab.sample(gmm, z, torch.tensor([math.inf, 2.0, 0.0], dtype=F64), "euler",
                         callback=lambda info: calls.append((info["i"], info["sigma"])))
    mean = gmm.means.mean(0)
    expected_mid = mean + 2.0 * z
    torch.testing.assert_close(out, gmm(expected_mid, torch.full((50,), 2.0, dtype=F64)))
    assert calls == [(0, math.inf), (1, 2.0)]
    assert difflab.samplers.denoiser_calls("heun", [math.inf, 2.0, 1.0, 0.0]) == 1 + 3
    one = difflab.sample(gmm, z, torch.tensor([math.inf, 0.0], dtype=F64), "dpmpp_2m")
    torch.testing.assert_close(one, mean.expand(50, 2))


def mixture_1d():
    return GaussianMixture(torch.tensor([[-2.0], [1.0], [3.0]], dtype=F64), torch.tensor([0.4, 0.7, 0.3]),
                           weights=torch.tensor([0.3, 0.5, 0.2]))


def quantile_map(gmm, z):
    """F^-1(Phi(z)) for a 1-D mixture, by bisection on its CDF."""
    target = torch.as_tensor(norm.cdf(z.numpy()), dtype=F64)
    w, mu, s = gmm.log_weights.exp(), gmm.means[:, 0], gmm.stds
    lo, hi = torch.full_like(target, -20.0), torch.full_like(target, 20.0)
    for _ in range(200):
        mid = (lo + hi) / 2
        cdf = (w * torch.special.ndtr((mid[:, None] - mu) / s)).sum(1)
        lo, hi = torch.where(cdf < target, mid, lo), torch.where(cdf < target, hi, mid)
    return ((lo + hi) / 2)[:, None]


def test_the_1_rectified_map_in_1d_is_the_quantile_map():
    """In one dimension every flow is monotone, so the flow ODE of the exact mixture, started from
    pure noise, transports z to F^-1(Phi(z))."""
    gmm = mixture_1d()
    z = torch.linspace(-2.5, 2.5, 41, dtype=F64)[:, None]
    out = difflab.sample(gmm, z, time_uniform_sigmas(Flow(), 400).double(), "heun")
    torch.testing.assert_close(out, quantile_map(gmm, z[:, 0]), rtol=0, atol=2e-3)


def test_the_2_rectified_flow_in_1d_is_straight():
    """The reflow of the quantile coupling (z, T(z)): x_t = (1 - t) T(z) + t z is increasing in z,
    so each x_t has one pair and the velocity along it is the constant z - T(z): straightness 0,
    and one Euler step is exact. The denoiser of that flow is built here from T by interpolation."""
    gmm = mixture_1d()
    grid = torch.linspace(-8, 8, 4001, dtype=F64)
    T = quantile_map(gmm, grid)[:, 0].numpy()
    zg = grid.numpy()

    def denoiser(x, sigma):
        sigma = sigma.to(F64)
        if bool(torch.isinf(sigma).all()):
            return torch.as_tensor(np.interp(x[:, 0].numpy(), zg, T), dtype=F64)[:, None]
        t = (sigma / (1 + sigma)).numpy()
        x_t = (x[:, 0] / (1 + sigma)).numpy()
        z = np.array([np.interp(xi, (1 - ti) * T + ti * zg, zg) for xi, ti in zip(x_t, t)])
        u = z - np.interp(z, zg, T)
        return torch.as_tensor(x_t - t * u, dtype=F64)[:, None]

    z = torch.linspace(-2.5, 2.5, 21, dtype=F64)[:, None]
    assert straightness(denoiser, z, steps=16) < 1e-6
    torch.testing.assert_close(euler_flow(denoiser, z, 1), quantile_map(gmm, z[:, 0]), rtol=0, atol=1e-4)
    # while the 1-rectified flow of the mixture itself is far from straight
    assert straightness(gmm, z, steps=16) > 0.05


def test_ot_pairing_is_the_exact_assignment():
    g = torch.Generator().manual_seed(5)
    for _ in range(10):
        x0, n = torch.randn(2, 6, 3, generator=g)
        perm = ot_pairing(x0, n)
        cost = (x0 - n[perm]).square().sum()
        best = min((x0 - n[list(p)]).square().sum() for p in itertools.permutations(range(6)))
        assert sorted(perm.tolist()) == list(range(6))
        torch.testing.assert_close(cost, best)


def test_logit_normal_times():
    """t = sigmoid(m + s z) (Esser et al. 2024): logit(t) has mean m and std s; uniform t otherwise."""
    g = torch.Generator().manual_seed(6)
    sigma = sample_training_sigmas(Flow(), 200_000, g, time_sampling="logit_normal", logit_mean=0.5, logit_std=0.8)
    t = sigma / (1 + sigma)
    logit = (t / (1 - t)).log()
    assert abs(logit.mean().item() - 0.5) < 0.01 and abs(logit.std().item() - 0.8) < 0.01
    t = Flow().t_of_ve_sigma(sample_training_sigmas(Flow(), 200_000, g))
    assert abs(t.mean().item() - 0.5) < 0.005 and abs(t.var().item() - 1 / 12) < 0.002


def irreducible_cfm_loss(gmm, n=400_000, seed=7):
    """E |u*(x_t, t) - (n - x0)|^2 / D at the optimum u* = E[n - x0 | x_t], t ~ U(0, 1): the floor
    of the flow-matching loss, by Monte Carlo from the exact mixture."""
    g = torch.Generator().manual_seed(seed)
    x0 = gmm.sample(n, g)
    noise = torch.randn(n, gmm.dim, generator=g, dtype=F64)
    t = torch.rand(n, 1, generator=g, dtype=F64)
    x_t = (1 - t) * x0 + t * noise
    u = velocity(gmm, x_t, t[:, 0])
    return ((u - (noise - x0)).square().mean(1)).mean().item()


def test_a_trained_flow_approaches_its_irreducible_loss(tmp_path):
    """toy2d-flow on 8 Gaussians: the logged loss ends within 10% above the exact floor (a trainer
    that paired each batch with one data point, or mixed up n - x0, would sit far above it), and
    the learned velocity is close to the exact one."""
    from difflab.training import PRESETS, train

    config = PRESETS["toy2d-flow"].replace(steps=600, log_every=100, ckpt_every=0, sample_every=0,
                                           batch_size=1024)
    model_dir = train(config, tmp_path, progress=False, device="cpu")
    gmm = ring_mixture(8, radius=math.sqrt(2 * (1 - 0.2**2)), std=0.2)  # the 8gaussians data set
    floor = irreducible_cfm_loss(gmm)
    with open(tmp_path / "log.csv") as f:
        last = float(f.read().strip().splitlines()[-1].split(",")[1])
    assert floor <= last < 1.1 * floor, (floor, last)
    model = difflab.load(model_dir, "cpu")
    g = torch.Generator().manual_seed(8)
    for t in (0.3, 0.6, 0.9):
        x_t = (1 - t) * gmm.sample(2000, g) + t * torch.randn(2000, 2, generator=g, dtype=F64)
        exact = velocity(gmm, x_t, t)
        learned = velocity(model.denoiser, x_t.float(), t).double()
        rel = ((learned - exact).square().mean() / exact.square().mean()).sqrt().item()
        assert rel < 0.2, (t, rel)


def test_reflow_end_to_end(tmp_path, capsys):
    from difflab.cli import main
    from difflab.training import PRESETS, train

    teacher = train(PRESETS["toy2d-flow"].replace(steps=40, log_every=20, ckpt_every=0, sample_every=0),
                    tmp_path / "teacher", progress=False, device="cpu")
    status = main(["reflow", str(teacher), "--out", str(tmp_path / "r1"), "--pairs", "512", "--steps", "8",
                   "--train-steps", "20", "--device", "cpu"])
    assert status == 0
    out = capsys.readouterr().out
    assert "straightness" in out and "student" in out
    with np.load(tmp_path / "r1" / "pairs.npz") as pairs:
        assert pairs["x"].shape == pairs["noise"].shape == (512, 2)
    student = difflab.load(tmp_path / "r1", "cpu")
    assert student.config.coupling == "pairs" and student.config.init is not None
    assert student.sample(4, steps=2, seed=0).shape == (4, 2)
    # the pairs are the teacher's ODE from exactly those noises
    z = torch.from_numpy(np.load(tmp_path / "r1" / "pairs.npz")["noise"][:8])
    x = torch.from_numpy(np.load(tmp_path / "r1" / "pairs.npz")["x"][:8])
    torch.testing.assert_close(difflab.load(teacher, "cpu").sample(8, steps=8, noise=z), x)
    assert main(["reflow", str(teacher), "--out", str(tmp_path / "r1"), "--pairs", "8"]) == 2  # exists

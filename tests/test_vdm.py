"""Variational Diffusion Models (Kingma et al. 2021): the LogSNRTable schedule, the learned monotone
schedule, the continuous-time bound against the closed form of Gaussian data, its invariance to
the schedule's shape, the variance-minimising gradient, and a digits-vdm run that saves, resumes
bit for bit, loads and samples."""
import json
import math

import pytest
import torch
from torch import nn

import difflab
from difflab.denoisers import NetworkDenoiser
from difflab.likelihood import (BIN_WIDTH, quantize_8bit, vdm_decoder_nll, vdm_diffusion_loss, vdm_elbo_bpd,
                                vdm_elbo_terms, vdm_gamma, vdm_prior_kl)
from difflab.schedules import ContinuousVP, LogSNRTable, make_schedule
from difflab.training import PRESETS, load_dataset, train
from difflab.training.objectives import VDM, LearnedLogSNR

MU, S = 0.1, 0.3  # the Gaussian data N(MU, S^2 I) of the closed-form checks
CURVED = LogSNRTable([-10.0, -8.5, -6.0, -1.0, 3.0])  # a non-linear shape between the endpoints -10 and 3


def gaussian_denoiser(x, sigma, **_):
    """E[x0 | x0 + sigma n] for x0 ~ N(MU, S^2 I): MU + S^2 / (S^2 + sigma^2) (x - MU)."""
    return MU + S**2 / (S**2 + append(sigma, x).double() ** 2) * (x.double() - MU)


def append(v, x):
    return v.reshape(-1, *([1] * (x.ndim - 1)))


class GaussianEpsNet(nn.Module):
    """The exact eps prediction of Gaussian data for a LogSNRTable model's inputs (z_t, c_noise)."""

    def forward(self, x_in, c_noise, **_):
        gamma = c_noise.double() * (LogSNRTable.GAMMA_MAX - LogSNRTable.GAMMA_MIN) / 1000 + LogSNRTable.GAMMA_MIN
        sigma = append((0.5 * gamma).exp(), x_in)
        x = x_in.double() * (1 + sigma**2).sqrt()  # x_ve = z_t / alpha
        return (x - gaussian_denoiser(x, sigma)) / sigma


def closed_form_diffusion(d, gamma_0, gamma_1):
    """L_inf of the exact denoiser: 1/2 d int_{gamma_0}^{gamma_1} S^2 / (S^2 + e^gamma) dgamma
    = d/2 (log(1 + S^2 e^-gamma_0) - log(1 + S^2 e^-gamma_1))."""
    return 0.5 * d * (math.log1p(S**2 * math.exp(-gamma_0)) - math.log1p(S**2 * math.exp(-gamma_1)))


def quadrature_diffusion(schedule, d, pieces=64):
    """1/2 int gamma'(t) E||eps - eps_hat||^2 dt over [t_min, t_max] with the exact inner expectation
    d S^2/(S^2 + e^gamma), by a 200-point Gauss-Legendre rule on each of ``pieces`` equal pieces."""
    nodes, weights = (torch.tensor(v, dtype=torch.float64) for v in _legendre(200))
    total, lo, span = 0.0, schedule.t_min, schedule.t_max - schedule.t_min
    for k in range(pieces):
        a, b = lo + span * k / pieces, lo + span * (k + 1) / pieces
        t = a + (b - a) * (nodes + 1) / 2
        gamma, slope = vdm_gamma(schedule, t)
        total += float(((b - a) / 2 * weights * 0.5 * slope * d * S**2 / (S**2 + gamma.exp())).sum())
    return total


def _legendre(n):
    import numpy as np

    return np.polynomial.legendre.leggauss(n)


def vdm_config():
    return PRESETS["digits-vdm"].replace(network="mlp", net={})


def gaussian_batch(n, d, gen, quantized=False):
    """A batch of the VDM objective (:meth:`VDM.draw`'s keys) of Gaussian data (continuous, for the
    closed forms, or on the 8-bit levels), t ~ U(0, 1)."""
    def normal():
        return torch.randn(n, d, generator=gen, dtype=torch.float64)

    x0 = MU + S * normal()
    return {"x0": quantize_8bit(x0.clamp(-1, 1)) if quantized else x0,
            "t": torch.rand(n, generator=gen, dtype=torch.float64), "noise": normal(), "noise_0": normal()}


# ---------------------------------------------------------------------------------------------
# The schedule


def test_log_snr_table_is_monotone_invertible_and_variance_preserving():
    s = CURVED
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    sigma = s.ve_sigma(t)
    assert bool((sigma.diff() > 0).all())
    assert torch.allclose(s.t_of_ve_sigma(sigma), t, atol=1e-12, rtol=0)
    grid = torch.logspace(math.log10(s.sigma_min), math.log10(s.sigma_max), 500, dtype=torch.float64)
    assert torch.allclose(s.ve_sigma(s.t_of_ve_sigma(grid)), grid, rtol=1e-12, atol=0)
    assert torch.allclose(s.alpha(t) ** 2 + s.std(t) ** 2, torch.ones_like(t), atol=1e-14)
    assert torch.allclose(s.log_snr(t), -s.gamma(t), atol=1e-12)
    assert math.isclose(s.sigma_min, math.exp(-5.0)) and math.isclose(s.sigma_max, math.exp(1.5))
    # alpha and the network's time input depend on sigma alone, not on the table
    linear = LogSNRTable([-10.0, 3.0])
    wide = torch.tensor([1e-4, 0.01, 0.5, 2.0, 100.0], dtype=torch.float64)
    for other in (linear, LogSNRTable()):
        assert torch.equal(other.c_noise(wide), s.c_noise(wide))
        assert torch.equal(other.alpha_of_ve_sigma(wide), s.alpha_of_ve_sigma(wide))
    assert torch.allclose(s.alpha_of_ve_sigma(wide), (1 + wide**2).rsqrt())


def test_log_snr_table_serialises_and_rejects_bad_tables():
    back = make_schedule(json.loads(json.dumps(CURVED.to_dict())))
    assert isinstance(back, LogSNRTable) and torch.equal(back.gamma_table, CURVED.gamma_table)
    assert make_schedule(LogSNRTable().to_dict()).to_dict() == {"kind": "LogSNRTable", "gamma": [-13.3, 5.0]}
    for bad in ([1.0], [0.0, 0.0], [2.0, 1.0], [0.0, math.nan], [0.0, math.inf]):
        with pytest.raises(ValueError, match="strictly increasing"):
            LogSNRTable(bad)


def test_learned_log_snr_is_monotone_exact_at_the_ends_and_its_table_is_the_same_map():
    gm = LearnedLogSNR(CURVED, knots=8)
    t = torch.rand(2000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gamma, _ = gm(t)
    assert torch.allclose(gamma, CURVED.gamma(t), atol=1e-12)  # the 4-piece table on 8 knots, exactly
    with torch.no_grad():
        gm.logits.add_(torch.randn(8, generator=torch.Generator().manual_seed(1)))
        gm.log_range.add_(0.3)
        grid = torch.linspace(0, 1, 4001, dtype=torch.float64)
        gamma, slope = gm(grid)
        g0, g1 = gm.endpoints()
    assert bool((gamma.diff() > 0).all()) and float(gamma[0]) == g0.item()
    assert math.isclose(float(gamma[-1]), g1.item(), rel_tol=1e-14)
    inner = (grid[1:-1] * 8 % 1 > 1e-3) & (grid[1:-1] * 8 % 1 < 1 - 1e-3)  # away from the knots, where gamma' jumps
    fd = (gamma[2:] - gamma[:-2]) / (grid[2] - grid[0])
    assert torch.allclose(fd[inner], slope[1:-1][inner], rtol=1e-8)
    table = gm.table()
    assert torch.allclose(table.gamma(grid), gamma, atol=1e-12)
    twin = LearnedLogSNR(LogSNRTable(), knots=8)
    twin.load_state_json(json.loads(json.dumps(gm.state_json())))
    assert all(torch.equal(a, b) for a, b in zip(twin.parameters(), gm.parameters()))


# ---------------------------------------------------------------------------------------------
# The bound against Gaussian closed forms


@pytest.mark.parametrize("schedule", [LogSNRTable([-10.0, 3.0]), CURVED, ContinuousVP()], ids=["linear", "curved", "vp"])
def test_diffusion_loss_matches_the_closed_form_and_not_the_shape(schedule):
    """The exact denoiser's L_inf is d/2 log((1 + S^2 e^-g0)/(1 + S^2 e^-g1)) for every shape with
    those endpoints (VDM sec. 5.1): by quadrature to 1e-9, by Monte Carlo within 4 standard errors."""
    d = 4
    g0, g1 = 2 * math.log(schedule.sigma_min), 2 * math.log(schedule.sigma_max)
    exact = closed_form_diffusion(d, g0, g1)
    assert math.isclose(quadrature_diffusion(schedule, d), exact, rel_tol=1e-9)
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = MU + S * torch.randn(n, d, generator=gen, dtype=torch.float64)
    t = schedule.t_min + (schedule.t_max - schedule.t_min) * torch.rand(n, generator=gen, dtype=torch.float64)
    loss = vdm_diffusion_loss(gaussian_denoiser, x0, schedule, t, torch.randn(n, d, generator=gen, dtype=torch.float64))
    assert abs(float(loss.mean()) - exact) < 4 * float(loss.std()) / math.sqrt(n)


@pytest.mark.parametrize("initial", [LogSNRTable([-10.0, 3.0]), CURVED], ids=["linear", "curved"])
def test_training_objective_terms_match_the_closed_forms(initial):
    """The VDM objective's diffusion term through an exact eps network, and its prior term, against
    the closed forms; the prior also against torch's Gaussian KL."""
    d, n = 4, 20_000
    obj = VDM(NetworkDenoiser(GaussianEpsNet(), LogSNRTable(), "eps"), vdm_config(), LearnedLogSNR(initial, 8))
    batch = gaussian_batch(n, d, torch.Generator().manual_seed(0))
    x0 = batch["x0"]
    with torch.no_grad():
        diffusion = torch.cat([obj.terms({k: v[i:i + 10_000] for k, v in batch.items()})["diffusion"]
                               for i in range(0, n, 10_000)])
    exact = closed_form_diffusion(d, -10.0, 3.0)
    assert abs(float(diffusion.mean()) - exact) < 4 * float(diffusion.std()) / math.sqrt(n)
    g1 = torch.tensor(3.0, dtype=torch.float64)
    q = torch.distributions.Normal(torch.sigmoid(-g1).sqrt() * x0[:50], torch.sigmoid(g1).sqrt())
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(vdm_prior_kl(x0[:50], g1), kl, rtol=1e-10)


def test_decoder_is_a_normalised_distribution_over_the_256_levels():
    gen = torch.Generator().manual_seed(0)
    levels = torch.arange(256, dtype=torch.float64) * BIN_WIDTH - 1
    for gamma_0 in (-13.3, -8.0, -3.0):
        z = (torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1).repeat_interleave(256)[:, None]
        x = levels.repeat(3)[:, None]
        log_p = -vdm_decoder_nll(x, z, gamma_0).reshape(3, 256)
        assert torch.allclose(log_p.logsumexp(1), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    x = quantize_8bit(torch.rand(5, 6, generator=gen) * 2 - 1)
    assert float(vdm_decoder_nll(x, x, -13.3).max()) < 1e-6  # z_0 at the level itself, tiny noise: certain
    assert torch.allclose(quantize_8bit(levels), levels, rtol=0, atol=1e-12)
    once = quantize_8bit(torch.rand(1000, generator=gen) * 2 - 1)
    assert torch.equal(quantize_8bit(once), once)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        quantize_8bit(torch.tensor([1.5]))


def test_bound_of_8bit_gaussian_data_with_its_exact_denoiser_is_its_entropy():
    """Data: each coordinate one of the 256 levels with the probabilities a Gaussian gives their bins.
    With its exact denoiser (a mixture over the levels) the whole bound, prior + reconstruction +
    diffusion, is -log p(x) up to the endpoint terms: on average at least the entropy of the data
    (cross-entropy >= entropy) and within 2e-3 nats per dimension of it."""
    d, n = 4, 4000
    levels = torch.arange(256, dtype=torch.float64) * BIN_WIDTH - 1
    normal = torch.distributions.Normal(MU, S)
    upper = torch.where(levels >= 1, 1.0, normal.cdf(levels + BIN_WIDTH / 2))
    lower = torch.where(levels <= -1, 0.0, normal.cdf(levels - BIN_WIDTH / 2))
    log_p = (upper - lower).clamp_min(1e-300).log()
    entropy = float(-(log_p.exp() * log_p).sum())  # nats per dimension

    def denoiser(x, sigma, **_):  # E[x0 | x] per coordinate: the posterior over the levels
        logits = log_p - (x.double()[..., None] - levels).square() / (2 * append(sigma, x).double()[..., None] ** 2)
        return (logits.softmax(-1) * levels).sum(-1)

    gen = torch.Generator().manual_seed(0)
    x0 = levels[torch.multinomial(log_p.exp(), n * d, replacement=True, generator=gen)].reshape(n, d)
    r = vdm_elbo_terms(denoiser, x0, LogSNRTable(), samples=8, generator=gen)
    per_dim = r["total"] / d
    mean, se = float(per_dim.mean()), float(per_dim.std()) / math.sqrt(n)
    assert mean > entropy - 4 * se and abs(mean - entropy) < 2e-3 + 4 * se, (mean, entropy, se)


# ---------------------------------------------------------------------------------------------
# Variance minimisation


def test_one_backward_gives_the_bound_to_the_endpoints_and_the_squared_loss_to_the_shape():
    """The gradients of one loss.backward(): the endpoints get d E[bound]/d(gamma_0, log_range),
    the shape's logits d E[L_inf^2]/d logits (bits/dim), each against a separate computation."""
    d, b = 3, 64
    gm = LearnedLogSNR(CURVED, 8)
    with torch.no_grad():
        gm.logits.add_(0.3 * torch.randn(8, generator=torch.Generator().manual_seed(0)))
    obj = VDM(NetworkDenoiser(GaussianEpsNet(), LogSNRTable(), "eps"), vdm_config(), gm)
    batch = gaussian_batch(b, d, torch.Generator().manual_seed(1), quantized=True)
    obj.loss(batch)[0].backward()

    # the same bound written out directly: z_t = alpha x + std eps, L_inf = 1/2 gamma' ||eps - eps_hat||^2
    gamma, slope = gm(batch["t"])
    sigma = (0.5 * gamma)[:, None].exp()
    x = batch["x0"] + sigma * batch["noise"]
    eps_hat = (x - gaussian_denoiser(x, sigma)) / sigma
    diffusion = 0.5 * slope * (batch["noise"] - eps_hat).square().sum(1) / (d * math.log(2))
    g0, g1 = gm.endpoints()
    recon = vdm_decoder_nll(batch["x0"], batch["x0"] + (0.5 * g0).exp() * batch["noise_0"], g0)
    bound = diffusion + (vdm_prior_kl(batch["x0"], g1) + recon) / (d * math.log(2))
    ends = torch.autograd.grad(bound.mean(), [gm.gamma_0, gm.log_range], retain_graph=True)
    (shape,) = torch.autograd.grad(diffusion.square().mean(), [gm.logits])
    assert torch.allclose(gm.gamma_0.grad, ends[0], rtol=1e-4) and torch.allclose(gm.log_range.grad, ends[1], rtol=1e-4)
    assert torch.allclose(gm.logits.grad, shape, rtol=1e-4, atol=1e-6 * float(shape.abs().max()))


def test_learning_the_shape_lowers_the_variance_of_the_bound_not_its_mean():
    """On Gaussian data with the exact network, 100 Adam steps on the shape (endpoints fixed) cut
    the variance of the one-draw estimate of L_inf by 40% or more; its mean stays the closed form."""
    d = 8
    gm = LearnedLogSNR(LogSNRTable(), 32)
    gm.gamma_0.requires_grad_(False)
    gm.log_range.requires_grad_(False)
    obj = VDM(NetworkDenoiser(GaussianEpsNet(), LogSNRTable(), "eps"), vdm_config(), gm)
    gen = torch.Generator().manual_seed(0)

    def moments(n=100_000):
        b = gaussian_batch(n, d, gen)
        loss = vdm_diffusion_loss(gaussian_denoiser, b["x0"], gm.table(), b["t"], b["noise"])
        return float(loss.mean()), float(loss.var()), float(loss.std()) / math.sqrt(n)

    mean_0, var_0, _ = moments()
    optimizer = torch.optim.Adam([gm.logits], lr=3e-2)
    for _ in range(100):
        optimizer.zero_grad()
        obj.loss(gaussian_batch(256, d, gen))[0].backward()
        optimizer.step()
    mean_1, var_1, se_1 = moments()
    exact = closed_form_diffusion(d, LogSNRTable.GAMMA_MIN, LogSNRTable.GAMMA_MAX)
    assert var_1 < 0.6 * var_0, (var_0, var_1)
    assert abs(mean_1 - exact) < 4 * se_1 and abs(mean_0 - exact) < 4 * math.sqrt(var_0 / 100_000)


# ---------------------------------------------------------------------------------------------
# Training, saving, resuming, loading


TINY = dict(batch_size=16, log_every=2, sample_every=0, ckpt_every=2)


def tiny_vdm(**overrides):
    config = PRESETS["digits-vdm"]
    net = dict(config.net, base_channels=8, groups=8, num_res_blocks=1, attn_resolutions=[])
    return config.replace(**{"net": net, **TINY, **overrides})


def test_digits_vdm_saves_its_learned_schedule_resumes_bit_for_bit_loads_and_samples(tmp_path):
    straight = train(tiny_vdm(steps=4), tmp_path / "straight", progress=False, device="cpu")
    train(tiny_vdm(steps=2), tmp_path / "resumed", progress=False, device="cpu")
    resumed = train(tiny_vdm(steps=4), tmp_path / "resumed", progress=False, device="cpu", resume=True)
    for name in ("model.safetensors", "ema.safetensors", "training_state.safetensors", "config.json"):
        assert (straight / name).read_bytes() == (resumed / name).read_bytes(), name
    state = json.loads((straight / "training_state.json").read_text())
    assert state["learned_schedule"]["initial"] == PRESETS["digits-vdm"].schedule
    saved = json.loads((straight / "config.json").read_text())["schedule"]
    assert saved["kind"] == "LogSNRTable" and len(saved["gamma"]) == 33 and saved["gamma"] != [-13.3] + [5.0] * 32

    model = difflab.load(straight, "cpu")
    assert isinstance(model.schedule, LogSNRTable) and model.schedule.to_dict() == saved
    x = model.sample(3, steps=3, seed=0)
    assert x.shape == (3, 1, 8, 8) and bool(torch.isfinite(x).all())
    test = load_dataset("digits", split="test").x[:4]
    bpd = vdm_elbo_bpd(model.denoiser, test, model.schedule, samples=2, generator=torch.Generator().manual_seed(0))
    assert bpd.shape == (4,) and bool((bpd > 0).all())


def test_a_fixed_schedule_run_keeps_its_config_and_user_errors_are_one_sentence(tmp_path):
    fixed = train(tiny_vdm(steps=2, distill={"knots": 32, "learn_schedule": False}), tmp_path / "fixed",
                  progress=False, device="cpu")
    assert json.loads((fixed / "config.json").read_text())["schedule"] == PRESETS["digits-vdm"].schedule
    assert "learned_schedule" not in json.loads((fixed / "training_state.json").read_text())
    bad = {"an EDM schedule": dict(schedule={"kind": "EDM"}), "an unknown option": dict(distill={"pieces": 4}),
           "another weighting": dict(weighting="edm"), "a bad knots": dict(distill={"knots": 0}),
           "data outside [-1, 1]": dict(data="moons", network="mlp", net={})}
    for what, overrides in bad.items():
        with pytest.raises(ValueError) as info:
            train(tiny_vdm(steps=1, **overrides), tmp_path / what.replace(" ", "-"), progress=False, device="cpu")
        assert "vdm" in str(info.value) and "\n" not in str(info.value), what


@pytest.mark.slow
def test_eval_nll_reports_the_vdm_bound(tmp_path, capsys):
    from difflab.cli import main

    train(tiny_vdm(steps=2), tmp_path / "run", progress=False, device="cpu")
    assert main(["eval", str(tmp_path / "run"), "--nll", "--n", "2", "--trace", "hutchinson", "--probes", "1",
                 "--elbo-samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "ODE" in out and "ELBO (continuous time, VDM; 2 t per image)" in out and out.count("bits/dim") == 2

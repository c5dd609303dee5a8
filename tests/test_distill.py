"""Distillation against mathematics, with the exact mixture as the teacher: the progressive target
reproduces two teacher DDIM steps, the consistency-distillation loss of the exact consistency
function vanishes as the discretisation refines, the consistency parametrisation meets its boundary
condition, multistep consistency sampling with the exact consistency function samples the data,
the guided target is the guided oracle at any w; and the three procedures end to end."""
import math

import numpy as np
import pytest
import torch

import difflab
from difflab.denoisers import NetworkDenoiser, consistency_coefficients
from difflab.evaluation import sliced_wasserstein
from difflab.exact import GaussianMixture, ring_mixture
from difflab.nets import MLPConfig, build_network
from difflab.schedules import EDM, Flow, consistency_grid, consistency_sigmas, karras_sigmas, time_uniform_sigmas
from difflab.training.objectives import (_heun_rows, ct_discretisation, ddim_step, guided_target,
                                         progressive_target, pseudo_huber)

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def rows(v, n):
    return torch.full((n,), float(v), dtype=F64)


@pytest.mark.parametrize("grid", [karras_sigmas(8, 0.002, 80.0).double(), time_uniform_sigmas(Flow(), 8).double()],
                         ids=["karras", "flow-from-pure-noise"])
def test_one_student_step_on_the_target_is_two_teacher_steps(grid):
    gmm = ring_mixture()
    g = torch.Generator().manual_seed(0)
    for i in range(0, len(grid) - 2, 2):
        s, s_mid, s_next = (float(grid[j]) for j in (i, i + 1, i + 2))
        n = 64
        z = torch.randn(n, 2, generator=g, dtype=F64)
        x = z if math.isinf(s) else gmm.sample(n, g) + s * z
        teacher_two = difflab.sample(gmm, x, torch.tensor([s, s_mid, s_next], dtype=F64), "ddim")
        target = progressive_target(gmm, x, rows(s, n), rows(s_mid, n), rows(s_next, n))
        student_one = ddim_step(x, target, rows(s, n), rows(s_next, n))
        torch.testing.assert_close(student_one, teacher_two, rtol=1e-12, atol=1e-12)


def exact_consistency(gmm, x, sigma: float, sigma_min: float):
    """f*(x, sigma): the probability-flow ODE from sigma to sigma_min, by rk45 at a tight tolerance."""
    return difflab.sample(gmm, x, torch.tensor([sigma, sigma_min], dtype=F64), "rk45", rtol=1e-9, atol=1e-9)


def test_consistency_distillation_loss_of_the_exact_function_vanishes():
    """With f* as student and target, the loss is the error of one Heun step of the teacher between
    neighbouring levels: it shrinks to 0 as the discretisation N grows."""
    gmm = ring_mixture()
    g = torch.Generator().manual_seed(1)
    losses = []
    for N in (10, 20, 40):
        levels = consistency_grid(N, 0.002, 80.0)
        k = N // 2
        s, s_next = float(levels[k]), float(levels[k + 1])
        x0, z = gmm.sample(256, g), torch.randn(256, 2, generator=g, dtype=F64)
        x_next = x0 + s_next * z
        x_hat = _heun_rows(gmm, x_next, rows(s_next, 256), rows(s, 256), {})
        f_student = exact_consistency(gmm, x_next, s_next, 0.002)
        f_target = exact_consistency(gmm, x_hat, s, 0.002)
        losses.append(pseudo_huber(f_student - f_target, 0.0).mean().item())
    # the squared local error of a 2nd-order step is O(h^6): 64x per halving of h, 16x asked here
    assert losses[0] / losses[1] > 16 and losses[1] / losses[2] > 16 and losses[2] < 1e-3 * losses[0]


def test_the_consistency_parametrisation_meets_the_boundary_condition():
    net = build_network("mlp", MLPConfig(dim=2, hidden_channels=16, depth=1, embed_dim=8).to_dict())
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.5)  # a network whose output is far from zero
    f = NetworkDenoiser(net, EDM(0.002, 80.0), "consistency")
    x = torch.randn(32, 2)
    torch.testing.assert_close(f(x, torch.full((32,), 0.002)), x, rtol=0, atol=1e-6)
    c_skip, c_out = consistency_coefficients(torch.tensor([0.002], dtype=F64), 0.5, 0.002)
    assert float(c_skip) == 1.0 and float(c_out) == 0.0
    assert not torch.allclose(f(x, torch.full((32,), 1.0)), x)


def test_consistency_sampling_with_the_exact_function_samples_the_data():
    """Multistep consistency sampling (Song et al. 2023, Alg. 1) with f* in place of a network:
    every step lands exactly on p(x; sigma_min), so 1 and 3 steps both match exact draws."""
    gmm = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=F64), 0.4)

    def f_star(x, sigma):
        return exact_consistency(gmm, x, float(sigma[0]), 0.002)

    g = torch.Generator().manual_seed(2)
    n = 2000
    exact, exact2 = gmm.sample(n, g, sigma=0.002), gmm.sample(n, g, sigma=0.002)
    floor = sliced_wasserstein(exact, exact2, generator=torch.Generator().manual_seed(3))
    for steps in (1, 3):
        sigmas = torch.tensor(consistency_sigmas(steps, 0.002, 80.0), dtype=F64)
        x = difflab.sample(f_star, 80.0 * torch.randn(n, 2, generator=g, dtype=F64), sigmas, "consistency",
                           generator=g)
        assert sliced_wasserstein(x, exact, generator=torch.Generator().manual_seed(3)) < 1.5 * floor, steps


def test_ct_discretisation_curriculum():
    """N(k) = min(s0 2^floor(k/K'), s1) + 1: 11 levels at first, doubling in 8 equal stages to 1281."""
    total = 8000
    values = [ct_discretisation(k, total) for k in range(0, total, 1000)]
    assert values == [11, 21, 41, 81, 161, 321, 641, 1281]
    assert ct_discretisation(total - 1, total) == 1281


def test_the_guided_target_is_the_guided_oracle():
    """At held-out scales, per row: D(x|null) + w (D(x|y) - D(x|null)) of the exact class-conditional
    mixture (label 2 = null = the whole mixture)."""
    gmm = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=F64), 0.5)

    def teacher(x, sigma, y):
        return torch.where((y == 2)[:, None], gmm(x, sigma), gmm.denoiser(x, sigma, component=y.clamp(max=1)))

    g = torch.Generator().manual_seed(4)
    x, sigma = 3 * torch.randn(100, 2, generator=g, dtype=F64), torch.rand(100, generator=g, dtype=F64) * 5 + 0.1
    y, w = torch.randint(0, 2, (100,), generator=g), 0.3 + 6 * torch.rand(100, generator=g, dtype=F64)
    uncond, cond = gmm(x, sigma), gmm.denoiser(x, sigma, component=y)
    torch.testing.assert_close(guided_target(teacher, x, sigma, y, w, 2), uncond + w[:, None] * (cond - uncond))


# --- the procedures, end to end (tiny runs) ------------------------------------------------------


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    from difflab.training import PRESETS, train

    root = tmp_path_factory.mktemp("teachers")
    quick = dict(steps=30, log_every=10, ckpt_every=0, sample_every=0, batch_size=128)
    return {"toy": train(PRESETS["toy2d"].replace(data="8gaussians", **quick), root / "toy", progress=False,
                         device="cpu"),
            "flow": train(PRESETS["toy2d-flow"].replace(**quick), root / "flow", progress=False, device="cpu"),
            "cond": train(PRESETS["toy2d"].replace(data="8gaussians", num_classes=8, cond_drop=0.1, **quick),
                          root / "cond", progress=False, device="cpu")}


@pytest.mark.parametrize("teacher", ["toy", "flow"])
def test_progressive_cli(teachers, tmp_path, capsys, teacher):
    from difflab.cli import main

    status = main(["distill", "progressive", str(teachers[teacher]), "--out", str(tmp_path / "pd"),
                   "--student-steps", "2", "--teacher-steps", "8", "--train-steps", "10", "--device", "cpu"])
    assert status == 0, capsys.readouterr().err
    stages = sorted(p.name for p in (tmp_path / "pd" / "stages").iterdir())
    assert stages == ["steps-4"]
    student = difflab.load(tmp_path / "pd", "cpu")
    assert student.config.native["sampler"] == "ddim" and len(student.config.native["sigmas"]) == 3
    calls = []
    x = student.sample(5, seed=0, callback=lambda info: calls.append(info["i"]))  # native: 2 DDIM steps
    assert x.shape == (5, 2) and calls == [0, 1] * 1
    assert len(difflab.load(tmp_path / "pd" / "stages" / "steps-4", "cpu").config.native["sigmas"]) == 5


def test_consistency_and_guided_cli(teachers, tmp_path, capsys):
    from difflab.cli import main

    assert main(["distill", "consistency", str(teachers["toy"]), "--out", str(tmp_path / "cd"), "--train-steps",
                 "10", "--device", "cpu"]) == 0
    student = difflab.load(tmp_path / "cd", "cpu")
    assert student.config.prediction == "consistency" and student.config.native["sampler"] == "consistency"
    calls = []
    student.sample(4, seed=0, callback=lambda info: calls.append(info["sigma"]))
    assert calls == [80.0]  # one step
    assert main(["distill", "guided", str(teachers["cond"]), "--out", str(tmp_path / "gd"), "--train-steps", "10",
                 "--device", "cpu"]) == 0
    guided = difflab.load(tmp_path / "gd", "cpu")
    assert guided.config.net["guidance_embedding"]
    a = guided.sample(6, y=3, guidance=1.0, seed=0, steps=4)
    b = guided.sample(6, y=3, guidance=4.0, seed=0, steps=4)
    assert a.shape == b.shape == (6, 2) and not torch.equal(a, b)
    # the guided teacher needs a class-conditional model
    assert main(["distill", "guided", str(teachers["toy"]), "--out", str(tmp_path / "bad"), "--train-steps", "5",
                 "--device", "cpu"]) == 2
    assert "class-conditional" in capsys.readouterr().err


def test_consistency_training_preset(tmp_path):
    from difflab.training import PRESETS, train

    model_dir = train(PRESETS["toy2d-ct"].replace(steps=20, log_every=10, ckpt_every=0, sample_every=20),
                      tmp_path, progress=False, device="cpu")
    model = difflab.load(model_dir, "cpu")
    assert model.sample(8, seed=0).shape == (8, 2)
    assert (tmp_path / "samples" / "step_000020.png").exists()
    rows_ = [r.split(",") for r in (tmp_path / "log.csv").read_text().strip().splitlines()[1:]]
    assert all(np.isfinite(float(r[1])) for r in rows_)

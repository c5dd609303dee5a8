"""Conditional denoisers (SR3 / Palette), cascades and DiffEdit, checked against mathematics.

For a Gaussian prior x0 ~ N(mu, S) and a linear degradation y = A x0, the law of x0 given y is
Gaussian, N(m(y), P) with K = S A^T (A S A^T)^-1, m(y) = mu + K (y - A mu), P = S - K A S
(Bishop 2006, sec. 2.3.3), so the exact conditional denoiser is linear too:

    E[x0 | x0 + sigma n = x, y] = m(y) + P (P + sigma^2 I)^-1 (x - m(y)).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from difflab.exact import Gaussian, linear_gaussian_posterior
from difflab.nets import UNet, UNetConfig
from difflab.training.config import PRESETS, TrainConfig
from difflab.training.tasks import IMAGE_TASKS, degrade, draw_task_batch, task_cond_channels, task_condition

SIDE = 4  # 4x4 one-channel images: a 16-D Gaussian


def _prior() -> Gaussian:
    """A smooth 16-D Gaussian on 4x4 images (squared-exponential covariance, marginal std 0.26)."""
    ij = torch.stack(torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij"), -1).reshape(-1, 2)
    d2 = (ij[:, None] - ij[None]).double().square().sum(-1)
    return Gaussian(torch.zeros(SIDE * SIDE), 0.06 * torch.exp(-d2 / (2 * 1.5**2)) + 0.008 * torch.eye(SIDE * SIDE))


def _block_means(factor: int = 2) -> torch.Tensor:
    """A: the matrix of the super-resolution degradation (f x f block means) on flattened images."""
    eye = torch.eye(SIDE * SIDE, dtype=torch.float64).reshape(-1, 1, SIDE, SIDE)
    return F.avg_pool2d(eye, factor).reshape(SIDE * SIDE, -1).T


def exact_conditional_denoiser(prior: Gaussian, A, x, y, sigma) -> torch.Tensor:
    """E[x0 | x, y] of the module docstring; x (B, D), y (B, m), one sigma."""
    S, mu = prior.cov, prior.mean
    K = S @ A.T @ torch.linalg.inv(A @ S @ A.T)
    m = mu + (y - mu @ A.T) @ K.T
    P = S - K @ A @ S
    gain = P @ torch.linalg.inv(P + sigma**2 * torch.eye(len(mu), dtype=S.dtype))
    return m + (x - m) @ gain.T


def _bayes_mse(prior: Gaussian, A, sigma) -> float:
    """The mean squared error per coordinate of the exact conditional denoiser."""
    S = prior.cov
    P = S - S @ A.T @ torch.linalg.solve(A @ S @ A.T, A @ S)
    post = P - P @ torch.linalg.solve(P + sigma**2 * torch.eye(len(S), dtype=S.dtype), P)
    return float(torch.trace(post)) / len(S)


def test_exact_conditional_denoiser_matches_the_library_posterior():
    """The closed form above equals the denoiser of difflab.exact's Kalman posterior."""
    prior, A = _prior(), _block_means()
    g = torch.Generator().manual_seed(0)
    x0 = prior.sample(1, g)
    x = x0 + 0.4 * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    post = linear_gaussian_posterior(prior, A, x0 @ A.T, 0.0)
    torch.testing.assert_close(exact_conditional_denoiser(prior, A, x, x0 @ A.T, 0.4), post.denoiser(x, 0.4))


def test_sr_condition_is_the_block_mean_degradation_upsampled():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 2, 8, 8, generator=g) * 2 - 1
    y, mask = degrade("super-resolution", x0, factor=2)
    assert mask is None and y.shape == (3, 2, 4, 4)
    torch.testing.assert_close(y, x0.reshape(3, 2, 4, 2, 4, 2).mean((3, 5)))
    cond = draw_task_batch("super-resolution", x0, factor=2)["condition"]
    torch.testing.assert_close(cond, F.interpolate(y, scale_factor=2, mode="bicubic", align_corners=False))
    with pytest.raises(ValueError, match="low-resolution inputs of shape"):
        task_condition("super-resolution", x0, x0.shape, factor=2)


def test_the_condition_carries_the_exact_conditional_denoiser():
    """The training pairs (x, condition) -> x0 that the trainer draws determine E[x0 | x, y]: a
    least-squares fit of x0 on [x, condition, 1] at a fixed sigma (the best linear predictor, which
    is the conditional mean for this Gaussian) matches the closed form on fresh points."""
    prior, A, sigma = _prior(), _block_means(), 0.3
    g = torch.Generator().manual_seed(1)

    def pairs(n):
        x0 = prior.sample(n, g).float().reshape(n, 1, SIDE, SIDE)
        x = x0 + sigma * torch.randn(x0.shape, generator=g)
        cond = draw_task_batch("super-resolution", x0, factor=2)["condition"]
        features = torch.cat([x.flatten(1), cond.flatten(1), torch.ones(n, 1)], 1).double()
        return x0.flatten(1).double(), x.flatten(1).double(), features

    x0, _, feats = pairs(40_000)
    coef = torch.linalg.lstsq(feats, x0).solution
    x0_test, x_test, feats_test = pairs(2000)
    exact = exact_conditional_denoiser(prior, A, x_test, x0_test @ A.T, sigma)
    excess = (feats_test @ coef - exact).square().mean().item()
    assert excess < 0.02 * _bayes_mse(prior, A, sigma)


@pytest.mark.parametrize("task", IMAGE_TASKS)
def test_task_batches_and_conditions(task):
    x0 = torch.rand(5, 3, 8, 8) * 2 - 1
    batch = draw_task_batch(task, x0, factor=2, generator=torch.Generator().manual_seed(0))
    assert batch["condition"].shape == (5, task_cond_channels(task, 3), 8, 8)
    if task in ("inpainting", "uncropping"):  # the loss counts the missing pixels; known ones are seen
        missing = batch["loss_mask"]
        assert 0 < missing.mean() < 1
        torch.testing.assert_close(batch["condition"][:, :3], x0 * (1 - missing))
    if task == "colorization":
        torch.testing.assert_close(batch["condition"], x0.mean(1, keepdim=True).expand_as(x0))


def test_unet_condition_is_free_when_absent_and_concatenates():
    base = dict(in_channels=1, resolution=8, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attn_resolutions=(), dropout=0.0)
    plain, cond = UNet(UNetConfig(**base)), UNet(UNetConfig(**base, cond_channels=1))
    wide = UNet(UNetConfig(**dict(base, in_channels=2), out_channels=1))  # fed [x, condition] by hand
    assert {k: v.shape for k, v in plain.state_dict().items()} == \
        {k: v.shape for k, v in UNet(UNetConfig(**base, cond_channels=0)).state_dict().items()}
    torch.manual_seed(0)
    for p in cond.parameters():
        torch.nn.init.normal_(p, std=0.1)
    wide.load_state_dict(cond.state_dict())
    x, c, t = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8), torch.tensor([0.1, -0.3])
    torch.testing.assert_close(cond(x, t, condition=c), wide(torch.cat([x, c], 1), t))
    with pytest.raises(ValueError, match="needs a condition"):
        cond(x, t)
    with pytest.raises(ValueError, match="cond_channels=0"):
        plain(x, t, condition=c)
    with pytest.raises(ValueError, match="condition must have shape"):
        cond(x, t, condition=torch.randn(2, 2, 8, 8))


def test_presets_and_config_checks():
    assert list(PRESETS)[-2:] == ["digits-sr", "shapes-sr"]
    assert PRESETS["digits-sr"].task == "super-resolution"
    with pytest.raises(ValueError, match="trains a unet on images"):
        TrainConfig(task="colorization", network="mlp")
    with pytest.raises(ValueError, match="sr_factor"):
        TrainConfig(task="super-resolution", sr_factor=1)


def _train_gaussian_sr(tmp_path, steps: int):
    from difflab.training import train

    prior = _prior()
    x = prior.sample(20_000, torch.Generator().manual_seed(0)).float().reshape(-1, 1, SIDE, SIDE).clamp(-1, 1)
    np.save(tmp_path / "gauss.npy", x.numpy())
    config = TrainConfig(
        data=str(tmp_path / "gauss.npy"), network="unet", task="super-resolution", sr_factor=2, sigma_data=0.26,
        net=dict(base_channels=32, channel_mult=[1], num_res_blocks=1, attn_resolutions=[], dropout=0.0),
        lr=2e-3, warmup_steps=100, lr_decay="cosine", batch_size=256, steps=steps, ema_decay=0.99,
        ckpt_every=0, sample_every=0, log_every=100)
    return train(config, tmp_path / "run", progress=False)


@pytest.mark.slow
def test_trained_sr_model_matches_the_exact_conditional_denoiser(tmp_path):
    """A small SR UNet trained on the Gaussian (about 2 min on 2 CPU cores) is close to the exact
    conditional denoiser: its excess error is under 5% of the Bayes error at every tested sigma
    (measured: 0.3-0.5%)."""
    import difflab

    _train_gaussian_sr(tmp_path, 2000)
    model = difflab.load(tmp_path / "run")
    prior, A = _prior(), _block_means()
    g = torch.Generator().manual_seed(5)
    x0 = prior.sample(1000, g).float().reshape(-1, 1, SIDE, SIDE)
    y = F.avg_pool2d(x0, 2)
    cond = task_condition("super-resolution", y, x0.shape, factor=2)
    for sigma in (0.05, 0.2, 0.5, 1.0):
        x = x0 + sigma * torch.randn(x0.shape, generator=g)
        with torch.no_grad():
            d = model.denoiser(x, torch.full((len(x),), sigma), condition=cond).flatten(1).double()
        exact = exact_conditional_denoiser(prior, A, x.flatten(1).double(), y.flatten(1).double(), sigma)
        excess, bayes = (d - exact).square().mean().item(), _bayes_mse(prior, A, sigma)
        print(f"sigma {sigma}: excess MSE {excess:.2e}, Bayes MSE {bayes:.2e}, ratio {excess / bayes:.3f}")
        assert excess < 0.05 * bayes, (sigma, excess, bayes)


# --- DiffEdit -------------------------------------------------------------------------------------

def _two_classes():
    """Two classes of 1x4x4 images that differ only in the left half: class 1 is brighter there."""
    from difflab.exact import GaussianMixture

    means = torch.zeros(2, 1, SIDE, SIDE)
    means[1, :, :, : SIDE // 2] = 0.8
    mix = GaussianMixture(means.reshape(2, -1), 0.2)
    return (lambda x, sigma, y: mix.denoiser(x, sigma, component=y)), mix, means[1] > 0


def test_diffedit_mask_is_empty_for_identical_classes_and_finds_the_differing_pixels():
    from difflab.editing import diffedit_mask

    denoiser, mix, region = _two_classes()
    g = torch.Generator().manual_seed(0)
    x = mix.sample(6, g).float().reshape(6, 1, SIDE, SIDE)
    assert not diffedit_mask(denoiser, x, 1, 1, 1.0, generator=g).any()
    # |D(x|1) - D(x|0)| = |mu_1 - mu_0| sigma^2 / (s^2 + sigma^2): nonzero exactly on the left half
    mask = diffedit_mask(denoiser, x, 0, 1, 1.0, noises=3, generator=g)
    assert torch.equal(mask, region.expand_as(mask))


def test_diffedit_keeps_the_background_and_edits_the_class():
    from difflab import karras_sigmas
    from difflab.editing import diffedit

    denoiser, mix, region = _two_classes()
    g = torch.Generator().manual_seed(1)
    x = (mix.means[0] + 0.2 * torch.randn(8, SIDE * SIDE, generator=g, dtype=torch.float64)).float()
    x = x.reshape(8, 1, SIDE, SIDE)
    out, mask = diffedit(denoiser, x, 0, 1, karras_sigmas(30, 0.002, 80.0), strength=0.7, generator=g)
    outside = ~mask.expand_as(x)
    assert outside.any() and mask.any()
    assert torch.equal(out[outside], x[outside])  # outside the mask: the input, exactly
    # inside: moved to class 1 (mean 0.8 on the left half), from class 0's mean 0
    assert (out[mask.expand_as(x)].mean() - 0.8).abs() < 0.2
    same, empty = diffedit(denoiser, x, 0, 0, karras_sigmas(30, 0.002, 80.0), generator=g)
    assert not empty.any() and torch.equal(same, x)


# --- Models, sampling, cascades and the command line -------------------------------------------------

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A 2-step 4x4 digits base model and a 2-step digits-sr model (4x4 -> 8x8): plumbing only."""
    from difflab.training import train

    root = tmp_path_factory.mktemp("cond")
    small = dict(base_channels=16, num_res_blocks=1, attn_resolutions=[])
    quick = dict(steps=2, batch_size=16, ckpt_every=0, sample_every=0, log_every=1)
    base = PRESETS["digits-small"].replace(resolution=4, net=dict(PRESETS["digits-small"].net, **small), **quick)
    train(base, root / "base", progress=False)
    train(PRESETS["digits-sr"].replace(**quick), root / "sr", progress=False)
    return root / "base", root / "sr"


def test_sample_with_condition_and_augmentation_level_zero(tiny_models):
    import difflab
    from difflab.pipeline import CheckpointError, cascade

    base, sr = difflab.load(tiny_models[0]), difflab.load(tiny_models[1])
    y = torch.rand(3, 1, 4, 4) * 2 - 1
    plain = sr.sample(3, condition=y, steps=4, seed=0)
    assert plain.shape == (3, 1, 8, 8)
    assert torch.equal(sr.sample(3, condition=y, steps=4, seed=0, aug_level=0.0), plain)  # level 0: plain
    assert not torch.equal(sr.sample(3, condition=y, steps=4, seed=0, aug_level=0.5), plain)
    with pytest.raises(CheckpointError, match="given degraded images"):
        sr.sample(2, steps=2)
    with pytest.raises(CheckpointError, match="low-resolution inputs"):
        sr.sample(2, condition=torch.zeros(2, 1, 8, 8), steps=2)
    with pytest.raises(CheckpointError, match="takes no condition"):
        base.sample(2, condition=y[:2], steps=2)
    stages = cascade([base, sr], 3, steps=4, seed=0)
    assert [tuple(s.shape) for s in stages] == [(3, 1, 4, 4), (3, 1, 8, 8)]
    torch.testing.assert_close(stages[1], sr.sample(3, condition=stages[0], steps=4, seed=1))
    with pytest.raises(CheckpointError, match="super-resolution model"):
        cascade([base, base], 2, steps=2)


def test_cli_edit_and_cascade(tiny_models, tmp_path):
    from difflab.cli.main import main

    base, sr = tiny_models
    out = tmp_path / "e.png"
    assert main(["edit", "super-resolution", str(sr), "--from-data", "digits", "--n", "2", "--steps", "3",
                 "--out", str(out)]) == 0 and out.exists()
    assert main(["edit", "colorization", str(sr), "--from-data", "digits", "--n", "2", "--out", str(out)]) == 2
    assert main(["edit", "diffedit", str(sr), "--from-data", "digits", "--source", "0", "--target", "1",
                 "--out", str(out)]) == 2
    assert main(["cascade", str(base), str(sr), "--n", "2", "--steps", "3", "--aug-level", "0.1",
                 "--out", str(tmp_path / "c.png")]) == 0
    assert main(["cascade", str(base), str(base), "--n", "2", "--out", str(tmp_path / "c.png")]) == 2

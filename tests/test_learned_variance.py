"""Learned variances in training (hybrid loss, Nichol & Dhariwal 2021) and their use in the bound
and in ancestral sampling (difflab.likelihood.learned)."""
from __future__ import annotations

import pytest
import torch

from difflab.pipeline import load
from difflab.training.config import PRESETS, TrainConfig
from difflab.denoisers import NetworkDenoiser
from difflab.likelihood.learned import LearnedVariance, hybrid_vlb_term, learned_log_variance_fn
from difflab.likelihood import elbo_bpd, interpolated_log_variance
from difflab.training.losses import denoising_loss
from difflab.nets import UNet, UNetConfig
from difflab.samplers import ddpm
from difflab.schedules import DiscreteVP, discrete_sigmas

TINY = {"net.base_channels": 8, "net.channel_mult": [1], "net.num_res_blocks": 1, "net.attn_resolutions": [],
        "net.num_heads": 1}


def tiny_denoiser(T=50):
    net = UNet(UNetConfig(in_channels=1, resolution=8, base_channels=8, channel_mult=(1,), num_res_blocks=1,
                          attn_resolutions=(), num_heads=1, learn_sigma=True))
    return NetworkDenoiser(net, DiscreteVP("cosine", T), "eps")


def test_hybrid_vlb_term_trains_only_the_variance():
    torch.manual_seed(0)
    schedule = DiscreteVP("cosine", 50)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    sigma = schedule.sigmas[torch.tensor([0, 3, 20, 49])]
    x = x0 + sigma.float().reshape(-1, 1, 1, 1) * torch.randn_like(x0)
    eps = torch.randn_like(x0, requires_grad=True)
    v = torch.zeros_like(x0, requires_grad=True)
    den = NetworkDenoiser(torch.nn.Identity(), schedule, "eps")
    term = hybrid_vlb_term(den, x0, x, sigma, eps, v)
    assert term.shape == (4,) and torch.isfinite(term).all()
    term.sum().backward()
    assert eps.grad is None or float(eps.grad.abs().max()) == 0
    assert float(v.grad.abs().max()) > 0


def test_loss_splits_the_output_and_adds_the_vlb_term():
    torch.manual_seed(0)
    den = tiny_denoiser()
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    sigma = den.schedule.sigmas[torch.tensor([1, 10, 40])]
    noise = torch.randn_like(x0)
    cfg = PRESETS["digits-iddpm"]
    plain, _ = denoising_loss(den, x0, sigma, noise, None, cfg.replace(vlb_weight=0.0))
    hybrid, _ = denoising_loss(den, x0, sigma, noise, None, cfg)
    assert float(hybrid.detach()) > float(plain.detach())
    assert den(x0, sigma).shape == x0.shape


def test_vlb_weight_is_validated_and_old_configs_load():
    old = PRESETS["digits"].to_dict()
    old.pop("vlb_weight")
    assert TrainConfig.from_dict(old).vlb_weight == 0.0
    with pytest.raises(ValueError, match="learn_sigma"):
        PRESETS["digits-iddpm"].replace(**{"net.learn_sigma": False})
    with pytest.raises(ValueError, match="eps prediction"):
        PRESETS["digits"].replace(vlb_weight=1e-3)


def test_digits_iddpm_trains_saves_loads_and_samples(tmp_path):
    from difflab.training.trainer import train

    torch.set_num_threads(1)
    config = PRESETS["digits-iddpm"].replace(steps=5, batch_size=16, ckpt_every=0, sample_every=0, log_every=1,
                                             warmup_steps=2, **TINY)
    model_dir = train(config, tmp_path / "run", progress=False, device="cpu")
    assert "vlb_weight" in (model_dir / "config.json").read_text()
    model = load(model_dir)
    assert model.config.vlb_weight == 1e-3 and model.config.net["learn_sigma"]
    schedule = model.schedule
    steps = discrete_sigmas(schedule, 5, "trailing")
    timesteps = (schedule.log_sigmas[None, :] - steps[:-1, None].double().log()).abs().argmin(1).flip(0)
    lv = learned_log_variance_fn(model, timesteps=timesteps)
    gen = torch.Generator().manual_seed(0)
    x = ddpm(lv.denoiser, steps[0] * torch.randn(4, 1, 8, 8, generator=gen), steps, generator=gen,
             variance=lv.sampler_variance())
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
    # The learned variance in the bound (a short chain), and between beta~ and beta.
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    full = LearnedVariance(model)
    bpd = elbo_bpd(full.denoiser, x0, schedule, variance=full, timesteps=torch.arange(0, 1000, 100))
    assert bpd.shape == (2,) and torch.isfinite(bpd).all()
    t = torch.tensor([500, 500])
    xt = x0 + float(schedule.sigmas[500]) * torch.randn_like(x0)
    lo = interpolated_log_variance(-torch.ones_like(x0), t, schedule)
    hi = interpolated_log_variance(torch.ones_like(x0), t, schedule)
    lv_t = full(xt, t)
    assert lv_t.shape == x0.shape and torch.isfinite(lv_t).all()
    assert float(hi.min()) > float(lo.max())

"""Tests for difflab.nets: architecture facts (parameter counts, zero-init, equivariances, exact
attention), conditioning semantics, memory formats, autocast, gradients and config round trips."""
import dataclasses
import json
import math

import pytest
import torch

from difflab.nets import (UNET_PRESETS, ClassifierConfig, MLPConfig, MLPDenoiserNet, NoisyClassifier,
                          UNet, UNetConfig, build_network, count_parameters)
from difflab.nets.layers import GroupNorm, sinusoidal_embedding
from difflab.nets.unet import AttentionBlock

TINY = UNetConfig(in_channels=3, resolution=8, base_channels=16, channel_mult=(1, 2),
                  num_res_blocks=1, attn_resolutions=(4,), num_heads=2, dropout=0.0, groups=8)
TINY_CLASSIFIER = ClassifierConfig(in_channels=3, resolution=8, base_channels=16, channel_mult=(1, 2),
                                   num_res_blocks=1, attn_resolutions=(4,), num_heads=2, num_classes=5)


def perturb_zero_params(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every all-zero parameter small random values, so no branch is switched off."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return net


def inputs(cfg: UNetConfig, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.resolution, cfg.resolution, generator=gen)
    return x, torch.rand(batch, generator=gen) * 999


def test_cifar10_ddpm_parameter_count():
    n = count_parameters(UNet(UNET_PRESETS["cifar10-ddpm"]))
    print(f"cifar10-ddpm UNet: {n:,} parameters")
    # Ho et al. 2020, appendix B: "Our CIFAR10 model has 35.7 million parameters".
    assert 35.0e6 < n < 36.5e6


@pytest.mark.parametrize("name", ["digits", "shapes32"])
def test_preset_forward_shapes(name):
    cfg = UNET_PRESETS[name]
    net = UNet(cfg)
    print(f"{name} UNet: {count_parameters(net):,} parameters")
    x, c_noise = inputs(cfg)
    assert net(x, c_noise).shape == x.shape
    if name == "shapes32":
        assert 2e6 < count_parameters(net) < 4e6


def test_learn_sigma_doubles_output_channels():
    cfg = dataclasses.replace(TINY, learn_sigma=True)
    x, c_noise = inputs(cfg)
    assert UNet(cfg)(x, c_noise).shape == (2, 6, 8, 8)
    assert UNet(dataclasses.replace(cfg, out_channels=1))(x, c_noise).shape == (2, 2, 8, 8)


@pytest.mark.parametrize("updown", [False, True])
def test_fresh_unet_outputs_exactly_zero(updown):
    cfg = dataclasses.replace(TINY, resblock_updown=updown, num_classes=3)
    x, c_noise = inputs(cfg)
    assert torch.equal(UNet(cfg)(x, c_noise, torch.tensor([0, 2])), torch.zeros_like(x))


def test_fresh_mlp_outputs_exactly_zero():
    x = torch.randn(4, 2)
    assert torch.equal(MLPDenoiserNet(MLPConfig(dim=2))(x, torch.rand(4)), torch.zeros_like(x))


@pytest.mark.parametrize("make", [lambda: UNet(dataclasses.replace(TINY, num_classes=3)),
                                  lambda: MLPDenoiserNet(MLPConfig(dim=3, hidden_channels=32, num_classes=3))],
                         ids=["unet", "mlp"])
def test_null_label_semantics(make):
    net = perturb_zero_params(make()).eval()
    x = torch.randn(3, 3, 8, 8) if isinstance(net, UNet) else torch.randn(3, 3)
    c_noise = torch.full((3,), 0.5)
    out_none = net(x, c_noise)
    torch.testing.assert_close(net(x, c_noise, torch.full((3,), -1)), out_none)
    torch.testing.assert_close(net(x, c_noise, torch.full((3,), 3)), out_none)
    out_cond = net(x, c_noise, torch.tensor([0, 1, 2]))
    assert (out_cond - out_none).flatten(1).abs().amax(dim=1).min() > 1e-4
    # A mixed batch is the row-wise mix of the conditional and the unconditional outputs.
    mixed = net(x, c_noise, torch.tensor([0, -1, 2]))
    torch.testing.assert_close(mixed[[0, 2]], out_cond[[0, 2]])
    torch.testing.assert_close(mixed[1], out_none[1])


def test_labels_on_unconditional_network_are_rejected():
    x, c_noise = inputs(TINY)
    with pytest.raises(ValueError, match="num_classes=None"):
        UNet(TINY)(x, c_noise, torch.tensor([0, 1]))


def test_noise_level_changes_output_and_scalar_broadcasts():
    net = perturb_zero_params(UNet(TINY)).eval()
    x, _ = inputs(TINY)
    out = net(x, torch.tensor([10.0, 10.0]))
    torch.testing.assert_close(net(x, torch.tensor(10.0)), out)
    assert (net(x, torch.tensor([500.0, 500.0])) - out).abs().max() > 1e-4


def test_batch_elements_are_processed_independently():
    # GroupNorm (unlike BatchNorm) makes the network commute with permutations of the batch.
    net = perturb_zero_params(UNet(TINY)).eval()
    x, c_noise = inputs(TINY, batch=3)
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(net(x[perm], c_noise[perm]), net(x, c_noise)[perm])


def test_attention_block_matches_explicit_softmax_attention():
    torch.manual_seed(0)
    block = perturb_zero_params(AttentionBlock(8, num_heads=2, groups=4))
    x = torch.randn(2, 8, 3, 3)
    h = block.norm(x).flatten(2)                                   # (B, C, N)
    q, k, v = torch.einsum("oc,bcn->bon", block.qkv.weight[:, :, 0, 0], h).add(
        block.qkv.bias[:, None]).reshape(2, 3, 2, 4, 9).unbind(1)  # each (B, heads, d, N)
    weights = torch.softmax(torch.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(4), dim=-1)
    attended = torch.einsum("bhnm,bhdm->bhdn", weights, v).reshape(2, 8, 3, 3)
    expected = x + block.proj(attended)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_sinusoidal_embedding_closed_form():
    c = torch.tensor([0.0, 2.0])
    emb = sinusoidal_embedding(c, 8, max_period=10000.0)
    freqs = 10000.0 ** (-torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(2 * freqs), torch.sin(2 * freqs)]))
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_group_norm_groups_reduce_to_a_divisor():
    assert GroupNorm(48, 32).num_groups == 24
    assert GroupNorm(16, 32).num_groups == 16
    assert GroupNorm(128, 32).num_groups == 32


def test_channels_last_matches_contiguous():
    cfg = dataclasses.replace(TINY, resblock_updown=True)
    net = perturb_zero_params(UNet(cfg)).eval()
    x, c_noise = inputs(cfg)
    expected = net(x, c_noise)
    net = net.to(memory_format=torch.channels_last)
    out = net(x.to(memory_format=torch.channels_last), c_noise)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_forward_runs_on_cpu():
    net = perturb_zero_params(UNet(dataclasses.replace(TINY, num_classes=3))).eval()
    x, c_noise = inputs(TINY)
    expected = net(x, c_noise, torch.tensor([0, 1]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x.to(memory_format=torch.channels_last), c_noise, torch.tensor([0, 1]))
    assert out.shape == expected.shape and torch.isfinite(out).all()
    rel = (out.float() - expected).norm() / expected.norm()
    assert rel < 0.05, rel


@pytest.mark.parametrize("kind", ["unet", "unet-updown", "mlp", "classifier-attention", "classifier-average"])
def test_gradients_reach_every_parameter(kind):
    torch.manual_seed(0)
    if kind.startswith("unet"):
        net = UNet(dataclasses.replace(TINY, num_classes=3, resblock_updown=kind.endswith("updown")))
        x, c_noise = inputs(TINY, batch=4)
        target, args = torch.randn_like(x), (torch.tensor([0, 1, 2, -1]),)
    elif kind == "mlp":
        net = MLPDenoiserNet(MLPConfig(dim=2, hidden_channels=16, depth=2, num_classes=3))
        x, c_noise = torch.randn(4, 2), torch.rand(4)
        target, args = torch.randn_like(x), (torch.tensor([0, 1, 2, 3]),)
    else:
        net = NoisyClassifier(dataclasses.replace(TINY_CLASSIFIER, pool=kind.split("-")[1]))
        x, c_noise = inputs(TINY_CLASSIFIER, batch=4)
        target, args = None, ()
    perturb_zero_params(net)
    out = net(x, c_noise, *args)
    if target is None:
        loss = torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 4]))
    else:
        loss = (out - target).square().mean()
    loss.backward()
    dead = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead, dead


def test_classifier_logits_and_input_gradient():
    net = NoisyClassifier(TINY_CLASSIFIER).eval()
    x, c_noise = inputs(TINY_CLASSIFIER)
    x.requires_grad_(True)
    logits = net(x, c_noise)
    assert logits.shape == (2, 5)
    # Classifier guidance needs grad_x log p(y | x) (Dhariwal & Nichol 2021, Algorithm 1).
    (grad,) = torch.autograd.grad(logits.log_softmax(-1)[:, 1].sum(), x)
    assert grad.shape == x.shape and grad.abs().sum() > 0


@pytest.mark.parametrize("config", [UNET_PRESETS["cifar10-ddpm"], UNET_PRESETS["digits"],
                                    dataclasses.replace(TINY, num_classes=10, learn_sigma=True),
                                    MLPConfig(dim=5, num_classes=2), TINY_CLASSIFIER])
def test_config_json_round_trip(config):
    data = json.loads(json.dumps(config.to_dict()))
    assert data == config.to_dict()
    assert type(config).from_dict(data) == config


def test_config_errors_are_one_clear_sentence():
    with pytest.raises(ValueError, match="unknown UNetConfig keys"):
        UNetConfig.from_dict({"base_channel": 64})
    with pytest.raises(ValueError, match="never occur"):
        UNetConfig(resolution=8, channel_mult=(1, 2), attn_resolutions=(16,))
    with pytest.raises(ValueError, match="not divisible"):
        UNetConfig(resolution=12, channel_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="unknown network kind"):
        build_network("transformer", {})


def test_build_network_from_config_dicts():
    unet = build_network("unet", UNET_PRESETS["digits"].to_dict())
    assert isinstance(unet, UNet) and unet.config == UNET_PRESETS["digits"]
    assert isinstance(build_network("mlp", {"dim": 3}), MLPDenoiserNet)
    classifier = build_network("classifier", TINY_CLASSIFIER.to_dict())
    assert count_parameters(classifier) == count_parameters(NoisyClassifier(TINY_CLASSIFIER))

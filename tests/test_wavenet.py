"""Tests for difflab.nets.wavenet (Kong et al. 2021, DiffWave): shapes at any length, zero output at
initialisation, the exact centred receptive field, the residual / skip wiring of Fig. 2, the
conditionings, config round trips and input errors."""
import json
import math

import pytest
import torch

from difflab.nets import NETWORKS, WaveNet, WaveNetConfig, build_network

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = WaveNetConfig(in_channels=2, residual_channels=8, layers=4, dilation_cycle=3, kernel_size=3, embed_dim=16)


def perturbed(cfg: WaveNetConfig, seed: int = 0) -> WaveNet:
    """A network whose zero-initialised final convolution is given random values."""
    torch.manual_seed(seed)
    net = WaveNet(cfg)
    with torch.no_grad():
        for p in net.proj_out.parameters():
            p.copy_(0.1 * torch.randn(p.shape))
    return net


def inputs(cfg: WaveNetConfig, length: int, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, length, generator=gen)
    return x, torch.rand(batch, generator=gen) * 999


def test_registered():
    assert NETWORKS["wavenet"] == (WaveNetConfig, WaveNet)


@pytest.mark.parametrize("length", [1, 2, 7, 16, 33])
@pytest.mark.parametrize("out_channels", [None, 3])
def test_output_shape_at_any_length(length, out_channels):
    cfg = WaveNetConfig(**{**TINY.to_dict(), "out_channels": out_channels, "length": 16})
    x, c_noise = inputs(cfg, length)
    out = perturbed(cfg)(x, c_noise)
    assert out.shape == (2, out_channels or cfg.in_channels, length)


def test_zero_output_at_initialisation():
    cfg = WaveNetConfig(**{**TINY.to_dict(), "cond_channels": 2, "num_classes": 3})
    x, c_noise = inputs(cfg, 20)
    out = WaveNet(cfg)(x, c_noise, y=torch.tensor([0, 2]), condition=torch.randn(2, 2, 20))
    assert torch.equal(out, torch.zeros_like(out))


def test_receptive_field_closed_form():
    # default: 12 layers, two cycles of dilations 1..32, kernel 3: 1 + 2 * 2 * 63
    assert WaveNetConfig().receptive_field == 253
    assert WaveNetConfig().dilations == (1, 2, 4, 8, 16, 32) * 2
    assert TINY.dilations == (1, 2, 4, 1)
    assert WaveNet(TINY).receptive_field == 1 + 2 * (1 + 2 + 4 + 1)


@pytest.mark.parametrize("cfg", [TINY, WaveNetConfig(in_channels=1, residual_channels=8, layers=3,
                                                     dilation_cycle=2, kernel_size=5, embed_dim=16)])
def test_receptive_field_is_centred_and_exact(cfg):
    """d out[:, :, i] / d x is non-zero exactly for |j - i| <= receptive_field // 2: non-causal."""
    length, i = 41, 20
    half = cfg.receptive_field // 2
    x, c_noise = inputs(cfg, length, batch=1)
    x.requires_grad_(True)
    perturbed(cfg)(x, c_noise)[:, :, i].sum().backward()
    depends = x.grad.abs().sum(dim=(0, 1)) > 0
    j = torch.arange(length)
    assert not depends[(j - i).abs() > half].any()
    assert depends[i - half] and depends[i + half]  # both the past and the future reach the output


def test_layer_output_is_input_plus_residual_over_sqrt2():
    net = perturbed(TINY)
    layer = net.layers[1]
    x = torch.randn(2, TINY.residual_channels, 12)
    emb = torch.randn(2, 4 * TINY.residual_channels)
    captured = {}
    layer.out_proj.register_forward_hook(lambda m, args, out: captured.update(out=out))
    out, skip = layer(x, emb)
    residual, expected_skip = captured["out"].chunk(2, dim=1)
    torch.testing.assert_close(out, (x + residual) / math.sqrt(2))
    torch.testing.assert_close(skip, expected_skip)
    # With the residual half of the 1x1 conv zeroed, the layer passes its *input* on, scaled: not the
    # input plus the noise embedding, nor the gated activations.
    with torch.no_grad():
        layer.out_proj.weight[:TINY.residual_channels] = 0
        layer.out_proj.bias[:TINY.residual_channels] = 0
    out, _ = layer(x, emb)
    torch.testing.assert_close(out, x / math.sqrt(2))


def test_skips_are_summed_over_sqrt_layers():
    net = perturbed(TINY)
    skips, captured = [], {}
    for layer in net.layers:
        layer.register_forward_hook(lambda m, args, out: skips.append(out[1]))
    net.skip_proj.register_forward_hook(lambda m, args, out: captured.update(args=args))
    x, c_noise = inputs(TINY, 10)
    net(x, c_noise)
    assert len(skips) == TINY.layers
    torch.testing.assert_close(captured["args"][0], sum(skips) / math.sqrt(TINY.layers))


def test_condition_changes_the_output():
    cfg = WaveNetConfig(**{**TINY.to_dict(), "cond_channels": 2})
    net = perturbed(cfg)
    x, c_noise = inputs(cfg, 12)
    cond = torch.randn(2, 2, 12)
    a, b = net(x, c_noise, condition=cond), net(x, c_noise, condition=cond + 1)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, net(x, c_noise, condition=cond))


def test_classes_change_the_output_and_null_class_conventions_agree():
    cfg = WaveNetConfig(**{**TINY.to_dict(), "num_classes": 3})
    net = perturbed(cfg)
    x, c_noise = inputs(cfg, 12)
    assert not torch.allclose(net(x, c_noise, y=torch.tensor([0, 0])), net(x, c_noise, y=torch.tensor([1, 1])))
    null = net(x, c_noise)
    torch.testing.assert_close(net(x, c_noise, y=torch.tensor([-1, -1])), null)
    torch.testing.assert_close(net(x, c_noise, y=torch.tensor([3, 3])), null)
    with pytest.raises(ValueError, match="num_classes=None"):
        perturbed(TINY)(x, c_noise, y=torch.tensor([0, 0]))


def test_guidance_scale_input():
    cfg = WaveNetConfig(**{**TINY.to_dict(), "guidance_embedding": True})
    net = perturbed(cfg)
    x, c_noise = inputs(cfg, 12)
    assert net(x, c_noise, w=torch.tensor([1.0, 3.0])).shape == x.shape
    with pytest.raises(ValueError, match="guidance"):
        net(x, c_noise)


def test_config_round_trip_through_build_network():
    cfg = WaveNetConfig(in_channels=1, out_channels=2, residual_channels=8, layers=3, dilation_cycle=2,
                        kernel_size=5, embed_dim=16, cond_channels=2, num_classes=4, length=32)
    data = json.loads(json.dumps(cfg.to_dict()))
    net = build_network("wavenet", data)
    assert isinstance(net, WaveNet) and net.config == cfg
    source = perturbed(cfg)
    net.load_state_dict(source.state_dict())
    x, c_noise = inputs(cfg, 9)
    cond, y = torch.randn(2, 2, 9), torch.tensor([1, -1])
    torch.testing.assert_close(net(x, c_noise, y=y, condition=cond), source(x, c_noise, y=y, condition=cond))
    with pytest.raises(ValueError, match="unknown WaveNetConfig keys"):
        build_network("wavenet", {**data, "dilation": 2})


@pytest.mark.parametrize("changes, match", [
    ({"kernel_size": 4}, "odd"),
    ({"layers": 0}, "layers"),
    ({"residual_channels": -8}, "residual_channels"),
    ({"dilation_cycle": 0}, "dilation_cycle"),
    ({"embed_dim": 15}, "even"),
    ({"cond_channels": -1}, "cond_channels"),
    ({"out_channels": 0}, "out_channels"),
    ({"num_classes": 0}, "num_classes"),
    ({"length": 2.5}, "length"),
    ({"in_channels": True}, "in_channels"),
])
def test_bad_config(changes, match):
    with pytest.raises(ValueError, match=match):
        WaveNetConfig(**{**TINY.to_dict(), **changes})


def test_bad_inputs():
    cfg = WaveNetConfig(**{**TINY.to_dict(), "cond_channels": 2})
    net = WaveNet(cfg)
    x, c_noise = inputs(cfg, 12)
    with pytest.raises(ValueError, match="needs a condition"):
        net(x, c_noise)
    with pytest.raises(ValueError, match="condition of shape"):
        net(x, c_noise, condition=torch.randn(2, 3, 12))
    with pytest.raises(ValueError, match="condition of shape"):
        net(x, c_noise, condition=torch.randn(2, 2, 11))
    with pytest.raises(ValueError, match="cond_channels=0"):
        WaveNet(TINY)(x, c_noise, condition=torch.randn(2, 2, 12))
    with pytest.raises(ValueError, match="data of shape"):
        net(x[:, :1], c_noise, condition=torch.randn(2, 2, 12))
    with pytest.raises(ValueError, match="data of shape"):
        net(x[0], c_noise, condition=torch.randn(2, 2, 12))

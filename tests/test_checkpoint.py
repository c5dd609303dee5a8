"""Tests for difflab.training.checkpoint and difflab.pipeline: the model directory round-trips, saving is atomic, loading never
unpickles, user errors are CheckpointErrors, and sampling (labels, guidance, batching) is right."""
import errno
import json
import os
from pathlib import Path

import pytest
import torch

import difflab
from difflab.training import checkpoint
from difflab.pipeline import TrainedModel, load
from difflab.training.checkpoint import CheckpointError, save_checkpoint
from difflab.training.config import TrainConfig
from difflab.denoisers import NetworkDenoiser
from difflab.nets import MLPConfig, build_network
from difflab.schedules import EDM


def tiny(num_classes=None, seed=0):
    """A small MLP config with random (non-zero) weights, its EMA and an optimizer that has stepped."""
    net_cfg = MLPConfig(dim=2, hidden_channels=16, depth=1, embed_dim=8, num_classes=num_classes).to_dict()
    config = TrainConfig(data="moons", network="mlp", net=net_cfg, num_classes=num_classes)
    torch.manual_seed(seed)
    net = build_network("mlp", net_cfg)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    ema = build_network("mlp", net_cfg)
    ema.load_state_dict({k: v + 0.01 for k, v in net.state_dict().items()})
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(4, 2), torch.zeros(4)).sum().backward()
    opt.step()
    return config, net, ema, opt


DATA = {"name": "moons", "kind": "points", "shape": [2], "class_names": ["0", "1"]}


def save(out, step=5, num_classes=None, seed=0):
    config, net, ema, opt = tiny(num_classes, seed)
    extra = {"data": DATA, "elapsed": 1.5, "window": [0.0, 0]}
    return save_checkpoint(out, config, net, ema, opt, step, extra), (config, net, ema, opt)


def test_round_trip_uses_ema_weights(tmp_path):
    model_dir, (config, net, ema, opt) = save(tmp_path)
    assert model_dir == tmp_path / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "config.json", "ema.safetensors", "model.safetensors", "training_state.json", "training_state.safetensors"]
    meta = json.loads((model_dir / "config.json").read_text())
    assert meta["data_shape"] == [2] and meta["step"] == 5 and meta["difflab_version"] == difflab.__version__
    model = difflab.load(tmp_path)  # a training output folder works as well as the model directory
    assert model.config == config and model.data_shape == (2,) and model.num_classes is None
    assert not model.denoiser.training
    for k, v in ema.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v)
    x, sigma = torch.randn(8, 2), torch.full((8,), 0.7)
    want = NetworkDenoiser(ema.eval(), EDM(), "edm")(x, sigma)
    torch.testing.assert_close(model.denoiser(x, sigma), want)
    state = checkpoint.read_training_state(model_dir)
    assert state["step"] == 5 and state["elapsed"] == 1.5
    assert state["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]
    saved = opt.state_dict()["state"]
    assert state["optimizer"]["state"].keys() == saved.keys()
    for pid, entries in saved.items():
        for name, value in entries.items():
            assert torch.equal(state["optimizer"]["state"][pid][name], value)


def test_without_ema_the_model_weights_are_loaded(tmp_path):
    config, net, _, opt = tiny()
    save_checkpoint(tmp_path, config, net, None, opt, 1, {"data": DATA})
    assert not (tmp_path / "model" / "ema.safetensors").exists()
    model = load(tmp_path / "model")
    for k, v in net.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v)


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    save(tmp_path, step=5)

    def broken(tensors, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save", broken)
    with pytest.raises(CheckpointError, match="cannot write the checkpoint of step 10 .*No space left on device.*"
                       "previous checkpoint is kept"):
        save(tmp_path, step=10, seed=1)
    assert load(tmp_path).step == 5
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left


def test_a_crash_between_the_renames_is_recovered(tmp_path, monkeypatch):
    """The instant when model/ has moved to .old-model/ and the new one is not yet in place."""
    save(tmp_path, step=5)
    real_replace, calls = os.replace, []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies here
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, step=10, seed=1)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (tmp_path / "model").exists()
    assert load(tmp_path / "model").step == 5  # recovered, complete
    assert load(tmp_path).step == 5


@pytest.mark.parametrize("damage, message", [
    ("nothing", "no such model directory"),
    ("no_config", "no config.json"),
    ("bad_json", "not valid JSON"),
    ("bad_config", "not a valid training config"),
    ("no_weights", "missing weights file"),
    ("garbage_weights", "cannot read the weights"),
    ("other_network", "do not match the network"),
])
def test_user_errors_are_one_sentence_checkpoint_errors(tmp_path, damage, message):
    model_dir, _ = save(tmp_path / "run")
    config_path, ema_path = model_dir / "config.json", model_dir / "ema.safetensors"
    meta = json.loads(config_path.read_text())
    if damage == "nothing":
        model_dir = tmp_path / "elsewhere"
    elif damage == "no_config":
        config_path.unlink()
    elif damage == "bad_json":
        config_path.write_text("{not json")
    elif damage == "bad_config":
        config_path.write_text(json.dumps({**meta, "learning_rate": 1}))
    elif damage == "no_weights":
        ema_path.unlink()
        (model_dir / "model.safetensors").unlink()
    elif damage == "garbage_weights":
        ema_path.write_bytes(b"\x00" * 100)
    elif damage == "other_network":
        config_path.write_text(json.dumps({**meta, "net": {**meta["net"], "hidden_channels": 32}}))
    with pytest.raises(CheckpointError, match=message) as info:
        load(model_dir)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_training_state_is_never_unpickled(tmp_path, capfd):
    """No file of a model directory is a pickle: a planted training_state.pt (or any .pt) is never
    opened, whether the directory is loaded for sampling or resumed."""
    model_dir, _ = save(tmp_path)
    torch.save({"step": 5, "evil": Payload()}, model_dir / "training_state.pt")
    torch.save(Payload(), model_dir / "model.pt")
    load(model_dir)
    assert checkpoint.read_training_state(model_dir)["step"] == 5  # from the JSON + safetensors pair
    (model_dir / "training_state.json").unlink()
    with pytest.raises(CheckpointError, match="never unpickles"):
        checkpoint.read_training_state(model_dir)
    assert "pwned" not in capfd.readouterr().out


# --- sampling -----------------------------------------------------------------------------------


def model(num_classes=None):
    config, net, ema, _ = tiny(num_classes)
    return TrainedModel(ema, config, [2], None, "points")


def test_sample_shapes_determinism_and_batching():
    m = model()
    a = m.sample(10, steps=4, seed=1)
    assert a.shape == (10, 2) and a.device.type == "cpu" and torch.isfinite(a).all()
    assert torch.equal(a, m.sample(10, steps=4, seed=1))
    assert not torch.equal(a, m.sample(10, steps=4, seed=2))
    assert m.sample(10, steps=4, seed=1, batch_size=3).shape == (10, 2)
    # one batch of 10 and a 10-sample prefix of a batch of 10 + 5 share the initial noise draw
    assert torch.equal(a, m.sample(15, steps=4, seed=1, batch_size=10)[:10])


def test_images_are_clamped_to_the_data_range():
    from difflab.nets import UNetConfig

    net_cfg = UNetConfig(in_channels=1, resolution=4, base_channels=8, channel_mult=(1,), num_res_blocks=1,
                         attn_resolutions=(), groups=4)
    net = build_network("unet", net_cfg.to_dict())
    for p in net.parameters():
        torch.nn.init.normal_(p, std=1.0)
    m = TrainedModel(net, TrainConfig(net=net_cfg.to_dict()), [1, 4, 4], None, "image")
    x = m.sample(3, steps=2, seed=0)
    assert x.shape == (3, 1, 4, 4) and x.min() >= -1 and x.max() <= 1


def test_label_errors():
    with pytest.raises(CheckpointError, match="unconditional"):
        model().sample(2, steps=2, y=1)
    with pytest.raises(CheckpointError, match="guidance needs a class-conditional"):
        model().sample(2, steps=2, guidance=2.0)
    m = model(num_classes=2)
    with pytest.raises(CheckpointError, match="class id 2 is out of range"):
        m.sample(2, steps=2, y=2)
    with pytest.raises(CheckpointError, match="one class id or 3"):
        m.sample(3, steps=2, y=[0, 1])
    with pytest.raises(CheckpointError, match="unknown sampler"):
        m.sample(2, steps=2, sampler="nope")
    assert torch.equal(m.labels(None, 5), torch.tensor([0, 1, 0, 1, 0]))
    assert torch.equal(m.labels(1, 3), torch.tensor([1, 1, 1]))


def test_guidance_is_one_batched_call_of_the_cfg_combination():
    """Ho & Salimans 2022, eq. 6: D = D(x|null) + w (D(x|y) - D(x|null)), one call on 2B rows."""
    m = model(num_classes=2)
    base, calls = m.denoiser, []

    def counting(x, sigma, y):
        calls.append(x.shape[0])
        return base(x, sigma, y=y)

    def manual(x, sigma, y):
        cond, uncond = base(x, sigma, y=y), base(x, sigma, y=torch.full_like(y, 2))
        return uncond + 3.0 * (cond - uncond)

    m.denoiser = counting
    guided = m.sample(6, steps=3, seed=0, y=[0, 1, 1, 0, 0, 1], guidance=3.0, sampler="euler")
    assert calls == [12, 12, 12]
    x = 80.0 * torch.randn((6, 2), generator=torch.Generator().manual_seed(0))
    want = difflab.sample(manual, x, difflab.karras_sigmas(3, 0.002, 80.0), "euler",
                          cond={"y": torch.tensor([0, 1, 1, 0, 0, 1])})
    torch.testing.assert_close(guided, want)
    # w = 1 is plain conditional sampling; w = 0 the unconditional (null class) model
    m.denoiser = base
    plain = m.sample(4, steps=3, seed=0, y=1)
    torch.testing.assert_close(m.sample(4, steps=3, seed=0, y=1, guidance=1.0), plain)
    assert not torch.allclose(m.sample(4, steps=3, seed=0, y=1, guidance=0.0), plain)


def test_trained_model_path_objects(tmp_path):
    save(tmp_path)
    assert isinstance(checkpoint.find_model_dir(str(tmp_path)), Path)
    assert "TrainedModel" in repr(load(tmp_path))

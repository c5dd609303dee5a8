"""Tests for difflab.training.config and difflab.training.trainer: config round trips and coercion, schedules of lr and
EMA, bit-exact resume, gradient accumulation and two processes equal one process with the whole
batch, and the run's outputs."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import difflab
from difflab.training.checkpoint import CheckpointError
from difflab.training.config import PRESETS, TrainConfig, config_from_dict, load_config, save_config
from difflab.nets import MLPConfig
from difflab.training.trainer import ema_decay_at, lr_at, step_seed, train, update_ema

ROOT = Path(__file__).resolve().parents[1]


def toy(**overrides) -> TrainConfig:
    """A run of a few seconds: a small MLP on moons, logging every step, no sample plots."""
    base = TrainConfig(data="moons", network="mlp", net=MLPConfig(hidden_channels=32, depth=2, embed_dim=16).to_dict(),
                       lr=3e-3, warmup_steps=3, batch_size=32, steps=8, ema_decay=0.99, log_every=1,
                       ckpt_every=0, sample_every=0)
    return base.replace(**overrides)


def read_log(out):
    with open(Path(out) / "log.csv", newline="") as f:
        return [{k: r[k] for k in ("step", "loss", "lr", "grad_norm")} for r in csv.DictReader(f)]


def weights(out, name="model"):
    return load_file(Path(out) / "model" / f"{name}.safetensors")


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_presets_round_trip_through_json_and_toml(name, tmp_path):
    config = PRESETS[name]
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert load_config(save_config(config, tmp_path / "c.toml")) == config


def test_unknown_keys_and_bad_values_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(ValueError, match="prediction must be one of"):
        TrainConfig(prediction="score")
    with pytest.raises(ValueError, match="cond_drop needs a class-conditional"):
        TrainConfig(cond_drop=0.1)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        PRESETS["digits"].replace(batch_size="0")
    with pytest.raises(ValueError, match="cannot read 'abc'"):
        PRESETS["digits"].replace(lr="abc")


def test_replace_coerces_command_line_strings():
    c = PRESETS["digits"].replace(lr="1e-3", steps="2e3", betas="0.9,0.99", ema_warmup="false",
                                  resolution="none", seed="7", **{"net.base_channels": "16"})
    assert (c.lr, c.steps, c.betas, c.ema_warmup, c.resolution, c.seed) == (1e-3, 2000, (0.9, 0.99), False, None, 7)
    assert c.net["base_channels"] == 16 and PRESETS["digits"].net["base_channels"] == 32
    with pytest.raises(ValueError, match="2.5"):
        c.replace(steps="2.5")


def test_toml_file_starts_from_its_preset(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "digits"\nsteps = 50\n\n[net]\nbase_channels = 16\n')
    c = load_config(path)
    assert c.steps == 50 and c.net["base_channels"] == 16 and c.lr == PRESETS["digits"].lr
    assert c.net["num_res_blocks"] == PRESETS["digits"].net["num_res_blocks"]
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        config_from_dict({"preset": "nope"})
    path.write_text("steps = [")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(path)


# --- schedules of the loop ----------------------------------------------------------------------


def test_lr_warmup_and_ema_decay_schedules():
    c = TrainConfig(lr=1.0, warmup_steps=4, ema_decay=0.999)
    assert [lr_at(c, k) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert ema_decay_at(c, 0) == 0.1 and ema_decay_at(c, 90) == 91 / 100
    assert ema_decay_at(c, 10**6) == 0.999
    assert ema_decay_at(c.replace(ema_warmup=False), 0) == 0.999
    ema, net = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    want = 0.9 * ema.weight.detach() + 0.1 * net.weight.detach()
    update_ema(ema, net, 0.9)
    torch.testing.assert_close(ema.weight.detach(), want)
    assert len({step_seed(0, k, 0) for k in range(1000)} | {step_seed(1, k, 0) for k in range(1000)}) == 2000


# --- the loop -----------------------------------------------------------------------------------


def test_resume_is_bit_exact(tmp_path):
    """2N steps straight == N steps, then resume to 2N: the same log and the same final weights,
    with dropout, label dropout, warm-up, EMA warm-up and a log window cut by the checkpoint."""
    config = toy(num_classes=2, cond_drop=0.2, log_every=4, steps=10, **{"net.dropout": "0.1"})
    straight = train(config, tmp_path / "a", progress=False, device="cpu")
    train(config.replace(steps=6), tmp_path / "b", progress=False, device="cpu")
    resumed = train(config, tmp_path / "b", resume=True, progress=False, device="cpu")
    assert read_log(tmp_path / "a") == read_log(tmp_path / "b")
    assert [r["step"] for r in read_log(tmp_path / "b")] == ["4", "8", "10"]
    for name in ("model", "ema"):
        a, b = weights(tmp_path / "a", name), weights(tmp_path / "b", name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert difflab.load(straight).step == difflab.load(resumed).step == 10


def test_gradient_accumulation_matches_the_whole_batch(tmp_path):
    """Micro-batches draw their noise from the global batch's draw, so only the summation order differs."""
    one = train(toy(), tmp_path / "a", progress=False, device="cpu")
    two = train(toy(grad_accum=4), tmp_path / "b", progress=False, device="cpu")
    for ra, rb in zip(read_log(tmp_path / "a"), read_log(tmp_path / "b")):
        assert abs(float(ra["loss"]) - float(rb["loss"])) < 1e-4 * float(ra["loss"])
    a, b = weights(one.parent), weights(two.parent)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_two_processes_match_one_process(tmp_path):
    """torchrun with 2 gloo processes, each on half of every global batch, against one process."""
    config = toy(steps=4)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "_ddp_script.py"), str(tmp_path / "config.json"), str(tmp_path / "ddp")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    train(config, tmp_path / "single", progress=False, device="cpu")
    for ra, rb in zip(read_log(tmp_path / "single"), read_log(tmp_path / "ddp"), strict=True):
        assert abs(float(ra["loss"]) - float(rb["loss"])) < 1e-4 * float(ra["loss"])
    a, b = weights(tmp_path / "single"), weights(tmp_path / "ddp")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_outputs_and_a_learning_run(tmp_path):
    """The files of a run, and that 150 steps on 8 Gaussians lower the loss and move samples
    towards the modes (an untrained EDM network samples N(0, 0.5^2 I): about 15% in the band)."""
    config = toy(data="8gaussians", steps=150, log_every=10, ckpt_every=100, sample_every=150,
                 batch_size=128, ema_decay=0.9)
    model_dir = train(config, tmp_path, progress=False, device="cpu")
    assert model_dir == tmp_path / "model"
    assert (tmp_path / "samples" / "step_000150.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "log.csv", "model", "samples"]  # .lock: docs/training.md
    log = read_log(tmp_path)
    assert [int(r["step"]) for r in log] == list(range(10, 151, 10))
    model = difflab.load(tmp_path)
    assert model.config.net["dim"] == 2 and model.step == 150
    x = model.sample(500, steps=10, seed=0)
    # the modes lie on the circle of radius sqrt(2 (1 - 0.2^2)) = 1.386; noise std 0.2
    radius = x.norm(dim=1)
    assert ((radius - 1.386).abs() < 0.5).double().mean() > 0.6
    losses = [float(r["loss"]) for r in log]
    assert sum(losses[-3:]) < sum(losses[:3])


def test_user_errors(tmp_path):
    with pytest.raises(ValueError, match="cifar10-ddpm preset needs your data: pass --data PATH"):
        train(PRESETS["cifar10-ddpm"], tmp_path / "c", progress=False, device="cpu")
    with pytest.raises(ValueError, match="not divisible by 1 processes x 3"):
        train(toy(grad_accum=3), tmp_path / "d", progress=False, device="cpu")
    with pytest.raises(ValueError, match="has no labels"):
        train(toy(data="swissroll", num_classes=2), tmp_path / "e", progress=False, device="cpu")
    with pytest.raises(ValueError, match="does not fit points data"):
        train(toy(network="unet"), tmp_path / "f", progress=False, device="cpu")
    train(toy(steps=2), tmp_path / "g", progress=False, device="cpu")
    with pytest.raises(CheckpointError, match="already holds a trained model"):
        train(toy(steps=2), tmp_path / "g", progress=False, device="cpu")
    with pytest.raises(CheckpointError, match=r"cannot resume with a different config \(lr: 0.003 -> 0.001\)"):
        train(toy(steps=4, lr=1e-3), tmp_path / "g", resume=True, progress=False, device="cpu")


# --- divergence and compile ---------------------------------------------------------------------


def poison_from(step_index, monkeypatch, where="loss"):
    """Make the run diverge from the optimizer step ``step_index`` on: a NaN loss, or an infinite
    EMA weight (the loss stays finite)."""
    from difflab.training import objectives, trainer

    calls = {"n": 0}
    if where == "loss":
        real = objectives.denoising_loss

        def nan_loss(*args, **kwargs):
            calls["n"] += 1
            loss, per_sample = real(*args, **kwargs)
            return (loss * float("nan"), per_sample) if calls["n"] > step_index else (loss, per_sample)

        monkeypatch.setattr(objectives, "denoising_loss", nan_loss)
    else:
        real = trainer.update_ema

        def inf_ema(ema, net, decay):
            calls["n"] += 1
            real(ema, net, decay)
            if calls["n"] > step_index:
                next(ema.parameters()).data.fill_(float("inf"))

        monkeypatch.setattr(trainer, "update_ema", inf_ema)


@pytest.mark.parametrize("where, log_every", [("loss", 3), ("loss", 50), ("ema", 50)])
def test_a_diverged_run_never_saves_its_weights(tmp_path, monkeypatch, where, log_every):
    """Divergence at step 6 is caught at the next log row or checkpoint, whichever comes first; the
    checkpoint of step 4 is kept, with finite weights."""
    poison_from(5, monkeypatch, where)
    with pytest.raises(FloatingPointError, match="diverged by step (6|8).*left as it was"):
        train(toy(steps=12, ckpt_every=4, log_every=log_every), tmp_path, progress=False, device="cpu")
    model = difflab.load(tmp_path, "cpu")
    assert model.step == 4
    for name in ("model", "ema"):
        assert all(torch.isfinite(v).all() for v in weights(tmp_path, name).values())


def test_resume_is_bit_exact_with_compile(tmp_path):
    config = toy(steps=6, log_every=3, compile="default")
    train(config, tmp_path / "a", progress=False, device="cpu")
    train(config.replace(steps=3), tmp_path / "b", progress=False, device="cpu")
    train(config, tmp_path / "b", resume=True, progress=False, device="cpu")
    assert read_log(tmp_path / "a") == read_log(tmp_path / "b")
    for name in ("model", "ema"):
        a, b = weights(tmp_path / "a", name), weights(tmp_path / "b", name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    # and the compiled loss is the eager loss, up to the order of floating-point sums
    eager = read_log(train(config.replace(compile="none"), tmp_path / "c", progress=False, device="cpu").parent)
    for ra, rc in zip(read_log(tmp_path / "a"), eager, strict=True):
        assert abs(float(ra["loss"]) - float(rc["loss"])) < 1e-4 * float(rc["loss"])

"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022): shapes, the KL term in
closed form, the latent scale factor, a short training run, its directory on disk and the command."""
import argparse
import json
import math
import subprocess
import sys

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from difflab.cli.train_autoencoder import add_parser, run
from difflab.nets.autoencoder import Autoencoder, AutoencoderConfig
from difflab.training import autoencoder as ae_training
from difflab.training.autoencoder import (
    AE_PRESETS, AutoencoderTrainConfig, autoencoder_loss, decode_latents, encode_dataset, gaussian_kl,
    latent_scale_factor, load_autoencoder, reconstruction_metrics, train_autoencoder)
from difflab.training.data import load_dataset
from difflab.version import __version__

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_NET = {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "latent_channels": 2,
            "groups": 4}
TINY = AutoencoderTrainConfig(data="digits", net=TINY_NET, lr=3e-3, batch_size=32, steps=40, warmup_steps=5)


def tiny_autoencoder(in_channels=1, resolution=8, seed=0) -> Autoencoder:
    torch.manual_seed(seed)
    return Autoencoder(AutoencoderConfig(in_channels=in_channels, resolution=resolution, **TINY_NET))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(directory, metadata) of one short training run of TINY on digits."""
    out = tmp_path_factory.mktemp("ae") / "digits-ae"
    return out, train_autoencoder(TINY, out, progress=False)


@pytest.mark.parametrize("channels, resolution, mult, factor", [(1, 8, (1, 2), 2), (3, 16, (1, 2, 2), 4)])
def test_encode_decode_shapes_and_factor(channels, resolution, mult, factor):
    ae = Autoencoder(AutoencoderConfig(in_channels=channels, resolution=resolution, base_channels=8,
                                       channel_mult=mult, latent_channels=3, groups=4))
    x = torch.rand(2, channels, resolution, resolution) * 2 - 1
    mean, logvar = ae.encode(x)
    assert ae.factor == factor and ae.config.latent_shape == (3, resolution // factor, resolution // factor)
    assert mean.shape == logvar.shape == (2, *ae.config.latent_shape)
    assert ae.decode(mean).shape == x.shape
    with pytest.raises(ValueError, match="divisible"):
        ae.encode(torch.zeros(1, channels, resolution + 1, resolution + 1))


def test_forward_is_the_reparametrised_sample_in_training_and_the_mean_in_eval():
    ae, x = tiny_autoencoder(), torch.rand(3, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        mean, logvar = ae.encode(x)
        x_hat, *_ = ae.train()(x, torch.Generator().manual_seed(5))
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(x_hat, ae.decode(mean + torch.exp(logvar / 2) * noise))
        x_mode, *_ = ae.eval()(x)
        torch.testing.assert_close(x_mode, ae.decode(mean))


def test_kl_term_is_the_closed_form_of_a_diagonal_gaussian():
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64)
    logvar = 2 * torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64)
    exact = kl_divergence(Normal(mean, torch.exp(logvar / 2)), Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_kl(mean, logvar), exact)
    assert torch.all(gaussian_kl(torch.zeros(2, 5), torch.zeros(2, 5)) == 0)  # the prior itself


@pytest.mark.parametrize("recon", ["l1", "l2"])
def test_loss_is_reconstruction_summed_over_pixels_plus_weighted_kl(recon):
    ae, x = tiny_autoencoder().eval(), torch.rand(3, 1, 8, 8) * 2 - 1
    config = TINY.replace(recon=recon, kl_weight=0.25)
    loss, rec, kl = autoencoder_loss(ae, x, config)
    mean, logvar = ae.encode(x)
    error = ae.decode(mean) - x
    per_pixel = error.abs() if recon == "l1" else error.square()
    torch.testing.assert_close(rec, per_pixel.sum((1, 2, 3)).mean())
    torch.testing.assert_close(kl, gaussian_kl(mean, logvar).mean())
    torch.testing.assert_close(loss, rec + 0.25 * kl)


def test_scale_factor_makes_the_training_latents_unit_std_and_decoding_inverts_it():
    ae, x = tiny_autoencoder(), load_dataset("digits", size=300).x
    scale = latent_scale_factor(ae, x, batch_size=64)
    z = encode_dataset(ae, x, scale, batch_size=37)  # batching changes nothing
    assert z.shape == (300, 2, 4, 4)
    assert z.double().std(correction=0).item() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(z, scale * ae.encode(x)[0])
        torch.testing.assert_close(decode_latents(ae, z, scale), ae.decode(ae.encode(x)[0]))


def test_training_lowers_the_reconstruction_error_and_writes_its_metadata(trained):
    _, meta = trained
    test_x = load_dataset("digits", split="test").x
    untrained = reconstruction_metrics(tiny_autoencoder(seed=TINY.seed), test_x)
    assert meta["metrics"]["mse"] < 0.5 * untrained["mse"]
    assert meta["metrics"]["psnr_db"] == pytest.approx(10 * math.log10(4 / meta["metrics"]["mse"]))
    assert meta["metrics_split"] == "test" and meta["latent_shape"] == [2, 4, 4]
    assert meta["config"] == TINY.to_dict() and meta["difflab_version"] == __version__
    assert meta["scale_factor"] > 0


def test_directory_round_trips_with_identical_outputs_and_no_pickle(trained):
    out, meta = trained
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary left behind
    assert sorted(p.name for p in out.iterdir()) == ["autoencoder.json", "autoencoder.safetensors"]
    raw = (out / "autoencoder.safetensors").read_bytes()
    header = int.from_bytes(raw[:8], "little")
    assert raw[8:9] == b"{" and json.loads(raw[8:8 + header])  # safetensors: a JSON header, then raw tensors
    ae, loaded = load_autoencoder(out)
    assert loaded == meta == json.loads((out / "autoencoder.json").read_text())
    assert not ae.training and not any(p.requires_grad for p in ae.parameters())
    x = load_dataset("digits").x
    assert latent_scale_factor(ae, x) == meta["scale_factor"]
    assert reconstruction_metrics(ae, load_dataset("digits", split="test").x) == meta["metrics"]


def test_a_failure_while_saving_leaves_the_previous_directory(trained, tmp_path, monkeypatch):
    out = tmp_path / "ae"
    out.mkdir()
    for name in ("autoencoder.json", "autoencoder.safetensors"):
        (out / name).write_bytes((trained[0] / name).read_bytes())

    def broken(tensors, path):
        path.write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ae_training, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        train_autoencoder(TINY.replace(steps=1), out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae"]
    saved = (trained[0] / "autoencoder.safetensors").read_bytes()
    assert (out / "autoencoder.safetensors").read_bytes() == saved
    with pytest.raises(OSError):
        train_autoencoder(TINY.replace(steps=1), tmp_path / "new", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae"]  # no half directory


def test_loading_a_missing_or_corrupt_directory_is_a_value_error(trained, tmp_path):
    with pytest.raises(ValueError, match="not a readable autoencoder directory"):
        load_autoencoder(tmp_path / "nothing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "autoencoder.json").write_text((trained[0] / "autoencoder.json").read_text())
    (bad / "autoencoder.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(ValueError, match="not a readable autoencoder directory"):
        load_autoencoder(bad)
    (bad / "autoencoder.json").write_text("{")
    with pytest.raises(ValueError, match="not a readable autoencoder directory"):
        load_autoencoder(bad)


@pytest.mark.parametrize("options, phrase", [
    ({"recon": "l3"}, "recon"), ({"lr": 0.0}, "lr"), ({"lr": "fast"}, "lr"), ({"steps": 0}, "steps"),
    ({"batch_size": True}, "batch_size"), ({"kl_weight": -1e-6}, "kl_weight"), ({"channels": 2}, "channels"),
    ({"net": {"in_channels": 3}}, "net"), ({"net": {"width": 3}}, "net"),
    ({"warmup_steps": -1}, "warmup_steps"),
])
def test_config_validation_errors(options, phrase):
    with pytest.raises(ValueError, match=phrase):
        AutoencoderTrainConfig(data="digits", **options)


def test_replace_reads_command_line_strings():
    config = TINY.replace(lr="1e-4", channels="none", data="123", **{"net.latent_channels": "8"})
    assert (config.lr, config.channels, config.data, config.net["latent_channels"]) == (1e-4, None, "123", 8)
    assert TINY.net["latent_channels"] == 2  # the original is untouched
    with pytest.raises(ValueError, match="unknown AutoencoderTrainConfig key"):
        TINY.replace(nope=1)
    with pytest.raises(ValueError, match="cannot read"):
        TINY.replace(lr="fast")
    with pytest.raises(ValueError, match="divisible"):
        AutoencoderConfig(resolution=10, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="base_channels"):
        AutoencoderConfig(base_channels=0)


def test_presets_build_their_latent_shapes():
    shapes = {"digits-ae": (1, 8, (2, 4, 4)), "shapes-ae": (3, 32, (4, 8, 8))}
    for name, (channels, resolution, latent) in shapes.items():
        net = AutoencoderConfig.from_dict({**AE_PRESETS[name].net, "in_channels": channels,
                                           "resolution": resolution})
        assert net.latent_shape == latent and AE_PRESETS[name].data in ("digits", "shapes-text")


def test_training_needs_images_and_a_free_folder(tmp_path):
    with pytest.raises(ValueError, match="needs images"):
        train_autoencoder(TINY.replace(data="moons"), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="data is not set"):
        train_autoencoder(AutoencoderTrainConfig(), tmp_path / "a", progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an autoencoder directory"):
        train_autoencoder(TINY, tmp_path / "other", progress=False)


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["train-autoencoder", *map(str, argv)])


def test_command_trains_and_reports_the_scale_factor_and_psnr(tmp_path, capsys):
    out = tmp_path / "ae"
    args = parse("--preset", "digits-ae", "--out", out, "--steps", 3, "--batch-size", 16, "--seed", 1,
                 "--set", "net.base_channels=8", "--set", "net.groups=4")
    run(args)
    printed = capsys.readouterr().out
    _, meta = load_autoencoder(out)
    assert f"{meta['scale_factor']:.5g}" in printed and f"PSNR {meta['metrics']['psnr_db']:.2f} dB" in printed
    assert (meta["config"]["preset"], meta["config"]["steps"], meta["config"]["seed"]) == ("digits-ae", 3, 1)
    assert meta["net"]["base_channels"] == 8


def test_command_user_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'nope'; choose from digits-ae, shapes-ae"):
        run(parse("--preset", "nope", "--out", tmp_path))
    with pytest.raises(ValueError, match="--preset NAME"):
        run(parse("--out", tmp_path))
    with pytest.raises(ValueError, match="steps"):
        run(parse("--preset", "digits-ae", "--out", tmp_path, "--steps", 0))
    with pytest.raises(ValueError, match="key=value"):
        run(parse("--preset", "digits-ae", "--out", tmp_path, "--set", "lr"))


def test_the_command_module_does_not_import_torch():
    probe = ("import argparse, sys\n"
             "from difflab.cli.train_autoencoder import add_parser\n"
             "parser = argparse.ArgumentParser(prog='difflab')\n"
             "add_parser(parser.add_subparsers())\n"
             "try:\n    parser.parse_args(['train-autoencoder', '--help'])\n"
             "except SystemExit:\n    pass\n"
             "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--preset NAME" in done.stdout and done.stdout.strip().splitlines()[-1] == "False"

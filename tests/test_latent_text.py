"""Latent diffusion and text conditioning end to end, with tiny models: train an autoencoder, a
latent model on its latents and a text-conditional DiT, then sample, prompt and edit through the
library and the command line."""
import pytest
import torch

import difflab
from difflab.cli import main
from difflab.training import PRESETS, AE_PRESETS, train, train_autoencoder

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = dict(steps=20, log_every=10, ckpt_every=0, sample_every=20, batch_size=32)


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "digits-ae"
    train_autoencoder(AE_PRESETS["digits-ae"].replace(steps=30, batch_size=32), out, progress=False, device="cpu")
    return out


def test_a_latent_model_samples_and_edits_in_pixel_space(autoencoder, tmp_path, capsys):
    with pytest.raises(ValueError, match="pass --autoencoder DIR"):
        train(PRESETS["digits-latent"].replace(**QUICK), tmp_path / "no-ae", progress=False, device="cpu")
    model_dir = train(PRESETS["digits-latent"].replace(**QUICK, autoencoder=str(autoencoder)), tmp_path / "lat",
                      progress=False, device="cpu")
    assert sorted(p.name for p in (model_dir / "autoencoder").iterdir()) == ["autoencoder.json",
                                                                           "autoencoder.safetensors"]
    assert (tmp_path / "lat" / "samples" / "step_000020.png").exists()
    model = difflab.load(tmp_path / "lat", "cpu")
    assert model.data_shape == (2, 4, 4) and model.image_shape == (1, 8, 8)
    z = torch.randn(5, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    x = model.sample(5, steps=4, noise=z)  # noise in the latent space, samples decoded
    assert x.shape == (5, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(model.sample(5, steps=4, noise=z), x)
    # the autoencoder inside the model directory is the one it was trained with
    torch.testing.assert_close(model.decode(model.encode(x[:2])), difflab.training.load_autoencoder(autoencoder)[0]
                               .decode(model.encode(x[:2]) / model.autoencoder_meta["scale_factor"]).clamp(-9, 9))
    for method in ("sdedit", "invert", "inpaint"):
        status = main(["edit", method, str(tmp_path / "lat"), "--from-data", "digits", "--n", "3", "--steps", "3",
                       "--out", str(tmp_path / f"{method}.png"), "--device", "cpu"])
        assert status == 0, capsys.readouterr().err
    assert main(["edit", "ddrm", str(tmp_path / "lat"), "--from-data", "digits", "--n", "2", "--out",
                 str(tmp_path / "d.png"), "--device", "cpu"]) == 2
    assert "latent" in capsys.readouterr().err


def test_a_text_model_follows_prompts_from_the_cli(tmp_path, capsys):
    net = dict(PRESETS["shapes-text"].net, hidden=32, depth=1, num_heads=2,
               text=dict(PRESETS["shapes-text"].net["text"], dim=32, depth=1, num_heads=2))
    # a pixel-space text DiT on 16x16 shapes-text images: no autoencoder needed for the check
    config = PRESETS["shapes-text"].replace(preset="custom", net=net, resolution=16, **QUICK)
    train(config, tmp_path / "txt", progress=False, device="cpu")
    model = difflab.load(tmp_path / "txt", "cpu")
    x = model.sample(4, steps=3, prompt="red circle top left", guidance=2.0, seed=0)
    assert x.shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="unknown word 'purple'"):
        model.sample(2, steps=2, prompt="purple circle center")
    with pytest.raises(ValueError, match="give a prompt"):
        model.sample(2, steps=2)
    status = main(["sample", str(tmp_path / "txt"), "--n", "4", "--steps", "2", "--prompt", "blue square center",
                   "--guidance", "3", "--out", str(tmp_path / "p.png"), "--device", "cpu"])
    assert status == 0, capsys.readouterr().err
    assert main(["sample", str(tmp_path / "txt"), "--n", "2", "--steps", "2", "--prompt", "blue blob",
                 "--out", str(tmp_path / "q.png"), "--device", "cpu"]) == 2
    assert "unknown word 'blob'" in capsys.readouterr().err

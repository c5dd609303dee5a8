"""The command line: help everywhere, one-line errors with exit status 2, and train -> sample -> info -> eval."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import SAMPLERS
from difflab.cli import main

COMMANDS = [[], ["demo"], ["train"], ["sample"], ["info"], ["eval"], ["bench"], ["bench", "samplers"]]


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """The classifier cache shared with test_evaluate.py (one training per test session)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFLAB_CACHE", str(tmp_path_factory.getbasetemp() / "difflab-cache"))
        yield


def run(capsys, *argv):
    """main(argv) -> (status, stdout, stderr); argparse's SystemExit becomes a status too."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_user_error(result, *phrases):
    status, _, err = result
    assert status == 2
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    assert err.startswith("difflab")
    for phrase in phrases:
        assert phrase in err


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "difflab")
def test_every_command_has_help(capsys, command):
    status, out, _ = run(capsys, *command, "--help")
    assert status == 0
    assert out.startswith("usage: difflab")


def test_python_m_difflab():
    done = subprocess.run([sys.executable, "-m", "difflab", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert "sample" in done.stdout


def test_missing_command_and_arguments_are_one_line_errors(capsys):
    assert_user_error(run(capsys), "required")
    assert_user_error(run(capsys, "sample"), "required")
    assert_user_error(run(capsys, "sample", "dir", "--n", "three"), "invalid int")
    assert_user_error(run(capsys, "frobnicate"), "invalid choice")


def test_bad_preset_lists_the_presets(capsys, tmp_path):
    assert_user_error(run(capsys, "train", "--preset", "nope", "--out", tmp_path), "unknown preset", "digits")
    assert_user_error(run(capsys, "train", "--out", tmp_path), "--preset")


def test_bad_config_values_are_user_errors(capsys, tmp_path):
    assert_user_error(run(capsys, "train", "--preset", "toy2d", "--out", tmp_path, "--set", "lr"), "key=value")
    assert_user_error(run(capsys, "train", "--preset", "toy2d", "--out", tmp_path, "--set", "nope=1"), "nope")
    assert_user_error(run(capsys, "train", "--preset", "toy2d", "--out", tmp_path, "--steps", "0"), "steps")
    toml = tmp_path / "bad.toml"
    toml.write_text("steps = [")
    assert_user_error(run(capsys, "train", "--config", toml, "--out", tmp_path), "TOML")


def test_bad_sampler_lists_the_samplers(capsys, tmp_path):
    result = run(capsys, "sample", tmp_path, "--n", 4, "--sampler", "nope", "--out", tmp_path / "x.png")
    assert_user_error(result, "unknown sampler 'nope'", *SAMPLERS)


def test_missing_model_directory(capsys, tmp_path):
    missing = tmp_path / "missing"
    assert_user_error(run(capsys, "sample", missing, "--n", 4, "--out", tmp_path / "x.png"), "missing")
    assert_user_error(run(capsys, "info", missing), "missing")
    assert_user_error(run(capsys, "eval", missing), "missing")
    assert_user_error(run(capsys, "info", tmp_path), "not a difflab model directory")


def test_info_lists_presets_and_samplers(capsys):
    status, out, _ = run(capsys, "info")
    assert status == 0
    assert "cifar10-ddpm" in out and "35.7" in out  # Ho et al. 2020: 35.7M parameters
    for name in SAMPLERS:
        assert f"  {name} " in out
    assert "S_churn=40.0" in out


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    """A 2-D model trained for 30 steps through the command line."""
    pytest.importorskip("difflab.training")
    out = tmp_path_factory.mktemp("toy")
    assert main(["train", "--preset", "toy2d", "--out", str(out), "--steps", "30", "--batch-size", "64"]) == 0
    return out


def test_train_then_sample_a_toy_model(capsys, toy_model, tmp_path):
    png, npz = tmp_path / "x.png", tmp_path / "x.npz"
    status, _, err = run(capsys, "sample", toy_model, "--n", 16, "--steps", 5, "--seed", 0, "--out", png,
                         "--npz", npz)
    assert status == 0, err
    with np.load(npz) as arrays:
        assert arrays["x"].shape == (16, 2) and np.isfinite(arrays["x"]).all()
        assert "y" not in arrays.files
    assert Image.open(png).size[0] > 100
    # The same seed gives the same samples.
    assert run(capsys, "sample", toy_model, "--n", 16, "--steps", 5, "--seed", 0, "--npz", tmp_path / "y.npz")[0] == 0
    with np.load(npz) as a, np.load(tmp_path / "y.npz") as b:
        np.testing.assert_array_equal(a["x"], b["x"])


def test_info_and_eval_of_a_toy_model(capsys, toy_model, tmp_path):
    status, out, _ = run(capsys, "info", toy_model)
    assert status == 0 and "toy2d" in out and "mlp" in out
    assert_user_error(run(capsys, "eval", toy_model), "digits", "moons")
    assert_user_error(run(capsys, "sample", toy_model, "--n", 4, "--class", 1, "--npz", tmp_path / "y.npz"),
                      "unconditional")
    assert_user_error(run(capsys, "sample", toy_model, "--n", 4), "--out")


def test_digits_model_sample_and_eval(capsys, tmp_path):
    """A conditional digits model after two steps: the commands run end to end (quality is not the point)."""
    pytest.importorskip("difflab.training")
    out = tmp_path / "run"
    assert main(["train", "--preset", "digits-cond", "--out", str(out), "--steps", "2", "--batch-size", "8",
                 "--set", "sample_every=0"]) == 0
    status, _, err = run(capsys, "sample", out, "--n", 10, "--steps", 2, "--class", 3, "--guidance", 2,
                         "--out", tmp_path / "d.png", "--npz", tmp_path / "d.npz")
    assert status == 0, err
    with np.load(tmp_path / "d.npz") as arrays:
        assert arrays["x"].shape == (10, 1, 8, 8) and (arrays["y"] == 3).all()
    status, out_text, err = run(capsys, "eval", out, "--n", 20, "--steps", 2)
    assert status == 0, err
    assert "Fréchet distance" in out_text and "class match" in out_text
    assert_user_error(run(capsys, "sample", out, "--n", 4, "--class", 10, "--out", tmp_path / "e.png"), "out of range")


def test_bench_samplers_is_delegated(capsys, monkeypatch):
    from difflab.bench import samplers as bench

    seen = {}

    def fake_run(out, problems, n, n_stochastic, optimise):
        seen.update(out=out, problems=problems, n=n, n_stochastic=n_stochastic, optimise=optimise)

    monkeypatch.setattr(bench, "run", fake_run)
    status, _, _ = run(capsys, "bench", "samplers", "--quick", "--out", "somewhere")
    assert status == 0
    assert seen == {"out": "somewhere", "problems": ("gmm2d", "gmm64"), "n": 128, "n_stochastic": 500,
                    "optimise": False}


def test_bench_problem_names_match_the_benchmark():
    """The CLI names the problems without importing torch; they must be the benchmark's."""
    from difflab.bench.samplers import PROBLEMS
    from difflab.cli.bench import PROBLEMS as CLI_PROBLEMS

    assert sorted(CLI_PROBLEMS) == sorted(PROBLEMS)


def test_keyboard_interrupt_exits_130(capsys, monkeypatch):
    from difflab.cli import info

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "run", interrupted)
    assert run(capsys, "info")[0] == 130


def test_vp_scaling_keeps_unit_variance():
    """x_t = (x0 + sigma n) / sqrt(1 + sigma^2) has unit variance for unit-variance data at every sigma."""
    from difflab.cli.figures import vp_scaled

    g = torch.Generator().manual_seed(0)
    x0, n = torch.randn(2, 200_000, generator=g, dtype=torch.float64)
    for sigma in (0.0, 0.5, 3.0, 80.0):
        assert vp_scaled(x0 + sigma * n, sigma).var().item() == pytest.approx(1.0, abs=0.01)


def test_demo_figures_of_an_untrained_model(tmp_path):
    """The figure functions on a freshly built (untrained) digits UNet: every file is written, and the
    reverse trajectory has one column per step plus the result."""
    from difflab.cli import figures as demo
    from difflab.denoisers import NetworkDenoiser
    from difflab.nets import UNET_PRESETS, UNet
    from difflab.schedules import EDM, karras_sigmas

    torch.manual_seed(0)
    denoiser = NetworkDenoiser(UNet(UNET_PRESETS["digits"]), EDM(), "edm").eval()
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    paths = [
        demo.forward_process_figure(x0, tmp_path / "forward.png", sigmas=(0.0, 1.0, 10.0)),
        demo.reverse_trajectory_figure(denoiser, noise[:2], karras_sigmas(4, 0.002, 80.0), tmp_path / "rev.png"),
        demo.sampler_figure(denoiser, noise, karras_sigmas(3, 0.002, 80.0), tmp_path / "samplers.png",
                            samplers=("euler", "heun", "dpmpp_2m_sde")),
    ]
    for path in paths:
        with Image.open(path) as img:
            assert img.size[0] > 200 and img.size[1] > 100
    tiles = torch.zeros(4, 5, 1, 8, 8)
    assert demo._mosaic(tiles).shape == (4 * 9 + 1, 5 * 9 + 1)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    status, out, err = run(capsys, "demo", "--out", tmp_path / "demo", "--steps", 20)
    assert status == 0, err
    names = {"samples.png", "forward_process.png", "reverse_trajectory.png", "samplers.png"}
    assert names <= {p.name for p in (tmp_path / "demo").iterdir()}
    assert "Fréchet distance" in out
    from difflab import load

    assert load(tmp_path / "demo" / "model").sample(2, steps=2, seed=0).shape == (2, 1, 8, 8)

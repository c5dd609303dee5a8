"""difflab.pipeline and the sampling path: gradients off by default, fixed starting noise, sigma
schedules, sampler options, device and dtype, compile, and the same from the command line."""
import json

import pytest
import torch

import difflab
from difflab.exact import ring_mixture
from difflab.pipeline import CheckpointError, load, resolve_dtype
from difflab.schedules import karras_sigmas, loglinear_sigmas
from test_checkpoint import save  # tests/ is on sys.path (pytest rootdir import)
from test_cli import assert_user_error, run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    save(out)
    return out


def linear_denoiser():
    """A denoiser with one parameter, so autograd has something to track: D = w x / (1 + sigma^2)."""
    w = torch.nn.Parameter(torch.tensor(0.7))

    def denoiser(x, sigma):
        return w * x / (1 + sigma[:, None] ** 2)

    return denoiser, w


def test_sampling_builds_no_graph_unless_asked():
    denoiser, w = linear_denoiser()
    x = 80.0 * torch.randn(4, 2)
    sigmas = karras_sigmas(5, 0.002, 80.0)
    assert not difflab.sample(denoiser, x, sigmas, "dpmpp_2m").requires_grad
    out = difflab.sample(denoiser, x, sigmas, "dpmpp_2m", grad=True)
    assert out.requires_grad
    (g,) = torch.autograd.grad(out.sum(), w)
    assert torch.isfinite(g) and g != 0


def test_classifier_guidance_still_gets_its_gradients():
    """Classifier guidance differentiates log p(y | x) inside each call, under the sampler's no_grad."""
    from difflab.guidance import classifier_guidance, exact_log_prob

    gmm = ring_mixture()
    guided = classifier_guidance(gmm, exact_log_prob(gmm), 1.0)
    x = 80.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = difflab.sample(guided, x, karras_sigmas(30, 0.002, 80.0).double(), "heun", cond={"y": torch.full((64,), 3)})
    # Exact classifier guidance at scale 1 is the class-conditional denoiser: every sample lands in class 3.
    assert (gmm.class_posterior(out, 0.0).argmax(1) == 3).all()


def test_fixed_starting_noise(model_dir):
    model = load(model_dir, "cpu")
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    a = model.sample(5, steps=4, noise=z)
    b = model.sample(5, steps=4, noise=z, seed=123)  # the seed does not matter with noise
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The same noise that a seed draws gives the same samples (deterministic sampler).
    seeded = model.sample(5, steps=4, seed=7)
    drawn = torch.randn((5, 2), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(model.sample(5, steps=4, noise=drawn), seeded)
    with pytest.raises(CheckpointError, match="noise must have shape"):
        model.sample(5, noise=torch.zeros(4, 2))


def test_schedules_and_sampler_options(model_dir, tmp_path):
    model = load(model_dir, "cpu")
    lo, hi = model.schedule.sigma_min, model.schedule.sigma_max
    torch.testing.assert_close(model.sigmas(6, "karras"), karras_sigmas(6, lo, hi))
    torch.testing.assert_close(model.sigmas(6, "logsnr"), loglinear_sigmas(6, lo, hi))
    # auto: log-SNR for the multistep exponential integrators, Karras for Euler / Heun (measured)
    torch.testing.assert_close(model.sigmas(6, "auto", sampler="dpmpp_2m"), loglinear_sigmas(6, lo, hi))
    torch.testing.assert_close(model.sigmas(6, "auto", sampler="unipc"), loglinear_sigmas(6, lo, hi))
    torch.testing.assert_close(model.sigmas(6, "auto", sampler="heun"), karras_sigmas(6, lo, hi))
    path = tmp_path / "sigmas.json"
    path.write_text(json.dumps({"sigmas": [10.0, 1.0, 0.1, 0.0]}))
    torch.testing.assert_close(model.sigmas(schedule=path), torch.tensor([10.0, 1.0, 0.1, 0.0]))
    for bad in ([1.0, 2.0, 0.0], [1.0]):
        with pytest.raises(CheckpointError, match="decreasing"):
            model.sigmas(schedule=bad)
    with pytest.raises(CheckpointError, match="cannot read"):
        model.sigmas(schedule=path.with_name("missing.json"))
    path.with_name("bad.json").write_text("[1, 0")
    with pytest.raises(CheckpointError, match="not a JSON sigma schedule"):
        model.sigmas(schedule=path.with_name("bad.json"))
    with pytest.raises(CheckpointError, match="unknown sigma schedule 'karas'"):
        model.sigmas(schedule="karas")
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    deterministic = model.sample(6, sampler="ddim", steps=5, noise=z, seed=0)
    noisy = model.sample(6, sampler="ddim", steps=5, noise=z, seed=0, eta=1.0)
    ddpm = model.sample(6, sampler="ddpm", steps=5, noise=z, seed=0)
    assert not torch.allclose(deterministic, noisy)
    torch.testing.assert_close(noisy, ddpm)  # DDIM with eta = 1 is DDPM
    with pytest.raises(ValueError, match="no option"):
        model.sample(2, sampler="euler", eta=1.0)


def test_callback_sees_every_step_of_every_batch(model_dir):
    model = load(model_dir, "cpu")
    seen = []
    model.sample(5, steps=3, batch_size=2, seed=0, callback=lambda info: seen.append((info["batch_start"], info["i"])))
    assert seen == [(b, i) for b in (0, 2, 4) for i in range(3)]


def test_dtype_round_trip_on_cpu(model_dir):
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    full = load(model_dir, "cpu").sample(16, steps=8, noise=z)
    half = load(model_dir, "cpu", dtype="bf16")
    assert half.dtype == torch.bfloat16 and half.device == torch.device("cpu")
    x = half.sample(16, steps=8, noise=z)
    assert x.dtype == torch.float32
    err = (x - full).abs().max().item()
    assert 0 < err < 0.1 * full.abs().max().item()  # bf16 rounding, not a different model
    assert resolve_dtype("fp16") == torch.float16
    with pytest.raises(CheckpointError, match="unknown dtype"):
        resolve_dtype("int8")
    with pytest.raises(CheckpointError, match="unknown device"):
        load(model_dir, "tpu")


def test_compile_gives_the_same_samples(model_dir):
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(2))
    eager = load(model_dir, "cpu").sample(8, steps=4, noise=z)
    compiled = load(model_dir, "cpu", compile=True).sample(8, steps=4, noise=z)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_cli_device_dtype_schedule_and_options(model_dir, tmp_path, capsys):
    npz = {}
    for name, extra in [("plain", []), ("bf16", ["--dtype", "bf16"]), ("karras", ["--schedule", "karras"]),
                        ("eta", ["--sampler", "ddim", "--option", "eta=1"])]:
        status, _, err = run(capsys, "sample", model_dir, "--n", 8, "--steps", 4, "--seed", 0, "--device", "cpu",
                             "--npz", tmp_path / f"{name}.npz", *extra)
        assert status == 0, err
        import numpy as np

        with np.load(tmp_path / f"{name}.npz") as f:
            npz[name] = torch.from_numpy(f["x"])
    for name in ("bf16", "karras", "eta"):
        assert not torch.equal(npz[name], npz["plain"])
    assert (npz["bf16"] - npz["plain"]).abs().max() < 0.1 * npz["plain"].abs().max()
    assert_user_error(run(capsys, "sample", model_dir, "--n", 2, "--npz", tmp_path / "x.npz", "--option", "eta"),
                      "key=value")
    assert_user_error(run(capsys, "sample", model_dir, "--n", 2, "--npz", tmp_path / "x.npz", "--option", "bogus=1"),
                      "no option")
    assert_user_error(run(capsys, "sample", model_dir, "--n", 2, "--npz", tmp_path / "x.npz", "--device", "cuda:7"),
                      "cuda")

"""The speed benchmarks run end to end (on the CPU, with tiny sizes) and compare like with like."""
import pytest
import torch

from difflab.bench import speed
from difflab.nets import UNET_PRESETS, UNet, count_parameters
from test_cli import assert_user_error, run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_diffusers_unet_has_the_same_layout():
    """The peer of `difflab bench gpu` is the same network: the DDPM CIFAR-10 UNet, 35.7M parameters."""
    pytest.importorskip("diffusers")
    config = UNET_PRESETS["cifar10-ddpm"]
    with torch.device("meta"):
        ours, theirs = UNet(config), speed.diffusers_unet(config.to_dict())
    assert count_parameters(ours) == count_parameters(theirs) == 35_746_307


def test_bench_train_rows(capsys):
    rows = speed.bench_train("toy2d", "cpu", steps=4, warmup=2, repeats=1)
    assert [r["path"] for r in rows] == ["bare step (forward, backward, AdamW)", "difflab train"]
    assert all(r["img/s"] > 0 for r in rows) and rows[1]["vs bare"] == rows[1]["img/s"] / rows[0]["img/s"]
    assert "| difflab train |" in capsys.readouterr().out


def test_training_flops_are_three_forward_passes():
    """Backward costs about twice the forward pass, so forward + backward is about 3x the forward."""
    from torch.utils.flop_counter import FlopCounterMode

    from difflab.training import PRESETS

    config = PRESETS["digits"]
    total = speed.training_flops_per_image(config, "cpu")
    net = UNet(UNET_PRESETS["digits"])
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(2, 1, 8, 8), torch.zeros(2))
    assert 2.5 < total / (counter.get_total_flops() / 2) < 3.5


def test_bench_gpu_quick_on_the_cpu(tmp_path):
    result = speed.bench_gpu(tmp_path, "cpu", quick=True, compile=False, log=lambda *a: None)
    paths = [r["path"] for r in result["train"]]
    assert "difflab train, eager" in paths and "difflab bare step, eager" in paths
    assert any(p.startswith("diffusers") for p in paths)
    assert all(r["img/s"] is None or r["img/s"] > 0 for r in result["train"] + result["sample"])
    assert {p.name for p in tmp_path.iterdir()} == {"train.csv", "sample.csv", "output.md"}
    assert "## Sampling" in (tmp_path / "output.md").read_text()


def test_bench_cli_errors(capsys):
    if not torch.cuda.is_available():
        assert_user_error(run(capsys, "bench", "gpu"), "needs a CUDA device")
    assert_user_error(run(capsys, "bench", "train", "--preset", "nope", "--steps", 2, "--warmup", 2), "unknown preset")
    assert_user_error(run(capsys, "bench", "train", "--steps", 5, "--warmup", 2), "multiple of --warmup")

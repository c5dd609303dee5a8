"""difflab.training.doctor and `difflab doctor`: the EMA share against its closed forms, and each
finding firing on a run made wrong on purpose (real tiny runs of the trainer and doctored copies
of them) and not on a healthy one; a damaged folder never crashes the checks."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from difflab.cli import main
from difflab.nets import MLPConfig, UNetConfig
from difflab.training import PRESETS, TrainConfig, train
from difflab.training.doctor import Finding, diagnose, ema_initial_share, ema_steps_to_share, verdict

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_MLP = MLPConfig(hidden_channels=32, depth=2, embed_dim=16).to_dict()


def toy2d(**overrides) -> TrainConfig:
    """The toy2d preset, shrunk to a run of about a second (the preset's lr and EMA kept)."""
    small = dict(net=SMALL_MLP, steps=200, batch_size=256, log_every=5, warmup_steps=10, ckpt_every=0, sample_every=0)
    return PRESETS["toy2d"].replace(**{**small, **overrides})


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("healthy")
    train(toy2d(), out, progress=False, device="cpu")
    return out


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """A tiny UNet trained for 4 steps on 8x8 gray images in [-1, 1] from a .npy."""
    root = tmp_path_factory.mktemp("images")
    data = root / "images.npy"
    np.save(data, np.tanh(np.random.default_rng(0).normal(size=(64, 1, 8, 8))).astype(np.float32))
    net = UNetConfig(in_channels=1, resolution=8, base_channels=8, channel_mult=(1,), num_res_blocks=1,
                     attn_resolutions=(), dropout=0.0).to_dict()
    config = TrainConfig(data=str(data), network="unet", net=net, steps=4, batch_size=8, log_every=1,
                         ckpt_every=0, sample_every=0, ema_decay=0.9)
    train(config, root / "run", progress=False, device="cpu")
    return root / "run"


def copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def edit_config(run: Path, **changes) -> None:
    path = run / "model" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def write_log(run: Path, losses) -> None:
    rows = [f"{5 * (i + 1)},{x},0.003,1.0,{i * 0.1:.2f}" for i, x in enumerate(losses)]
    (run / "log.csv").write_text("\n".join(["step,loss,lr,grad_norm,seconds", *rows]) + "\n")


def by_code(findings: list[Finding]) -> dict[str, set[str]]:
    """code -> the severities it was reported with."""
    out: dict[str, set[str]] = {}
    for f in findings:
        out.setdefault(f.code, set()).add(f.severity)
    return out


def problems(findings: list[Finding]) -> dict[str, str]:
    """code -> severity of the errors and warnings."""
    return {f.code: f.severity for f in findings if f.severity in ("error", "warning")}


# --- the EMA's memory of its initial network ------------------------------------------------------


def test_ema_initial_share_is_the_product_of_the_decays():
    plain = TrainConfig(ema_decay=0.9999, ema_warmup=False)
    assert ema_initial_share(plain, 50) == pytest.approx(0.9999**50, rel=1e-12)
    # With the warm-up d_k = (1 + k)/(10 + k) (below 0.9999 for k < 89,991): 9! K! / (K + 9)!.
    warm = TrainConfig(ema_decay=0.9999, ema_warmup=True)
    closed = math.exp(math.lgamma(10) + math.lgamma(51) - math.lgamma(60))
    assert ema_initial_share(warm, 50) == pytest.approx(closed, rel=1e-10)
    # Warm-up up to d = 0.9 (reached at k = 80), then 0.9 for the remaining 120 steps.
    mixed = TrainConfig(ema_decay=0.9, ema_warmup=True)
    closed = math.exp(math.lgamma(10) + math.lgamma(81) - math.lgamma(90)) * 0.9**120
    assert ema_initial_share(mixed, 200) == pytest.approx(closed, rel=1e-10)


@pytest.mark.parametrize("decay,warmup", [(0.9999, False), (0.999, True), (0.9, True), (0.5, False)])
def test_ema_steps_to_share_inverts_the_share(decay, warmup):
    config = TrainConfig(ema_decay=decay, ema_warmup=warmup)
    n = ema_steps_to_share(config, 0.01)
    assert ema_initial_share(config, n) <= 0.01 < ema_initial_share(config, n - 1)


def test_long_ema_horizon_is_an_error(tmp_path):
    """The classic: EMA 0.9999 without warm-up over 50 steps is 99.5% the random network."""
    run = tmp_path / "ema"
    train(toy2d(steps=50, ema_decay=0.9999, ema_warmup=False), run, progress=False, device="cpu")
    finding = next(f for f in diagnose(run) if f.code == "ema-horizon")
    assert finding.severity == "error"
    assert "99.5%" in finding.message and "6,931 steps" in finding.message and "ema_warmup" in finding.message
    edit_config(run, ema_warmup=True)  # the warm-up forgets the initial network within a few steps
    assert by_code(diagnose(run))["ema-horizon"] == {"ok"}
    edit_config(run, ema_warmup=False, ema_decay=0.05 ** (1 / 50))  # 5% left: a warning
    assert by_code(diagnose(run))["ema-horizon"] == {"warning"}


# --- a healthy run and the CLI --------------------------------------------------------------------


def test_healthy_run_has_no_errors_or_warnings(healthy):
    findings = diagnose(healthy)
    assert problems(findings) == {}, findings
    codes = by_code(findings)
    for code in ("checkpoint", "weights", "stopped-early", "ema-horizon", "loss", "lr", "data-scale"):
        assert codes[code] == {"ok"}, code
    assert verdict(findings).startswith("no errors")
    assert problems(diagnose(healthy / "model")) == {}  # the model directory, with log.csv beside it


def test_cli_prints_one_line_per_finding_and_exits_1_on_errors(healthy, tmp_path, capsys):
    assert main(["doctor", str(healthy)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert all(line.split()[0] in ("ok", "info", "warning", "error") for line in lines[:-1])
    assert lines[-1].startswith("verdict")
    run = copy(healthy, tmp_path)
    (run / "model" / "ema.safetensors").unlink()
    assert main(["doctor", str(run), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert {"severity": "error", "code": "ema-weights"} in [
        {k: f[k] for k in ("severity", "code")} for f in report["findings"]]
    assert report["verdict"].startswith("1 error")


def test_not_a_run_is_a_one_line_error_with_status_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    for path in (tmp_path, tmp_path / "notes.txt", tmp_path / "missing"):
        with pytest.raises(ValueError):
            diagnose(path)
        assert main(["doctor", str(path)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("difflab: error:"), err
    done = subprocess.run([sys.executable, "-m", "difflab", "doctor", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"difflab: error: {tmp_path}: not a difflab training run (no model/, log.csv or samples/ in it)\n"


# --- the loss -------------------------------------------------------------------------------------


def test_flat_rising_and_non_finite_losses(healthy, tmp_path):
    run, rng = copy(healthy, tmp_path), np.random.default_rng(0)
    noise = 0.03 * rng.standard_normal(40)
    cases = {
        "flat": (1.0 + noise, {"loss-flat": "warning"}),
        "rising": (np.r_[np.linspace(1.0, 0.3, 20), np.linspace(0.3, 1.5, 20)] + noise, {"loss-diverging": "error"}),
        "creeping up": (np.r_[np.linspace(1.0, 0.5, 20), np.linspace(0.5, 0.7, 20)] + noise / 3,
                        {"loss-diverging": "warning"}),
        "falling": (np.linspace(1.0, 0.5, 40) + noise, {}),
        "levelling off at once": (np.r_[2.0, 1.0 + noise[1:]], {}),
        "non-finite": (np.r_[np.linspace(1.0, 0.5, 20), [float("nan")] * 20], {"loss-nonfinite": "error"}),
    }
    for name, (losses, expected) in cases.items():
        write_log(run, losses)
        found = {c: s for c, s in problems(diagnose(run)).items() if c.startswith("loss")}
        assert found == expected, name
    write_log(run, np.linspace(1.0, 0.5, 5))
    assert by_code(diagnose(run))["loss"] == {"info"}  # too few rows to say


# --- config: learning rate, progress --------------------------------------------------------------


@pytest.mark.parametrize("factor,severity", [(100, "warning"), (0.01, "warning"), (3, "ok"), (0.2, "ok")])
def test_learning_rate_far_from_the_presets(healthy, tmp_path, factor, severity):
    run = copy(healthy, tmp_path)
    edit_config(run, lr=PRESETS["toy2d"].lr * factor)
    assert by_code(diagnose(run))["lr"] == {severity}


def test_a_run_stopped_early(healthy, tmp_path):
    run = copy(healthy, tmp_path)
    edit_config(run, steps=1000)  # as if the run had been asked for 1000 steps and stopped at 200
    finding = next(f for f in diagnose(run) if f.code == "stopped-early")
    assert finding.severity == "warning"
    assert "step 200 of 1000" in finding.message and "--resume" in finding.message
    edit_config(run, step=150, steps=200)  # the log goes on past the last checkpoint
    finding = next(f for f in diagnose(run) if f.code == "stopped-early")
    assert "50 steps after the last checkpoint were lost" in finding.message


# --- files ----------------------------------------------------------------------------------------


def test_missing_and_damaged_files(healthy, tmp_path):
    def case(name, damage):
        run = Path(shutil.copytree(healthy, tmp_path / name))
        damage(run)
        return diagnose(run)

    model = "model"
    found = case("no-ema", lambda r: (r / model / "ema.safetensors").unlink())
    assert problems(found) == {"ema-weights": "error"}
    found = case("no-weights", lambda r: (r / model / "model.safetensors").unlink())
    assert problems(found) == {"weights": "error"}
    found = case("no-state", lambda r: [p.unlink() for p in (r / model).glob("training_state.*")])
    assert problems(found) == {"training-state": "warning"}
    found = case("no-log", lambda r: (r / "log.csv").unlink())
    assert problems(found) == {"log": "warning"} and by_code(found)["loss"] == {"info"}
    found = case("torn-weights", lambda r: (r / model / "ema.safetensors").write_bytes(b"\0" * 20))
    assert problems(found) == {"weights": "error"}
    found = case("no-model", lambda r: shutil.rmtree(r / model))
    assert problems(found) == {"checkpoint": "error"}
    assert by_code(found)["ema-horizon"] == by_code(found)["lr"] == {"info"}  # skipped, not crashed
    found = case("bad-config", lambda r: (r / model / "config.json").write_text("{not json"))
    assert problems(found) == {"config": "error"}
    found = case("empty-log", lambda r: (r / "log.csv").write_text("garbage\n"))
    assert by_code(found)["loss"] == {"info"}


def test_a_model_directory_alone(healthy, tmp_path):
    model_dir = Path(shutil.copytree(healthy / "model", tmp_path / "somewhere"))
    found = diagnose(model_dir)
    assert problems(found) == {} and by_code(found)["log"] == {"info"}


# --- data -----------------------------------------------------------------------------------------


def test_images_in_zero_one_or_a_sliver_are_range_errors(image_run, tmp_path):
    assert by_code(diagnose(image_run))["data-range"] == {"ok"}
    rng = np.random.default_rng(1)
    half = tmp_path / "half.npy"  # floats in [0, 1]: unnormalised
    np.save(half, rng.random((64, 1, 8, 8)).astype(np.float32))
    sliver = tmp_path / "sliver.npy"  # uint8 holding 0 and 1 instead of 0..255
    np.save(sliver, rng.integers(0, 2, (64, 8, 8)).astype(np.uint8))
    run = copy(image_run, tmp_path)
    for data in (half, sliver):
        edit_config(run, data=str(data))
        finding = next(f for f in diagnose(run) if f.code == "data-range")
        assert finding.severity == "error" and "[-1, 1]" in finding.message
    edit_config(run, data=str(tmp_path / "gone.npy"))
    assert by_code(diagnose(run))["data"] == {"info"}  # cannot be loaded: not checked, not a crash


def test_points_far_from_sigma_data(healthy, tmp_path):
    run = copy(healthy, tmp_path)
    edit_config(run, sigma_data=0.05)  # moons have standard deviation about 1: 20x sigma_data
    finding = next(f for f in diagnose(run) if f.code == "data-scale")
    assert finding.severity == "warning" and "sigma_data" in finding.message

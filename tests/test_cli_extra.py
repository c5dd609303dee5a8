"""The command line for guidance, editing and likelihood: sample --class/--guidance/--classifier,
train-classifier, edit METHOD, eval --nll. Tiny models (2 training steps, 8-channel UNets): the
commands run end to end and report user errors in one line; quality is not the point."""
import numpy as np
import pytest
from PIL import Image

from difflab.cli import main
from test_cli import assert_user_error, run  # tests/ is on sys.path (pytest rootdir import)

pytest.importorskip("difflab.training")

TINY = ["--steps", "2", "--batch-size", "8", "--set", "sample_every=0", "--set", "net.base_channels=8",
        "--set", "net.groups=8", "--set", "net.num_res_blocks=1", "--set", "net.attn_resolutions=[]"]
DISCRETE_VP = ["--set", 'schedule={"kind": "DiscreteVP", "beta_schedule": "linear", "T": 10}',
               "--set", "prediction=eps", "--set", "weighting=uniform"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A class-conditional EDM digits model and an unconditional DiscreteVP (T = 10) one."""
    root = tmp_path_factory.mktemp("models")
    assert main(["train", "--preset", "digits-cond", "--out", str(root / "cond"), *TINY]) == 0
    assert main(["train", "--preset", "digits", "--out", str(root / "vp"), *TINY, *DISCRETE_VP]) == 0
    return root


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("classifier") / "cls"
    assert main(["train-classifier", "--data", "digits", "--out", str(out), "--steps", "2", "--batch-size", "8"]) == 0
    return out


@pytest.mark.parametrize("command", [["train-classifier"], ["edit"], ["edit", "inpaint"], ["edit", "ddrm"]])
def test_new_commands_have_help(capsys, command):
    status, out, _ = run(capsys, *command, "--help")
    assert status == 0 and out.startswith("usage: difflab")


def test_sample_with_class_and_guidance(capsys, models, tmp_path):
    status, _, err = run(capsys, "sample", models / "cond", "--n", 3, "--steps", 2, "--class", 7, "--guidance", 3,
                         "--npz", tmp_path / "x.npz")
    assert status == 0, err
    with np.load(tmp_path / "x.npz") as arrays:
        assert arrays["x"].shape == (3, 1, 8, 8) and (arrays["y"] == 7).all()
    assert_user_error(run(capsys, "sample", models / "cond", "--n", 2, "--class", 10, "--npz", tmp_path / "y.npz"),
                      "out of range")
    assert_user_error(run(capsys, "sample", models / "vp", "--n", 2, "--guidance", 2, "--npz", tmp_path / "y.npz"),
                      "unconditional")
    assert_user_error(run(capsys, "sample", models / "cond", "--n", 2, "--classifier-scale", 2,
                          "--npz", tmp_path / "y.npz"), "--classifier")


def test_train_classifier_and_classifier_guidance(capsys, models, classifier, tmp_path):
    assert (classifier / "classifier.json").exists()
    status, out, err = run(capsys, "sample", models / "vp", "--n", 2, "--steps", 2, "--class", 4, "--classifier",
                           classifier, "--classifier-scale", 2, "--npz", tmp_path / "x.npz")
    assert status == 0, err  # classifier guidance of an unconditional model
    with np.load(tmp_path / "x.npz") as arrays:
        assert arrays["x"].shape == (2, 1, 8, 8) and (arrays["y"] == 4).all()
    assert_user_error(run(capsys, "sample", models / "vp", "--n", 2, "--class", 10, "--classifier", classifier,
                          "--npz", tmp_path / "y.npz"), "out of range")


def test_train_classifier_on_user_data_and_class_mismatch(capsys, models, tmp_path):
    """A 5-class classifier trains from a .npz, prints its accuracy, and cannot guide a 10-class model."""
    data = tmp_path / "five.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.integers(0, 256, (20, 1, 8, 8), dtype=np.uint8), y=np.arange(20) % 5)
    status, out, err = run(capsys, "train-classifier", "--data", data, "--out", tmp_path / "cls5", "--steps", 1,
                           "--batch-size", 4)
    assert status == 0, err
    assert "held-out accuracy" in out and "5 classes" in out and "saved in" in out
    assert_user_error(run(capsys, "sample", models / "cond", "--n", 2, "--classifier", tmp_path / "cls5",
                          "--npz", tmp_path / "y.npz"), "5 classes but the model has 10")


EDITS = [
    ["inpaint", "--mask-kind", "random", "--jump-length", 1, "--resamplings", 2],
    ["inpaint", "--method", "replace"],
    ["sdedit", "--strength", 0.6],
    ["ilvr", "--factor", 2],
    ["invert"],
    ["ddrm", "--task", "sr2"],
    ["ddrm", "--task", "inpaint", "--sigma-y", 0.05],
]


@pytest.mark.parametrize("edit", EDITS, ids=lambda e: " ".join(map(str, e)))
def test_edit_writes_a_figure(capsys, models, tmp_path, edit):
    png = tmp_path / "edit.png"
    status, out, err = run(capsys, "edit", edit[0], models / "vp", "--from-data", "digits", "--n", 2,
                           "--steps", 2, "--out", png, *edit[1:])
    assert status == 0, err
    rows = 2 if edit[0] == "sdedit" else 3
    with Image.open(png) as img:
        assert img.size == (2 * 65 + 1, rows * 65 + 1)  # 8x8 digits shown at 64 px, 1 px padding
    if edit[0] == "invert":
        assert "reconstruction RMSE" in out


def test_edit_inputs_and_user_errors(capsys, models, tmp_path):
    digit = tmp_path / "digit.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(digit)
    batch = tmp_path / "batch.npy"
    np.save(batch, np.zeros((3, 1, 8, 8), np.float32))
    for source in (digit, batch):
        status, _, err = run(capsys, "edit", "sdedit", models / "cond", "--input", source, "--steps", 2,
                             "--out", tmp_path / "o.png")
        assert status == 0, err
    Image.fromarray(np.full((6, 6), 255, np.uint8)).save(tmp_path / "mask6.png")
    assert_user_error(run(capsys, "edit", "inpaint", models / "cond", "--input", digit, "--mask",
                          tmp_path / "mask6.png", "--out", tmp_path / "o.png"), "mask", "6x6")
    assert_user_error(run(capsys, "edit", "sdedit", models / "cond", "--input", digit, "--strength", 1.5,
                          "--out", tmp_path / "o.png"), "strength")
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "big.png")
    assert_user_error(run(capsys, "edit", "sdedit", models / "cond", "--input", tmp_path / "big.png",
                          "--out", tmp_path / "o.png"), "1x12x12", "1x8x8")
    (tmp_path / "notes.png").write_text("not an image")
    assert_user_error(run(capsys, "edit", "ilvr", models / "cond", "--input", tmp_path / "notes.png",
                          "--out", tmp_path / "o.png"), "not a readable image")
    assert_user_error(run(capsys, "edit", "ddrm", models / "cond", "--input", digit, "--task", "colorize",
                          "--out", tmp_path / "o.png"), "colorization")


def test_eval_nll(capsys, models):
    status, out, err = run(capsys, "eval", models / "vp", "--nll", "--n", 2, "--trace", "hutchinson",
                           "--probes", 2)
    assert status == 0, err
    assert "ODE" in out and "ELBO (10 steps" in out and out.count("bits/dim") == 2
    assert_user_error(run(capsys, "eval", models / "vp", "--nll", "--n", 2, "--probes", 2), "probes")


def test_every_preset_has_a_measured_cpu_time(capsys):
    """`difflab info` prints each preset's CPU time from difflab/training/preset_times.json
    (benchmarks/preset_times.py): no preset may be missing from it."""
    import json
    from pathlib import Path

    from difflab import training
    from difflab.cli import main
    from difflab.training import AE_PRESETS, PRESETS

    table = json.loads((Path(training.__file__).parent / "preset_times.json").read_text())
    assert set(PRESETS) <= set(table["presets"]) and set(AE_PRESETS) <= set(table["autoencoder_presets"])
    assert all(v["seconds_per_step"] > 1e-5 for v in [*table["presets"].values(), *table["autoencoder_presets"].values()])
    assert main(["info"]) == 0
    assert "not measured" not in capsys.readouterr().out

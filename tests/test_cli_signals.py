"""The command line for signals: forecast, impute, sample (line plots, WAV files) and eval of
tiny ar1, ar1-csdi and tones models (a few training steps, 8-channel DiffWave networks). The
commands run end to end, write arrays of the documented shapes, keep observed values exactly and
report user errors in one line; forecast quality is not the point."""
import numpy as np
import pytest

from difflab.training import PRESETS, load_dataset, train
from test_cli import assert_user_error, run  # tests/ is on sys.path (pytest rootdir import)

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = ("--device", "cpu")
FAST = ("--samples", 8, "--steps", 3, *CPU)  # RePaint with 3 steps, or 3 conditional steps


def tiny(preset: str, steps: int = 20):
    net = {**PRESETS[preset].net, "residual_channels": 8, "layers": 2}
    return PRESETS[preset].replace(steps=steps, warmup_steps=2, batch_size=16, ckpt_every=0, sample_every=0,
                                   log_every=10, net=net)


@pytest.fixture(scope="module")
def models(tmp_path_factory, one_thread):
    """Model directories by preset: ar1 (unconditional), ar1-csdi (imputation) and tones (audio, 8 kHz)."""
    root = tmp_path_factory.mktemp("signals")
    return {name: train(tiny(name, steps), root / name, progress=False, device="cpu")
            for name, steps in (("ar1", 20), ("ar1-csdi", 20), ("tones", 5))}


@pytest.fixture(scope="module")
def windows():
    """Four ar1 test windows (4, 1, 64) as float64."""
    return load_dataset("ar1", split="test").x[:4].double().numpy()


def save(path, x):
    """``x`` as the .npy file ``path``; returns the path."""
    np.save(path, x)
    return path


def test_forecast_and_impute_have_help(capsys):
    for command in ("forecast", "impute"):
        status, out, _ = run(capsys, command, "--help")
        assert status == 0 and out.startswith(f"usage: difflab {command}")


def test_forecast_from_npy_writes_samples_quantiles_and_a_fan_chart(capsys, models, windows, tmp_path):
    context = save(tmp_path / "context.npy", windows[..., :56])
    status, out, err = run(capsys, "forecast", models["ar1"], "--context", context, "--horizon", 8, *FAST,
                           "--seed", 0, "--npz", tmp_path / "f.npz", "--out", tmp_path / "f.png", "--series", 3)
    assert status == 0, err
    with np.load(tmp_path / "f.npz") as f:
        samples, quantiles, levels = f["samples"], f["quantiles"], f["levels"]
    assert samples.shape == (8, 4, 1, 8)  # the future only: the context is not part of the output
    assert np.isfinite(samples).all()
    assert quantiles.shape == (5, 4, 1, 8) and levels.tolist() == [0.05, 0.25, 0.5, 0.75, 0.95]
    assert np.allclose(quantiles[2], np.median(samples, 0), atol=1e-5)
    assert (np.diff(quantiles, axis=0) >= 0).all()
    assert (tmp_path / "f.png").stat().st_size > 0
    assert "f.npz" in out and "f.png" in out


def test_forecast_from_csv_rows_and_a_column(capsys, models, windows, tmp_path):
    rows = tmp_path / "rows.csv"
    np.savetxt(rows, windows[:3, 0, :60], delimiter=",")  # longer than the 56 steps used
    status, _, err = run(capsys, "forecast", models["ar1-csdi"], "--context", rows, "--horizon", 8, *FAST,
                         "--npz", tmp_path / "rows.npz")
    assert status == 0, err
    with np.load(tmp_path / "rows.npz") as f:
        assert f["samples"].shape == (8, 3, 1, 8) and np.isfinite(f["samples"]).all()
    column = tmp_path / "column.csv"
    np.savetxt(column, windows[0, 0, :56, None], delimiter=",")  # one column: one series
    status, _, err = run(capsys, "forecast", models["ar1-csdi"], "--context", column, "--horizon", 8, *FAST,
                         "--out", tmp_path / "column.png")
    assert status == 0, err
    assert (tmp_path / "column.png").exists()


def test_forecast_with_truth_prints_crps_coverage_and_pit(capsys, models, windows, tmp_path):
    context, truth = save(tmp_path / "c.npy", windows[:, 0, :56]), save(tmp_path / "t.npy", windows[:, 0, 56:])
    status, out, err = run(capsys, "forecast", models["ar1-csdi"], "--context", context, "--horizon", 8, *FAST,
                           "--truth", truth, "--npz", tmp_path / "f.npz")
    assert status == 0, err
    assert "CRPS" in out and "50% interval" in out and "90% interval" in out
    pit = out.split("PIT histogram")[1].split(":")[1].split()
    assert len(pit) == 10 and abs(sum(map(float, pit)) - 10) < 0.05  # a density over 10 bins


@pytest.mark.parametrize("preset, method", [("ar1-csdi", "auto"), ("ar1", "replace")])
def test_impute_keeps_the_observed_values_exactly(capsys, models, windows, tmp_path, preset, method):
    data = windows.copy()
    data[:, :, 20:30] = np.nan
    data[1, :, :5] = np.nan
    status, out, err = run(capsys, "impute", models[preset], "--data", save(tmp_path / "d.npy", data), *FAST,
                           "--method", method, "--truth", save(tmp_path / "t.npy", windows),
                           "--npz", tmp_path / "i.npz", "--out", tmp_path / "i.png")
    assert status == 0, err
    with np.load(tmp_path / "i.npz") as f:
        samples, mask = f["samples"], f["mask"]
        assert f["quantiles"].shape == (5, 4, 1, 64)
    assert samples.shape == (8, 4, 1, 64) and np.isfinite(samples).all()
    assert (mask == np.isfinite(data)).all()
    observed = data.astype(np.float32)[mask]
    assert all((s[mask] == observed).all() for s in samples)
    assert samples[:, ~mask].std(0).min() > 0  # the missing values vary between samples
    assert "45 missing values: CRPS" in out  # 4 x 10 + 5, scored there only
    assert (tmp_path / "i.png").exists()


def test_sample_draws_signals_and_writes_wav_files(capsys, models, tmp_path):
    from scipy.io import wavfile

    status, out, err = run(capsys, "sample", models["ar1"], "--n", 3, "--steps", 3, *CPU, "--out", tmp_path / "s.png")
    assert status == 0, err
    assert (tmp_path / "s.png").stat().st_size > 0
    status, out, err = run(capsys, "sample", models["tones"], "--n", 2, "--steps", 3, *CPU, "--wav", tmp_path / "wav")
    assert status == 0, err
    for i in range(2):
        rate, pcm = wavfile.read(tmp_path / "wav" / f"sample_{i:03d}.wav")
        assert rate == 8000 and pcm.dtype == np.int16 and pcm.shape == (1024,)
    status, _, err = run(capsys, "sample", models["ar1"], "--n", 1, "--steps", 3, *CPU, "--wav", tmp_path / "ar1",
                         "--sample-rate", 16000)
    assert status == 0, err
    assert wavfile.read(tmp_path / "ar1" / "sample_000.wav")[0] == 16000


def test_eval_of_an_ar1_model_prints_the_horizon_table_beside_the_exact_crps(capsys, models):
    status, out, err = run(capsys, "eval", models["ar1"], "--n", 4, *FAST)
    assert status == 0, err
    header, *rows = [line for line in out.splitlines() if line.strip()][1:]
    assert "exact" in header and "ratio" in header and "cover 90%" in header
    assert [int(row.split()[0]) for row in rows] == [1, 8, 32]
    for row in rows:
        crps, exact, ratio = map(float, row.split()[1:4])
        assert 0 < exact < crps * 10 and ratio == pytest.approx(crps / exact, abs=0.01)
        assert len(row.split()) == 6 + 10  # horizon, CRPS, exact, ratio, two coverages and 10 PIT bins


def test_eval_of_a_tones_model_prints_the_pitch_distribution(capsys, models):
    status, out, err = run(capsys, "eval", models["tones"], "--n", 3, "--steps", 3, *CPU)
    assert status == 0, err
    assert "fundamental frequency" in out and "3 samples" in out and "3 test tones" in out


# "model:NAME" is the model of that preset, "@NAME" a file of test_user_errors_are_one_line's tmp_path
NPZ = ("--npz", "@out.npz")
ERRORS = {
    "horizon >= window": (["forecast", "model:ar1", "--context", "@c56.npy", "--horizon", 64, *NPZ],
                          "horizon must lie in [1, 63]"),
    "context too short": (["forecast", "model:ar1", "--context", "@c10.npy", "--horizon", 8, *NPZ],
                          "needs the last 56"),
    "NaN in context": (["forecast", "model:ar1", "--context", "@cnan.npy", "--horizon", 8, *NPZ], "finite"),
    "two channels": (["forecast", "model:ar1", "--context", "@c2ch.npy", "--horizon", 8, *NPZ], "channel"),
    "truth shape": (["forecast", "model:ar1", "--context", "@c56.npy", "--horizon", 8, "--truth", "@c10.npy", *NPZ],
                    "(4, 1, 8)"),
    "series": (["forecast", "model:ar1", "--context", "@c56.npy", "--horizon", 8, "--series", 4, *NPZ],
               "holds 4 series"),
    "unreadable": (["forecast", "model:ar1", "--context", "@junk.npy", "--horizon", 8, *NPZ], "cannot read"),
    "csv header": (["forecast", "model:ar1", "--context", "@header.csv", "--horizon", 8, *NPZ], "line 1"),
    "no output": (["forecast", "model:ar1", "--context", "@c56.npy", "--horizon", 8], "give --out"),
    "no NaN": (["impute", "model:ar1-csdi", "--data", "@c56.npy", *NPZ], "nothing to impute"),
    "all NaN": (["impute", "model:ar1-csdi", "--data", "@allnan.npy", *NPZ], "every value is missing"),
    "inf": (["impute", "model:ar1-csdi", "--data", "@inf.npy", *NPZ], "infinite"),
    "impute two channels": (["impute", "model:ar1-csdi", "--data", "@n2ch.npy", *NPZ], "2 channel(s) x 64 steps"),
    "impute length": (["impute", "model:ar1-csdi", "--data", "@n50.npy", *NPZ], "window is 1 channel(s) x 64 steps"),
    "condition on ar1": (["impute", "model:ar1", "--data", "@n64.npy", "--method", "condition", *NPZ],
                         "imputation model"),
    "sample imputation model": (["sample", "model:ar1-csdi", "--n", 2, "--out", "@out.png"], "difflab forecast"),
    "wav without rate": (["sample", "model:ar1", "--n", 2, "--wav", "@wav"], "--sample-rate"),
    "rate without wav": (["sample", "model:ar1", "--n", 2, "--out", "@out.png", "--sample-rate", 8000], "--wav only"),
}


@pytest.mark.parametrize("argv, phrase", ERRORS.values(), ids=ERRORS.keys())
def test_user_errors_are_one_line(capsys, models, windows, tmp_path, argv, phrase):
    with_nan = windows.copy()
    with_nan[:, :, 10] = np.nan
    inf = with_nan.copy()
    inf[0, 0, 0] = np.inf
    arrays = {"c56": windows[..., :56], "c10": windows[..., :10], "c2ch": np.repeat(windows, 2, 1),
              "cnan": np.where(np.arange(56) == 55, np.nan, windows[..., :56]), "allnan": np.full((1, 64), np.nan),
              "inf": inf, "n2ch": np.repeat(with_nan, 2, 1), "n50": with_nan[..., :50], "n64": with_nan}
    for name, x in arrays.items():
        np.save(tmp_path / f"{name}.npy", x)
    (tmp_path / "junk.npy").write_text("not an array")
    (tmp_path / "header.csv").write_text("a,b,c\n1,2,3\n")

    def resolve(a):
        if isinstance(a, str) and a.startswith("model:"):
            return models[a.removeprefix("model:")]
        return tmp_path / a[1:] if isinstance(a, str) and a.startswith("@") else a

    assert_user_error(run(capsys, *map(resolve, argv), *CPU), phrase)
    assert not any((tmp_path / name).exists() for name in ("out.npz", "out.png", "wav"))

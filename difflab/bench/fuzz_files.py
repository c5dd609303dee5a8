"""The broken files of the bad-input corpus (:mod:`difflab.bench.fuzz`): images, arrays, signals,
TOML configs and model directories, each damaged one way.

:func:`write_bad_files` fills a folder with truncated, empty and mislabelled images, image folders
that hold nothing readable, arrays with NaN / inf or of the wrong rank or dtype, truncated and
garbage .npy / .npz files, signal files for forecasting and imputation, sigma schedules and TOML
configs with syntax errors, unknown keys and wrong types (:data:`BAD_TOML_VALUES`).
:func:`corrupt_models` and :func:`broken_runs` copy a trained model and break the copy: edited or
truncated config.json, truncated, emptied, garbage or NaN safetensors, a damaged training state.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

__all__ = ["BAD_TOML_VALUES", "MODEL", "toml_value", "write_bad_files", "corrupt_models", "broken_runs", "copy_model"]

MODEL = "model"  # the model directory inside a training output folder

#: Values of TOML keys that TrainConfig must refuse with one sentence: (key, value) with value a
#: Python object written by :func:`toml_value`.
BAD_TOML_VALUES = (
    ("steps", -1), ("steps", 0), ("steps", 1.5), ("steps", True), ("steps", "10"), ("steps", [1]),
    ("batch_size", 0), ("batch_size", -8), ("lr", float("nan")), ("lr", float("inf")), ("lr", -1e-3), ("lr", 0),
    ("lr", "fast"), ("betas", [0.9]), ("betas", [0.9, 1.5]), ("betas", "x"), ("ema_decay", 1.0), ("ema_decay", -0.1),
    ("cond_drop", 2.0), ("cond_drop", -0.5), ("data", 5), ("seed", -1), ("precision", "fp8"), ("network", "rnn"),
    ("prediction", "nope"), ("num_classes", 0), ("keep", 0), ("grad_accum", 0), ("log_every", 0),
    ("warmup_steps", -1), ("weight_decay", -1.0), ("grad_clip", -1.0), ("sample_sampler", "nope"),
    ("sigma_data", 0.0), ("P_std", float("-inf")), ("time_sampling", "logit_normal"), ("vlb_weight", 1.0),
    ("objective", "progressive"), ("task", "impute"), ("preset", "nope"), ("preset", [1]), ("preset", 3),
    ("net", 5), ("schedule", "edm"), ("resolution", 0), ("channels", 2), ("compile", "fast"), ("coupling", "x"),
    ("lr_decay", "step"), ("min_snr_gamma", 0.0), ("logit_std", 0.0), ("ema_warmup", "yes"), ("distill", [1]),
    ("native", {"sampler": "nope"}), ("sample_steps", 0), ("sample_every", -1), ("ckpt_every", -2),
)


def write_bad_files(folder: Path) -> None:
    """Write every bad file of the corpus into ``folder`` (created if need be)."""
    folder.mkdir(parents=True, exist_ok=True)
    for write in (_write_images, _write_arrays, _write_signals, _write_tomls):
        write(folder)


def _png_bytes(size=(8, 8), mode="L", colour=128) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb_png() -> bytes:
    """A valid 1x1 PNG whose header claims 100000 x 100000 pixels (Pillow refuses it as a
    decompression bomb)."""
    import struct
    import zlib

    data = bytearray(_png_bytes((1, 1)))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", 100_000, 100_000)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def _write_images(d: Path) -> None:
    good = _png_bytes()
    files = {"good8.png": good, "truncated.png": good[: len(good) // 2], "empty.png": b"",
             "text.png": b"this is not an image\n", "signature.png": good[:8], "bomb.png": _bomb_png(),
             "rect.png": _png_bytes((12, 10), "RGB", (200, 10, 10)), "mask5.png": _png_bytes((5, 5), "L", 255),
             "notes.txt": b"hello\n", "data.csv.gz": b"\x1f\x8b garbage"}
    for name, data in files.items():
        (d / name).write_bytes(data)
    folders = {
        "empty_dir": {},
        "corrupt_dir": {"a.png": good[:40], "b.png": b"", "c.jpg": b"not a jpeg"},
        "rect_dir": {f"r{i}.png": _png_bytes((12, 10), "L", 40 * i) for i in range(4)},
        "hidden_dir": {".a.png": good, ".b.png": good},
        "text_dir": {"readme.txt": b"no images", "data.json": b"{}"},
        "wav_corrupt_dir": {"a.wav": b"RIFF\x00\x00", "b.wav": b""},
        "mixed_dir": {"a.png": _png_bytes((8, 8)), "b.png": _png_bytes((10, 10), "RGB", (1, 2, 3)),
                      "c.png": _png_bytes((16, 12))},
        "unlabelled_dir": {f"u{i}.png": _png_bytes((8, 8), "L", 30 * i) for i in range(4)},
    }
    for folder, contents in folders.items():
        (d / folder).mkdir(exist_ok=True)
        for name, data in contents.items():
            (d / folder / name).write_bytes(data)
    (d / "nested_empty_dir" / "a" / "b").mkdir(parents=True, exist_ok=True)


def _write_arrays(d: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (16, 1, 8, 8)).astype(np.float32)
    with_nan, with_inf, with_neg_inf = images.copy(), images.copy(), images.copy()
    with_nan[3, 0, 2, 2], with_inf[0, 0, 0, 0], with_neg_inf[5, 0, 7, 7] = np.nan, np.inf, -np.inf
    points = rng.standard_normal((32, 2)).astype(np.float32)
    points_nan = points.copy()
    points_nan[4, 1] = np.nan
    arrays = {"nan.npy": with_nan, "inf.npy": with_inf, "neginf.npy": with_neg_inf, "points_nan.npy": points_nan,
              "rank1.npy": np.zeros(16, np.float32), "rank5.npy": np.zeros((2, 1, 1, 8, 8), np.float32),
              "scalar.npy": np.float32(1.0), "empty.npy": np.zeros((0, 2), np.float32),
              "zero_width.npy": np.zeros((16, 0), np.float32), "strings.npy": np.array(["a", "bc"]),
              "int64.npy": np.zeros((4, 1, 8, 8), np.int64), "complex.npy": np.zeros((4, 2), np.complex64),
              "bool.npy": np.zeros((4, 2), bool), "range.npy": images * 3, "points3.npy": rng.standard_normal((32, 3))}
    for name, value in arrays.items():
        np.save(d / name, value)
    np.save(d / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    whole = (d / "range.npy").read_bytes()
    (d / "truncated.npy").write_bytes(whole[: len(whole) // 2])
    (d / "garbage.npy").write_bytes(rng.bytes(300))
    labels = np.arange(16) % 2
    np.savez(d / "good.npz", x=images, y=labels)
    (d / "truncated.npz").write_bytes((d / "good.npz").read_bytes()[:200])
    (d / "garbage.npz").write_bytes(b"PK\x03\x04" + rng.bytes(200))
    np.savez(d / "nokey.npz", z=images)
    np.savez(d / "labels_shape.npz", x=images, y=np.zeros(3, np.int64))
    np.savez(d / "labels_negative.npz", x=images, y=-labels - 1)
    np.savez(d / "labels_float.npz", x=images, y=labels + 0.5)
    np.savez(d / "noise_shape.npz", x=images, noise=np.zeros((16, 2), np.float32))
    np.savez(d / "noise_nan.npz", x=images, noise=with_nan)
    np.savez(d / "x_nan.npz", x=with_nan)
    np.savez(d / "no_arrays.npz")


def _write_signals(d: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    ctx = rng.standard_normal((4, 1, 64))
    gappy = ctx.copy()
    gappy[:, :, 40:] = np.nan
    signals = {"ctx.npy": ctx, "gappy.npy": gappy, "ctx_2ch.npy": rng.standard_normal((4, 2, 64)),
               "ctx_short.npy": ctx[..., :10], "ctx_4d.npy": ctx[None], "ctx_strings.npy": np.array(["x"] * 8),
               "ctx_empty.npy": np.zeros((0, 1, 64)), "gappy_2ch.npy": np.concatenate([gappy, gappy], 1),
               "gappy_short.npy": gappy[..., 32:], "complete.npy": ctx, "all_nan.npy": np.full((4, 1, 64), np.nan),
               "truth_shape.npy": rng.standard_normal((3, 1, 8)), "truth_full.npy": ctx}
    ctx_nan, ctx_inf, gappy_inf, truth_nan = ctx.copy(), ctx.copy(), gappy.copy(), ctx.copy()
    ctx_nan[1, 0, -3], ctx_inf[0, 0, -1], gappy_inf[2, 0, 5], truth_nan[0, 0, 50] = np.nan, np.inf, np.inf, np.nan
    signals.update({"ctx_nan.npy": ctx_nan, "ctx_inf.npy": ctx_inf, "gappy_inf.npy": gappy_inf,
                    "truth_nan.npy": truth_nan, "truth8_nan.npy": np.where(np.arange(8) == 3, np.nan, ctx[..., -8:])})
    for name, value in signals.items():
        np.save(d / name, value)
    (d / "header.csv").write_text("t0,t1,t2\n1,2,3\n")
    (d / "ragged.csv").write_text("1,2,3\n4,5\n")
    (d / "blank.csv").write_text("\n\n")
    (d / "words.csv").write_text("a,b\nc,d\n")
    (d / "sigmas_up.json").write_text("[1, 2, 3, 0]")
    (d / "sigmas_bad.json").write_text("{not json")
    (d / "sigmas_strings.json").write_text('["a", "b"]')
    (d / "sigmas_nan.json").write_text("[80, NaN, 0]")
    (d / "sigmas_one.json").write_text("[0]")
    (d / "sigmas_negative.json").write_text("[5, -1, 0]")


def _write_tomls(d: Path) -> None:
    texts = {"syntax.toml": "steps = [", "unknown.toml": 'preset = "toy2d"\nnope = 1\n', "empty.toml": "",
             "net_unknown.toml": 'preset = "toy2d"\n[net]\nfoo = 1\n',
             "net_type.toml": 'preset = "toy2d"\n[net]\nhidden_channels = "wide"\n',
             "net_negative.toml": 'preset = "toy2d"\n[net]\nhidden_channels = -4\n',
             "net_float.toml": 'preset = "toy2d"\n[net]\ndepth = 2.5\n',
             "schedule_kind.toml": 'preset = "toy2d"\n[schedule]\nkind = "nope"\n',
             "schedule_range.toml": 'preset = "toy2d"\n[schedule]\nsigma_min = 10.0\nsigma_max = 1.0\n',
             "missing_data.toml": 'preset = "toy2d"\ndata = "no-such-data-set"\n',
             "init_missing.toml": 'preset = "toy2d"\ninit = "/no/such/model"\n',
             "ae_missing.toml": 'preset = "toy2d"\nautoencoder = "/no/such/autoencoder"\n',
             "table_top.toml": 'preset = "toy2d"\n[steps]\nx = 1\n'}
    for name, text in texts.items():
        (d / name).write_text(text)
    (d / "binary.toml").write_bytes(b"\xff\xfe\x00garbage\x80")
    for i, (key, value) in enumerate(BAD_TOML_VALUES):
        base = "" if key == "preset" else 'preset = "toy2d"\n'
        (d / f"value{i:02d}.toml").write_text(base + f"{key} = {toml_value(value)}\n")


def toml_value(value) -> str:
    """``value`` (bool, number, string, list or dict) as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def corrupt_models(run: Path, d: Path) -> dict[str, Path]:
    """Copies of the model of the training folder ``run`` (a points model) in ``d``, each broken one
    way: name -> training folder."""
    src = run / MODEL
    config = json.loads((src / "config.json").read_text())
    text = (src / "config.json").read_text()

    def edited(**changes):
        return json.dumps({**config, **changes})

    configs = {
        "config_truncated": text[: len(text) // 2], "config_empty": "", "config_list": "[1, 2]",
        "config_unknown_key": edited(frobnicate=1), "config_steps_string": edited(steps="many"),
        "config_no_shape": json.dumps({k: v for k, v in config.items() if k != "data_shape"}),
        "config_shape_mismatch": edited(data_shape=[3]), "config_shape_string": edited(data_shape=["x"]),
        "config_shape_negative": edited(data_shape=[-2]), "config_shape_rank": edited(data_shape=[1, 2, 3, 4, 5]),
        "config_net_edited": edited(net={**config["net"], "hidden_channels": 64}),
        "config_net_unknown": edited(net={**config["net"], "wings": 2}),
        "config_network_unet": edited(network="unet"), "config_classes": edited(num_classes=5),
        "config_schedule": edited(schedule={"kind": "nope"}), "config_prediction": edited(prediction="nope"),
        "config_kind_image": edited(data_kind="image"), "config_kind_bogus": edited(data_kind="video"),
        "config_native_bad": edited(native={"sampler": "nope", "sigmas": [1, 0]}),
        "config_binary": "\udcff",
    }
    out = {}
    for name, body in configs.items():
        out[name] = copy_model(src, d / name)
        path = out[name] / MODEL / "config.json"
        if name == "config_binary":
            path.write_bytes(b"\xff\xfe{garbage")
        else:
            path.write_text(body)
    weights = (src / "ema.safetensors").read_bytes()
    broken = {"ema_truncated": weights[: len(weights) // 3], "ema_empty": b"",
              "ema_header": b"\x08" + b"\x00" * 7 + b"{", "ema_garbage": bytes((97 * i + 13) % 256 for i in range(256))}
    for name, body in broken.items():
        out[name] = copy_model(src, d / name)
        (out[name] / MODEL / "ema.safetensors").write_bytes(body)
    out["no_weights"] = copy_model(src, d / "no_weights")
    for name in ("ema.safetensors", "model.safetensors"):
        (out["no_weights"] / MODEL / name).unlink()
    out["ema_nan"] = copy_model(src, d / "ema_nan")
    _nan_weights(out["ema_nan"] / MODEL / "ema.safetensors")
    out["ema_renamed_key"] = copy_model(src, d / "ema_renamed_key")
    _rename_first_key(out["ema_renamed_key"] / MODEL / "ema.safetensors")
    out["config_dir"] = copy_model(src, d / "config_dir")
    (out["config_dir"] / MODEL / "config.json").unlink()
    (out["config_dir"] / MODEL / "config.json").mkdir()
    out["no_config"] = copy_model(src, d / "no_config")
    (out["no_config"] / MODEL / "config.json").unlink()
    return out


def copy_model(src: Path, dst: Path) -> Path:
    """``src`` (a model directory) copied to ``dst/model``: a training output folder."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst / MODEL)
    return dst


def _nan_weights(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(path)
    first = next(iter(state))
    state[first] = state[first].clone().fill_(float("nan"))
    save_file(state, path)


def _rename_first_key(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(path)
    first = next(iter(state))
    state["renamed." + first] = state.pop(first)
    save_file(state, path)


def broken_runs(run: Path, d: Path) -> dict[str, Path]:
    """Copies of the training folder ``run`` in ``d`` with a damaged training state (for --resume):
    name -> training folder."""
    out = {}
    for name, file, cut in (("state_json_truncated", "training_state.json", 0.5),
                            ("state_tensors_truncated", "training_state.safetensors", 0.3),
                            ("state_json_missing", "training_state.json", None),
                            ("state_tensors_missing", "training_state.safetensors", None)):
        copy = copy_model(run / MODEL, d / name)
        path = copy / MODEL / file
        if cut is None:
            path.unlink()
        else:
            path.write_bytes(path.read_bytes()[: int(len(path.read_bytes()) * cut)])
        out[name] = copy
    out["state_json_edited"] = copy_model(run / MODEL, d / "state_json_edited")
    path = out["state_json_edited"] / MODEL / "training_state.json"
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "step": "five", "window": None}))
    return out

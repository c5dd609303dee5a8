"""Bad inputs for every command (issue 17): a generated corpus, a runner and a summary.

:func:`bad_inputs` trains four tiny models once (a 2-D toy, an unconditional and a class-conditional
digits UNet, an AR(1) WaveNet; about a second each), writes broken files beside them (truncated,
empty and mislabelled images, arrays with NaN / inf or the wrong rank, TOML configs with wrong types
and unknown keys, model directories with edited or truncated config.json and safetensors, ...) and
returns one :class:`Case` per bad command line. :func:`run_case` runs one through
:func:`difflab.cli.main.main` in this process (stderr captured, warnings shown as a terminal would)
or through ``python -m difflab`` in a fresh one; the contract it checks (docs/design.md, "User
errors are one sentence") is exit status 2, exactly one line on stderr (progress bars and warnings
count as lines), no traceback, and none of the command's outputs left behind.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

from .fuzz_files import BAD_TOML_VALUES, MODEL, broken_runs, copy_model, corrupt_models, toml_value, write_bad_files

__all__ = ["Case", "Outcome", "Models", "Corpus", "corpus", "bad_inputs", "make_models", "run_case", "summarise",
           "toml_value", "BAD_TOML_VALUES", "BAD_COUNTS"]

#: Counts that must be positive: (command prefix, option) for every command; each is tried at 0 and -1.
BAD_COUNTS = (
    (("sample", "{toy}", "--n", "4", "--npz", "{out}.npz"), ("--n", "--steps", "--batch-size")),
    (("train", "--preset", "toy2d", "--out", "{out}"), ("--steps", "--batch-size", "--keep")),
    (("train-classifier", "--out", "{out}"), ("--steps", "--batch-size")),
    (("train-autoencoder", "--preset", "digits-ae", "--out", "{out}"), ("--steps", "--batch-size")),
    (("eval", "{digits}"), ("--n", "--steps", "--samples")),
    (("eval", "{digits}", "--nll"), ("--n", "--probes")),
    (("forecast", "{ar1}", "--context", "{files}/ctx.npy", "--horizon", "8", "--npz", "{out}.npz"),
     ("--samples", "--steps", "--batch-size", "--horizon")),
    (("impute", "{ar1}", "--data", "{files}/gappy.npy", "--npz", "{out}.npz"),
     ("--samples", "--steps", "--batch-size")),
    (("reflow", "{toy}", "--out", "{out}", "--pairs", "16"), ("--pairs", "--steps", "--train-steps")),
    (("distill", "progressive", "{toy}", "--out", "{out}"), ("--student-steps", "--teacher-steps", "--train-steps")),
    (("distill", "consistency", "{toy}", "--out", "{out}"), ("--student-steps", "--discretisation", "--train-steps")),
    (("bench", "samplers", "--out", "{out}", "--quick"), ("--n", "--n-stochastic")),
    (("bench", "train", "--preset", "toy2d"), ("--steps", "--warmup", "--repeats", "--batch-size")),
    *((("edit", method, "{digits}", "--from-data", "digits", "--out", "{out}.png"), ("--n", "--steps"))
      for method in ("inpaint", "sdedit", "ilvr", "invert", "ddrm", "dps")),
)


@dataclass(frozen=True)
class Case:
    """One bad command line: ``argv`` for ``difflab``, the ``outputs`` that must not exist after it
    ran, and ``mentions``, phrases (any case) that the error line must hold."""

    name: str
    argv: tuple[str, ...]
    outputs: tuple[str, ...] = ()
    mentions: tuple[str, ...] = ()


@dataclass
class Outcome:
    """What a :class:`Case` did: exit status, stderr, and the checks of the contract."""

    case: Case
    status: int | None
    stderr: str
    traceback: bool
    partial: tuple[str, ...] = ()  # outputs left behind
    unmentioned: tuple[str, ...] = ()  # phrases missing from the error line
    seconds: float = 0.0

    @property
    def lines(self) -> int:
        """Lines on stderr (a carriage return, as a progress bar writes, also ends a line)."""
        return len(self.stderr.strip().splitlines())

    @property
    def clean(self) -> bool:
        """Exit status 2, one line ``difflab...: error: ...``, no traceback, nothing left behind."""
        return (self.status == 2 and self.lines == 1 and not self.traceback and not self.partial
                and not self.unmentioned and self.stderr.startswith("difflab") and "error" in self.stderr)

    def describe(self) -> str:
        problems = [f"status {self.status}"] if self.status != 2 else []
        problems += [f"{self.lines} stderr lines"] if self.lines != 1 else []
        problems += ["traceback"] if self.traceback else []
        problems += [f"left {', '.join(self.partial)}"] if self.partial else []
        problems += [f"does not mention {', '.join(self.unmentioned)}"] if self.unmentioned else []
        tail = self.stderr.strip().splitlines()[-1:] or [""]
        return f"{self.case.name}: {'; '.join(problems) or 'clean'} | {tail[0][:300]}"


# ---------------------------------------------------------------------------------------------
# Running


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a warning to the current sys.stderr, as Python does by default (and pytest does not)."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}


def run_case(case: Case, *, in_process: bool = True, timeout: float = 600) -> Outcome:
    """Run ``case`` through :func:`difflab.cli.main.main` here (``in_process``), or through ``python
    -m difflab`` in a new process, and check the outcome."""
    import time

    start = time.perf_counter()
    if in_process:
        status, stderr, crashed = _run_here(case.argv)
    else:
        done = subprocess.run([sys.executable, "-m", "difflab", *case.argv], capture_output=True, text=True,
                              env=_env(), timeout=timeout)
        status, stderr = done.returncode, done.stderr
        crashed = "Traceback (most recent call last)" in stderr
    partial = tuple(p for p in case.outputs if os.path.lexists(p))
    low = stderr.lower()
    unmentioned = tuple(m for m in case.mentions if m.lower() not in low)
    return Outcome(case, status, stderr, crashed, partial, unmentioned, time.perf_counter() - start)


def _run_here(argv) -> tuple[int | None, str, bool]:
    from ..cli.main import main

    err = io.StringIO()
    crashed = False
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", ResourceWarning)  # as the interpreter's default filters do
        warnings.showwarning = _show_warning
        try:
            status = main(list(argv))
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # noqa: BLE001 - a traceback is what this harness looks for
            traceback.print_exc()
            status, crashed = 1, True
    return status, err.getvalue(), crashed


def summarise(outcomes: list[Outcome]) -> dict:
    """Counts of a run of the corpus: inputs tried, clean errors, tracebacks, partial outputs, and
    the cases that were not clean (their descriptions)."""
    return {"tried": len(outcomes), "clean": sum(o.clean for o in outcomes),
            "tracebacks": sum(o.traceback for o in outcomes), "partial": sum(bool(o.partial) for o in outcomes),
            "not_clean": [o.describe() for o in outcomes if not o.clean]}


# ---------------------------------------------------------------------------------------------
# Valid models, made once


@dataclass(frozen=True)
class Models:
    """Tiny trained models (training output folders): a 2-D toy, unconditional and 10-class digits,
    an AR(1) signal model."""

    toy: Path
    digits: Path
    cond: Path
    ar1: Path


_TINY = ("--set", "sample_every=0", "--device", "cpu")
_TINY_UNET = ("--set", "net.base_channels=8", "--set", "net.num_res_blocks=1", "--set", "net.attn_resolutions=[]",
              "--set", "net.groups=8")
_MODEL_ARGS = {
    "toy": ("--preset", "toy2d", "--steps", "5", "--batch-size", "32"),
    "digits": ("--preset", "digits-small", "--steps", "2", "--batch-size", "8", *_TINY_UNET),
    "cond": ("--preset", "digits-cond", "--steps", "2", "--batch-size", "8", *_TINY_UNET),
    "ar1": ("--preset", "ar1", "--steps", "2", "--batch-size", "8", "--set", "net.residual_channels=8",
            "--set", "net.layers=2"),
}


def make_models(workdir) -> Models:
    """Train (or reuse) the tiny models of :class:`Models` under ``workdir/models``."""
    root = Path(workdir) / "models"
    for name, args in _MODEL_ARGS.items():
        if not (root / name / "model" / "config.json").exists():
            status, stderr, _ = _run_here(("train", *args, *_TINY, "--out", str(root / name)))
            if status != 0:
                raise RuntimeError(f"training the {name} fixture failed: {stderr.strip()[-500:]}")
    return Models(*(root / name for name in _MODEL_ARGS))


# ---------------------------------------------------------------------------------------------
# The corpus


class Corpus:
    """Collects cases; in an argument, ``{out}`` is a fresh output path (which must not exist after
    the case), ``{files}`` the folder of bad files, ``{toy}``, ``{digits}``, ``{cond}``, ``{ar1}``
    the models."""

    def __init__(self, workdir: Path, models: Models, files: Path):
        self.workdir, self.models, self.files, self.cases = workdir, models, files, []
        self.names = {"files": str(files), **{k: str(getattr(models, k)) for k in ("toy", "digits", "cond", "ar1")}}

    def add(self, name: str, *argv, outputs=(), mentions=()) -> Case:
        out = self.workdir / "out" / f"{len(self.cases):03d}"
        args, made = [], list(outputs)
        for a in map(str, argv):
            value = a.format(out=out, **self.names)
            args.append(value)
            if "{out}" in a:
                made.append(value)
        self.cases.append(Case(name, tuple(args), tuple(map(str, made)), tuple(mentions)))
        return self.cases[-1]


def corpus(workdir) -> Corpus:
    """An empty :class:`Corpus` in ``workdir``: the tiny :class:`Models` trained (once per
    ``workdir``), the bad files written, ``workdir/out`` emptied."""
    workdir = Path(workdir)
    models = make_models(workdir)
    files = workdir / "files"
    write_bad_files(files)
    shutil.rmtree(workdir / "out", ignore_errors=True)
    (workdir / "out").mkdir()
    return Corpus(workdir, models, files)


def bad_inputs(workdir) -> list[Case]:
    """The corpus of bad command lines (see the module docstring), every one of which must end in
    a one-line user error."""
    c = corpus(workdir)
    for group in (_counts, _broken_models, _data, _tomls, _sets, _train, _sample, _edit, _signals, _evaluation,
                  _recipes, _tools):
        group(c, c.workdir, c.models)
    return c.cases


def _counts(c: Corpus, w: Path, m: Models) -> None:
    for prefix, options in BAD_COUNTS:
        command = [prefix[0], *(p for p in prefix[1:2] if "{" not in p and not p.startswith("-")),
                   *(p for p in prefix if p == "--nll")]
        for option in options:
            for value in ("0", "-1"):
                c.add(f"{' '.join(command)} {option} {value}", *prefix, option, value,
                      mentions=(option.lstrip("-").split("-")[0],))


#: Edits of a model directory that a resumed run does not read (it rewrites them from the data and
#: continues from model.safetensors), so ``train --resume`` of them is not a bad input.
_RESUMABLE_EDITS = ("config_shape_mismatch", "config_shape_string", "config_shape_negative", "config_shape_rank",
                    "config_no_shape", "config_kind_image", "config_kind_bogus", "ema_nan", "ema_truncated",
                    "ema_empty", "ema_header", "ema_garbage", "ema_renamed_key")


def _broken_models(c: Corpus, w: Path, m: Models) -> None:
    for name, run in {**corrupt_models(m.toy, w / "broken"), **broken_runs(m.toy, w / "broken")}.items():
        if not name.startswith("state_"):
            c.add(f"info {name}", "info", run, mentions=(run.name,))
            c.add(f"sample {name}", "sample", run, "--n", "4", "--steps", "2", "--out", "{out}.png", "--npz",
                  "{out}.npz", mentions=(run.name,))
        if name in _RESUMABLE_EDITS:
            continue  # resuming reads the config's training fields and the training weights only
        c.add(f"train --resume {name}", "train", "--resume", "--out", run, outputs=(run / "log.csv", run / "samples"))
    for name in ("config_truncated", "ema_truncated", "config_shape_mismatch"):
        run = w / "broken" / name
        c.add(f"reflow teacher {name}", "reflow", run, "--out", "{out}", "--pairs", "8", mentions=(name,))
        c.add(f"distill teacher {name}", "distill", "consistency", run, "--out", "{out}", mentions=(name,))
        c.add(f"eval {name}", "eval", run, "--n", "4", mentions=(name,))
    for what in ("missing", "notes.txt", "empty_dir"):
        path = "{files}/" + what
        for argv in (("info", path), ("sample", path, "--n", "2", "--npz", "{out}.npz"),
                     ("edit", "invert", path, "--from-data", "digits", "--out", "{out}.png"),
                     ("forecast", path, "--context", "{files}/ctx.npy", "--horizon", "4", "--npz", "{out}.npz"),
                     ("doctor", path)):
            c.add(f"{argv[0]} model {what}", *argv, mentions=(what,))


_IMAGE_DATA = ("missing", "empty_dir", "corrupt_dir", "rect_dir", "hidden_dir", "text_dir", "wav_corrupt_dir",
               "nested_empty_dir", "truncated.png", "notes.txt", "nan.npy", "inf.npy", "neginf.npy", "rank1.npy",
               "rank5.npy", "scalar.npy", "empty.npy", "zero_width.npy", "strings.npy", "int64.npy", "complex.npy",
               "bool.npy", "range.npy", "object.npy", "truncated.npy", "garbage.npy", "truncated.npz", "garbage.npz",
               "nokey.npz", "labels_shape.npz", "labels_negative.npz", "labels_float.npz", "noise_shape.npz",
               "noise_nan.npz", "x_nan.npz", "no_arrays.npz", "points3.npy")
_SMALL_DIGITS = ("--preset", "digits-small", "--steps", "1", "--batch-size", "4", *_TINY_UNET, *_TINY)


def _data(c: Corpus, w: Path, m: Models) -> None:
    for name in _IMAGE_DATA:
        c.add(f"train --data {name}", "train", *_SMALL_DIGITS, "--data", "{files}/" + name, "--out", "{out}",
              mentions=(name.split(".")[0],))
    mismatches = {"toy2d on images": ("--preset", "toy2d", "--data", "{files}/unlabelled_dir"),
                  "toy2d on NaN points": ("--preset", "toy2d", "--data", "{files}/points_nan.npy"),
                  "digits-cond unlabelled": ("--preset", "digits-cond", "--data", "{files}/unlabelled_dir"),
                  "digits-cond 2 classes": ("--preset", "digits-cond", "--data", "{files}/good.npz"),
                  "ar1 on images": ("--preset", "ar1", "--data", "digits"),
                  "impute on points": ("--preset", "toy2d", "--set", "task=impute"),
                  "channels 2": ("--preset", "digits-small", "--data", "{files}/mixed_dir", "--set", "channels=2"),
                  "resolution 0": ("--preset", "digits-small", "--data", "{files}/mixed_dir", "--set", "resolution=0"),
                  "pairs without noise": ("--preset", "toy2d", "--set", "coupling=pairs"),
                  "text without captions": ("--preset", "digits-small", "--set",
                                            'net.text={{"vocab": ["a"], "max_words": 2}}')}
    for name, argv in mismatches.items():
        c.add(f"train {name}", "train", *argv, "--steps", "1", "--batch-size", "4", *_TINY, "--out", "{out}")
    for name in ("missing", "corrupt_dir", "nan.npy", "points3.npy", "truncated.npz", "rect_dir"):
        c.add(f"train-autoencoder --data {name}", "train-autoencoder", "--data", "{files}/" + name, "--steps", "1",
              "--out", "{out}")
    for name in ("missing", "corrupt_dir", "unlabelled_dir", "nan.npy", "garbage.npz"):
        c.add(f"train-classifier --data {name}", "train-classifier", "--data", "{files}/" + name, "--steps", "1",
              "--out", "{out}", mentions=(name.split(".")[0],))
    for source in ("moons", "swissroll", "nope"):
        c.add(f"train-classifier --data {source}", "train-classifier", "--data", source, "--steps", "1",
              "--out", "{out}", mentions=(source,))
    edit = ("edit", "inpaint", "{digits}", "--steps", "2", "--out", "{out}.png")
    for name in ("missing.png", "truncated.png", "empty.png", "text.png", "signature.png", "bomb.png", "rect.png",
                 "nan.npy", "rank1.npy", "truncated.npz", "garbage.npz", "notes.txt", "points3.npy", "empty_dir"):
        c.add(f"edit --input {name}", *edit, "--input", "{files}/" + name, mentions=(name.split(".")[0],))
    for name in ("moons", "ar1", "nope", "{files}/rect_dir"):
        c.add(f"edit --from-data {name}", *edit, "--from-data", name)
    for name in ("mask5.png", "truncated.png", "text.png", "missing.png"):
        c.add(f"edit --mask {name}", *edit, "--from-data", "digits", "--mask", "{files}/" + name,
              mentions=(name.split(".")[0],))


def _tomls(c: Corpus, w: Path, m: Models) -> None:
    names = ["syntax", "unknown", "empty", "net_unknown", "net_type", "net_negative", "net_float", "schedule_kind",
             "schedule_range", "missing_data", "init_missing", "ae_missing", "table_top", "binary", "missing"]
    later = ("empty", "net_unknown", "missing_data", "init_missing", "ae_missing")  # fail when used, not read
    for name in names:
        c.add(f"train --config {name}", "train", "--config", "{files}/" + name + ".toml", "--out", "{out}",
              "--steps", "1", *_TINY, mentions=() if name in later else (name + ".toml",))
    c.add("train --config a folder", "train", "--config", "{files}/empty_dir", "--out", "{out}")
    for i, (key, value) in enumerate(BAD_TOML_VALUES):
        c.add(f"train --config {key} = {toml_value(value)}", "train", "--config", f"{{files}}/value{i:02d}.toml",
              "--out", "{out}", "--steps", "1", *_TINY,
              mentions=() if key in ("resolution", "channels") else (f"value{i:02d}.toml",))


_BAD_SETS = ("lr", "nope=1", "=3", "steps=abc", "lr=-1", "lr=nan", "batch_size=1.5", "betas=0.9", "betas=a,b",
             "net.foo=1", "net.hidden_channels=-3", "net.hidden_channels=big", "net.depth=-1", "schedule={{bad",
             "schedule=[1]", "num_classes=3", "channels=3", "data=nope", "init=/no/such/model", "objective=progressive",
             "precision=fp8", "grad_accum=3", "keep=0", "log_every=0", "ema_decay=1", "sigma_data=0", "seed=-4",
             "ema_warmup=maybe", "steps=1e400", "net.dropout=2", "net.embed_dim=-1", "schedule.sigma_min=-1",
             "warmup_steps=-1")


def _sets(c: Corpus, w: Path, m: Models) -> None:
    for item in _BAD_SETS:
        c.add(f"train --set {item}", "train", "--preset", "toy2d", "--steps", "1", "--batch-size", "8", *_TINY,
              "--set", item, "--out", "{out}")
    c.add("train --set init=digits on toy2d", "train", "--preset", "toy2d", "--steps", "1", *_TINY, "--set",
          "init={digits}", "--out", "{out}")
    c.add("train-autoencoder --set nope=1", "train-autoencoder", "--preset", "digits-ae", "--set", "nope=1",
          "--out", "{out}")
    for item in ("kl_weight=-1", "recon=l3", "net.foo=1", "lr=abc", "net.latent_channels=0", "warmup_steps=-1"):
        c.add(f"train-autoencoder --set {item}", "train-autoencoder", "--preset", "digits-ae", "--steps", "1",
              "--set", item, "--out", "{out}")


def _train(c: Corpus, w: Path, m: Models) -> None:
    toy = ("train", "--preset", "toy2d", "--steps", "1", *_TINY)
    for option, value in (("--cond-drop", "1.5"), ("--cond-drop", "-0.1"), ("--cond-drop", "nan"), ("--seed", "-1"),
                          ("--device", "nonsense"), ("--device", "cuda:x"), ("--autoencoder", "{files}/missing"),
                          ("--autoencoder", "{toy}"), ("--keep", "abc"), ("--compile", "fast")):
        c.add(f"train {option} {value}", *toy, option, value, "--out", "{out}")
    c.add("train --preset nope", "train", "--preset", "nope", "--out", "{out}", mentions=("nope",))
    c.add("train without preset", "train", "--out", "{out}")
    c.add("train --preset and --config", "train", "--preset", "toy2d", "--config", "{files}/empty.toml", "--out",
          "{out}")
    c.add("train digits-latent without autoencoder", "train", "--preset", "digits-latent", "--out", "{out}")
    c.add("train --out a file", *toy, "--out", "{files}/notes.txt", mentions=("notes.txt",))
    c.add("train --out under a file", *toy, "--out", "{files}/notes.txt/run", mentions=("notes.txt",))
    c.add("train --out an existing model", *toy, "--out", "{toy}", outputs=(m.toy / "samples",))
    c.add("train --resume an empty folder", "train", "--resume", "--out", "{files}/empty_dir",
          outputs=(w / "files" / "empty_dir" / "log.csv",))
    runs = w / "resume"
    for name, extra in (("lr", ("--set", "lr=0.5")), ("preset", ("--preset", "digits-small")),
                        ("batch", ("--preset", "toy2d", "--batch-size", "64")),
                        ("seed", ("--preset", "toy2d", "--seed", "9")),
                        ("data", ("--preset", "toy2d", "--data", "rings")),
                        ("net", ("--set", "net.depth=2"))):
        run = copy_model(m.toy / MODEL, runs / name)
        c.add(f"train --resume with a different {name}", "train", "--resume", "--out", run, *extra, *_TINY,
              outputs=(run / "log.csv",))


def _sample(c: Corpus, w: Path, m: Models) -> None:
    toy = ("sample", "{toy}", "--n", "4", "--steps", "2", "--npz", "{out}.npz")
    digits = ("sample", "{digits}", "--n", "4", "--steps", "2", "--out", "{out}.png")
    cond = ("sample", "{cond}", "--n", "4", "--steps", "2", "--out", "{out}.png")
    cases = {
        "sampler nope": (*toy, "--sampler", "nope"), "class on unconditional": (*toy, "--class", "3"),
        "guidance on unconditional": (*digits, "--guidance", "2"),
        "guidance and class on unconditional": (*digits, "--class", "1", "--guidance", "2"),
        "class 10 of 10": (*cond, "--class", "10"), "class -1": (*cond, "--class", "-1"),
        "guidance nan": (*cond, "--class", "1", "--guidance", "nan"), "guidance inf": (*cond, "--guidance", "inf"),
        "prompt on unconditioned": (*digits, "--prompt", "red circle"),
        "classifier missing": (*digits, "--classifier", "{files}/missing"),
        "classifier not one": (*digits, "--classifier", "{toy}"),
        "classifier-scale alone": (*digits, "--classifier-scale", "2"),
        "classifier-scale nan": (*digits, "--classifier", "{files}/missing", "--classifier-scale", "nan"),
        "schedule nope": (*toy, "--schedule", "nope"), "option without =": (*toy, "--option", "eta"),
        "option unknown": (*toy, "--option", "nope=1"), "option empty key": (*toy, "--option", "=1"),
        "option eta on dpmpp_2m": (*toy, "--option", "eta=0.5"),
        "option eta nan": (*toy, "--sampler", "ddim", "--option", "eta=nan"),
        "option eta Infinity": (*toy, "--sampler", "ddim", "--option", "eta=-Infinity"),
        "wav of points": (*toy, "--wav", "{out}-wav"), "sample-rate without wav": (*toy, "--sample-rate", "8000"),
        "wav without a rate": ("sample", "{ar1}", "--n", "2", "--steps", "2", "--wav", "{out}-wav"),
        "no outputs": ("sample", "{toy}", "--n", "4"),
        "out is a folder": ("sample", "{toy}", "--n", "4", "--steps", "2", "--out", "{files}/empty_dir"),
        "npz under a file": (*digits, "--npz", "{files}/notes.txt/x.npz"),
        "wav under a file": ("sample", "{ar1}", "--n", "2", "--steps", "2", "--sample-rate", "8000", "--out",
                             "{out}.png", "--wav", "{files}/notes.txt/wav"),
        "device nonsense": (*toy, "--device", "nonsense"), "n not a number": (*toy, "--n", "many"),
        "dtype fp8": (*toy, "--dtype", "fp8"), "n huge steps huge": (*toy, "--steps", "abc"),
        "class on a signal model": ("sample", "{ar1}", "--n", "2", "--class", "1", "--out", "{out}.png"),
    }
    for name in ("sigmas_up", "sigmas_bad", "sigmas_strings", "sigmas_nan", "sigmas_one", "sigmas_negative", "missing"):
        cases[f"schedule {name}"] = (*toy, "--schedule", "{files}/" + name + ".json")
    for name, argv in cases.items():
        c.add(f"sample {name}", *argv)


#: Bad options of the editors: (method, options...) on the digits model's test images.
_EDIT_OPTIONS = (
    ("sdedit", "--strength", "0"), ("sdedit", "--strength", "1.5"), ("sdedit", "--strength", "-1"),
    ("sdedit", "--strength", "nan"), ("ilvr", "--factor", "0"), ("ilvr", "--factor", "3"), ("ilvr", "--factor", "16"),
    ("ilvr", "--factor", "-2"), ("inpaint", "--jump-length", "0"), ("inpaint", "--resamplings", "-1"),
    ("inpaint", "--method", "replace", "--jump-length", "5"), ("ddrm", "--sigma-y", "-1"), ("ddrm", "--sigma-y", "nan"),
    ("ddrm", "--mask-kind", "center"), ("dps", "--noise-std", "-1"), ("dps", "--noise-std", "nan"),
    ("dps", "--blur-std", "0"), ("dps", "--blur-std", "-1"), ("dps", "--operator", "downsample", "--factor", "3"),
    ("dps", "--operator", "downsample", "--factor", "0"), ("dps", "--scale", "nan"), ("dps", "--scale", "-1"),
    ("dps", "--operator", "saturate", "--mask-kind", "center"), ("inpaint", "--sampler", "nope"),
    ("invert", "--schedule", "nope"), ("sdedit", "--schedule", "{files}/sigmas_up.json"),
    ("invert", "--device", "nonsense"), ("inpaint", "--input", "{files}/good8.png"),  # and --from-data
)


def _edit(c: Corpus, w: Path, m: Models) -> None:
    def edit(method, *extra, model="{digits}", out="{out}.png"):
        return ("edit", method, model, "--from-data", "digits", "--n", "2", "--steps", "2", "--out", out, *extra)

    for method, *extra in _EDIT_OPTIONS:
        c.add(f"edit {method} {' '.join(extra)}", *edit(method, *extra))
    c.add("edit inpaint on points", *edit("inpaint", model="{toy}"))
    c.add("edit sdedit on signals", *edit("sdedit", model="{ar1}"))
    c.add("edit inpaint --out a folder", *edit("inpaint", out="{files}/empty_dir"))


def _signals(c: Corpus, w: Path, m: Models) -> None:
    forecast = ("forecast", "{ar1}", "--horizon", "8", "--samples", "2", "--steps", "2", "--npz", "{out}.npz")
    for name in ("missing.npy", "notes.txt", "header.csv", "ragged.csv", "blank.csv", "words.csv", "ctx_4d.npy",
                 "ctx_strings.npy", "ctx_empty.npy", "truncated.npz", "garbage.npz", "no_arrays.npz", "ctx_nan.npy",
                 "ctx_inf.npy", "ctx_short.npy", "ctx_2ch.npy", "object.npy", "empty_dir"):
        c.add(f"forecast --context {name}", *forecast, "--context", "{files}/" + name, mentions=(name.split(".")[0],))
    ctx = (*forecast, "--context", "{files}/ctx.npy")
    cases = {"horizon 64": (*ctx, "--horizon", "64"), "horizon 1000": (*ctx, "--horizon", "1000"),
             "series -1": (*ctx, "--series", "-1"), "series 10": (*ctx, "--series", "10"),
             "method condition": (*ctx, "--method", "condition"), "sampler nope": (*ctx, "--sampler", "nope"),
             "option nope": (*ctx, "--option", "nope=1"), "option on condition": (*ctx, "--option", "jump_length=0"),
             "truth shape": (*ctx, "--truth", "{files}/truth_shape.npy"),
             "truth nan": (*ctx, "--truth", "{files}/truth8_nan.npy"),
             "truth missing": (*ctx, "--truth", "{files}/x.npy"),
             "no outputs": ("forecast", "{ar1}", "--context", "{files}/ctx.npy", "--horizon", "8"),
             "of a points model": ("forecast", "{toy}", "--context", "{files}/ctx.npy", "--horizon", "8", "--npz",
                                   "{out}.npz"),
             "of an image model": ("forecast", "{digits}", "--context", "{files}/ctx.npy", "--horizon", "8", "--out",
                                   "{out}.png"),
             "out under a file": (*ctx, "--out", "{files}/notes.txt/fan.png")}
    for name, argv in cases.items():
        c.add(f"forecast {name}", *argv)
    impute = ("impute", "{ar1}", "--samples", "2", "--steps", "2", "--npz", "{out}.npz")
    for name in ("complete.npy", "all_nan.npy", "gappy_inf.npy", "gappy_2ch.npy", "gappy_short.npy", "header.csv",
                 "missing.npy"):
        c.add(f"impute --data {name}", *impute, "--data", "{files}/" + name, mentions=(name.split(".")[0],))
    gappy = (*impute, "--data", "{files}/gappy.npy")
    for name, extra in (("truth shape", ("--truth", "{files}/truth_shape.npy")),
                        ("truth nan", ("--truth", "{files}/truth_nan.npy")), ("method nope", ("--method", "nope")),
                        ("series 4", ("--series", "4")), ("option jump_length 0", ("--option", "jump_length=0"))):
        c.add(f"impute {name}", *gappy, *extra)


def _evaluation(c: Corpus, w: Path, m: Models) -> None:
    cases = {"of a points model": ("eval", "{toy}", "--n", "4"), "nll of a points model": ("eval", "{toy}", "--nll"),
             "n 1": ("eval", "{digits}", "--n", "1"), "nll n 1": ("eval", "{digits}", "--nll", "--n", "1"),
             "sampler nope": ("eval", "{digits}", "--n", "4", "--sampler", "nope"),
             "guidance on unconditional": ("eval", "{digits}", "--n", "4", "--steps", "2", "--guidance", "2"),
             "option nope": ("eval", "{digits}", "--n", "4", "--steps", "2", "--option", "nope=1"),
             "schedule nope": ("eval", "{digits}", "--n", "4", "--steps", "2", "--schedule", "nope"),
             "signals with schedule": ("eval", "{ar1}", "--n", "2", "--schedule", "karras"),
             "signals with guidance": ("eval", "{ar1}", "--n", "2", "--guidance", "2"),
             "guidance nan": ("eval", "{cond}", "--n", "4", "--steps", "2", "--guidance", "nan"),
             "hutchinson probes 0": ("eval", "{digits}", "--nll", "--trace", "hutchinson", "--probes", "0")}
    for name, argv in cases.items():
        c.add(f"eval {name}", *argv)


def _recipes(c: Corpus, w: Path, m: Models) -> None:
    reflow = ("reflow", "{toy}", "--out", "{out}", "--pairs", "8", "--steps", "2")
    for name, extra in (("sampler nope", ("--sampler", "nope")),
                        ("stochastic sampler", ("--sampler", "euler_ancestral")),
                        ("set nope", ("--set", "nope=1")), ("set lr -1", ("--set", "lr=-1")),
                        ("set steps abc", ("--set", "steps=abc")), ("device nonsense", ("--device", "nonsense"))):
        c.add(f"reflow {name}", *reflow, *extra)
    c.add("reflow into an existing model", "reflow", "{toy}", "--out", "{digits}", "--pairs", "8",
          outputs=(m.digits / "pairs.npz",))
    c.add("reflow of a missing teacher", "reflow", "{files}/missing", "--out", "{out}", mentions=("missing",))
    distill = {"guided of an unconditional teacher": ("guided", "{toy}"),
               "guided w-min above w-max": ("guided", "{cond}", "--w-min", "5", "--w-max", "1"),
               "guided w-min nan": ("guided", "{cond}", "--w-min", "nan"),
               "guided w-max inf": ("guided", "{cond}", "--w-max", "inf"),
               "progressive 3 of 8": ("progressive", "{toy}", "--student-steps", "3", "--teacher-steps", "8"),
               "progressive 4 of 4": ("progressive", "{toy}", "--student-steps", "4", "--teacher-steps", "4"),
               "consistency discretisation 1": ("consistency", "{toy}", "--discretisation", "1"),
               "consistency set nope": ("consistency", "{toy}", "--set", "nope=1"),
               "progressive set lr nan": ("progressive", "{toy}", "--set", "lr=nan"),
               "consistency device nonsense": ("consistency", "{toy}", "--device", "nonsense")}
    for name, argv in distill.items():
        c.add(f"distill {name}", "distill", *argv, "--out", "{out}", "--train-steps", "1")
    c.add("train-autoencoder --preset nope", "train-autoencoder", "--preset", "nope", "--out", "{out}")
    c.add("train-autoencoder without preset or data", "train-autoencoder", "--out", "{out}")
    c.add("train-autoencoder into a run folder", "train-autoencoder", "--preset", "digits-ae", "--steps", "1",
          "--out", "{toy}", outputs=(m.toy / "autoencoder.json",))
    c.add("train-autoencoder --device nonsense", "train-autoencoder", "--preset", "digits-ae", "--device", "nonsense",
          "--out", "{out}")
    for value in ("-1", "0", "nan", "inf"):
        c.add(f"train-classifier --lr {value}", "train-classifier", "--lr", value, "--steps", "1", "--out", "{out}")
    c.add("train-classifier --out a file", "train-classifier", "--steps", "1", "--out", "{files}/notes.txt")


def _tools(c: Corpus, w: Path, m: Models) -> None:
    c.add("bench samplers --out a file", "bench", "samplers", "--quick", "--out", "{files}/notes.txt")
    c.add("bench samplers --problems nope", "bench", "samplers", "--problems", "nope", "--out", "{out}")
    c.add("bench train --preset nope", "bench", "train", "--preset", "nope", "--steps", "2", "--warmup", "1")
    c.add("bench train steps not a multiple", "bench", "train", "--preset", "toy2d", "--steps", "7", "--warmup", "3")
    c.add("bench train --data missing", "bench", "train", "--preset", "toy2d", "--data", "{files}/missing",
          "--steps", "2", "--warmup", "1", "--repeats", "1")
    c.add("bench train --device nonsense", "bench", "train", "--preset", "toy2d", "--device", "nonsense",
          "--steps", "2", "--warmup", "1", "--repeats", "1")
    c.add("bench gpu --device nonsense", "bench", "gpu", "--device", "nonsense", "--out", "{out}")
    c.add("demo --steps 0", "demo", "--steps", "0", "--out", "{out}")
    c.add("demo --steps -3", "demo", "--steps", "-3", "--out", "{out}")
    c.add("demo --out under a file", "demo", "--steps", "1", "--out", "{files}/notes.txt/demo")
    c.add("unknown command", "frobnicate")
    c.add("edit unknown method", "edit", "blur", "{digits}")
    c.add("distill unknown method", "distill", "fast", "{toy}", "--out", "{out}")
    c.add("info two folders", "info", "{toy}", "{digits}")

"""Reliability under faults: ``kill -9`` during training, planted pickles (issue 17).

:func:`crash_trials` trains a small model through the command line, kills the process with
SIGKILL at random moments (saving included: checkpoints every few steps, so a good share of the run
is spent writing them), and after each kill checks that the run folder loads with
:func:`difflab.load` whenever it holds a checkpoint, then resumes; at the end the resumed weights
must equal, bit for bit, those of one uninterrupted run. :func:`planted_payloads` plants pickles
that would run code in a model directory and loads and resumes it. Used by
``tests/test_reliability.py`` and ``benchmarks/reliability.py``.
"""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CrashReport", "crash_trials", "planted_payloads", "train_command", "run_cli"]

#: The run every trial repeats: the 2-D toy preset, a checkpoint every 3 steps.
TRAIN_ARGS = ("--preset", "toy2d", "--batch-size", "128", "--keep", "2", "--seed", "3", "--set", "ckpt_every=3",
              "--set", "log_every=10", "--set", "sample_every=0")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONWARNINGS": "ignore"}


def train_command(out: Path, resume: bool = False, steps: int = 120, extra=()) -> list[str]:
    return [sys.executable, "-m", "difflab", "train", *TRAIN_ARGS, "--steps", str(steps), "--out", str(out),
            "--device", "cpu",
            *(["--resume"] if resume else []), *extra]


def run_cli(args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m difflab ARGS`` in a fresh process (one thread), output captured."""
    return subprocess.run([sys.executable, "-m", "difflab", *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=timeout)


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return {name: load_file(model_dir / name) for name in ("model.safetensors", "ema.safetensors")}


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(
        a[f].keys() == b[f].keys() and all(torch.equal(a[f][k], b[f][k]) for k in a[f]) for f in a)


@dataclass
class CrashReport:
    kills: int = 0  # processes killed while training (attempts whose process had finished are not counted)
    with_checkpoint: int = 0  # attempts after which a checkpoint existed
    loadable: int = 0  # ... and difflab.load read it
    runs: int = 0
    bit_exact: int = 0  # runs whose resumed final weights equal the uninterrupted run's
    failures: list = field(default_factory=list)


def crash_trials(work: Path, runs: int, kills_per_run: int, seed: int = 0, steps: int = 120,
                 progress=None) -> CrashReport:
    """``runs`` runs of :data:`TRAIN_ARGS` (``steps`` steps) in ``work``, each killed
    ``kills_per_run`` times at random moments while it trains and resumed until done; the report
    counts loadable folders and bit-exact ends.

    Each attempt starts ``train --resume``, waits until the process holds the run's lock and has
    opened its log (its training loop starts), then sleeps a time uniform over the first 80% of the
    training time still ahead (from the uninterrupted run's own log and the step already saved), so
    the kill lands in training or saving (a checkpoint every 3 steps); an attempt whose process
    finished first does not count as a kill."""
    from ..pipeline import load

    rng = random.Random(seed)
    work = Path(work)
    reference = work / "straight"
    subprocess.run(train_command(reference, steps=steps), check=True, capture_output=True, env=_env(), timeout=600)
    want = _weights(reference / "model")
    train_seconds = _log_seconds(reference)
    report = CrashReport()
    for r in range(runs):
        out = work / f"run{r}"
        kills = attempts = 0
        while kills < kills_per_run and attempts < 4 * kills_per_run:
            attempts += 1
            done = _saved_step(out)
            if done >= steps:
                break
            proc = subprocess.Popen(train_command(out, resume=True, steps=steps), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=_env())
            _wait_for_training(out, proc)
            time.sleep(rng.uniform(0.0, 0.8) * train_seconds * (steps - done) / steps)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                report.kills += 1
            proc.wait()
            if (out / "model").exists() or (out / ".old-model").exists():
                report.with_checkpoint += 1
                try:
                    load(out, "cpu")
                    report.loadable += 1
                except Exception as e:  # noqa: BLE001 - any failure to load is what we count
                    report.failures.append(f"run {r}, attempt {attempts}: {type(e).__name__}: {e}")
            if progress:
                progress(f"run {r}, attempt {attempts}: {'killed' if proc.returncode < 0 else 'finished'} "
                         f"at saved step {_saved_step(out)}")
        finish = subprocess.run(train_command(out, resume=True, steps=steps), capture_output=True, text=True,
                                env=_env(), timeout=600)
        report.runs += 1
        if finish.returncode != 0:
            report.failures.append(f"run {r}: resume failed: {finish.stderr.strip().splitlines()[-1:]}")
        elif _same(_weights(out / "model"), want):
            report.bit_exact += 1
        else:
            report.failures.append(f"run {r}: resumed weights differ from the uninterrupted run")
    return report


def _log_seconds(run: Path) -> float:
    """The training time of a finished run: the seconds column of its last log row."""
    with open(run / "log.csv", newline="") as f:
        return float(list(csv.DictReader(f))[-1]["seconds"])


def _saved_step(run: Path) -> int:
    """The step of the run's checkpoint (0 without one)."""
    for folder in (run / "model", run / ".old-model"):
        try:
            return int(json.loads((folder / "config.json").read_text())["step"])
        except (OSError, ValueError, KeyError):
            continue
    return 0


def _wait_for_training(run: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until ``proc`` holds the run's lock (its pid written in ``.lock``) and has (re)opened the
    run's log, which the trainer does just before its first step; or until it has ended."""
    deadline = time.monotonic() + timeout
    locked_at = None
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if locked_at is None and (run / ".lock").read_text().strip() == str(proc.pid):
                locked_at = time.time()
            if locked_at is not None and (run / "log.csv").stat().st_mtime >= locked_at - 0.05:
                return
        except OSError:
            pass
        time.sleep(0.005)


class _Payload:
    """A pickle that creates a file when it is unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def planted_payloads(model_dir: Path, marker: Path) -> tuple[int, int]:
    """Plant code-running pickles under every name a model directory might be read by
    (``training_state.pt``, ``model.pt``, ``optimizer.pt``, ``ema.pt``, a ``.bin`` and a ``.pkl``),
    then load the directory and read its training state. Returns (payloads planted, payloads
    executed): the second must be 0."""
    import torch

    from ..pipeline import load
    from ..training.checkpoint import read_training_state

    names = ("training_state.pt", "model.pt", "optimizer.pt", "ema.pt", "pytorch_model.bin", "state.pkl")
    for name in names:
        torch.save({"payload": _Payload(marker)}, model_dir / name)
    load(model_dir, "cpu")
    read_training_state(model_dir)
    return len(names), int(marker.exists())

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
    kills: int = 0
    with_checkpoint: int = 0  # kills after which a checkpoint existed
    loadable: int = 0  # ... and difflab.load read it
    runs: int = 0
    bit_exact: int = 0  # runs whose resumed final weights equal the uninterrupted run's
    failures: list = field(default_factory=list)


def crash_trials(work: Path, runs: int, kills_per_run: int, seed: int = 0, steps: int = 120,
                 progress=None) -> CrashReport:
    """``runs`` runs of :data:`TRAIN_ARGS` (``steps`` steps) in ``work``, each killed
    ``kills_per_run`` times at random moments and resumed until done; the report counts loadable
    folders and bit-exact ends. The kill times are uniform over 30-100% of an uninterrupted run's
    wall time (start-up included), so most kills land in training and saving."""
    from ..pipeline import load

    rng = random.Random(seed)
    work = Path(work)
    reference = work / "straight"
    t0 = time.perf_counter()
    subprocess.run(train_command(reference, steps=steps), check=True, capture_output=True, env=_env(), timeout=600)
    duration = time.perf_counter() - t0  # start-up included
    want = _weights(reference / "model")
    report = CrashReport()
    for r in range(runs):
        out = work / f"run{r}"
        for k in range(kills_per_run):
            proc = subprocess.Popen(train_command(out, resume=True, steps=steps), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=_env())
            time.sleep(rng.uniform(0.3, 1.0) * duration)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                report.kills += 1
            proc.wait()
            if (out / "model").exists() or (out / ".old-model").exists():
                report.with_checkpoint += 1
                try:
                    load(out, "cpu")
                    report.loadable += 1
                except Exception as e:  # noqa: BLE001 - any failure to load is what we count
                    report.failures.append(f"run {r}, kill {k}: {type(e).__name__}: {e}")
            if progress:
                progress(f"run {r}, kill {k}: checkpoint {'yes' if (out / 'model').exists() else 'no'}")
        done = subprocess.run(train_command(out, resume=True, steps=steps), capture_output=True, text=True, env=_env(), timeout=600)
        report.runs += 1
        if done.returncode != 0:
            report.failures.append(f"run {r}: resume failed: {done.stderr.strip().splitlines()[-1:]}")
        elif _same(_weights(out / "model"), want):
            report.bit_exact += 1
        else:
            report.failures.append(f"run {r}: resumed weights differ from the uninterrupted run")
    return report


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

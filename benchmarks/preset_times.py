"""CPU training time of every preset, as `difflab info` prints it.

    python benchmarks/preset_times.py [--out difflab/training/preset_times.json] [--only NAME ...]

For each training preset (difflab train) and autoencoder preset (difflab train-autoencoder): the
seconds per optimizer step from two timed runs of different lengths (set-up time cancels), times
the preset's steps. Presets without built-in data (`cifar10-ddpm`) time on synthetic shapes at their
resolution; latent presets on the latents of a 5-step autoencoder of their autoencoder preset (the
time per step does not depend on its quality). Run it alone: two torch processes on 2 cores slow
each other.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from difflab.io import atomic
from difflab.training import AE_PRESETS, PRESETS, train, train_autoencoder
from difflab.training.config import LATENT_PRESETS

TARGET_SECONDS = 12.0
SLOW_SECONDS = 30.0  # a 2-step run longer than this marks a network too big for long timed runs  # the longer of the two timed runs lasts about this long


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _per_step(run, work: Path) -> float:
    """Seconds per step of ``run(steps, out_dir)``: from runs of 2 and of about TARGET_SECONDS of
    time (the length from a run of 10 steps), so that the set-up time cancels."""
    def timed(steps):
        shutil.rmtree(work, ignore_errors=True)
        return _timed(lambda: run(steps, work))

    if timed(2) > SLOW_SECONDS:  # a warm-up (the first run pays one-time costs); a big network: 1 and 3 steps
        short, long = timed(1), timed(3)
        shutil.rmtree(work, ignore_errors=True)
        return max(long - short, 1e-6) / 2
    short, mid = timed(2), timed(10)  # a first guess of the time per step, without the set-up time
    guess = (mid - short) / 8 if mid > short else mid / 10
    long_steps = max(10, min(400, round(TARGET_SECONDS / max(guess, 1e-3))))
    long = timed(long_steps)
    shutil.rmtree(work, ignore_errors=True)
    return max(long - short, 1e-6) / (long_steps - 2)


def _train_run(config):
    def run(steps, out):
        train(config.replace(steps=steps, warmup_steps=min(config.warmup_steps, steps - 1), sample_every=0,
                             ckpt_every=0, log_every=steps), out, progress=False, device="cpu")
    return run


def _ae_run(config):
    def run(steps, out):
        train_autoencoder(config.replace(steps=steps, warmup_steps=min(config.warmup_steps, steps - 1)), out,
                          progress=False, device="cpu")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="difflab/training/preset_times.json", type=Path)
    parser.add_argument("--only", nargs="*", default=None, help="re-time these presets, keep the others")
    args = parser.parse_args()
    table = json.loads(args.out.read_text()) if args.out.exists() else {}
    table.setdefault("presets", {})
    table.setdefault("autoencoder_presets", {})
    wanted = lambda name: args.only is None or name in args.only  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, config in AE_PRESETS.items():
            if wanted(name):
                s = _per_step(_ae_run(config), tmp / "run")
                table["autoencoder_presets"][name] = {"seconds_per_step": s, "steps": config.steps,
                                                      "seconds": s * config.steps}
                print(f"{name:<14} {s * 1000:8.1f} ms/step  {s * config.steps:10.0f} s", flush=True)
        for name, config in PRESETS.items():
            if not wanted(name):
                continue
            note = None
            if name in LATENT_PRESETS:
                ae = tmp / f"ae-{name}"
                if not ae.exists():
                    train_autoencoder(AE_PRESETS[LATENT_PRESETS[name]].replace(steps=5, warmup_steps=1), ae,
                                      progress=False, device="cpu")
                config = config.replace(autoencoder=str(ae))
                note = f"on the latents of {LATENT_PRESETS[name]}"
            if config.data is None:
                config = config.replace(data="shapes")
                note = "timed on synthetic 32x32 shapes"
            s = _per_step(_train_run(config), tmp / "run")
            table["presets"][name] = {"seconds_per_step": s, "steps": config.steps, "seconds": s * config.steps,
                                      **({"note": note} if note else {})}
            print(f"{name:<14} {s * 1000:8.1f} ms/step  {s * config.steps:10.0f} s", flush=True)
            atomic.write_text(args.out, json.dumps(table, indent=2) + "\n")  # what is measured is kept
    table["measured"] = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
                         "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                         "command": "python benchmarks/preset_times.py"}
    atomic.write_text(args.out, json.dumps(table, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""`difflab demo`: train a small digits model on CPU and show what a diffusion model does.

In a few minutes on two CPU cores it trains the `digits` preset, then writes four figures: samples,
the forward (noising) process, one reverse trajectory step by step, and a comparison of samplers
from the same noise (:mod:`.figures`); and it reports the Fréchet distance and class histogram of
300 samples in the features of a reference digits classifier (:mod:`difflab.evaluation`).
"""
from __future__ import annotations

import time
from pathlib import Path

__all__ = ["run", "EVAL_N", "PRESET", "SAMPLER"]

EVAL_N = 300  # the size of the held-out reference in difflab.evaluation
PRESET = "digits-small"
#: The demo's sampler: stochastic, because on this short-trained model it gives about 0.55x the
#: Fréchet distance of dpmpp_2m at the same 20 steps (measured; docs/training.md).
SAMPLER = "dpmpp_2m_sde"


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train a small digits model and draw figures (about 100 s on 2 CPU cores)",
                       description="Train the digits-small preset, then write samples, the forward and "
                       "reverse processes, a sampler comparison and FD / accuracy numbers.")
    p.add_argument("--out", default="difflab-demo", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--steps", type=int, metavar="N", help=f"training steps (default: the {PRESET} preset's)")
    p.set_defaults(func=command)


def command(args) -> None:
    """`difflab demo`: see :func:`run`."""
    run(args.out, steps=args.steps)


class _Stages:
    """Prints numbered stage lines, each followed by the time it took."""

    def __init__(self, total: int):
        self.total, self.k, self.start = total, 0, time.perf_counter()
        self.t = self.start

    def __call__(self, text: str | None = None) -> float:
        """Close the current stage and open the next with `text` (None: just close); returns the
        seconds since the start."""
        now = time.perf_counter()
        if self.k:
            print(f"      done in {now - self.t:.1f} s", flush=True)
        if text is not None:
            self.k, self.t = self.k + 1, now
            print(f"[{self.k}/{self.total}] {text}", flush=True)
        return now - self.start


def run(out_dir="difflab-demo", steps: int | None = None, progress: bool = True) -> dict:
    """Train the `digits-small` preset into `out_dir/model` (`steps` overrides its training steps; a
    model already there with the same config is reused), write samples.png,
    forward_process.png, reverse_trajectory.png and samplers.png to `out_dir`, and print the
    evaluation. Returns the evaluation dict plus the written paths ("files") and the total time
    ("seconds")."""
    import torch

    from ..evaluation import evaluate_digits, format_digits_eval
    from ..io import images as imageio
    from ..pipeline import load
    from ..schedules import karras_sigmas
    from ..training import PRESETS, load_dataset, train
    from .figures import forward_process_figure, reverse_trajectory_figure, sampler_figure

    out = Path(out_dir)
    stage = _Stages(4)
    config = PRESETS[PRESET] if steps is None else PRESETS[PRESET].replace(steps=steps)
    stage(f"training the {PRESET} preset ({config.steps} steps) into {out / 'model'}")
    # resume: a second demo in the same folder reuses (or finishes) the model instead of failing.
    files = {"model": train(config, out, resume=True, progress=progress)}  # also out/samples, out/log.csv
    model = load(files["model"])

    stage(f"drawing 64 samples ({SAMPLER}, 20 steps)")
    x = model.sample(64, sampler=SAMPLER, steps=20, seed=0, progress=progress)
    files["samples"] = imageio.save_grid(x, out / "samples.png", nrow=8, scale=6)

    stage("drawing the forward process, a reverse trajectory and the sampler comparison")
    test = load_dataset("digits", split="test")
    first_of_each = torch.stack([(test.y == k).nonzero()[0, 0] for k in range(10)])
    files["forward_process"] = forward_process_figure(test.x[first_of_each], out / "forward_process.png",
                                                      row_labels=[str(k) for k in range(10)])
    schedule = model.schedule
    noise = torch.randn(10, *model.data_shape, generator=torch.Generator().manual_seed(0))
    sigmas = karras_sigmas(20, schedule.sigma_min, schedule.sigma_max)
    files["reverse_trajectory"] = reverse_trajectory_figure(model.denoiser, noise[:3], sigmas,
                                                            out / "reverse_trajectory.png")
    sigmas = karras_sigmas(10, schedule.sigma_min, schedule.sigma_max)
    files["samplers"] = sampler_figure(model.denoiser, noise, sigmas, out / "samplers.png")

    stage(f"evaluating {EVAL_N} samples of {SAMPLER} (the reference classifier is trained on first use)")
    result = evaluate_digits(model.sample(EVAL_N, sampler=SAMPLER, steps=20, seed=1, progress=progress))
    result["seconds"] = stage()
    print(format_digits_eval(result))
    print(f"demo finished in {result['seconds']:.0f} s; files:")
    for name, path in files.items():
        print(f"  {name:<20} {path}")
    result["files"] = files
    return result

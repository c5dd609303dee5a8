"""Trained restoration against zero-shot restoration on shapes (issue 20's shapes rows), at 16x16.

    .venv/bin/python benchmarks/conditional_shapes.py [--work benchmarks/out/cshapes] [--n 200] [--steps 20]
        [--out benchmarks/conditional]

The `shapes-sr` preset at its 32x32 takes about 7.4 h on 2 CPU cores (difflab info), so this runs
its network at 16x16 (`--set resolution=16`), 1200 steps each (about 12 min per model on one core):

    difflab train --preset shapes-sr --out WORK/TASK --steps 1200 --set resolution=16 --set task=TASK \\
        --set sample_every=0 --set log_every=100 --set ckpt_every=600

for TASK = colorization, super-resolution (8x8 block means -> 16x16) and generate (the unconditional
model that ILVR and DDRM use). On n held-out shapes: PSNR on [0, 1] images and a Fréchet distance
of raw pixels (there is no reference feature network for shapes; pixel FD is a coarse measure of
the sample distribution) to 5,000 training images, beside the same FD of n other held-out images
(the floor). Writes --out/shapes.md and --out/shapes.png.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import difflab
from difflab.editing import Colorization, SuperResolution, ddrm, ilvr
from difflab.evaluation.metrics import frechet_distance, gaussian_stats
from difflab.io.atomic import write_text
from difflab.io.images import save_grid
from difflab.schedules import karras_sigmas
from difflab.training.data import load_dataset
from difflab.training.tasks import restore

SHOW = 10


def psnr(out, ref):
    mse = (((out.clamp(-1, 1) - ref) / 2) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse.clamp_min(1e-12))).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("benchmarks/out/cshapes"))
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("benchmarks/conditional"))
    a = p.parse_args()
    torch.manual_seed(0)
    test = load_dataset("shapes", split="test", resolution=16).x
    x, other = test[:a.n], test[a.n:2 * a.n]
    train_stats = gaussian_stats(load_dataset("shapes", resolution=16).x[:5000].flatten(1))

    def fd(z):
        return frechet_distance(*gaussian_stats(z.clamp(-1, 1).flatten(1)), *train_stats)

    unc = difflab.load(a.work / "generate", "cpu")
    col = difflab.load(a.work / "colorization", "cpu")
    sr = difflab.load(a.work / "super-resolution", "cpu")
    sig = {m: karras_sigmas(a.steps, m.schedule.sigma_min, m.schedule.sigma_max) for m in (unc, col, sr)}
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    gray_op, sr_op = Colorization(), SuperResolution(2)
    y_gray, y_low = gray_op.H(x), sr_op.H(x)
    gray = y_gray.expand_as(x)
    tasks = {
        "colorization": {
            "gray (the channel mean)": lambda: gray,
            "DDRM (eta 0.85, unconditional model)": lambda: ddrm(unc.denoiser, y_gray, gray_op, sig[unc],
                                                                 generator=gen()),
            "Palette (dpmpp_2m, task colorization)": lambda: restore(col.denoiser, "colorization", gray, sig[col],
                                                                    generator=gen()),
            "Palette (ddpm, task colorization)": lambda: restore(col.denoiser, "colorization", gray, sig[col],
                                                                sampler="ddpm", generator=gen()),
        },
        "super-resolution 2x (8x8 -> 16x16)": {
            "bicubic": lambda: F.interpolate(y_low, scale_factor=2, mode="bicubic", align_corners=False),
            "ILVR (ddpm, unconditional model)": lambda: ilvr(unc.denoiser, sr_op.H_pinv(y_low), sig[unc], factor=2,
                                                             generator=gen()),
            "DDRM (eta 0.85, unconditional model)": lambda: ddrm(unc.denoiser, y_low, sr_op, sig[unc],
                                                                 generator=gen()),
            "SR3 (dpmpp_2m, task super-resolution)": lambda: restore(sr.denoiser, "super-resolution", y_low,
                                                                    sig[sr], factor=2, generator=gen()),
            "SR3 (ddpm, task super-resolution)": lambda: restore(sr.denoiser, "super-resolution", y_low, sig[sr],
                                                                factor=2, sampler="ddpm", generator=gen()),
        },
    }
    lines = [f"# Shapes at 16x16: trained vs zero-shot restoration ({a.n} held-out images, {a.steps} steps)", "",
             f"Pixel FD to 5,000 training images; the floor (other held-out images): {fd(other):.2f}. The three "
             "models: the shapes-sr network at 16x16, 1200 steps each (see the script's docstring).", ""]
    fig = [x[:SHOW]]
    for task, methods in tasks.items():
        lines += [f"## {task}", "", "| method | PSNR (dB) | pixel FD | time (s) |", "|---|---|---|---|"]
        for name, fn in methods.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                z = fn().clamp(-1, 1)
            lines.append(f"| {name} | {psnr(z, x):.2f} | {fd(z):.2f} | {time.perf_counter() - t0:.1f} |")
            print(lines[-1], flush=True)
            fig.append(z[:SHOW])
        lines.append("")
    lines.append("Figure `shapes.png`: rows = truth, then every method in the tables' order.")
    a.out.mkdir(parents=True, exist_ok=True)
    write_text(a.out / "shapes.md", "\n".join(lines) + "\n")
    save_grid(torch.cat(fig), a.out / "shapes.png", nrow=SHOW, scale=4)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

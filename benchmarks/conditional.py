"""Conditional denoisers and DiffEdit on held-out digits (issue 20).

    .venv/bin/python benchmarks/conditional.py --sr MODEL_DIR --uncond MODEL_DIR [--cond MODEL_DIR]
        [--inpaint MODEL_DIR] [--base MODEL_DIR] [--n 300] [--steps 20] [--out benchmarks/conditional]

Models used for benchmarks/conditional/output.md (each `difflab train`, 2-core CPU): --sr the
digits-sr preset; --uncond the demo's digits-small; --cond digits-cond with digits-small's network,
steps 1500, lr_decay cosine; --inpaint digits-sr with task inpainting; --base digits-small with
resolution 4 on the 2x2 block means of the digits (an .npy; see docs/conditional.md on why not
`resolution = 4`, whose bilinear down-sampling is not the SR model's degradation); --sr-aug
digits-sr with cond_aug 0.05.

Super-resolution 2x (8x8 digits -> 4x4 block means -> 8x8) on the n held-out digits test images:
the trained conditional denoiser (digits-sr, SR3: dpmpp_2m, `steps` steps) against ILVR (ddpm)
and DDRM (eta 0.85) with the unconditional model --uncond at the same number of steps, and the
bicubic / nearest up-sampling of y. PSNR on [0, 1] images per image, averaged; FD:
difflab.evaluation.evaluate_digits (with its reference FD of held-out digits at that n).

DiffEdit (--cond, a class-conditional digits model): each test image of class s is edited to
class t = (s + 1) mod 10 (strengths 0.5 and 0.7, threshold 0.5, decoding without and with
classifier-free guidance w = 3); reported: the fraction the reference classifier judges to be t,
the mask's mean area and the RMS change outside the mask (0 by construction, measured).
Inpainting (--inpaint, a model of task inpainting): the centre mask, Palette against RePaint,
replacement and DDRM with --uncond; PSNR on the unknown pixels. Cascade (--base, a 4x4 digits
model): FD of base -> --sr samples at conditioning-augmentation levels --aug-levels against the
8x8 --uncond model's samples.
Writes output.md and figures under --out.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import difflab
from difflab.editing import Inpainting, SuperResolution, ddrm, diffedit, ilvr, inpaint
from difflab.evaluation.digits import classify, evaluate_digits
from difflab.guidance import cfg
from difflab.io.atomic import write_text
from difflab.io.images import save_grid
from difflab.schedules import karras_sigmas
from difflab.training.data import load_dataset
from difflab.training.tasks import restore

SHOW = 10


def psnr(out, ref, where=None):
    """Mean over images of the PSNR on [0, 1] images, over the pixels where ``where`` is 1."""
    w = torch.ones_like(ref) if where is None else where.expand_as(ref)
    mse = ((((out.clamp(-1, 1) - ref) / 2) ** 2) * w).flatten(1).sum(1) / w.flatten(1).sum(1)
    return float((10 * torch.log10(1 / mse.clamp_min(1e-12))).mean())


def table_rows(methods, x, lines, fig, where=None):
    """Run each method; append its table row (PSNR, FD, reference FD, time) and its figure row."""
    for name, fn in methods.items():
        z, t = timed(fn)
        r = evaluate_digits(z.clamp(-1, 1))
        lines.append(f"| {name} | {psnr(z, x, where):.2f} | {r['fd']:.2f} | {r['reference_fd']:.2f} | {t:.1f} |")
        print(lines[-1], flush=True)
        fig.append(z[:SHOW].clamp(-1, 1))


def timed(fn):
    t = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return out, time.perf_counter() - t


def super_resolution(a, x, lines, out):
    sr, unc = difflab.load(a.sr), difflab.load(a.uncond)
    f = sr.config.sr_factor
    op = SuperResolution(f)
    y = op.H(x)
    sig_u = karras_sigmas(a.steps, unc.schedule.sigma_min, unc.schedule.sigma_max)
    sig_c = karras_sigmas(a.steps, sr.schedule.sigma_min, sr.schedule.sigma_max)
    methods = {
        "nearest (H^+ y)": lambda: op.H_pinv(y),
        "bicubic": lambda: F.interpolate(y, scale_factor=f, mode="bicubic", align_corners=False).clamp(-1, 1),
        "ILVR (ddpm, unconditional model)": lambda: ilvr(unc.denoiser, op.H_pinv(y), sig_u, factor=f,
                                                         generator=torch.Generator().manual_seed(0)),
        "DDRM (eta 0.85, unconditional model)": lambda: ddrm(unc.denoiser, y, op, sig_u,
                                                             generator=torch.Generator().manual_seed(0)),
        "SR3 (dpmpp_2m, digits-sr)": lambda: restore(sr.denoiser, "super-resolution", y, sig_c, factor=f,
                                                     generator=torch.Generator().manual_seed(0)),
        "SR3 (ddpm, digits-sr)": lambda: restore(sr.denoiser, "super-resolution", y, sig_c, factor=f,
                                                 sampler="ddpm", generator=torch.Generator().manual_seed(0)),
    }
    lines += [f"### Super-resolution {f}x ({x.shape[-1] // f}x{x.shape[-1] // f} block means -> "
              f"{x.shape[-1]}x{x.shape[-1]}), {a.steps} steps", "",
              "| method | PSNR (dB) | FD | reference FD | time (s) |", "|---|---|---|---|---|"]
    fig = [x[:SHOW], op.H_pinv(y)[:SHOW]]
    table_rows(methods, x, lines, fig)
    save_grid(torch.cat(fig), out / "superres.png", nrow=SHOW, scale=8)
    lines += ["", "Figure `superres.png`: rows = truth, nearest, then the methods in the table's order.", ""]


def inpainting(a, x, lines, out):
    """Centre mask (the 4x4 centre of 8x8 unknown): Palette (task inpainting) vs RePaint, replacement
    and DDRM with the unconditional model, 20 steps each."""
    pal, unc = difflab.load(a.inpaint), difflab.load(a.uncond)
    m = torch.ones_like(x)
    m[..., 2:6, 2:6] = 0
    sig_u = karras_sigmas(a.steps, unc.schedule.sigma_min, unc.schedule.sigma_max)
    sig_c = karras_sigmas(a.steps, pal.schedule.sigma_min, pal.schedule.sigma_max)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    methods = {
        "replace (ddpm, unconditional model)": lambda: inpaint(unc.denoiser, m * x, m, sig_u, method="replace",
                                                               generator=gen()),
        "RePaint (ddpm, j=5, U=5, unconditional model)": lambda: inpaint(
            unc.denoiser, m * x, m, sig_u, method="repaint", jump_length=5, resamplings=5, generator=gen()),
        "DDRM (eta 0.85, unconditional model)": lambda: ddrm(unc.denoiser, m * x, Inpainting(m), sig_u,
                                                             generator=gen()),
        "Palette (dpmpp_2m, task inpainting)": lambda: restore(pal.denoiser, "inpainting", m * x, sig_c, mask=m,
                                                              generator=gen()),
        "Palette (ddpm, task inpainting)": lambda: restore(pal.denoiser, "inpainting", m * x, sig_c, mask=m,
                                                          sampler="ddpm", generator=gen()),
    }
    lines += [f"### Inpainting, centre mask (4x4 of 8x8 unknown), {a.steps} steps", "",
              "| method | PSNR unknown (dB) | FD | reference FD | time (s) |", "|---|---|---|---|---|"]
    fig = [x[:SHOW], (m * x)[:SHOW]]
    table_rows(methods, x, lines, fig, where=1 - m)
    save_grid(torch.cat(fig), out / "inpainting.png", nrow=SHOW, scale=8)
    lines += ["", "Figure `inpainting.png`: rows = truth, known pixels, then the methods in order.", ""]


def cascade_benchmark(a, n, lines, out):
    """FD of a 4x4 base model + digits-sr against the 8x8 unconditional model, 20 steps per stage."""
    from difflab.pipeline import cascade

    base, sr, unc = difflab.load(a.base), difflab.load(a.sr), difflab.load(a.uncond)
    rows = [("8x8 unconditional model alone (dpmpp_2m)", lambda: unc.sample(n, steps=a.steps, seed=0))]
    for s in a.aug_levels:
        rows.append((f"cascade 4x4 base -> digits-sr, aug level {s:g}",
                     lambda s=s: cascade([base, sr], n, aug_level=s, steps=a.steps, seed=0)[-1]))
    if a.sr_aug:  # trained with conditioning augmentation: sampled at its training level
        sr_aug = difflab.load(a.sr_aug)
        s = sr_aug.config.cond_aug
        rows.append((f"cascade 4x4 base -> digits-sr trained with cond_aug {s:g}, aug level {s:g}",
                     lambda: cascade([base, sr_aug], n, aug_level=s, steps=a.steps, seed=0)[-1]))
    lines += [f"### Cascade (n = {n}, {a.steps} steps per stage)", "", "| samples | FD | reference FD | time (s) |",
              "|---|---|---|---|"]
    fig = []
    for name, fn in rows:
        z, t = timed(fn)
        r = evaluate_digits(z)
        lines.append(f"| {name} | {r['fd']:.2f} | {r['reference_fd']:.2f} | {t:.1f} |")
        print(lines[-1], flush=True)
        fig.append(z[:SHOW])
    save_grid(torch.cat(fig), out / "cascade.png", nrow=SHOW, scale=8)
    lines += ["", "Figure `cascade.png`: rows in the table's order.", ""]


def diffedit_benchmark(a, x, labels, lines, out):
    model = difflab.load(a.cond)
    k = model.config.num_classes
    sig = karras_sigmas(a.steps, model.schedule.sigma_min, model.schedule.sigma_max)
    target = (labels + 1) % k
    rows = []
    for strength, w in [(s, w) for s in a.strength for w in a.guidance]:
        den = model.denoiser if w == 1 else cfg(model.denoiser, w, num_classes=k)
        (edited, mask), t = timed(lambda: diffedit(den, x, labels, target, sig, strength=strength,
                                                   generator=torch.Generator().manual_seed(0)))
        hit = (classify(edited.clamp(-1, 1)) == target).float().mean().item()
        kept = (classify(x) == labels).float().mean().item()
        outside = (~mask).expand_as(x)
        change = ((edited - x)[outside].square().mean().sqrt().item()) if outside.any() else 0.0
        area = mask.float().mean().item()
        rows.append(f"| {strength:g} | {w:g} | {hit:.1%} | {kept:.1%} | {area:.1%} | {change:.2e} | {t:.1f} |")
        print(rows[-1], flush=True)
        save_grid(torch.cat([x[:SHOW], x[:SHOW].where(mask[:SHOW], -1.0), edited[:SHOW].clamp(-1, 1)]),
                  out / f"diffedit_s{strength:g}_w{w:g}.png", nrow=SHOW, scale=8)
    lines += [f"### DiffEdit, class s -> (s + 1) mod 10, {a.steps} steps, threshold 0.5", "",
              "| strength | guidance w | classifier says target | classifier says source on inputs | mask area | "
              "RMS change outside mask | time (s) |", "|---|---|---|---|---|---|---|", *rows, "",
              "Figures `diffedit_s*_w*.png`: rows = input, mask (input where edited, black elsewhere), edit.", ""]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sr", required=True)
    p.add_argument("--uncond", required=True)
    p.add_argument("--cond")
    p.add_argument("--inpaint")
    p.add_argument("--base")
    p.add_argument("--sr-aug", help="a digits-sr model trained with cond_aug > 0, for the cascade")
    p.add_argument("--aug-levels", type=float, nargs="+", default=[0.0, 0.1])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--strength", type=float, nargs="+", default=[0.5, 0.7])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    p.add_argument("--out", default="benchmarks/conditional")
    a = p.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset("digits", split="test")
    x, labels = ds.x[: a.n], ds.y[: a.n]
    lines = ["# Conditional denoisers and DiffEdit (benchmarks/conditional.py)", "",
             f"n = {len(x)} held-out digits, seed 0, torch {torch.__version__}, "
             f"{platform.processor() or platform.machine()}, 1 thread; SR model {a.sr}, unconditional model "
             f"{a.uncond}, class-conditional model {a.cond}.", ""]
    super_resolution(a, x, lines, out)
    if a.inpaint:
        inpainting(a, x, lines, out)
    if a.base:
        cascade_benchmark(a, len(x), lines, out)
    if a.cond:
        diffedit_benchmark(a, x, labels, lines, out)
    write_text(out / "output.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

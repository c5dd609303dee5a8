"""Editing on held-out digits (issue 5): inpainting, 2x/4x super-resolution and inversion.

    .venv/bin/python benchmarks/editing.py --model /tmp/demo-full [--n 300] [--out benchmarks/editing]

All on the 300 held-out digits test images (8x8, [-1, 1]), an unconditional trained model, Karras
sigmas between the model's sigma_min and sigma_max, seed 0.
  - Inpainting, centre mask (the 4x4 centre of 8x8 unknown) and random mask (50% of pixels unknown,
    per image): RePaint (ddpm, 20 steps, jump 5, 5 resamplings), replace (ddpm, 20 steps), DDRM
    (20 steps, eta 0.85) vs mean fill (train-set mean image) and nearest-neighbour fill (each unknown
    pixel takes the value of the nearest known pixel, Euclidean, ties by raster order).
  - Super-resolution 2x / 4x (y = block averages, 8->4 / 8->2): DDRM and ILVR (ddpm, 20 steps) vs
    bicubic upsampling of y (F.interpolate, clamped) and nearest upsampling (= H^+ y).
  - Inversion: RMSE of reconstruct(invert(x0)) vs steps, ddim (reconstructed with euler, the same
    first-order ODE step) and heun.
PSNR is on [0, 1] images (outputs clamped to [-1, 1]), per image then averaged, on the unknown pixels
and on the whole image. FD: difflab.evaluation.evaluate_digits at the same n, with the held-out
reference at that n (the reference set *is* the ground truth here, so it is the floor).
Writes inpainting.csv, superres.csv, inversion.csv, output.md and one PNG per method under --out.
"""
from __future__ import annotations

import argparse
import csv
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import difflab
from difflab.training.data import load_dataset
from difflab.editing import SuperResolution, Inpainting, ddrm, ilvr, inpaint, invert, reconstruct
from difflab.evaluation.digits import evaluate_digits
from difflab.io.images import save_grid
from difflab.schedules import karras_sigmas

SHOW = 10  # images per row in the figures


def psnr(out, ref, where=None):
    """Mean over images of the PSNR on [0, 1] images, over the pixels where `where` is 1."""
    err = ((out.clamp(-1, 1) - ref) / 2) ** 2
    w = torch.ones_like(err) if where is None else where.expand_as(err).to(err.dtype)
    mse = (err * w).flatten(1).sum(1) / w.flatten(1).sum(1)
    return float((10 * torch.log10(1 / mse.clamp_min(1e-12))).mean())


def nn_fill(x, mask):
    """Each unknown pixel takes the value of the nearest known pixel (Euclidean; ties: raster order)."""
    b, c, h, w = x.shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).float()
    dist = torch.cdist(pos, pos)  # (HW, HW)
    known = mask.expand(b, c, h, w).flatten(2)  # (B, C, HW)
    d = dist[None, None] + (1 - known[:, :, None, :]) * 1e9  # (B, C, HW target, HW source)
    src = d.argmin(-1)
    vals = torch.gather(x.flatten(2), 2, src)
    return (mask * x + (1 - mask) * vals.view_as(x))


def timed(fn):
    t = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return out, time.perf_counter() - t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="/tmp/demo-full")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--n-inversion", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="benchmarks/editing")
    a = p.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = difflab.load(a.model)
    D = model.denoiser
    smin, smax = model.schedule.sigma_min, model.schedule.sigma_max
    sig = karras_sigmas(a.steps, smin, smax)
    x = load_dataset("digits", split="test").x[: a.n]
    mean_img = load_dataset("digits", split="train").x.mean(0, keepdim=True)
    n = len(x)
    lines = [f"model {a.model}, n = {n} held-out digits, {a.steps} Karras steps ({smin} to {smax}), "
             f"seed 0, torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread", ""]

    def fd(y):
        r = evaluate_digits(y.clamp(-1, 1))
        return r["fd"], r["reference_fd"]

    # ---------------- inpainting ----------------
    centre = torch.ones(1, 1, 8, 8)
    centre[..., 2:6, 2:6] = 0
    g = torch.Generator().manual_seed(1)
    rand = torch.stack([(torch.randperm(64, generator=g) >= 32).float().view(1, 8, 8) for _ in range(n)])
    rows = []
    lines += ["### Inpainting", "",
              "| mask | method | PSNR unknown (dB) | PSNR whole (dB) | FD | reference FD | time (s) |",
              "|---|---|---|---|---|---|---|"]
    for mname, mask in (("centre", centre), ("random 50%", rand)):
        m = mask.expand_as(x)
        known = m * x
        methods = {
            "mean fill": lambda: m * x + (1 - m) * mean_img,
            "nearest-neighbour fill": lambda: nn_fill(x, m),
            "replace (ddpm)": lambda: inpaint(D, known, m, sig, method="replace",
                                              generator=torch.Generator().manual_seed(0)),
            "RePaint (ddpm, j=5, U=5)": lambda: inpaint(D, known, m, sig, method="repaint", jump_length=5,
                                                        resamplings=5, generator=torch.Generator().manual_seed(0)),
            "DDRM (eta 0.85)": lambda: ddrm(D, known, Inpainting(m), sig, generator=torch.Generator().manual_seed(0)),
        }
        fig = [x[:SHOW], m[:SHOW] * x[:SHOW]]  # masked input: unknown pixels shown as 0 (mid grey)
        for name, fn in methods.items():
            y, t = timed(fn)
            f, ref = fd(y)
            row = dict(mask=mname, method=name, psnr_unknown=psnr(y, x, 1 - m), psnr_whole=psnr(y, x),
                       fd=f, reference_fd=ref, n=n, seconds=t)
            rows.append(row)
            lines.append(f"| {mname} | {name} | {row['psnr_unknown']:.2f} | {row['psnr_whole']:.2f} | "
                         f"{f:.2f} | {ref:.2f} | {t:.0f} |")
            fig.append(y[:SHOW].clamp(-1, 1))
            print(lines[-1], flush=True)
        save_grid(torch.cat(fig), out / f"inpaint_{mname.split()[0]}.png", nrow=SHOW)
    write_csv(out / "inpainting.csv", rows)

    # ---------------- super-resolution ----------------
    rows = []
    lines += ["", "### Super-resolution (y = block averages)", "",
              "| factor | method | PSNR (dB) | FD | reference FD | time (s) |", "|---|---|---|---|---|---|"]
    for f_ in (2, 4):
        op = SuperResolution(f_)
        y = op.H(x)
        up = op.H_pinv(y)
        methods = {
            "nearest (H^+ y)": lambda: up,
            "bicubic": lambda: F.interpolate(y, scale_factor=f_, mode="bicubic", align_corners=False).clamp(-1, 1),
            "DDRM (eta 0.85)": lambda: ddrm(D, y, op, sig, generator=torch.Generator().manual_seed(0)),
            "ILVR (ddpm)": lambda: ilvr(D, up, sig, factor=f_, generator=torch.Generator().manual_seed(0)),
        }
        fig = [x[:SHOW], up[:SHOW]]
        for name, fn in methods.items():
            z, t = timed(fn)
            fdv, ref = fd(z)
            row = dict(factor=f_, method=name, psnr=psnr(z, x), fd=fdv, reference_fd=ref, n=n, seconds=t)
            rows.append(row)
            lines.append(f"| {f_}x | {name} | {row['psnr']:.2f} | {fdv:.2f} | {ref:.2f} | {t:.0f} |")
            print(lines[-1], flush=True)
            if name != "nearest (H^+ y)":
                fig.append(z[:SHOW].clamp(-1, 1))
        save_grid(torch.cat(fig), out / f"superres_{f_}x.png", nrow=SHOW)
    write_csv(out / "superres.csv", rows)

    # ---------------- inversion ----------------
    rows = []
    xi = x[: a.n_inversion]
    lines += ["", f"### Inversion round trip (n = {len(xi)}, RMSE in [-1, 1] units)", "",
              "| steps | ddim/euler RMSE | heun RMSE | ddim time (s) | heun time (s) |", "|---|---|---|---|---|"]
    fig = [xi[:SHOW]]
    for steps in (5, 10, 20, 50):
        s = karras_sigmas(steps, smin, smax)
        res = {}
        for inv, rec in (("ddim", "euler"), ("heun", "heun")):
            (xT, xr), t = timed(lambda: (lambda xT: (xT, reconstruct(D, xT, s, sampler=rec)))(invert(D, xi, s, sampler=inv)))
            rmse = float(((xr - xi) ** 2).mean().sqrt())
            res[inv] = (rmse, t)
            rows.append(dict(steps=steps, inversion=inv, reconstruction=rec, rmse=rmse,
                             xT_std_over_sigma_max=float(xT.std() / smax), n=len(xi), seconds=t))
            if steps == 10:
                fig += [(xT[:SHOW] / smax).clamp(-1, 1), xr[:SHOW].clamp(-1, 1)]
        lines.append(f"| {steps} | {res['ddim'][0]:.4f} | {res['heun'][0]:.4f} | {res['ddim'][1]:.0f} | {res['heun'][1]:.0f} |")
        print(lines[-1], flush=True)
    save_grid(torch.cat(fig), out / "inversion.png", nrow=SHOW)
    write_csv(out / "inversion.csv", rows)
    (out / "output.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_csv(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


if __name__ == "__main__":
    main()

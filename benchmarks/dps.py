"""DPS against the exact posterior of Gaussian-mixture priors (issue 19).

    .venv/bin/python benchmarks/dps.py [--n 2000] [--out benchmarks/dps]

Priors: the 8-mode ring in 2-D (radius 4, std 0.3) and a 16-D mixture of 8 components (means of
norm 3, std 0.5; `difflab.exact.random_mixture`). Linear-Gaussian measurements y = M x0 + s n of
one prior draw x0 (seed 0): a partial observation (x_1 in 2-D, every other coordinate in 16-D)
and a blur-like matrix ([[0.6, 0.4], [0.4, 0.6]] in 2-D, the circulant [0.25, 0.5, 0.25] in 16-D).
The exact posterior is `difflab.exact.linear_gaussian_posterior`. Bias = W1 per coordinate between
n draws and the exact posterior's marginal (`FullCovarianceMixture.marginal_wasserstein`, the
integral of |F_n - F|), averaged over coordinates; the floor is the same for n exact posterior
draws. DPS (ddpm steps), DDRM (eta 0.85, through a dense SVD of M) and replacement inpainting
(ddpm; partial observations only, y put in the seen coordinates) from the same Karras sigmas
(0.002 to 80). Noise s = 0.02, 0.1 and 0.3, 25 and 100 steps for DPS's scales; the full table at
s = 0.1 and 100 steps. All float64 on one CPU thread.
Writes output.md (the tables printed) under --out.
"""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import torch

import difflab
from difflab.editing import LinearOperator, ddrm, dps, inpaint
from difflab.exact import linear_gaussian_posterior, random_mixture, ring_mixture
from difflab.io import atomic

SCALES = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0)
NOISE = (0.02, 0.1, 0.3)
STEPS = (25, 100)
MAIN_NOISE, MAIN_STEPS = 0.1, 100


class MatrixOperator(LinearOperator):
    """A dense (m, D) matrix on (B, D) vectors, m <= D, for DDRM: its SVD M = U S V^T, the spectral
    layout (B, D) with the singular values first and 0 on the null space."""

    def __init__(self, M):
        self.m, dim = M.shape
        U, s, Vh = torch.linalg.svd(M, full_matrices=True)
        self._U, self._Vt, self._s = U, Vh, torch.cat([s, s.new_zeros(dim - self.m)])

    def Vt(self, x):
        return x @ self._Vt.T

    def V(self, x_bar):
        return x_bar @ self._Vt

    def singular_values(self, x_bar):
        return self._s.expand_as(x_bar)

    def Ut(self, y):
        return torch.cat([y @ self._U, y.new_zeros(*y.shape[:-1], len(self._s) - self.m)], -1)

    def U(self, x_bar):
        return x_bar[..., :self.m] @ self._U.T


def problems():
    """name -> (prior, M, seen coordinates or None)."""
    blur16 = 0.5 * torch.eye(16, dtype=torch.float64)
    for i in range(16):
        blur16[i, (i + 1) % 16] = blur16[i, (i - 1) % 16] = 0.25
    ring, mix = ring_mixture(), random_mixture(k=8, dim=16, norm=3.0, std=0.5)
    seen16 = torch.arange(0, 16, 2)
    return {
        "2-D ring, x_1 seen": (ring, torch.eye(2, dtype=torch.float64)[:1], torch.tensor([0])),
        "2-D ring, blur": (ring, torch.tensor([[0.6, 0.4], [0.4, 0.6]], dtype=torch.float64), None),
        "16-D, half seen": (mix, torch.eye(16, dtype=torch.float64)[seen16], seen16),
        "16-D, blur": (mix, blur16, None),
    }




def gen(seed):
    return torch.Generator().manual_seed(seed)


def measure(prior, M, seen, s, n, scales, steps, others):
    """{row name: W1} for one problem, noise level and number of steps."""
    x0 = prior.sample(1, generator=gen(0))
    y = x0 @ M.T + s * torch.randn(1, M.shape[0], generator=gen(5), dtype=torch.float64)
    post = linear_gaussian_posterior(prior, M, y, s)
    def w1(x):
        return float(post.marginal_wasserstein(x).mean())

    sigmas = difflab.karras_sigmas(steps, 0.002, 80.0).double()
    start = sigmas[0] * torch.randn(n, prior.dim, generator=gen(3), dtype=torch.float64)
    row = {"exact (floor)": w1(post.sample(n, generator=gen(2)))}
    if others:
        row["prior (no measurement)"] = w1(prior.sample(n, generator=gen(2)))
    for scale in scales:
        out = dps(prior, y, lambda x: x @ M.T, start, sigmas, noise_std=s, scale=scale, generator=gen(4))
        row[f"DPS scale {scale:g}"] = w1(out)
    if others:
        op = MatrixOperator(M)
        for k in (20, steps):
            out = ddrm(prior, y.expand(n, -1), op, difflab.karras_sigmas(k, 0.002, 80.0).double(), sigma_y=s,
                       generator=gen(4))
            row[f"DDRM ({k} steps)"] = w1(out)
        if seen is not None:
            mask = torch.zeros(1, prior.dim, dtype=torch.bool)
            mask[0, seen] = True
            x_known = torch.zeros(n, prior.dim, dtype=torch.float64)
            x_known[:, seen] = y
            out = inpaint(prior, x_known, mask, sigmas, method="replace", generator=gen(4))
            row["replace"] = w1(out)
    return row


def table(results: dict, title: str, text: io.StringIO) -> None:
    """Markdown: one row per method, one column per problem (W1, and x the floor)."""
    names = list(results)
    print(f"\n{title}\n", file=text)
    print("| method | " + " | ".join(names) + " |", file=text)
    print("|---|" + "---|" * len(names), file=text)
    rows = list(dict.fromkeys(r for res in results.values() for r in res))
    for r in rows:
        cells = []
        for name in names:
            v, floor = results[name].get(r), results[name]["exact (floor)"]
            cells.append("-" if v is None else f"{v:.3f}" if r == "exact (floor)" else f"{v:.3f} ({v / floor:.1f}x)")
        print(f"| {r} | " + " | ".join(cells) + " |", file=text)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="samples per set (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/dps"))
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    text = io.StringIO()
    print(f"DPS bias (W1 per coordinate, averaged; n = {args.n}; in brackets: x the exact floor)", file=text)
    excess = {}  # (noise, steps) -> mean over problems of W1 - floor, per scale
    for s in NOISE:
        for steps in STEPS:
            main_run = (s, steps) == (MAIN_NOISE, MAIN_STEPS)
            results = {name: measure(*spec, s, args.n, SCALES, steps, others=main_run)
                       for name, spec in problems().items()}
            excess[s, steps] = [sum(r[f"DPS scale {c:g}"] - r["exact (floor)"] for r in results.values()) / len(results)
                                for c in SCALES]
            if main_run:
                table(results, f"noise_std {s}, {steps} steps (DPS, replace; DDRM at 20 and {steps} steps)", text)
    print("\nMean excess W1 over the floor across the four problems, by scale (the default minimises the "
          "mean of the rows):\n", file=text)
    print("| noise_std | steps | " + " | ".join(f"scale {c:g}" for c in SCALES) + " |", file=text)
    print("|---|---|" + "---|" * len(SCALES), file=text)
    for (s, steps), row in excess.items():
        best = min(range(len(SCALES)), key=row.__getitem__)
        print(f"| {s} | {steps} | " + " | ".join(f"**{v:.3f}**" if i == best else f"{v:.3f}" for i, v in enumerate(row))
              + " |", file=text)
    mean = [sum(row[i] for row in excess.values()) / len(excess) for i in range(len(SCALES))]
    print("| mean | | " + " | ".join(f"{v:.3f}" for v in mean) + " |", file=text)
    print(f"\nbest scale overall: {SCALES[min(range(len(SCALES)), key=mean.__getitem__)]:g}; "
          f"{time.perf_counter() - t0:.0f} s on one CPU thread", file=text)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(args.out / "output.md", text.getvalue())
    print(text.getvalue(), end="")


if __name__ == "__main__":
    main()

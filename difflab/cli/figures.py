"""Figures that show what a diffusion model does: the forward (noising) process, one reverse
trajectory step by step, and the same noise through several samplers (used by `difflab demo`).

Each takes any Denoiser and a sigma sequence, so they serve every model.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..io.images import save_figure
from ..samplers import STOCHASTIC, denoiser_calls, sample

__all__ = ["forward_process_figure", "reverse_trajectory_figure", "sampler_figure", "vp_scaled",
           "DEMO_SAMPLERS", "FORWARD_SIGMAS"]

DEMO_SAMPLERS = ("euler", "heun", "ddim", "dpm_solver_2", "dpmpp_2m", "dpmpp_3m", "unipc",
                 "euler_ancestral", "dpmpp_2m_sde")
FORWARD_SIGMAS = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 80.0)
PAD = 1


def vp_scaled(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_t = x / sqrt(1 + sigma^2): the VE sample x = x0 + sigma n shown as the variance-preserving
    x_t = alpha x0 + std n with alpha = 1 / sqrt(1 + sigma^2) (Karras et al. 2022, Table 1), which
    stays in a displayable range at every noise level."""
    return x / math.sqrt(1 + sigma**2)


def _mosaic(tiles: torch.Tensor) -> np.ndarray:
    """Tiles (R, C, channels, H, W) in [-1, 1] -> one (R (H + PAD) + PAD, C (W + PAD) + PAD[, 3]) array
    with grey separators."""
    r, c, ch, h, w = tiles.shape
    canvas = torch.zeros(ch, r * (h + PAD) + PAD, c * (w + PAD) + PAD)
    for i in range(r):
        for j in range(c):
            top, left = PAD + i * (h + PAD), PAD + j * (w + PAD)
            canvas[:, top:top + h, left:left + w] = tiles[i, j].detach().float().cpu().clamp(-1, 1)
    img = ((canvas + 1) / 2).numpy()
    return img[0] if ch == 1 else img.transpose(1, 2, 0)


def _save_labelled(tiles: torch.Tensor, path: Path, title: str, row_labels=(), col_labels=(),
                   xlabel: str | None = None, scale: float = 0.55) -> Path:
    """Draw a mosaic of tiles (R, C, channels, H, W) with row and column labels; write a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    r, c, _, h, w = tiles.shape
    rotate = max(map(len, col_labels), default=0) > 5
    # Inches: the mosaic, plus room for the longest row label, the title and the column labels.
    width = scale * c * w / 8 + 0.3 + 0.08 * max(map(len, row_labels), default=0)
    height = (scale * r * h / 8 + 0.5 + (0.3 if col_labels else 0) + (0.3 if rotate else 0)
              + (0.2 if xlabel else 0))
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(_mosaic(tiles), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([PAD + j * (w + PAD) + (w - 1) / 2 for j in range(len(col_labels))], list(col_labels),
                  fontsize=7, rotation=90 if rotate else 0)
    ax.set_yticks([PAD + i * (h + PAD) + (h - 1) / 2 for i in range(len(row_labels))], list(row_labels),
                  fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    # bbox "tight": the images keep their aspect, so the labels must never be cropped.
    return save_figure(fig, path, bbox_inches="tight", pad_inches=0.1)


def forward_process_figure(x0: torch.Tensor, path, sigmas=FORWARD_SIGMAS, seed: int = 0,
                           row_labels=()) -> Path:
    """Real images (N, C, H, W) noised at increasing sigma, x = x0 + sigma n with one n per image
    (rows: images, columns: sigma), displayed as the VP-scaled x_t = x / sqrt(1 + sigma^2)."""
    n = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    tiles = torch.stack([vp_scaled(x0 + s * n, s) for s in sigmas], dim=1)
    return _save_labelled(tiles, Path(path), "Forward process: x_t = (x0 + σ n) / √(1 + σ²)",
                          row_labels=row_labels, col_labels=[f"{s:g}" for s in sigmas], xlabel="σ")


def reverse_trajectory_figure(denoiser, noise: torch.Tensor, sigmas: torch.Tensor, path,
                              sampler: str = "dpmpp_2m") -> Path:
    """Follow `noise` (N, C, H, W) (unit variance; started at sigmas[0] * noise) through `sampler`:
    per image one row of the current x_t (VP-scaled) and one of the denoiser's estimate D(x; sigma)
    at every step, read from the sampler's callback; the last column is the result."""
    xs, x0_hats = [], []

    def record(info):
        xs.append(vp_scaled(info["x"], info["sigma"]))
        x0_hats.append(info["denoised"])

    with torch.no_grad():
        out = sample(denoiser, sigmas[0] * noise, sigmas, sampler, callback=record,
                     generator=torch.Generator(noise.device).manual_seed(0))
    rows = []
    for i in range(len(noise)):
        rows.append(torch.stack([x[i] for x in xs] + [out[i]]))
        rows.append(torch.stack([d[i] for d in x0_hats] + [out[i]]))
    labels = [label for i in range(len(noise)) for label in (f"x_t #{i + 1}", f"D(x; σ) #{i + 1}")]
    cols = [f"{float(s):.3g}" for s in sigmas[: len(xs)]] + ["out"]
    return _save_labelled(torch.stack(rows), Path(path),
                          f"Reverse process, {sampler} with {len(sigmas) - 1} steps: x_t and the "
                          "denoised estimate at each step", row_labels=labels, col_labels=cols, xlabel="σ")


def sampler_figure(denoiser, noise: torch.Tensor, sigmas: torch.Tensor, path,
                   samplers=DEMO_SAMPLERS) -> Path:
    """The same `noise` (N, C, H, W) through each sampler over the same `sigmas`: one labelled row
    per sampler, with its number of denoiser calls (stochastic samplers share one noise seed)."""
    rows, labels = [], []
    for name in samplers:
        with torch.no_grad():
            rows.append(sample(denoiser, sigmas[0] * noise, sigmas, name,
                               generator=torch.Generator(noise.device).manual_seed(0)))
        mark = ", stochastic" if name in STOCHASTIC else ""
        labels.append(f"{name} ({denoiser_calls(name, sigmas)} calls{mark})")
    return _save_labelled(torch.stack(rows), Path(path),
                          f"Samplers with {len(sigmas) - 1} steps from the same noise", row_labels=labels)

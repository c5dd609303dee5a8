"""Image helpers: [-1, 1] <-> uint8, PNG grids, scatter plots, reading one image file.

Images are float tensors `(N, C, H, W)` (or `(C, H, W)` for one image) in [-1, 1], the convention
of docs/design.md; uint8 pixels map to it by `x = u / 127.5 - 1`, as in Ho et al. 2020 and Dhariwal &
Nichol 2021 (guided_diffusion/image_datasets.py).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from . import atomic

__all__ = ["DataError", "to_uint8", "save_grid", "save_scatter", "save_png", "save_figure", "load_image", "cover_crop",
           "resize_crop", "convert_channels"]

MIN_VISIBLE_PX = 32  # save_grid upscales smaller images (8x8 digits) to at least this size
PAD_VALUE = 128  # grey: visible against both black and white backgrounds
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights of Pillow's convert("L")


class DataError(ValueError):
    """A data set or data file cannot be found or read; the message names it."""


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a Pillow image as a PNG file, atomically (:mod:`difflab.io.atomic`)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic.write_bytes(path, buffer.getvalue())


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Map [-1, 1] to uint8: `u = round(127.5 (x + 1))`, clamped to [0, 255].

    The exact inverse of `x = u / 127.5 - 1` on uint8 values (Ho et al. 2020 truncate instead of
    rounding, which shifts every pixel down by half a level). NaN becomes 128, so a diverged sample
    shows as flat grey rather than as arbitrary bytes.
    """
    x = x.detach().float().nan_to_num(0.0)
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def save_grid(
    x: torch.Tensor, path: str | Path, nrow: int | None = None, pad: int = 1, scale: int | None = None
) -> Path:
    """Write images `(N, C, H, W)` in [-1, 1] (C = 1 or 3) as one PNG grid and return its path.

    `nrow` is the number of images per row (torchvision's `make_grid` convention; default
    `ceil(sqrt(N))`). Each image is upscaled by nearest neighbour by the integer `scale` (default:
    the smallest making it at least 32 px), then separated by `pad` grey pixels, borders included,
    so the PNG is `rows * (H * scale + pad) + pad` high.
    """
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"save_grid needs images (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    scale = scale or max(1, math.ceil(MIN_VISIBLE_PX / min(h, w)))
    ncol = nrow or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncol)
    tiles = to_uint8(x).cpu().repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    hs, ws = h * scale, w * scale
    grid = torch.full((c, nrows * (hs + pad) + pad, ncol * (ws + pad) + pad), PAD_VALUE, dtype=torch.uint8)
    for i in range(n):
        row, col = divmod(i, ncol)
        top, left = pad + row * (hs + pad), pad + col * (ws + pad)
        grid[:, top : top + hs, left : left + ws] = tiles[i]
    pixels = grid.permute(1, 2, 0).numpy()
    return save_png(Image.fromarray(pixels[..., 0] if c == 1 else pixels), path)


def save_scatter(
    points: torch.Tensor | np.ndarray,
    path: str | Path,
    reference: torch.Tensor | np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG scatter plot of 2-D points `(N, 2)`, over grey `reference` points if given.

    Drawn on a bare Agg canvas (no pyplot), so it touches no global matplotlib state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = _as_points(points)
    fig = Figure(figsize=(4, 4.4 if reference is not None else 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if reference is not None:
        reference = _as_points(reference)
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.75", linewidths=0, label="reference")
    ax.scatter(points[:, 0], points[:, 1], s=2, c="C0", linewidths=0, label="samples")
    if reference is not None:
        fig.legend(loc="outside lower center", ncol=2, markerscale=4, frameon=False)
    if title:
        ax.set_title(title)
    ax.set_aspect("equal", adjustable="datalim")
    return save_figure(fig, path)


def save_figure(fig, path: str | Path, **savefig_options) -> Path:
    """Write a matplotlib figure as a PNG file, atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig_options)
    return atomic.write_bytes(path, buffer.getvalue())


def _as_points(points: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().float().numpy()
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"save_scatter needs 2-D points (N, 2), got shape {points.shape}")
    return points


def load_image(path: str | Path, resolution: int | None = None, channels: int | None = 3) -> torch.Tensor:
    """Read one image file as a float tensor `(C, H, W)` in [-1, 1].

    `channels` is 3 (RGB), 1 (luma, BT.601) or None (1 for a grayscale file, else 3). Any Pillow
    mode is converted: transparency is composited over white, 16-bit grayscale is scaled (not
    clipped) to 8 bits, and EXIF orientation is applied. With `resolution`, the shorter side is
    resized to it (bicubic) and the centre square cropped, as `center_crop_arr` in Dhariwal &
    Nichol 2021 (guided_diffusion/image_datasets.py). Raises DataError for an unreadable file.
    """
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    # Pillow's decoders raise a zoo of types for broken files (OSError, SyntaxError, ValueError,
    # zlib.error, DecompressionBombError); any failure here means "not a readable image".
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: not a readable image ({e})") from e
    if channels is None:
        channels = 1 if img.mode in GRAY_MODES else 3
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    img = _to_mode(img, "L" if channels == 1 else "RGB")
    if resolution is not None:
        nh, nw, top, left = cover_crop(img.height, img.width, resolution)
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        img = img.crop((left, top, left + resolution, top + resolution))
    pixels = np.asarray(img, dtype=np.float32).reshape(img.height, img.width, channels)
    return torch.from_numpy(pixels / 127.5 - 1).permute(2, 0, 1).contiguous()


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert to "L" or "RGB", handling the modes that Pillow's convert gets wrong for us."""
    if img.mode.startswith("I"):  # 16-bit (or int32) grayscale: convert("L") would clip at 255
        levels = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(levels.round().clip(0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img if img.mode == mode else img.convert(mode)


def cover_crop(h: int, w: int, resolution: int) -> tuple[int, int, int, int]:
    """Size `(nh, nw)` with shorter side `resolution` (aspect kept) and the centre crop's `(top, left)`."""
    s = resolution / min(h, w)
    nh, nw = max(resolution, round(h * s)), max(resolution, round(w * s))
    return nh, nw, (nh - resolution) // 2, (nw - resolution) // 2


def resize_crop(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize images `(N, C, H, W)` so the shorter side is `resolution`, then crop the centre square.

    The tensor counterpart of `load_image(..., resolution)`: bilinear with antialiasing (a
    low-pass filter when downsampling), which cannot overshoot [-1, 1].
    """
    h, w = x.shape[-2:]
    if h == w == resolution:
        return x
    nh, nw, top, left = cover_crop(h, w, resolution)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    return x[..., top : top + resolution, left : left + resolution].contiguous()


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert images `(N, C, H, W)` to 1 or 3 channels: grey repeated, BT.601 luma, alpha dropped.

    Luma is affine-invariant (its weights sum to 1), so it is applied directly in [-1, 1].
    """
    c = x.shape[1]
    if c == channels:
        return x
    if channels == 3 and c == 1:
        return x.repeat(1, 3, 1, 1)
    if channels == 3 and c == 4:
        return x[:, :3].contiguous()
    if channels == 1 and c in (3, 4):
        return torch.einsum("c,nchw->nhw", x.new_tensor(LUMA), x[:, :3])[:, None]
    raise DataError(f"cannot convert {c}-channel images to {channels} channels")

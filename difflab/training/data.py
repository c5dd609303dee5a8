"""Data sets: built-in (digits, shapes, captioned shapes-text, 2-D toys, the signals ar1, sines and
tones) and user data (image folders, folders of WAV files, .npy / .npz).

Everything is held in memory as one `Dataset`: images are float32 `(N, C, H, W)` in [-1, 1],
points float32 `(N, D)`, signals float32 `(N, C, L)` (time series of any range, or audio in
[-1, 1] with a sample rate), labels int64 `(N,)` or None. `load_dataset(spec)` is the one entry point;
`spec` is a name from `BUILTINS` or a path. Nothing is ever downloaded.

Batching is a pure function of `(seed, step)` (`batch_indices`), so a training run resumed at
step k draws exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..io import images as imageio
from ..io.images import DataError


SPLITS = ("train", "test")
DEFAULT_SIZE = {"train": 10_000, "test": 1_000}  # generated sets (toys, shapes, shapes-text)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
AUDIO_EXTENSIONS = (".wav",)
RANGE_TOLERANCE = 1e-3  # float images may exceed [-1, 1] by rounding error, not more


@dataclass
class Dataset:
    """An in-memory data set: `x` images `(N, C, H, W)`, points `(N, D)` or signals `(N, C, L)`,
    `y` labels or None.

    `num_classes` is inferred from `y` when not given; `class_names[k]` names label k;
    `sample_rate` (Hz) marks signals that are audio.
    """

    x: torch.Tensor
    y: torch.Tensor | None = None
    num_classes: int | None = None
    name: str = "data"
    class_names: tuple[str, ...] | None = None
    noise: torch.Tensor | None = None  # a noise sample paired with each x (reflow pairs)
    captions: tuple[str, ...] | None = None  # a caption per x (text-conditional data)
    sample_rate: int | None = None  # audio signals: samples per second

    def __post_init__(self):
        if self.x.ndim not in (2, 3, 4) or len(self.x) == 0:
            raise DataError(
                f"{self.name}: need images (N, C, H, W), signals (N, C, L) or points (N, D), got {tuple(self.x.shape)}"
            )
        if self.sample_rate is not None and (self.x.ndim != 3 or self.sample_rate < 1):
            raise DataError(f"{self.name}: a sample rate applies to signals (N, C, L) and must be positive")
        if self.y is not None:
            if self.y.shape != (len(self.x),) or self.y.dtype != torch.int64:
                raise DataError(f"{self.name}: labels must be int64 of shape ({len(self.x)},)")
            if self.num_classes is None:
                self.num_classes = len(self.class_names) if self.class_names else int(self.y.max()) + 1
            if self.y.min() < 0 or self.y.max() >= self.num_classes:
                raise DataError(f"{self.name}: labels must lie in [0, {self.num_classes})")
        if self.captions is not None and len(self.captions) != len(self.x):
            raise DataError(f"{self.name}: {len(self.captions)} captions for {len(self.x)} samples")
        if self.noise is not None and self.noise.shape != self.x.shape:
            raise DataError(f"{self.name}: the paired noise has shape {tuple(self.noise.shape)}, the data "
                            f"{tuple(self.x.shape)}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise DataError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes"
            )

    @property
    def kind(self) -> str:
        """"image" for `(N, C, H, W)` data, "signal" for `(N, C, L)`, "points" for `(N, D)`."""
        return {4: "image", 3: "signal", 2: "points"}[self.x.ndim]

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample: `(C, H, W)`, `(C, L)` or `(D,)`."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, batch_size: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Batch number `step` of the shuffled stream of `batch_indices`: `(x, y)`, y None if unlabelled."""
        idx = batch_indices(len(self), batch_size, seed, step, device=self.x.device)
        return self.x[idx], None if self.y is None else self.y[idx]

    def batches(
        self, batch_size: int, seed: int = 0, start_step: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Endless batches `batch(batch_size, seed, step)` for step = start_step, start_step + 1, ..."""
        return (self.batch(batch_size, seed, step) for step in itertools.count(start_step))

    def to(self, device: torch.device | str) -> Dataset:
        """The same data set with `x`, `y` and `noise` on `device`."""
        y = None if self.y is None else self.y.to(device)
        noise = None if self.noise is None else self.noise.to(device)
        return replace(self, x=self.x.to(device), y=y, noise=noise)

    def info(self) -> dict:
        """JSON-serialisable description (for a model's config.json)."""
        names = None if self.class_names is None else list(self.class_names)
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "size": len(self),
                "num_classes": self.num_classes, "class_names": names, "captioned": self.captions is not None,
                "sample_rate": self.sample_rate}


def torch_device(device, default: str | None = None) -> torch.device:
    """``device`` (a name or a torch.device) checked to exist here, or ``default`` (None: CUDA when
    there is a GPU, else the CPU) when it is None; ValueError for an unknown name or a CUDA device
    without a GPU."""
    if device is None:
        device = default or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r} ({e})") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA GPU")
    return device


def batch_indices(n: int, batch_size: int, seed: int, step: int, device=None) -> torch.Tensor:
    """Indices `(batch_size,)` of batch `step` of an endless shuffled stream over `range(n)`.

    The stream is the concatenation P_0 P_1 P_2 ... of permutations of `range(n)`, P_e drawn from
    a generator seeded by `(seed, e)` (as `torch.utils.data.DistributedSampler` reseeds with the
    epoch), and batch k is its positions `[k B, (k + 1) B)`. Every batch is full, every sample is
    seen once per epoch, `batch_size > n` is allowed, and the result is a pure function of the
    arguments: resuming at step k needs only (seed, k). On a `device` the indices are cut from
    permutations copied there once per epoch, so a training step never waits for the host.
    """
    if n < 1 or batch_size < 1 or step < 0 or seed < 0:
        raise ValueError(
            f"need n, batch_size >= 1 and seed, step >= 0; got {n=} {batch_size=} {seed=} {step=}"
        )
    device = torch.device("cpu" if device is None else device)
    start, stop = step * batch_size, (step + 1) * batch_size
    first, last = start // n, (stop - 1) // n
    perms = [_epoch_permutation(n, seed, e, str(device)) for e in range(first, last + 1)]
    stream = perms[0] if len(perms) == 1 else torch.cat(perms)
    return stream[start - first * n : stop - first * n].clone()


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, epoch: int, device: str) -> torch.Tensor:
    perm = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))
    if device.startswith("cuda"):  # from pinned memory the copy does not block the host
        return perm.pin_memory().to(device, non_blocking=True)
    return perm


def _split_rng(seed: int, split: str) -> np.random.Generator:
    """Independent generators for the train and test sets of one seed."""
    return np.random.default_rng([seed, SPLITS.index(split)])


def _subset(n: int, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a random subset of `size` of `range(n)` (all of them when size is None)."""
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


# --- 2-D toy sets (Grathwohl et al. 2019, FFJORD, lib/toy_data.py) ---------------------------------
# Each returns (points, labels or None, number of classes) with points of mean 0 and unit variance
# per coordinate on average, using the distribution's exact moments (not the sample's), so the
# scaling does not depend on the sample size. Scaling is isotropic, keeping each shape's aspect.


def _standardise(points: np.ndarray, mean: tuple[float, float], var: float) -> np.ndarray:
    """(p - mean) / sqrt(var), with var the per-coordinate variance averaged over coordinates."""
    return (points - np.asarray(mean)) / math.sqrt(var)


def _moons(rng: np.random.Generator, n: int, noise: float = 0.1):
    """Two interleaved half circles (sklearn's make_moons): (cos t, sin t) and (1 - cos t, 1/2 - sin t).

    With t ~ U[0, pi] and the moon a fair coin: mean (1/2, 1/4), variances 3/4 and 9/16 - 1/pi.
    """
    y = rng.integers(0, 2, n)
    t = rng.uniform(0, math.pi, n)
    p = np.stack([np.cos(t), np.sin(t)], 1)
    p[y == 1] = np.array([1.0, 0.5]) - p[y == 1]
    p += noise * rng.standard_normal((n, 2))
    var = (0.75 + 9 / 16 - 1 / math.pi) / 2 + noise**2
    return _standardise(p, (0.5, 0.25), var), y, 2


def _swissroll(rng: np.random.Generator, n: int, noise: float = 0.5):
    """The 2-D swiss roll (t cos t, t sin t), t ~ U[3pi/2, 9pi/2] (sklearn's make_swiss_roll).

    Moments: E[t cos t] = [t sin t + cos t]_a^b / (b - a), E[t sin t] = [sin t - t cos t]_a^b /
    (b - a), E|p|^2 = E[t^2] = (b^3 - a^3) / (3 (b - a)).
    """
    a, b = 1.5 * math.pi, 4.5 * math.pi
    t = rng.uniform(a, b, n)
    p = np.stack([t * np.cos(t), t * np.sin(t)], 1) + noise * rng.standard_normal((n, 2))
    mx = (b * math.sin(b) + math.cos(b) - a * math.sin(a) - math.cos(a)) / (b - a)
    my = (math.sin(b) - b * math.cos(b) - math.sin(a) + a * math.cos(a)) / (b - a)
    var = ((b**3 - a**3) / (3 * (b - a)) - mx**2 - my**2) / 2 + noise**2
    return _standardise(p, (mx, my), var), None, None


def _eight_gaussians(rng: np.random.Generator, n: int, noise: float = 0.2):
    """Eight Gaussians N(mu_k, noise^2 I) at mu_k = r (cos k pi/4, sin k pi/4), label k.

    Variance per coordinate is r^2 / 2 + noise^2, so r = sqrt(2 (1 - noise^2)) makes it 1.
    """
    y = rng.integers(0, 8, n)
    r = math.sqrt(2 * (1 - noise**2))
    angle = y * math.pi / 4
    p = r * np.stack([np.cos(angle), np.sin(angle)], 1) + noise * rng.standard_normal((n, 2))
    return p, y, 8


def _checkerboard(rng: np.random.Generator, n: int):
    """Uniform on the 8 black squares of a 4 x 4 board on [-2, 2]^2 (FFJORD's construction).

    Both marginals are U[-2, 2], variance 4/3, so the board is scaled by sqrt(3)/2.
    """
    x1 = rng.uniform(-2, 2, n)
    x2 = rng.uniform(0, 1, n) - 2 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return _standardise(np.stack([x1, x2], 1), (0.0, 0.0), 4 / 3), None, None


def _rings(rng: np.random.Generator, n: int, noise: float = 0.1):
    """Four concentric circles of radius k + 1 (label k, equally likely) plus N(0, noise^2 I).

    Variance per coordinate: E[r^2] / 2 + noise^2 = 7.5 / 2 + noise^2.
    """
    y = rng.integers(0, 4, n)
    angle = rng.uniform(0, 2 * math.pi, n)
    p = (y + 1.0)[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    p += noise * rng.standard_normal((n, 2))
    return _standardise(p, (0.0, 0.0), 3.75 + noise**2), y, 4


TOY_SETS = {
    "moons": _moons,
    "swissroll": _swissroll,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "rings": _rings,
}


def _toy(name: str, split: str, size: int | None, seed: int) -> Dataset:
    points, labels, num_classes = TOY_SETS[name](_split_rng(seed, split), size or DEFAULT_SIZE[split])
    y = None if labels is None else torch.from_numpy(labels).long()
    return Dataset(torch.from_numpy(points).float(), y, num_classes, name)


# --- Images --------------------------------------------------------------------------------------


def _digits(split: str, size: int | None, seed: int) -> Dataset:
    """scikit-learn's 8 x 8 handwritten digits (UCI, Alpaydin & Kaynak 1998), 1,797 images 0..16.

    A fixed stratified split (random_state=0): 1,497 train / 300 test images. Pixels map to
    [-1, 1] by v / 8 - 1; `seed` only picks the subset when `size` is given.
    """
    # Imported here: scikit-learn takes a second to import and only this data set needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train, test = train_test_split(
        np.arange(len(digits.target)), test_size=300, stratify=digits.target, random_state=0
    )
    idx = np.sort(train if split == "train" else test)
    idx = idx[_subset(len(idx), size, seed)]
    x = torch.from_numpy(digits.images[idx]).float()[:, None] / 8 - 1
    y = torch.from_numpy(digits.target[idx]).long()
    return Dataset(x, y, 10, "digits", tuple(str(k) for k in range(10)))


SHAPE_KINDS = ("circle", "square", "triangle", "cross")


def _box(u: np.ndarray, v: np.ndarray, a, b) -> np.ndarray:
    """Signed distance (exact inside and along the edges) to the box |u| <= a, |v| <= b."""
    return np.maximum(np.abs(u) - a, np.abs(v) - b)


def _shape_sdf(kind: np.ndarray, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (< 0 inside) to each image's shape, centred, in its own rotated frame (u, v).

    Every shape fits in the circle of radius r: a square of half side r / sqrt 2, an equilateral
    triangle of circumradius r (the max of its three edge half-planes, inradius r / 2), and a
    plus sign of arms 0.9 r x 0.3 r (the min of two boxes). See Quilez, "2D distance functions".
    """
    angles = math.pi / 2 + 2 * math.pi * np.arange(3) / 3
    edges = np.stack([u * math.cos(t) + v * math.sin(t) for t in angles]).max(0) - r / 2
    sdf = {
        "circle": np.hypot(u, v) - r,
        "square": _box(u, v, r / math.sqrt(2), r / math.sqrt(2)),
        "triangle": edges,
        "cross": np.minimum(_box(u, v, 0.9 * r, 0.3 * r), _box(u, v, 0.3 * r, 0.9 * r)),
    }
    return np.select([kind == k for k in range(len(SHAPE_KINDS))], [sdf[k] for k in SHAPE_KINDS])


def _render_shapes(kind, r, centre, angle, fg, bg, resolution: int) -> np.ndarray:
    """Images (n, 3, res, res) of `_shape_sdf` shapes (radius `r`, `centre` (n, 2) as (x, y) from the
    top left, all in units of the image side) rotated by `angle`, colour `fg` (n, 3) over `bg`, with
    analytic anti-aliasing: coverage = clip(1/2 - sdf, 0, 1), sdf in pixels. Values in [0, 1].
    """
    n = len(kind)
    pixel = (np.arange(resolution) + 0.5) / resolution
    images = np.empty((n, 3, resolution, resolution), np.float32)
    for s in range(0, n, 1000):  # in chunks, to bound the memory of the (chunk, H, W) temporaries
        c = slice(s, s + 1000)
        dx = pixel[None, None, :] - centre[c, 0, None, None]
        dy = pixel[None, :, None] - centre[c, 1, None, None]
        cos, sin = np.cos(angle[c])[:, None, None], np.sin(angle[c])[:, None, None]
        u, v = cos * dx + sin * dy, cos * dy - sin * dx
        sdf = _shape_sdf(kind[c, None, None], u, v, r[c, None, None]) * resolution
        alpha = np.clip(0.5 - sdf, 0, 1)[:, None]
        images[c] = fg[c, :, None, None] * alpha + bg[c, :, None, None] * (1 - alpha)
    return images


def _shapes(split: str, size: int | None, seed: int, resolution: int = 32) -> Dataset:
    """Coloured shapes (`SHAPE_KINDS`, label = kind) of random size, position, rotation and colour
    on a plain background of a clearly different colour (RGB distance >= 0.5), rendered with
    analytic anti-aliasing (`_render_shapes`).
    """
    rng, n = _split_rng(seed, split), size or DEFAULT_SIZE[split]
    kind = rng.integers(0, len(SHAPE_KINDS), n)
    r = rng.uniform(5 / 32, 13 / 32, n)  # radius, in units of the image side
    centre = rng.uniform(r + 1 / 32, 1 - r - 1 / 32, (2, n)).T
    angle = rng.uniform(0, 2 * math.pi, n)
    fg, bg = rng.uniform(0, 1, (n, 3)), rng.uniform(0, 1, (n, 3))
    while (close := np.linalg.norm(fg - bg, axis=1) < 0.5).any():
        bg[close] = rng.uniform(0, 1, (close.sum(), 3))
    x = torch.from_numpy(_render_shapes(kind, r, centre, angle, fg, bg, resolution)) * 2 - 1
    return Dataset(x, torch.from_numpy(kind).long(), len(SHAPE_KINDS), "shapes", SHAPE_KINDS)


SHAPES_TEXT_COLORS = {
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0), "white": (1.0, 1.0, 1.0),
}
SHAPES_TEXT_SHAPES = SHAPE_KINDS[:3]  # ("circle", "square", "triangle"): the first kinds of _shape_sdf
SHAPES_TEXT_POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
SHAPES_TEXT_CAPTIONS = tuple(  # the caption of label (color * 3 + shape) * 5 + position
    f"{c} {s} {p}" for c in SHAPES_TEXT_COLORS for s in SHAPES_TEXT_SHAPES for p in SHAPES_TEXT_POSITIONS
)
# red ... white, circle square triangle, top left right bottom center
SHAPES_TEXT_VOCAB = tuple(dict.fromkeys(
    [*SHAPES_TEXT_COLORS, *SHAPES_TEXT_SHAPES, *" ".join(SHAPES_TEXT_POSITIONS).split()]
))
SHAPES_TEXT_RADIUS = (4 / 32, 6 / 32)  # the range of the circumradius r, in units of the image side
SHAPES_TEXT_JITTER = 1 / 32  # the largest offset of a shape's centre from its position, per coordinate
_POSITION_CENTRES = np.array([(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75), (0.5, 0.5)])


def _shapes_text(split: str, size: int | None, seed: int, resolution: int = 32) -> Dataset:
    """One filled shape on black, captioned exactly "<color> <shape> <position>" ("red circle top
    left", "blue triangle center"), for text-to-image models.

    Colour: a pure `SHAPES_TEXT_COLORS` colour (1 for a full pixel, times the coverage at the edges).
    Shape: an axis-aligned circle of radius r, square of half side r / sqrt 2, or upright
    equilateral triangle of circumradius r (`_shape_sdf`); each fits in the circle of radius r about
    its centre, and fills pi/4, 1 and 1/2 of its bounding box. r ~ U(`SHAPES_TEXT_RADIUS`) =
    U(1/8, 3/16) of the image side (4 to 6 pixels at 32 x 32).
    Position: the centre of the named quadrant, (1/4 or 3/4, 1/4 or 3/4) from the top left, or of
    the image, (1/2, 1/2), plus a jitter ~ U(-1/32, 1/32) per coordinate (`SHAPES_TEXT_JITTER`);
    r + jitter <= 7/32 keeps every shape 1/32 of the side inside its quadrant.
    The 75 combinations are balanced exactly (their counts differ by at most one) and shuffled.
    Label y = (color * 3 + shape) * 5 + position in the order of the constants, so class_names[y]
    (`SHAPES_TEXT_CAPTIONS[y]`) is the caption and the set also serves class-conditional models.
    """
    rng, n = _split_rng(seed, split), size or DEFAULT_SIZE[split]
    label = rng.permutation(np.arange(n) % len(SHAPES_TEXT_CAPTIONS))
    colour, kind, position = np.unravel_index(
        label, (len(SHAPES_TEXT_COLORS), len(SHAPES_TEXT_SHAPES), len(SHAPES_TEXT_POSITIONS))
    )
    r = rng.uniform(*SHAPES_TEXT_RADIUS, n)
    centre = _POSITION_CENTRES[position] + rng.uniform(-SHAPES_TEXT_JITTER, SHAPES_TEXT_JITTER, (n, 2))
    fg = np.array(list(SHAPES_TEXT_COLORS.values()))[colour]
    images = _render_shapes(kind, r, centre, np.zeros(n), fg, np.zeros((n, 3)), resolution)
    captions = tuple(SHAPES_TEXT_CAPTIONS[k] for k in label)
    x, y = torch.from_numpy(images) * 2 - 1, torch.from_numpy(label).long()
    return Dataset(x, y, len(SHAPES_TEXT_CAPTIONS), "shapes-text", SHAPES_TEXT_CAPTIONS, captions=captions)


# --- Signals ---------------------------------------------------------------------------------------

AR1_PHI, AR1_LENGTH = 0.9, 64
SINES_LENGTH, SINES_CYCLES, SINES_AMPLITUDE = 64, (1.0, 8.0), (0.5, 1.0)
TONES_RATE, TONES_LENGTH, TONES_F0 = 8000, 1024, (200.0, 800.0)
TONES_HARMONICS = (1.0, 0.5, 0.25, 0.125)  # amplitudes of the fundamental and its first overtones


def _ar1(split: str, size: int | None, seed: int) -> Dataset:
    """A stationary Gaussian AR(1) process x_t = phi x_{t-1} + sqrt(1 - phi^2) e_t, e_t ~ N(0, 1), with
    phi = `AR1_PHI` = 0.9 and x_0 ~ N(0, 1): unit marginal variance and the Toeplitz covariance
    phi^|i - j| (`difflab.exact.ar1_covariance`); `AR1_LENGTH` = 64 steps, one channel."""
    rng, n = _split_rng(seed, split), size or DEFAULT_SIZE[split]
    e = rng.standard_normal((n, AR1_LENGTH))
    x = np.empty_like(e)
    x[:, 0] = e[:, 0]
    for t in range(1, AR1_LENGTH):
        x[:, t] = AR1_PHI * x[:, t - 1] + math.sqrt(1 - AR1_PHI**2) * e[:, t]
    return Dataset(torch.from_numpy(x).float()[:, None], name="ar1")


def _sines(split: str, size: int | None, seed: int) -> Dataset:
    """a sin(2 pi f t / L + p) for t = 0..L-1, L = `SINES_LENGTH` = 64: f ~ U(1, 8) cycles per window,
    phase p ~ U(0, 2 pi), amplitude a ~ U(1/2, 1); one channel."""
    rng, n = _split_rng(seed, split), size or DEFAULT_SIZE[split]
    f, p = rng.uniform(*SINES_CYCLES, (n, 1)), rng.uniform(0, 2 * math.pi, (n, 1))
    a = rng.uniform(*SINES_AMPLITUDE, (n, 1))
    t = np.arange(SINES_LENGTH)[None] / SINES_LENGTH
    return Dataset(torch.from_numpy(a * np.sin(2 * math.pi * f * t + p)).float()[:, None], name="sines")


def _tones(split: str, size: int | None, seed: int) -> Dataset:
    """Short musical tones sampled at `TONES_RATE` = 8 kHz, `TONES_LENGTH` = 1024 samples (128 ms):
    a fundamental f0 log-uniform in `TONES_F0` = [200, 800] Hz with harmonics k f0 of amplitudes
    `TONES_HARMONICS` (1, 1/2, 1/4, 1/8) and random phases, under an envelope of a 5 ms linear
    attack and an exponential decay of time constant U(40, 120) ms, scaled to a peak in U(0.3, 0.9)."""
    rng, n = _split_rng(seed, split), size or DEFAULT_SIZE[split]
    t = np.arange(TONES_LENGTH)[None] / TONES_RATE
    f0 = np.exp(rng.uniform(*np.log(TONES_F0), (n, 1)))
    x = np.zeros((n, TONES_LENGTH))
    for k, amp in enumerate(TONES_HARMONICS, start=1):
        x += amp * np.sin(2 * math.pi * k * f0 * t + rng.uniform(0, 2 * math.pi, (n, 1)))
    envelope = np.minimum(t / 0.005, 1) * np.exp(-t / rng.uniform(0.04, 0.12, (n, 1)))
    x *= envelope
    x *= rng.uniform(0.3, 0.9, (n, 1)) / np.abs(x).max(1, keepdims=True)
    return Dataset(torch.from_numpy(x).float()[:, None], name="tones", sample_rate=TONES_RATE)


SIGNAL_SETS = {"ar1": _ar1, "sines": _sines, "tones": _tones}

BUILTINS = ("digits", "shapes", "shapes-text", *TOY_SETS, *SIGNAL_SETS)


# --- User data -----------------------------------------------------------------------------------


def _files(root: Path, extensions) -> list[Path]:
    return sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in extensions and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _load_wav_folder(root: Path, files: list[Path], size: int | None, seed: int) -> Dataset:
    """Every .wav file below `root` as one signal (C, L) in [-1, 1]: all must share the sample rate
    and the channel count; longer files are cut to the shortest length (with a warning).
    Unreadable files are skipped with a warning."""
    from ..io.signals import read_wav  # scipy's wavfile: imported only for audio folders

    signals, rates, broken = [], set(), []
    for i in _subset(len(files), size, seed):
        try:
            x, rate = read_wav(files[i])
        except DataError:
            broken.append(files[i].relative_to(root).as_posix())
            continue
        signals.append(x)
        rates.add(rate)
    if not signals:  # an error alone, without the warning about skipped files before it
        raise DataError(f"{root}: none of the {len(broken)} WAV files could be read ({_listed(broken)}); "
                        "check that they are PCM WAV files")
    if broken:
        warnings.warn(f"{root}: skipped {len(broken)} WAV files that could not be read: {_listed(broken)}",
                      stacklevel=3)
    if len(rates) > 1:
        raise DataError(f"{root}: the WAV files have different sample rates ({sorted(rates)} Hz); resample "
                        "them to one rate first")
    if len({x.shape[0] for x in signals}) > 1:
        raise DataError(f"{root}: the WAV files mix mono and multi-channel audio; convert them to one channel count")
    length = min(x.shape[1] for x in signals)
    if any(x.shape[1] != length for x in signals):
        warnings.warn(f"{root}: WAV files of different lengths; each is cut to the shortest, {length} samples",
                      stacklevel=3)
    x = torch.from_numpy(np.stack([s[:, :length] for s in signals])).float()
    return Dataset(x, name=root.name, sample_rate=rates.pop())


def _listed(names: list[str], shown: int = 5) -> str:
    """The first ``shown`` names, comma-separated, then ``...`` if there are more."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def _load_folder(
    root: Path, resolution: int | None, channels: int | None, size: int | None, seed: int
) -> Dataset:
    """Every png/jpg/jpeg/webp file below `root` (hidden files skipped); labels = sorted names of
    the top-level sub-folders when every image lies in one. Unreadable files are skipped with a
    warning. Without `resolution`, images of differing sizes are cropped to the smallest side.
    A folder of .wav files (and no images) is a set of audio signals (`_load_wav_folder`).
    """
    files = _files(root, IMAGE_EXTENSIONS)
    if not files and (audio := _files(root, AUDIO_EXTENSIONS)):
        return _load_wav_folder(root, audio, size, seed)
    if not files:
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) or WAV files found")
    folders = [p.relative_to(root).parts[0] if p.parent != root else None for p in files]
    class_names = None if None in folders else tuple(sorted(set(folders)))
    keep = _subset(len(files), size, seed)

    images, labels, broken = [], [], []
    for i in keep:
        try:
            images.append(imageio.load_image(files[i], resolution, channels))
        except DataError:
            broken.append(files[i].relative_to(root).as_posix())
            continue
        if class_names:
            labels.append(class_names.index(folders[i]))
    if not images:  # an error alone, without the warning about skipped files before it
        raise DataError(f"{root}: none of the {len(keep)} image files could be read ({_listed(broken)}); "
                        "check that they are complete PNG, JPEG or WebP files")
    if broken:
        warnings.warn(
            f"{root}: skipped {len(broken)} of {len(keep)} image files that could not be read: {_listed(broken)}",
            stacklevel=3,
        )

    channels = max(img.shape[0] for img in images)  # with channels=None, any colour file makes all RGB
    sides = {img.shape[1:] for img in images}
    if len(sides) > 1:
        side = min(min(s) for s in sides)
        warnings.warn(f"{root}: images have different sizes; resized and centre-cropped to {side}x{side}"
                      " (pass a resolution to choose)", stacklevel=3)
        images = [imageio.resize_crop(img[None], side)[0] for img in images]
    x = torch.stack([img.expand(channels, -1, -1) for img in images])
    y = torch.tensor(labels, dtype=torch.int64) if class_names else None
    return Dataset(x, y, len(class_names) if class_names else None, root.name, class_names)


def _load_array(path: Path, size: int | None, seed: int) -> Dataset:
    """A .npy array, or a .npz with data under `x`, `images` or `arr_0`, labels under `y` or `labels`
    and, optionally, a standard normal `noise` paired with each sample (the pairs of a reflow).

    uint8 images map from [0, 255] to [-1, 1]; float images must lie in [-1, 1]; (N, H, W, C) with
    C in {1, 3, 4} (and the second axis not) is transposed to (N, C, H, W); uint8 (N, H, W) is
    images of one channel; float (N, C, L) is signals and (N, D) points, both of any range.
    """
    try:
        with open(path, "rb") as f:  # closed here even when NumPy fails half-way
            x, labels, noise = _read_arrays(path, np.load(f, allow_pickle=False))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # DataError is a ValueError
        if isinstance(e, DataError):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise DataError(f"{path}: cannot read the array ({reason})") from e
    x = _array_to_tensor(x, path)
    if noise is not None:
        noise = torch.from_numpy(np.ascontiguousarray(noise)).float()
        if noise.shape != x.shape or not torch.isfinite(noise).all():
            raise DataError(f"{path}: the noise array must be finite and of the data's shape {tuple(x.shape)}, "
                            f"got {tuple(noise.shape)}")
    y = None
    if labels is not None:
        if labels.shape != (len(x),) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
            raise DataError(f"{path}: labels must be non-negative integers of shape ({len(x)},), "
                            f"got {labels.dtype} {labels.shape}")
        y = torch.from_numpy(labels).long()
    idx = torch.from_numpy(_subset(len(x), size, seed))
    return Dataset(x[idx], None if y is None else y[idx], name=path.stem,
                   noise=None if noise is None else noise[idx])


def _read_arrays(path: Path, arrays) -> tuple:
    """(x, labels or None, noise or None) of what np.load returned: an array, or an .npz's arrays
    (read now, while its file is open)."""
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        return arrays, None, None
    with arrays:
        x_key = next((k for k in ("x", "images", "arr_0") if k in arrays.files), None)
        if x_key is None:
            found = ", ".join(arrays.files) or "no arrays"
            raise DataError(f"{path}: no array named x, images or arr_0 (found {found})")
        y_key = next((k for k in ("y", "labels") if k in arrays.files), None)
        return arrays[x_key], arrays[y_key] if y_key else None, arrays["noise"] if "noise" in arrays.files else None


def _array_to_tensor(x: np.ndarray, path: Path) -> torch.Tensor:
    """Images to float (N, C, H, W) in [-1, 1], signals to (N, C, L), points to (N, D); see `_load_array`."""
    if x.ndim == 3 and x.dtype == np.uint8:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim not in (2, 3, 4) or len(x) == 0 or 0 in x.shape:
        raise DataError(f"{path}: need images (N, C, H, W), (N, H, W, C), uint8 (N, H, W), signals (N, C, L) "
                        f"or points (N, D); got {x.shape}")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x)).float() / 127.5 - 1
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: unsupported dtype {x.dtype}; use uint8 in [0, 255] or float in [-1, 1]")
    x = torch.from_numpy(np.ascontiguousarray(x)).float()
    if not torch.isfinite(x).all():
        raise DataError(f"{path}: the array holds NaN or infinite values")
    if x.ndim in (2, 3):
        return x
    lo, hi = x.min().item(), x.max().item()
    if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise DataError(f"{path}: float images must lie in [-1, 1], found values in [{lo:.4g}, {hi:.4g}]")
    return x.clamp(-1, 1)


def _conform(ds: Dataset, resolution: int | None, channels: int | None) -> Dataset:
    """Resize / convert an image data set to the requested resolution and channels (labels and
    captions kept)."""
    if ds.kind != "image":
        if resolution is not None or channels is not None:
            raise DataError(f"{ds.name} is a set of {ds.kind.rstrip('s')}s; resolution and channels apply to images "
                            "only")
        return ds
    if ds.noise is not None and (resolution, channels) != (None, None):
        raise DataError(f"{ds.name} pairs data with noise; it cannot be resized or converted")
    x = ds.x if resolution is None else imageio.resize_crop(ds.x, resolution)
    x = x if channels is None else imageio.convert_channels(x, channels)
    return ds if x is ds.x else replace(ds, x=x)


def load_dataset(
    spec: str | Path,
    *,
    split: str = "train",
    resolution: int | None = None,
    channels: int | None = None,
    size: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a built-in data set (a name in `BUILTINS`) or user data (a folder, .npy or .npz path).

    split: "train" or "test" for built-ins; user data is all "train" (pass a test set's own path).
    resolution: images are resized (shorter side) and centre-cropped to resolution^2; shapes and
        shapes-text are rendered at it (default 32).
    channels: 1 (grayscale) or 3 (RGB); default: as stored (folders: 1 if every file is gray).
    size: generated sets (toys, shapes, shapes-text, signals) have this many samples (default 10,000 train /
        1,000 test); stored sets are reduced to a random subset of at most this many.
    seed: the generated samples (toys, shapes, shapes-text) and the subset chosen by `size`.
    Raises DataError for an unknown name, a missing or unreadable path, invalid contents, or
    shapes-text in one channel (its captions name colours).
    """
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if size is not None and size < 1:
        raise DataError(f"size must be positive, got {size}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if resolution is not None and resolution < 1:
        raise DataError(f"resolution must be positive, got {resolution}")
    if spec in TOY_SETS:
        ds = _toy(spec, split, size, seed)
    elif spec in SIGNAL_SETS:
        ds = SIGNAL_SETS[spec](split, size, seed)
    elif spec == "digits":
        ds = _digits(split, size, seed)
    elif spec == "shapes":
        ds = _shapes(split, size, seed, resolution or 32)
    elif spec == "shapes-text":
        if channels == 1:
            raise DataError("shapes-text captions name colours; load it with 3 channels, not 1")
        ds = _shapes_text(split, size, seed, resolution or 32)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise DataError(f"unknown data set {str(spec)!r}: not a built-in ({', '.join(BUILTINS)}) "
                            "and no such file or folder")
        if split != "train":
            raise DataError(f"{path}: user data has no {split!r} split; pass the {split} set's own path")
        if path.is_dir():
            ds = _load_folder(path, resolution, channels, size, seed)
        elif path.suffix.lower() in (".npy", ".npz"):
            ds = _load_array(path, size, seed)
        else:
            raise DataError(f"{path}: unsupported data file; use a folder of images or WAV files, a .npy or a .npz")
    return _conform(ds, resolution, channels)

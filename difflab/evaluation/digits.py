"""Sample quality of digits models: a small reference classifier and a Fréchet distance in its features.

FID (Heusel et al. 2017) measures generated images by the Fréchet distance between Gaussians fitted
to the Inception-v3 pool features of generated and real images. Inception features mean nothing on
8 x 8 digits, so here the feature extractor is a small CNN trained on the digits *train* split
(`DigitsClassifier`): its penultimate layer defines `digits_fd`, and its predictions give
`classify` (class histograms, conditional accuracy).

The Fréchet distance estimated from n samples is biased upward, by roughly tr(C) / n (Chong &
Forsyth 2020, "Effectively Unbiased FID and Inception Score", sec. 3), so numbers are comparable
only at equal n. `evaluate_digits` therefore reports beside the samples' FD the FD of the held-out
*test* split (300 images) against the same train statistics, computed with as many images as
samples (up to 300): the value a perfect generator would reach at that n.

The trained classifier is cached under `$DIFFLAB_CACHE` (default `~/.cache/difflab`) as
safetensors + JSON, in a folder keyed by a hash of its architecture, training recipe and data.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io import atomic
from .metrics import frechet_distance, gaussian_stats

__all__ = ["DigitsClassifier", "digits_classifier", "digits_features", "classify", "digits_fd",
           "evaluate_digits", "format_digits_eval", "cache_dir", "REFERENCE_N"]

VERSION = 1  # bump when the classifier or its training changes; it is part of the cache key
REFERENCE_N = 300  # images in the digits test split
DIGITS_SHAPE = (1, 8, 8)
RECIPE = {"epochs": 20, "batch_size": 128, "lr": 5e-3, "weight_decay": 1e-4, "max_shift": 1, "seed": 0}


class DigitsClassifier(nn.Module):
    """Conv(16) -> Conv(32) -> max-pool -> Linear(`feature_dim`) -> ReLU -> Linear(10) on 8 x 8 digits.

    `features(x)` is the penultimate layer, the embedding of the Fréchet distance, as FID uses
    Inception's last pooling layer (Heusel et al. 2017, sec. 3). It is taken before the ReLU: a unit
    that is never active would give a singular covariance.
    """

    def __init__(self, feature_dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.fc(h.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))


def cache_dir() -> Path:
    """`$DIFFLAB_CACHE`, or `~/.cache/difflab`."""
    return Path(os.environ.get("DIFFLAB_CACHE") or Path.home() / ".cache" / "difflab").expanduser()


def _digits():
    """The digits train and test splits (`difflab.training.data`), images (N, 1, 8, 8) in [-1, 1]."""
    from ..training.data import load_dataset

    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


def _cache_key(train_x: torch.Tensor) -> str:
    """Hash of everything that determines the trained weights: version, recipe, architecture, data."""
    h = hashlib.sha256(json.dumps({"version": VERSION, "recipe": RECIPE}, sort_keys=True).encode())
    h.update(repr(DigitsClassifier()).encode())
    h.update(train_x.numpy().tobytes())
    return h.hexdigest()[:16]


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2, filling with the
    background value -1."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, 1, h, w + 2 * max_shift)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, 1, h, w)
    return out.gather(3, cols)


@torch.enable_grad()  # the first use may come from inside a caller's no_grad block
def _train(x: torch.Tensor, y: torch.Tensor) -> DigitsClassifier:
    """Cross-entropy training with AdamW and random one-pixel shifts; deterministic given `RECIPE["seed"]`."""
    with torch.random.fork_rng(devices=[]):  # the initial weights come from the global RNG; keep it untouched
        torch.manual_seed(RECIPE["seed"])
        net = DigitsClassifier()
    gen = torch.Generator().manual_seed(RECIPE["seed"])
    opt = torch.optim.AdamW(net.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    epochs, bs = RECIPE["epochs"], RECIPE["batch_size"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, RECIPE["lr"], total_steps=epochs * -(-len(x) // bs))
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for idx in perm.split(bs):
            loss = F.cross_entropy(net(_random_shift(x[idx], RECIPE["max_shift"], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval().requires_grad_(False)


def _save(net: DigitsClassifier, folder: Path, meta: dict) -> None:
    """Write weights + JSON atomically (:func:`difflab.io.atomic.directory`): concurrent runs never
    see half a cache entry, and the loser of a race keeps the winner's copy."""
    from safetensors.torch import save_file

    with atomic.directory(folder, replace=False) as tmp:
        save_file(net.state_dict(), tmp / "model.safetensors")
        (tmp / "classifier.json").write_text(json.dumps(meta, indent=2))


def _load(folder: Path) -> DigitsClassifier | None:
    """The cached classifier in `folder`, or None when it is missing or unreadable."""
    from safetensors.torch import load_file

    try:
        net = DigitsClassifier()
        net.load_state_dict(load_file(folder / "model.safetensors"))
    except (OSError, RuntimeError, ValueError):
        return None
    return net.eval().requires_grad_(False)


@functools.lru_cache(maxsize=2)
def _reference(cache: str) -> dict:
    """Classifier, train statistics, held-out accuracy and test features; once per process and cache dir."""
    train, test = _digits()
    folder = Path(cache) / f"digits-classifier-v{VERSION}-{_cache_key(train.x)}"
    net = _load(folder)
    trained = net is None
    if trained:
        net = _train(train.x, train.y)
    with torch.no_grad():
        train_features = net.features(train.x).double().numpy()
        test_features = net.features(test.x).double().numpy()
        accuracy = float((net(test.x).argmax(1) == test.y).double().mean())
    if trained:
        _save(net, folder, {"version": VERSION, "recipe": RECIPE, "test_accuracy": accuracy,
                            "train_size": len(train), "test_size": len(test)})
    return {"net": net, "train_stats": gaussian_stats(train_features), "accuracy": accuracy,
            "test_features": test_features}


def digits_classifier() -> DigitsClassifier:
    """The reference digits classifier, trained on the train split on first use (a few seconds on
    CPU, deterministic) and cached under :func:`cache_dir`."""
    return _reference(str(cache_dir()))["net"]


def _check_digits(samples: torch.Tensor) -> torch.Tensor:
    samples = torch.as_tensor(samples)
    if samples.ndim != 4 or tuple(samples.shape[1:]) != DIGITS_SHAPE:
        raise ValueError(f"expected digits images of shape (N, 1, 8, 8), got {tuple(samples.shape)}")
    # Samplers may overshoot the data range; the classifier never saw values outside [-1, 1].
    return samples.detach().float().cpu().nan_to_num(0.0).clamp(-1, 1)


@torch.no_grad()
def digits_features(samples: torch.Tensor) -> np.ndarray:
    """Penultimate-layer features (N, 64) of digits images (N, 1, 8, 8) in [-1, 1], as float64."""
    return digits_classifier().features(_check_digits(samples)).double().numpy()


@torch.no_grad()
def classify(samples: torch.Tensor) -> torch.Tensor:
    """Predicted digit (N,) int64 of each image (N, 1, 8, 8) in [-1, 1]."""
    return digits_classifier()(_check_digits(samples)).argmax(1)


def _fd_to_train(features: np.ndarray) -> float:
    if len(features) < 2:
        raise ValueError(f"the Fréchet distance needs at least 2 samples, got {len(features)}")
    mu, cov = gaussian_stats(features)
    return frechet_distance(mu, cov, *_reference(str(cache_dir()))["train_stats"])


def digits_fd(samples: torch.Tensor) -> float:
    """Fréchet distance (Heusel et al. 2017, eq. 6) between Gaussians fitted to the classifier
    features of `samples` and of the digits train split. Biased upward at small N: compare only
    values computed from equally many samples (see `evaluate_digits`)."""
    return _fd_to_train(digits_features(samples))


def evaluate_digits(samples: torch.Tensor) -> dict:
    """Quality of generated digits (N, 1, 8, 8) in [-1, 1], N >= 2.

    Returns a dict:
      fd: Fréchet distance of the samples' features to the train split's (all N samples);
      reference_fd: the same for the held-out test split with `reference_n` = min(N, 300) images,
        the value real unseen digits reach at (up to) the same sample size;
      n, reference_n: the sample sizes of the two;
      accuracy_of_classifier: the classifier's accuracy on the 300 held-out test digits;
      class_histogram: how many samples the classifier assigns to each digit 0..9.
    """
    ref = _reference(str(cache_dir()))
    features = digits_features(samples)
    n_ref = min(len(features), REFERENCE_N)
    # With N < 300, a fixed, stratified-in-expectation subset keeps the reference at the samples' N.
    pick = np.random.default_rng(0).permutation(REFERENCE_N)[:n_ref]
    labels = classify(samples)
    return {
        "fd": _fd_to_train(features),
        "reference_fd": _fd_to_train(ref["test_features"][np.sort(pick)]),
        "n": len(features),
        "reference_n": n_ref,
        "accuracy_of_classifier": ref["accuracy"],
        "class_histogram": torch.bincount(labels, minlength=10).tolist(),
    }


def format_digits_eval(result: dict) -> str:
    """The lines printed for an `evaluate_digits` result."""
    return "\n".join([
        f"Fréchet distance to the digits train set (classifier features): {result['fd']:.2f} "
        f"({result['n']} samples)",
        f"  reference, held-out test digits: {result['reference_fd']:.2f} ({result['reference_n']} images;"
        " FD is biased upward at small n, compare at equal n)",
        f"reference classifier accuracy on held-out digits: {result['accuracy_of_classifier']:.1%}",
        "samples per predicted digit 0-9: " + " ".join(str(c) for c in result["class_histogram"]),
    ])

"""Distances between sample sets: exact and sliced Wasserstein (low-dimensional data) and the
Fréchet distance."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["wasserstein2", "sliced_wasserstein", "frechet_distance", "gaussian_stats"]


def wasserstein2(a: torch.Tensor, b: torch.Tensor) -> float:
    """The 2-Wasserstein distance between two empirical measures of N points each: the optimal
    transport plan between equal-weight point sets is a permutation (Birkhoff-von Neumann), found
    exactly by :func:`difflab.training.losses.ot_pairing` (the Hungarian method); W2 is the root
    mean squared distance of the matched pairs. ``a``, ``b``: (N, ...) with the same shape."""
    from ..training.losses import ot_pairing

    a, b = a.reshape(a.shape[0], -1).double().cpu(), b.reshape(b.shape[0], -1).double().cpu()
    if a.shape != b.shape:
        raise ValueError(f"sample sets must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a - b[ot_pairing(a, b)]).square().sum(1).mean().sqrt())


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_proj: int = 256,
                       generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015): the root mean over
    random unit directions of W2^2 between the 1-D projections, each computed exactly from sorted
    samples. ``a`` and ``b`` are (N, D) with the same N."""
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    if a.shape != b.shape:
        raise ValueError(f"sample sets must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    dirs = torch.randn(a.shape[1], n_proj, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, pb = (a @ dirs).sort(dim=0).values, (b @ dirs).sort(dim=0).values
    return float((pa - pb).square().mean().sqrt())


def gaussian_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (N - 1 normalisation) of (N, F) features, in float64."""
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet distance between Gaussians (Dowson & Landau 1982; FID, Heusel et al. 2017, eq. 6):
    |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)), with the trace of the square root taken from the
    eigenvalues of C1^(1/2) C2 C1^(1/2) (symmetric, so no complex round-off)."""
    from scipy.linalg import eigh, sqrtm

    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    root1 = np.real(sqrtm(cov1))
    eig = eigh(root1 @ cov2 @ root1, eigvals_only=True)
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(np.square(mu1 - mu2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)

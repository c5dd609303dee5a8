"""Exact denoisers: Gaussian mixtures, whose noisy marginals and posterior means are closed form.

For data x0 ~ sum_k w_k N(mu_k, s_k^2 I) and x = x0 + sigma n, the noisy marginal is
p(x; sigma) = sum_k w_k N(x; mu_k, (s_k^2 + sigma^2) I), and by Tweedie's formula
(Efron 2011; Karras et al. 2022, eq. 3) the ideal denoiser is

    D(x, sigma) = E[x0 | x] = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),

with responsibilities r_k(x) = w_k N(x; mu_k, (s_k^2 + sigma^2) I) / p(x; sigma). This is the test
oracle of every sampler, and a way to see what a perfect network would do.
"""
from __future__ import annotations

import math

import torch

__all__ = ["GaussianMixture", "ring_mixture", "random_mixture", "Gaussian", "ar1_covariance"]


class GaussianMixture:
    """Mixture of isotropic Gaussians; all computations in ``dtype`` (float64 by default).

    Args:
        means: (K, D) component means.
        stds: (K,) or scalar component standard deviations.
        weights: (K,) mixture weights (normalised here); uniform if None.
    """

    def __init__(self, means, stds, weights=None, dtype=torch.float64):
        self.means = torch.as_tensor(means, dtype=dtype)
        if self.means.ndim != 2:
            raise ValueError(f"means must be (K, D), got shape {tuple(self.means.shape)}")
        K, self.dim = self.means.shape
        self.stds = torch.as_tensor(stds, dtype=dtype).expand(K).clone()
        w = torch.ones(K, dtype=dtype) if weights is None else torch.as_tensor(weights, dtype=dtype)
        self.log_weights = (w / w.sum()).log()
        self.dtype = dtype

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def _flat(self, x):
        return x.reshape(x.shape[0], -1).to(self.dtype)

    def _log_joint(self, x, sigma):
        """log w_k + log N(x; mu_k, (s_k^2 + sigma^2) I) for each component: (B, K); and var (B, K).
        At sigma = inf (x then holds the unit noise, see :meth:`denoiser`) the responsibilities are
        the weights: the log-joint is returned up to a constant per row."""
        sigma = torch.as_tensor(sigma, dtype=self.dtype).reshape(-1, 1)
        var = self.stds[None] ** 2 + sigma**2  # (B or 1, K)
        # |x - mu|^2 by matmul; in float64 the cancellation error (~1e-16 |x|^2) is far below var.
        sq = (x.square().sum(1, keepdim=True) - 2 * x @ self.means.T + self.means.square().sum(1)).clamp_min(0)
        log_norm = -0.5 * self.dim * (2 * math.pi * var).log()
        log_joint = self.log_weights[None] + log_norm - 0.5 * sq / var
        return torch.where(torch.isinf(sigma), self.log_weights[None], log_joint), var

    def class_posterior(self, x, sigma) -> torch.Tensor:
        """p(k | x; sigma), the responsibilities r_k(x): (B, K)."""
        log_joint, _ = self._log_joint(self._flat(x), sigma)
        return torch.softmax(log_joint, dim=1)

    def log_prob(self, x, sigma=0.0) -> torch.Tensor:
        """log p(x; sigma) of the mixture convolved with N(0, sigma^2 I): (B,)."""
        log_joint, _ = self._log_joint(self._flat(x), sigma)
        return torch.logsumexp(log_joint, dim=1)

    def denoiser(self, x, sigma, component: int | torch.Tensor | None = None) -> torch.Tensor:
        """E[x0 | x0 + sigma n = x]; with ``component`` (int or (B,) ids), the denoiser of that
        component alone, E[x0 | x, k] (the class-conditional oracle). At sigma = inf, the limit
        E[x0] (x, the unit noise, carries no information)."""
        xf = self._flat(x)
        log_joint, var = self._log_joint(xf, sigma)
        if component is None:
            weights = torch.softmax(log_joint, dim=1)
        else:
            idx = torch.as_tensor(component).expand(xf.shape[0]).long()
            weights = torch.nn.functional.one_hot(idx, self.num_components).to(self.dtype)
        # sum_k w_k (mu_k + c_k (x - mu_k)) with c_k = s_k^2 / (s_k^2 + sigma^2), as two matmuls.
        shrink = self.stds[None] ** 2 / var
        out = (weights * (1 - shrink)) @ self.means + (weights * shrink).sum(1, keepdim=True) * xf
        return out.reshape(x.shape).to(x.dtype)

    __call__ = denoiser

    def score(self, x, sigma) -> torch.Tensor:
        """grad_x log p(x; sigma) = sum_k r_k (mu_k - x) / (s_k^2 + sigma^2); valid at sigma = 0."""
        xf = self._flat(x)
        log_joint, var = self._log_joint(xf, sigma)
        w = torch.softmax(log_joint, dim=1) / var
        return (w @ self.means - w.sum(1, keepdim=True) * xf).reshape(x.shape).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None, sigma: float = 0.0,
               return_labels: bool = False):
        """n exact draws of x0 + sigma n (labels = component ids when asked)."""
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.dtype)
        std = (self.stds[k] ** 2 + sigma**2).sqrt()[:, None]
        x = self.means[k] + std * z
        return (x, k) if return_labels else x


def ring_mixture(k: int = 8, radius: float = 4.0, std: float = 0.3, dtype=torch.float64) -> GaussianMixture:
    """The ``gmm2d`` problem: k equal-weight Gaussians of std ``std`` evenly on a circle."""
    angles = torch.arange(k, dtype=dtype) * (2 * math.pi / k)
    return GaussianMixture(radius * torch.stack([angles.cos(), angles.sin()], 1), std, dtype=dtype)


def random_mixture(k: int = 10, dim: int = 64, norm: float = 3.0, std: float = 0.5, seed: int = 0,
                   dtype=torch.float64) -> GaussianMixture:
    """The ``gmm64`` problem: k equal-weight Gaussians in ``dim`` dimensions, means drawn from
    N(0, I) with a fixed seed and rescaled to norm ``norm``."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(k, dim, generator=gen, dtype=dtype)
    means = norm * means / means.norm(dim=1, keepdim=True)
    return GaussianMixture(means, std, dtype=dtype)


class Gaussian:
    """A Gaussian N(mu, Sigma) with a full covariance: the exact oracle of stationary Gaussian
    signals (an AR(1) process has the Toeplitz covariance Sigma_ij = phi^|i - j|, `ar1_covariance`).

    With x = x0 + sigma n, Tweedie's formula gives the linear denoiser

        D(x, sigma) = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu),

    computed from the eigendecomposition Sigma = U diag(lam) U^T as
    mu + U diag(lam / (lam + sigma^2)) U^T (x - mu). Samples x of any shape with ``prod(shape[1:])
    == dim`` are flattened; a signal (B, C, L) is the vector of its C * L values in that order.
    Conditioning on a subset of coordinates (forecasting, imputation) is the Schur complement
    (:meth:`conditional`).
    """

    def __init__(self, mean, cov, dtype=torch.float64):
        self.cov = torch.as_tensor(cov, dtype=dtype)
        if self.cov.ndim != 2 or self.cov.shape[0] != self.cov.shape[1]:
            raise ValueError(f"cov must be square (D, D), got shape {tuple(self.cov.shape)}")
        self.dim = self.cov.shape[0]
        self.mean = torch.as_tensor(mean, dtype=dtype).expand(self.dim).clone()
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(self.cov)
        if self.eigenvalues.min() < -1e-10 * self.eigenvalues.max().abs():
            raise ValueError("cov must be positive semi-definite")
        self.eigenvalues = self.eigenvalues.clamp_min(0)
        self.dtype = dtype

    def _flat(self, x):
        return x.reshape(x.shape[0], -1).to(self.dtype)

    def denoiser(self, x, sigma) -> torch.Tensor:
        """E[x0 | x0 + sigma n = x] (at sigma = inf the mean)."""
        xf = self._flat(x) - self.mean
        sigma = torch.as_tensor(sigma, dtype=self.dtype).reshape(-1, 1)
        shrink = torch.where(torch.isinf(sigma), 0.0, self.eigenvalues / (self.eigenvalues + sigma**2))
        out = self.mean + ((xf @ self.eigenvectors) * shrink) @ self.eigenvectors.T
        return out.reshape(x.shape).to(x.dtype)

    __call__ = denoiser

    def log_prob(self, x, sigma=0.0) -> torch.Tensor:
        """log N(x; mu, Sigma + sigma^2 I): (B,)."""
        var = self.eigenvalues + float(sigma) ** 2
        z = (self._flat(x) - self.mean) @ self.eigenvectors
        return -0.5 * ((z**2 / var).sum(1) + var.log().sum() + self.dim * math.log(2 * math.pi))

    def sample(self, n: int, generator: torch.Generator | None = None, sigma: float = 0.0) -> torch.Tensor:
        """n exact draws of x0 + sigma n, as (n, dim)."""
        z = torch.randn(n, self.dim, generator=generator, dtype=self.dtype)
        return self.mean + (z * (self.eigenvalues + sigma**2).sqrt()) @ self.eigenvectors.T

    def conditional(self, known: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The law of the unknown coordinates given the known ones (the Schur complement):

            mu_u + S_uk S_kk^-1 (values - mu_k),   S_uu - S_uk S_kk^-1 S_ku,

        with ``known`` a boolean (dim,) mask and ``values`` (B, n_known) or (n_known,). Returns the
        conditional means (B, n_unknown) and the (shared) covariance (n_unknown, n_unknown)."""
        known = torch.as_tensor(known, dtype=torch.bool).reshape(-1)
        if known.shape != (self.dim,):
            raise ValueError(f"known must be a (dim,) = ({self.dim},) mask, got {tuple(known.shape)}")
        values = torch.as_tensor(values, dtype=self.dtype).reshape(-1, int(known.sum()))
        s_kk, s_uk = self.cov[known][:, known], self.cov[~known][:, known]
        gain = torch.linalg.solve(s_kk, s_uk.T).T  # S_uk S_kk^-1
        mean = self.mean[~known] + (values - self.mean[known]) @ gain.T
        cov = self.cov[~known][:, ~known] - gain @ s_uk.T
        return mean, (cov + cov.T) / 2

    def sample_conditional(self, known, values, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws of the unknown coordinates given the known ``values`` (one row): (n, n_unknown)."""
        mean, cov = self.conditional(known, values)
        lam, u = torch.linalg.eigh(cov)
        z = torch.randn(n, len(lam), generator=generator, dtype=self.dtype)
        return mean[:1] + (z * lam.clamp_min(0).sqrt()) @ u.T


def ar1_covariance(length: int, phi: float, dtype=torch.float64) -> torch.Tensor:
    """The covariance phi^|i - j| (length x length) of a stationary AR(1) process
    x_t = phi x_{t-1} + sqrt(1 - phi^2) e_t, e_t ~ N(0, 1), of unit marginal variance (Box & Jenkins)."""
    if not -1 < phi < 1 or length < 1:
        raise ValueError(f"need |phi| < 1 and length >= 1, got {phi=} {length=}")
    lag = torch.arange(length, dtype=dtype)
    return torch.as_tensor(phi, dtype=dtype) ** (lag[:, None] - lag[None]).abs()

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

__all__ = ["GaussianMixture", "ring_mixture", "random_mixture", "Gaussian", "ar1_covariance", "FullCovarianceMixture",
           "linear_gaussian_posterior"]


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


class FullCovarianceMixture:
    """Mixture of Gaussians with full covariances, sum_k w_k N(mu_k, S_k): the exact posterior of a
    :class:`GaussianMixture` (or :class:`Gaussian`) prior under a linear-Gaussian measurement
    (:func:`linear_gaussian_posterior`), and a denoiser and sampler like them.

    With S_k = U_k diag(lam_k) U_k^T, the noisy marginal is sum_k w_k N(x; mu_k, S_k + sigma^2 I)
    and Tweedie's formula gives

        D(x, sigma) = sum_k r_k(x) (mu_k + U_k diag(lam_k / (lam_k + sigma^2)) U_k^T (x - mu_k)),

    with responsibilities r_k(x) proportional to w_k N(x; mu_k, S_k + sigma^2 I). Covariances may be
    singular (a noiseless measurement): then only sigma > 0 has a density.

    Args:
        means: (K, D) component means.
        covs: (K, D, D) positive semi-definite covariances.
        weights: (K,) mixture weights (normalised here); uniform if None.
    """

    def __init__(self, means, covs, weights=None, dtype=torch.float64):
        self.means = torch.as_tensor(means, dtype=dtype)
        self.covs = torch.as_tensor(covs, dtype=dtype)
        if self.means.ndim != 2 or self.covs.shape != (*self.means.shape, self.means.shape[1]):
            raise ValueError(f"means must be (K, D) and covs (K, D, D), got shapes {tuple(self.means.shape)} "
                             f"and {tuple(self.covs.shape)}")
        K, self.dim = self.means.shape
        w = torch.ones(K, dtype=dtype) if weights is None else torch.as_tensor(weights, dtype=dtype)
        self.log_weights = (w / w.sum()).log()
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh((self.covs + self.covs.mT) / 2)  # (K, D), (K, D, D)
        if (self.eigenvalues.min(1).values < -1e-10 * self.eigenvalues.max(1).values.abs()).any():
            raise ValueError("every covariance must be positive semi-definite")
        self.eigenvalues = self.eigenvalues.clamp_min(0)
        self.dtype = dtype

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @classmethod
    def of(cls, prior) -> "FullCovarianceMixture":
        """A :class:`GaussianMixture`, :class:`Gaussian` or :class:`FullCovarianceMixture` as one."""
        if isinstance(prior, cls):
            return prior
        if isinstance(prior, GaussianMixture):
            eye = torch.eye(prior.dim, dtype=prior.dtype)
            return cls(prior.means, prior.stds[:, None, None] ** 2 * eye, prior.log_weights.exp(), prior.dtype)
        if isinstance(prior, Gaussian):
            return cls(prior.mean[None], prior.cov[None], dtype=prior.dtype)
        raise TypeError(f"expected a GaussianMixture, Gaussian or FullCovarianceMixture, got {type(prior).__name__}")

    def _flat(self, x):
        return x.reshape(x.shape[0], -1).to(self.dtype)

    def _eigen_terms(self, x, sigma):
        """z = U_k^T (x - mu_k), (B, K, D); var = lam_k + sigma^2, (B or 1, K, D); and the log-joint
        log w_k + log N(x; mu_k, S_k + sigma^2 I), (B, K) (the weights alone at sigma = inf)."""
        sigma = torch.as_tensor(sigma, dtype=self.dtype).reshape(-1, 1, 1)
        z = torch.einsum("bkd,kde->bke", x[:, None] - self.means[None], self.eigenvectors)
        var = self.eigenvalues[None] + sigma**2
        log_norm = var.log().sum(-1) + self.dim * math.log(2 * math.pi)
        log_joint = self.log_weights - 0.5 * ((z**2 / var).sum(-1) + log_norm)
        return z, var, torch.where(torch.isinf(sigma[:, :, 0]), self.log_weights[None], log_joint)

    def class_posterior(self, x, sigma) -> torch.Tensor:
        """p(k | x; sigma): (B, K)."""
        return torch.softmax(self._eigen_terms(self._flat(x), sigma)[2], dim=1)

    def log_prob(self, x, sigma=0.0) -> torch.Tensor:
        """log p(x; sigma) of the mixture convolved with N(0, sigma^2 I): (B,)."""
        return torch.logsumexp(self._eigen_terms(self._flat(x), sigma)[2], dim=1)

    def denoiser(self, x, sigma) -> torch.Tensor:
        """E[x0 | x0 + sigma n = x] (at sigma = inf, E[x0])."""
        z, var, log_joint = self._eigen_terms(self._flat(x), sigma)
        shrunk = self.eigenvalues[None] / var * z  # 0 at sigma = inf
        per_component = self.means[None] + torch.einsum("kde,bke->bkd", self.eigenvectors, shrunk)
        out = (torch.softmax(log_joint, dim=1)[..., None] * per_component).sum(1)
        return out.reshape(x.shape).to(x.dtype)

    __call__ = denoiser

    def marginal_cdf(self, t) -> torch.Tensor:
        """P(x0_j <= t_j) for each coordinate j: sum_k w_k Phi((t_j - mu_kj) / sqrt(S_k,jj)), for
        ``t`` of shape (T, D); a coordinate of zero variance is a step."""
        t = torch.as_tensor(t, dtype=self.dtype)
        std = torch.diagonal(self.covs, dim1=1, dim2=2).clamp_min(0).sqrt()  # (K, D)
        z = (t[:, None] - self.means[None]) / std.clamp_min(1e-150)
        return (self.log_weights.exp()[:, None] * torch.special.ndtr(z)).sum(1)

    def marginal_wasserstein(self, x, grid: int = 2001) -> torch.Tensor:
        """W1 between the empirical law of each coordinate of the draws ``x`` (n, D) and the
        mixture's marginal, in 1-D the integral of |F_n(t) - F(t)| dt, by the trapezoid
        rule on the draws merged with ``grid`` points over the means +- 12 std, so that F_n is
        constant on every interval. Returns (D,)."""
        x = self._flat(x)
        n = x.shape[0]
        std = torch.diagonal(self.covs, dim1=1, dim2=2).clamp_min(0).sqrt()
        lo = torch.minimum((self.means - 12 * std).min(0).values, x.min(0).values)
        hi = torch.maximum((self.means + 12 * std).max(0).values, x.max(0).values)
        frac = torch.linspace(0, 1, grid, dtype=self.dtype)[:, None]
        t = torch.cat([lo + frac * (hi - lo), x]).sort(0).values  # (grid + n, D)
        xs = x.sort(0).values
        F_n = torch.searchsorted(xs.T.contiguous(), t[:-1].T.contiguous(), right=True).T / n
        F = self.marginal_cdf(t)
        gap = ((F_n - F[:-1]).abs() + (F_n - F[1:]).abs()) / 2
        return (gap * t.diff(dim=0)).sum(0)

    def sample(self, n: int, generator: torch.Generator | None = None, sigma: float = 0.0,
               return_labels: bool = False):
        """n exact draws of x0 + sigma n, as (n, dim) (labels = component ids when asked)."""
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.dtype)
        std = (self.eigenvalues[k] + sigma**2).sqrt()
        x = self.means[k] + torch.einsum("nde,ne->nd", self.eigenvectors[k], std * z)
        return (x, k) if return_labels else x


def linear_gaussian_posterior(prior, M, y, noise_std: float) -> FullCovarianceMixture:
    """The exact posterior p(x0 | y) of a Gaussian-mixture prior sum_k w_k N(mu_k, S_k) (a
    :class:`GaussianMixture`, :class:`Gaussian` or :class:`FullCovarianceMixture`) under the
    linear-Gaussian measurement y = M x0 + s n, n ~ N(0, I), s = ``noise_std`` >= 0.

    Each component updates as in the Kalman filter (Bishop 2006, sec. 2.3.3):
    with G_k = M S_k M^T + s^2 I and the gain K_k = S_k M^T G_k^-1,

        w_k' ~ w_k N(y; M mu_k, G_k),   mu_k' = mu_k + K_k (y - M mu_k),   S_k' = S_k - K_k M S_k,

    so the posterior is again a mixture, of full covariances. ``M`` is (m, D) acting on the
    flattened data (D = the prior's dim), ``y`` has m values (any shape); s = 0 needs every G_k
    invertible (M of full row rank for isotropic components).
    """
    prior = FullCovarianceMixture.of(prior)
    dtype = prior.dtype
    M = torch.as_tensor(M, dtype=dtype)
    if M.ndim != 2 or M.shape[1] != prior.dim:
        raise ValueError(f"M must be (m, {prior.dim}) for a prior in {prior.dim} dimensions, got {tuple(M.shape)}")
    y = torch.as_tensor(y, dtype=dtype).reshape(-1)
    if y.shape[0] != M.shape[0]:
        raise ValueError(f"y holds {y.shape[0]} values but M measures {M.shape[0]}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    MS = M @ prior.covs  # (K, m, D)
    G = MS @ M.T + noise_std**2 * torch.eye(M.shape[0], dtype=dtype)
    L = torch.linalg.cholesky(G)
    residual = y - prior.means @ M.T  # (K, m)
    white = torch.linalg.solve_triangular(L, residual[..., None], upper=False)[..., 0]  # L^-1 r
    log_lik = -0.5 * (white.square().sum(1) + M.shape[0] * math.log(2 * math.pi)) \
        - torch.diagonal(L, dim1=1, dim2=2).log().sum(1)
    gain = torch.cholesky_solve(MS, L).mT  # S_k M^T G_k^-1, (K, D, m)
    means = prior.means + (gain @ residual[..., None])[..., 0]
    covs = prior.covs - gain @ MS
    return FullCovarianceMixture(means, (covs + covs.mT) / 2, (prior.log_weights + log_lik).softmax(0), dtype)

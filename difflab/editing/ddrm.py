"""Linear inverse problems y = H x0 + sigma_y n with DDRM (Kawar et al. 2022).

DDRM works in the spectral space of H = U S V^T: with x_bar = V^T x and y_bar = S^+ U^T y, each
coordinate i with singular value s_i > 0 is a noisy observation of x0_bar_i with noise std
sigma_y / s_i, and the sampler mixes the denoiser's estimate with y_bar coordinate by coordinate
(their eq. 7-8). An operator here exposes its SVD implicitly, never as a matrix:

- ``Vt(x)`` / ``V(x_bar)``: the orthogonal V^T and V; ``x_bar`` has an operator-specific layout;
- ``singular_values(x_bar)``: s, broadcast to that layout (0 on the null space of H);
- ``Ut(y)``: U^T y placed in the layout (0 where s = 0); ``U(x_bar)``: its inverse on range(S);
- ``H(x)`` and ``H_pinv(y)`` (the Moore–Penrose pseudo-inverse), from the pieces or direct.

Unlike DPS (Chung et al. 2023, :mod:`.dps`), for a linear operator with a known SVD it needs no
gradient through the network and no step size, and with sigma_y = 0 its output satisfies
H x = y exactly.
"""
from __future__ import annotations

import math

import torch

from ..samplers.stepping import denoise, noise_like, report, steps
from .inpaint import check_mask

__all__ = ["LinearOperator", "Inpainting", "SuperResolution", "Colorization", "ddrm"]


class LinearOperator:
    """H = U S V^T through its pieces; ``H`` and ``H_pinv`` follow from them:
    H x = U(s * V^T x), H^+ y = V(U^T y / s on s > 0, 0 elsewhere)."""

    def Vt(self, x):
        raise NotImplementedError

    def V(self, x_bar):
        raise NotImplementedError

    def singular_values(self, x_bar):
        raise NotImplementedError

    def Ut(self, y):
        raise NotImplementedError

    def U(self, x_bar):
        raise NotImplementedError

    def H(self, x):
        x_bar = self.Vt(x)
        return self.U(self.singular_values(x_bar) * x_bar)

    def H_pinv(self, y):
        u_y = self.Ut(y)
        s = self.singular_values(u_y)
        return self.V(torch.where(s > 0, u_y / torch.where(s > 0, s, 1), 0))


class Inpainting(LinearOperator):
    """H x = mask * x: keeps the pixels where ``mask`` is 1 (y has x's shape, 0 elsewhere).
    U = V = I and s = mask, so every singular value is 1 or 0."""

    def __init__(self, mask):
        self.mask = torch.as_tensor(mask)

    def _mask(self, x):
        return check_mask(self.mask, x).to(x.dtype)

    def Vt(self, x):
        return x

    V = Ut = U = Vt

    def singular_values(self, x_bar):
        return self._mask(x_bar).expand_as(x_bar)

    def H(self, x):
        return self._mask(x) * x

    H_pinv = H


def _reflect(z):
    """The Householder reflection Q = I - 2 v v^T / |v|^2, v = e_1 - 1/sqrt(g), along the last
    dimension (size g): symmetric and orthogonal, it swaps e_1 and the unit mean direction."""
    g = z.shape[-1]
    if g == 1:
        return z
    v = torch.full((g,), -1 / math.sqrt(g), dtype=z.dtype, device=z.device)
    v[0] += 1
    return z - (2 / v.square().sum()) * (z @ v)[..., None] * v


class _GroupMean(LinearOperator):
    """H averages disjoint groups of g coordinates. Per group, V = Q (:func:`_reflect`), so
    V^T x has sqrt(g) * mean in its first entry; s = (1/sqrt(g), 0, ..., 0); U = I. The spectral
    layout is ``(*lead, g)`` with ``lead`` the shape of y; subclasses define the grouping."""

    def _groups(self, x):
        raise NotImplementedError

    def _ungroup(self, z):
        raise NotImplementedError

    def _y_lead(self, y):
        return y

    def _y_from_lead(self, y_lead):
        return y_lead

    def Vt(self, x):
        return _reflect(self._groups(x))

    def V(self, x_bar):
        return self._ungroup(_reflect(x_bar))

    def singular_values(self, x_bar):
        s = torch.zeros(x_bar.shape[-1], dtype=x_bar.dtype, device=x_bar.device)
        s[0] = x_bar.shape[-1] ** -0.5
        return s.expand_as(x_bar)

    def Ut(self, y):
        y_lead = self._y_lead(y)
        pad = y_lead.new_zeros(*y_lead.shape, self.group_size - 1)
        return torch.cat([y_lead[..., None], pad], dim=-1)

    def U(self, x_bar):
        return self._y_from_lead(x_bar[..., 0])

    def H(self, x):
        return self._y_from_lead(self._groups(x).mean(-1))

    def H_pinv(self, y):
        y_lead = self._y_lead(y)
        return self._ungroup(y_lead[..., None].expand(*y_lead.shape, self.group_size))


class SuperResolution(_GroupMean):
    """H = block averaging over ``factor x factor`` blocks of the last two dimensions (H, W):
    ``y`` is the image downsampled by area. Its singular values are 1/factor (one per block,
    on the block's normalised constant vector) and 0; H^+ is nearest-neighbour upsampling,
    so H^+ H (the low-pass filter of ILVR) replaces each block by its mean."""

    def __init__(self, factor: int):
        if not (isinstance(factor, int) and factor >= 1):
            raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
        self.factor = factor
        self.group_size = factor * factor

    def _groups(self, x):
        N = self.factor
        if x.ndim < 3:
            raise ValueError(f"super-resolution needs images of shape (B, ..., H, W), got {tuple(x.shape)}")
        *lead, h, w = x.shape
        if h % N or w % N:
            raise ValueError(f"factor {N} does not divide the image size {h}x{w}")
        z = x.reshape(*lead, h // N, N, w // N, N).transpose(-3, -2)
        return z.reshape(*lead, h // N, w // N, N * N)

    def _ungroup(self, z):
        *lead, h, w, _ = z.shape
        N = self.factor
        return z.reshape(*lead, h, w, N, N).transpose(-3, -2).reshape(*lead, h * N, w * N)


class Colorization(_GroupMean):
    """H = the mean of the 3 colour channels of ``(B, 3, H, W)`` images; ``y`` is ``(B, 1, H, W)``.
    Singular value 1/sqrt(3) on the normalised grey direction, 0 on the two chroma directions."""

    group_size = 3

    def _groups(self, x):
        if x.ndim < 3 or x.shape[-3] != 3:
            raise ValueError(f"colorization needs images of shape (B, 3, H, W), got {tuple(x.shape)}")
        return x.movedim(-3, -1)

    def _ungroup(self, z):
        return z.movedim(-1, -3)

    def _y_lead(self, y):
        if y.ndim < 3 or y.shape[-3] != 1:
            raise ValueError(f"a grey-scale measurement must have shape (B, 1, H, W), got {tuple(y.shape)}")
        return y.squeeze(-3)

    def _y_from_lead(self, y_lead):
        return y_lead.unsqueeze(-3)


def ddrm(denoiser, y: torch.Tensor, operator: LinearOperator, sigmas, *, sigma_y: float = 0.0,
         eta: float = 0.85, eta_b: float = 1.0, generator=None, callback=None, cond=None) -> torch.Tensor:
    """Denoising Diffusion Restoration Models (Kawar et al. 2022): a sample of x0 given
    y = H x0 + sigma_y n, in the spectral space of H (module docstring), with the VE convention
    x = x0 + sigma n that the paper itself uses.

    With x_bar = V^T x, y_bar = S^+ U^T y and sigma_y_i = sigma_y / s_i, start (eq. 7) at sigma_0 from
    x_bar_i = y_bar_i + sqrt(sigma_0^2 - sigma_y_i^2) z where s_i sigma_0 > sigma_y, sigma_0 z elsewhere;
    then for each step sigma -> sigma' with x0_bar = V^T D(x, sigma) (eq. 8):

    - s_i = 0:                x0_bar + sqrt(1 - eta^2) sigma' (x_bar - x0_bar) / sigma + eta sigma' z
    - sigma' < sigma_y_i:     x0_bar + sqrt(1 - eta^2) sigma' (y_bar - x0_bar) / sigma_y_i + eta sigma' z
    - sigma' >= sigma_y_i:    (1 - eta_b) x0_bar + eta_b y_bar + sqrt(sigma'^2 - eta_b^2 sigma_y_i^2) z

    Defaults eta = 0.85, eta_b = 1 are the paper's. The last case includes sigma' = sigma_y_i (the
    paper's eq. 8; their code sends it to the first), so with sigma_y = 0 and eta_b = 1 the output
    meets H x = y exactly. Denoiser calls: ``len(sigmas) - 1``.
    """
    if sigma_y < 0:
        raise ValueError(f"sigma_y must be >= 0, got {sigma_y}")
    if not (0 <= eta <= 1 and 0 <= eta_b <= 1):
        raise ValueError(f"eta and eta_b must lie in [0, 1], got eta={eta}, eta_b={eta_b}")
    y_bar = operator.Ut(y)
    s = operator.singular_values(y_bar)
    seen = s > 0
    s_safe = torch.where(seen, s, 1)
    y_bar = torch.where(seen, y_bar / s_safe, 0)
    sigma_y_bar = torch.where(seen, sigma_y / s_safe, 0)  # only read where seen
    noisy = sigma_y_bar > 0

    sigma_0 = float(sigmas[0])
    z = noise_like(y_bar, generator)
    start_at_y = seen & (sigma_0 > sigma_y_bar)
    if math.isinf(sigma_0):  # pure noise (a flow): the state is the unit noise, y is not yet visible
        x_bar = z
    else:
        x_bar = torch.where(start_at_y, y_bar + (sigma_0**2 - sigma_y_bar**2).clamp_min(0).sqrt() * z, sigma_0 * z)
    x = operator.V(x_bar)
    c = math.sqrt(1 - eta**2)
    for i, sigma, sigma_next in steps(sigmas, desc="ddrm"):
        x0_hat = denoise(denoiser, x, sigma, cond)
        report(callback, i, x, sigma, sigma_next, x0_hat)
        x0_bar, x_bar, z = operator.Vt(x0_hat), operator.Vt(x), noise_like(x_bar, generator)
        # (x - x0) / sigma, the current noise estimate; at sigma = inf the state is that noise
        eps_bar = x_bar if math.isinf(sigma) else (x_bar - x0_bar) / sigma
        unseen = x0_bar + c * sigma_next * eps_bar + eta * sigma_next * z
        below = x0_bar + c * sigma_next * (y_bar - x0_bar) / torch.where(noisy, sigma_y_bar, 1) + eta * sigma_next * z
        above = ((1 - eta_b) * x0_bar + eta_b * y_bar
                 + (sigma_next**2 - eta_b**2 * sigma_y_bar**2).clamp_min(0).sqrt() * z)
        x_bar = torch.where(seen, torch.where(sigma_next >= sigma_y_bar, above, below), unseen)
        x = operator.V(x_bar)
    return x

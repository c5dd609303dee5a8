"""The noise of the stochastic samplers: i.i.d. draws, or increments of one Brownian path.

Every stochastic step asks for ``noise(sigma, sigma_next)``: a standard normal tensor shaped like x,
which the sampler scales by its own standard deviation. With the sampler option
``noise_kind="iid"`` each request is a fresh draw. With ``noise_kind="brownian"`` it is the
normalised increment

    z = (W(log sigma') - W(log sigma)) / sqrt(|log sigma' - log sigma|)

of one Brownian motion W in the time u = log sigma, sampled lazily by a :class:`BrownianTree`
whose seed is drawn from the sampler's generator. Both give each step's noise the same law (a
standard normal, independent across disjoint steps), but the Brownian path is one fixed function of
the seed, so a sampler run with more and more steps on the same seed converges to one solution of
the reverse SDE instead of a new one at every step count (the virtual Brownian tree of Li et al.
2020; Kidger et al. 2021 compare it with their Brownian interval). Steps must then lie inside the
sigma range the tree was built for: the positive sigmas of the sampler's schedule.

Any increasing function of sigma serves as the path's time: the reverse SDE dx = -score dtau +
dW_tau (tau = sigma^2) is driven by int sqrt(dtau/du) dW_u, so each time gives a valid, different
path. log sigma was measured against sigma (k-diffusion's choice), sigma^2 and the SNR 1/sigma^2:
all give strong order ~1 (median error), within 2x of each other, none best for every sampler;
log sigma has the smallest geometric-mean error over em, ddpm, dpmpp_sde and dpmpp_3m_sde on two
problems, and it is the variable the tree bisects, so every bridge is a plain midpoint
(docs/samplers.md, "Brownian-tree noise").
"""
from __future__ import annotations

import math

import torch

from .stepping import noise_like

__all__ = ["NOISE_KINDS", "DEFAULT_NOISE_KIND", "BrownianTree", "make_noise"]

#: The values of the stochastic samplers' ``noise_kind`` option (not ``noise``: ``generate`` and
#: ``TrainedModel.sample`` take ``noise`` as the standard normal to start from).
NOISE_KINDS = ("iid", "brownian")
#: The default of the ``noise_kind`` option (docs/samplers.md, "Brownian-tree noise", says why).
DEFAULT_NOISE_KIND = "iid"

_MASK64 = (1 << 64) - 1


def _mix64(value: int) -> int:
    """SplitMix64's finaliser (Steele, Lea & Flood 2014): a bijective scramble of 64-bit integers,
    so that neighbouring node ids get unrelated generator seeds."""
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1  # 63 bits: a valid torch seed


class BrownianTree:
    """A Brownian motion W in u = log sigma on [log sigma_min, log sigma_max], shaped like ``like``,
    evaluated at any sigma of that range; W(sigma_max) = 0 and W(sigma_min) ~ N(0, log(sigma_max /
    sigma_min)).

    Node (d, k) of the tree is the k-th of 2^d equal parts [a, b] of the range; the value of W at
    its midpoint m is drawn from the Brownian bridge between the values at its ends,

        W(m) = (W(a) + W(b)) / 2 + sqrt((b - a) / 4) z,

    with z ~ N(0, I) from a generator seeded by (seed, d, k) alone (Levy's construction, as in the
    virtual Brownian tree of Li et al. 2020). W(sigma) is therefore a fixed function of sigma and
    the seed, whatever was asked before: an increment depends only on its interval, and
    W(t) - W(s) is the sum of the increments of any subdivision. The bisection stops at leaves no
    wider than ``leaf`` (2^-10: sigma changes by less than 0.1% across one); W at a point u inside a
    leaf [a, b] is the bridge draw there,
    W(a) + (u - a)/(b - a) (W(b) - W(a)) + sqrt((u - a)(b - u)/(b - a)) z, with the leaf's own z.
    Values at points in different leaves have exactly the joint law of a Brownian motion; two
    points in one leaf share its z (their increment then has too little variance), which no step
    wider than 0.1% of sigma meets. The last path walked is kept, so a query near the last one
    costs only the levels below where their paths part: about log2(leaves per step) + 1 normal
    draws per step.
    """

    def __init__(self, like: torch.Tensor, sigma_min: float, sigma_max: float, seed: int,
                 leaf: float = 2.0**-10):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"a Brownian tree needs 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        self.shape, self.device = like.shape, like.device
        self.dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        self.seed = int(seed) & _MASK64
        self.u_lo, self.u_hi = math.log(sigma_min), math.log(sigma_max)
        self.depth = max(0, math.ceil(math.log2((self.u_hi - self.u_lo) / leaf)))
        self._gen = torch.Generator(device=self.device)
        bottom = self._normal(0).mul_(math.sqrt(self.u_hi - self.u_lo))
        # The path from the root: per level (k, W(a), W(b)) of the part holding the last query.
        self._path = [(0, bottom, torch.zeros_like(bottom))]
        self._recent = {}  # the last few values asked for: a step asks for both of its ends

    def _normal(self, node_id: int) -> torch.Tensor:
        # Drawn in float32 whatever the tree's dtype: 4x cheaper on a CPU than float64 draws, and a
        # normal rounded to float32 is still a normal for every purpose here.
        self._gen.manual_seed(_mix64(self.seed ^ _mix64(node_id)))
        z = torch.randn(self.shape, generator=self._gen, dtype=torch.float32, device=self.device)
        return z.to(self.dtype)

    def _u(self, d: int, k: int) -> float:
        """The left end of part k of 2^d (exact at both ends of the range: k = 0 and k = 2^d)."""
        return self.u_lo + (self.u_hi - self.u_lo) * (k / 2**d)

    def __call__(self, sigma: float) -> torch.Tensor:
        """W at ``sigma``: a tensor like the tree's ``like``; do not modify it in place."""
        sigma = float(sigma)
        if sigma not in self._recent:
            if len(self._recent) >= 4:
                del self._recent[next(iter(self._recent))]
            self._recent[sigma] = self._walk(sigma)
        return self._recent[sigma]

    def _walk(self, sigma: float) -> torch.Tensor:
        span = self.u_hi - self.u_lo
        u = math.log(sigma) if sigma > 0 else -math.inf
        if not self.u_lo - 1e-12 * span <= u <= self.u_hi + 1e-12 * span:
            raise ValueError(f"sigma {sigma} lies outside the Brownian tree's range "
                             f"[{math.exp(self.u_lo)}, {math.exp(self.u_hi)}]")
        u = min(max(u, self.u_lo), self.u_hi)
        # Keep the deepest level of the last path whose part still holds u.
        d = len(self._path) - 1
        while d > 0 and not self._u(d, self._path[d][0]) <= u <= self._u(d, self._path[d][0] + 1):
            d -= 1
        del self._path[d + 1:]
        while True:
            k, w_a, w_b = self._path[d]
            a, b = self._u(d, k), self._u(d, k + 1)
            if u == a:
                return w_a
            if u == b:
                return w_b
            # Inside a leaf, the bridge at u with the leaf's own normal; above, at the midpoint.
            m = u if d == self.depth else self._u(d + 1, 2 * k + 1)
            std = math.sqrt((m - a) * (b - m) / (b - a))
            w_m = torch.lerp(w_a, w_b, (m - a) / (b - a)).add_(self._normal(2**d + k), alpha=std)
            if d == self.depth:
                return w_m
            self._path.append((2 * k, w_a, w_m) if u <= m else (2 * k + 1, w_m, w_b))
            d += 1


class _Noise:
    """``noise(sigma, sigma_next)``: the standard normal noise of a step (see the module doc)."""

    def __init__(self, kind: str, x: torch.Tensor, sigmas, generator):
        if kind not in NOISE_KINDS:
            raise ValueError(f"noise_kind must be one of {', '.join(map(repr, NOISE_KINDS))}, got {kind!r}")
        self.kind, self.x, self.generator = kind, x, generator
        positive = [float(s) for s in sigmas if float(s) > 0]
        self.range = (min(positive), max(positive)) if positive else None
        self.tree = None

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        x = self.x
        if self.kind == "iid":
            return noise_like(x, self.generator)
        if self.tree is None:
            device = self.generator.device if self.generator is not None else torch.device("cpu")
            seed = int(torch.randint(0, 2**62, (), generator=self.generator, device=device))
            self.tree = BrownianTree(x, *self.range, seed)
        dw = self.tree(sigma_next) - self.tree(sigma)
        return (dw / math.sqrt(abs(math.log(sigma / sigma_next)))).to(x.dtype)

    @staticmethod
    def fraction(sigma: float, sigma_mid: float, sigma_next: float) -> float:
        """The share f of the step sigma -> sigma_next (in the path's time) before sigma_mid: with
        z1, z2 the noises of sigma -> sigma_mid -> sigma_next, sqrt(f) z1 + sqrt(1 - f) z2 is the
        noise of the whole step, distributed jointly with z1 as on one Brownian path."""
        return math.log(sigma / sigma_mid) / math.log(sigma / sigma_next)


def make_noise(kind: str, x: torch.Tensor, sigmas, generator: torch.Generator | None) -> _Noise:
    """The noise source of a stochastic sampler: ``kind`` is ``"iid"`` (a fresh draw from
    ``generator`` per request) or ``"brownian"`` (increments of a :class:`BrownianTree` over the
    positive range of ``sigmas``, seeded by one draw from ``generator`` at the first request).
    Raises ValueError for another ``kind``."""
    return _Noise(kind, x, sigmas, generator)

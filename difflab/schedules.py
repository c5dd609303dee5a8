"""Noise schedules as small functions of time, and the sigma sequences samplers walk along.

Every schedule describes a forward process ``x_t = alpha(t) x0 + std(t) n`` with ``n ~ N(0, I)``.
difflab works in the variance-exploding convention of Karras et al. (2022, sec. 2, Table 1):
``x = x_t / alpha(t) = x0 + sigma n`` with ``sigma = std(t) / alpha(t)`` (``ve_sigma``). The
half log signal-to-noise ratio of DPM-Solver (Lu et al. 2022) is ``lambda = log(alpha / std)
= -log(sigma)``; ``log_snr`` here is the full ``log(alpha^2 / std^2) = -2 log(sigma)``.

Discrete-time schedules (DDPM's ``betas``) take a *fractional* timestep index ``t`` in
``[0, T - 1]``: between integer steps the schedule is interpolated linearly in ``log(sigma)``.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "Schedule", "DiscreteVP", "ContinuousVP", "SubVP", "VE", "EDM", "Flow", "LogSNRTable", "make_schedule",
    "linear_betas", "cosine_betas", "scaled_linear_betas", "sigmoid_betas",
    "karras_sigmas", "loglinear_sigmas", "time_uniform_sigmas", "time_quadratic_sigmas",
    "discrete_sigmas", "consistency_grid", "consistency_sigmas", "q_sample", "ddpm_posterior", "ve_posterior",
]


def _t(x) -> torch.Tensor:
    return x if torch.is_tensor(x) else torch.as_tensor(x, dtype=torch.float64)


class Schedule:
    """Base class: subclasses define ``log_alpha(t)`` and ``ve_sigma(t)`` (and their inverses).

    ``alpha``, ``std`` and ``log_snr`` follow from those two; ``t_of_log_snr`` from
    ``t_of_ve_sigma`` since ``log_snr = -2 log(sigma)``.
    """

    t_min: float = 0.0
    t_max: float = 1.0

    def log_alpha(self, t):
        raise NotImplementedError

    def ve_sigma(self, t):
        raise NotImplementedError

    def t_of_ve_sigma(self, sigma):
        raise NotImplementedError

    def alpha(self, t):
        return self.log_alpha(_t(t)).exp()

    def std(self, t):
        """Marginal standard deviation of the noise in ``x_t`` (the VP papers' sigma_t)."""
        return self.alpha(t) * self.ve_sigma(t)

    def log_snr(self, t):
        """``log(alpha^2 / std^2) = -2 log(sigma)``."""
        return -2 * self.ve_sigma(t).log()

    def t_of_log_snr(self, log_snr):
        return self.t_of_ve_sigma((-0.5 * _t(log_snr)).exp())

    def alpha_of_ve_sigma(self, sigma):
        return self.alpha(self.t_of_ve_sigma(sigma))

    def c_noise(self, sigma):
        """The time input a network trained on this schedule expects, as a function of sigma."""
        return self.t_of_ve_sigma(sigma)

    @property
    def sigma_min(self) -> float:
        return float(self.ve_sigma(torch.tensor(self.t_min, dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        return float(self.ve_sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def to_dict(self) -> dict:
        return {"kind": type(self).__name__, **self._params()}

    def _params(self) -> dict:
        return {}


# ---------------------------------------------------------------------------------------------
# Discrete variance-preserving schedules (betas)


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear betas of DDPM (Ho et al. 2020, sec. 4: 1e-4 to 0.02 over T = 1000)."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): alpha_bar(t) = f(t)/f(0),
    f(t) = cos((t/T + s)/(1 + s) * pi/2)^2, betas clipped at 0.999."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def scaled_linear_betas(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012):
    """Linear in sqrt(beta) (Rombach et al. 2022, latent diffusion / Stable Diffusion)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def sigmoid_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
    """Sigmoid-shaped betas (Xu et al. 2022, GeoDiff): start + sigmoid(linspace(-6, 6)) * range."""
    return torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64)) * (beta_end - beta_start) + beta_start


def given_betas(T: int, betas) -> torch.Tensor:
    """Betas given as numbers (a model's ``trained_betas``), T of them, each in (0, 1)."""
    betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
    if len(betas) != T or not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(f"given betas must be {T} values in (0, 1), got {len(betas)}")
    return betas


_BETAS = {"linear": linear_betas, "cosine": cosine_betas, "scaled_linear": scaled_linear_betas,
          "sigmoid": sigmoid_betas, "given": given_betas}


class DiscreteVP(Schedule):
    """DDPM-style schedule of T steps: alpha_bar_i = prod_{j<=i} (1 - beta_j) (Ho et al. 2020, eq. 4).

    Time ``t`` is the (fractional) step index in ``[0, T-1]``; ``alpha(i)^2 = alpha_bar_i``.
    """

    def __init__(self, kind: str = "linear", T: int = 1000, **kwargs):
        if kind not in _BETAS:
            raise ValueError(f"unknown beta schedule {kind!r}; choose from {sorted(_BETAS)}")
        self.kind, self.T, self.kwargs = kind, T, kwargs
        self.betas = _BETAS[kind](T, **kwargs)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        self.log_sigmas = self.sigmas.log()
        self.t_max = float(T - 1)
        self._tables = {}

    def tables(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmas, log_sigmas) on ``device``, copied there once: indexing them with a tensor of
        timesteps on a GPU then needs no host round trip (no synchronisation in a training step)."""
        key = str(torch.device(device))
        if key not in self._tables:
            self._tables[key] = (self.sigmas.to(device), self.log_sigmas.to(device))
        return self._tables[key]

    def _params(self):
        return {"beta_schedule": self.kind, "T": self.T, **self.kwargs}

    def ve_sigma(self, t):
        t = _t(t).to(torch.float64).clamp(0, self.T - 1)
        log_sigmas = self.tables(t.device)[1]
        lo = t.floor().long().clamp(max=self.T - 2)
        w = t - lo
        return ((1 - w) * log_sigmas[lo] + w * log_sigmas[lo + 1]).exp()

    def log_alpha(self, t):
        return -0.5 * torch.log1p(self.ve_sigma(t) ** 2)

    def t_of_ve_sigma(self, sigma):
        """Fractional step index whose interpolated log-sigma equals log(sigma) (clamped)."""
        log_sigma = _t(sigma).to(torch.float64).log()
        log_sigmas = self.tables(log_sigma.device)[1]
        log_sigma = log_sigma.clamp(log_sigmas[0], log_sigmas[-1])
        hi = torch.searchsorted(log_sigmas, log_sigma.contiguous()).clamp(1, self.T - 1)
        lo_val, hi_val = log_sigmas[hi - 1], log_sigmas[hi]
        return (hi - 1) + (log_sigma - lo_val) / (hi_val - lo_val)


# ---------------------------------------------------------------------------------------------
# Continuous schedules


class ContinuousVP(Schedule):
    """VP SDE with linear beta(t) = beta_min + t (beta_max - beta_min), t in [eps, 1]
    (Song et al. 2021, eq. 11 and App. B): log alpha(t) = -t^2 (b1 - b0)/4 - t b0/2."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        self.beta_min, self.beta_max, self.t_min = beta_min, beta_max, t_min

    def _params(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}

    def log_alpha(self, t):
        t = _t(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def ve_sigma(self, t):
        return torch.expm1(-2 * self.log_alpha(t)).sqrt()

    def _t_of_log_alpha(self, log_alpha):
        # Solve a t^2 + b t + log_alpha = 0 for t >= 0 (a = (b1 - b0)/4, b = b0/2).
        a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        if a == 0:
            return -log_alpha / b
        return (-b + (b * b - 4 * a * log_alpha).sqrt()) / (2 * a)

    def t_of_ve_sigma(self, sigma):
        return self._t_of_log_alpha(-0.5 * torch.log1p(_t(sigma) ** 2))

    def c_noise(self, sigma):
        return 1000 * self.t_of_ve_sigma(sigma)


class SubVP(ContinuousVP):
    """sub-VP SDE (Song et al. 2021, eq. 12): same mean as VP, std(t) = 1 - alpha(t)^2."""

    def ve_sigma(self, t):
        return -torch.expm1(2 * self.log_alpha(t)) / self.alpha(t)

    def t_of_ve_sigma(self, sigma):
        # sigma = (1 - a^2)/a  <=>  a^2 + sigma a - 1 = 0.
        sigma = _t(sigma)
        alpha = 2 / (sigma + (sigma * sigma + 4).sqrt())
        return self._t_of_log_alpha(alpha.log())


class VE(Schedule):
    """Variance exploding (Song & Ermon 2019; Song et al. 2021, eq. 9):
    sigma(t) = sigma_min (sigma_max / sigma_min)^t, alpha = 1."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self._smin, self._smax = sigma_min, sigma_max

    def _params(self):
        return {"sigma_min": self._smin, "sigma_max": self._smax}

    def log_alpha(self, t):
        return torch.zeros_like(_t(t))

    def ve_sigma(self, t):
        return self._smin * (self._smax / self._smin) ** _t(t)

    def t_of_ve_sigma(self, sigma):
        return (_t(sigma) / self._smin).log() / math.log(self._smax / self._smin)

    def c_noise(self, sigma):
        return (0.5 * _t(sigma)).log()  # Karras et al. 2022, Table 1 (VE column)


class EDM(Schedule):
    """EDM (Karras et al. 2022, sec. 2): sigma(t) = t, alpha = 1; c_noise = log(sigma)/4."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.t_min, self.t_max = sigma_min, sigma_max

    def _params(self):
        return {"sigma_min": self.t_min, "sigma_max": self.t_max}

    def log_alpha(self, t):
        return torch.zeros_like(_t(t))

    def ve_sigma(self, t):
        return _t(t)

    def t_of_ve_sigma(self, sigma):
        return _t(sigma)

    def c_noise(self, sigma):
        return 0.25 * _t(sigma).log()


class Flow(Schedule):
    """The linear path of flow matching and rectified flow, x_t = (1 - t) x0 + t n for t in [0, 1]
    (Lipman et al. 2023, sec. 4.1 with sigma_min = 0, their "OT path"; Liu et al. 2023, eq. 1):
    alpha = 1 - t, std = t, so sigma = t / (1 - t) and t = sigma / (1 + sigma). Pure noise, t = 1,
    is sigma = infinity: the samplers start there exactly (see :func:`difflab.samplers.sample`).
    c_noise = 1000 t, the network's time input (as for :class:`ContinuousVP`)."""

    def log_alpha(self, t):
        return torch.log1p(-_t(t))

    def ve_sigma(self, t):
        t = _t(t)
        return t / (1 - t)

    def std(self, t):
        return _t(t) * 1.0

    def t_of_ve_sigma(self, sigma):
        sigma = _t(sigma)
        return 1 / (1 + 1 / sigma)  # exact at both ends: sigma = 0 -> 0, sigma = inf -> 1

    def c_noise(self, sigma):
        return 1000 * self.t_of_ve_sigma(sigma)


class LogSNRTable(Schedule):
    """A variance-preserving schedule given by a table of gamma = -log SNR on the uniform grid
    t_k = k / K of [0, 1], interpolated linearly (Kingma et al. 2021, "Variational Diffusion
    Models", eq. 3-5: sigma_t^2 = sigmoid(gamma(t)), alpha_t^2 = sigmoid(-gamma(t)), SNR(t) =
    exp(-gamma(t))). In difflab's VE convention ve_sigma(t) = exp(gamma(t) / 2) and alpha^2 =
    1 / (1 + sigma^2), whatever the table's shape. ``gamma``: K + 1 strictly increasing values;
    two values are VDM's linear schedule, more hold a learned one
    (:class:`difflab.training.objectives.LearnedLogSNR` writes them).

    The network's time input is a fixed function of sigma alone, :meth:`c_noise_of_gamma`, so a
    model's denoiser does not depend on the table's shape, only on the noise level (Kingma et al.
    2021, sec. 5.1: the continuous-time model is invariant to the schedule between its endpoints).
    """

    #: The endpoints of VDM's initial linear schedule, and the fixed scale of :meth:`c_noise_of_gamma`.
    GAMMA_MIN, GAMMA_MAX = -13.3, 5.0

    def __init__(self, gamma=(GAMMA_MIN, GAMMA_MAX)):
        table = torch.as_tensor(gamma, dtype=torch.float64).flatten()
        if len(table) < 2 or not bool(torch.isfinite(table).all()) or not bool((table.diff() > 0).all()):
            raise ValueError(f"a LogSNRTable needs at least 2 finite, strictly increasing gamma values; got "
                             f"{table.tolist() if len(table) < 6 else f'{len(table)} values, not all increasing'}")
        self.gamma_table = table
        self._tables = {}

    def _params(self):
        return {"gamma": self.gamma_table.tolist()}

    def _table(self, device) -> torch.Tensor:
        key = str(torch.device(device))
        if key not in self._tables:
            self._tables[key] = self.gamma_table.to(device)
        return self._tables[key]

    def gamma(self, t):
        """gamma(t) = -log SNR(t), linear between the knots; t clamped to [0, 1]."""
        t = _t(t).to(torch.float64).clamp(0, 1)
        table = self._table(t.device)
        K = len(table) - 1
        lo = (t * K).floor().long().clamp(max=K - 1)
        w = t * K - lo
        return (1 - w) * table[lo] + w * table[lo + 1]

    def ve_sigma(self, t):
        return (0.5 * self.gamma(t)).exp()

    def log_alpha(self, t):
        return -0.5 * torch.nn.functional.softplus(self.gamma(t))  # log sqrt(sigmoid(-gamma))

    def t_of_ve_sigma(self, sigma):
        """The time whose interpolated gamma equals 2 log(sigma) (clamped to [0, 1])."""
        table = self._table(_t(sigma).device)
        gamma = (2 * _t(sigma).to(torch.float64).log()).clamp(table[0], table[-1])
        K = len(table) - 1
        hi = torch.searchsorted(table, gamma.contiguous()).clamp(1, K)
        return ((hi - 1) + (gamma - table[hi - 1]) / (table[hi] - table[hi - 1])) / K

    def alpha_of_ve_sigma(self, sigma):
        return (1 + _t(sigma).to(torch.float64) ** 2).rsqrt()  # exact at every sigma, inside the table or not

    @classmethod
    def c_noise_of_gamma(cls, gamma):
        """1000 (gamma - GAMMA_MIN) / (GAMMA_MAX - GAMMA_MIN): gamma rescaled as VDM's released code
        feeds it to its network, with the initial endpoints as fixed constants (differentiable, so a
        learned schedule's gradient passes through the network's time input)."""
        return 1000 * (gamma - cls.GAMMA_MIN) / (cls.GAMMA_MAX - cls.GAMMA_MIN)

    def c_noise(self, sigma):
        return self.c_noise_of_gamma(2 * _t(sigma).to(torch.float64).log())


_SCHEDULES = {"DiscreteVP": DiscreteVP, "ContinuousVP": ContinuousVP, "SubVP": SubVP, "VE": VE,
              "EDM": EDM, "Flow": Flow, "LogSNRTable": LogSNRTable}


def make_schedule(spec: dict | str) -> Schedule:
    """Rebuild a schedule from ``Schedule.to_dict()`` output, or from a short name
    (``"linear"``, ``"cosine"``, ``"scaled_linear"``, ``"sigmoid"``, ``"vp"``, ``"subvp"``,
    ``"ve"``, ``"edm"``, ``"flow"``)."""
    if isinstance(spec, str):
        names = {"vp": ContinuousVP, "subvp": SubVP, "ve": VE, "edm": EDM, "flow": Flow}
        if spec in _BETAS and spec != "given":
            return DiscreteVP(spec)
        if spec in names:
            return names[spec]()
        raise ValueError(f"unknown schedule {spec!r}; choose from {sorted([*_BETAS.keys() - {'given'}, *names])}")
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind == "DiscreteVP":
        return DiscreteVP(spec.pop("beta_schedule"), **spec)
    return _SCHEDULES[kind](**spec)


# ---------------------------------------------------------------------------------------------
# Sigma sequences: n decreasing sigmas followed by 0.


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho,
    i = 0..n-1, then a trailing 0 (n + 1 values)."""
    if n < 1:
        raise ValueError(f"need at least one step, got n={n}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    inv_rho = 1.0 / rho
    sigmas = (sigma_max**inv_rho + ramp * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return _append_zero(sigmas).float()


def loglinear_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in log-SNR, i.e. geometric in sigma (the "logSNR" steps of Lu et al. 2022, sec. 3.3)."""
    if n < 1:
        raise ValueError(f"need at least one step, got n={n}")
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
    return _append_zero(sigmas).float()


def time_uniform_sigmas(schedule: Schedule, n: int, t_min: float | None = None,
                        t_max: float | None = None) -> torch.Tensor:
    """Uniform steps in the schedule's own time (Song et al. 2021; DDIM for continuous t): n sigmas
    from t_max to t_min and a trailing 0, or, when sigma(t_min) is already 0 (a :class:`Flow`), the
    n + 1 times t_max, ..., t_min themselves (for a flow: t_i = 1 - i/n, from sigma = inf)."""
    hi = t_max if t_max is not None else schedule.t_max
    lo = t_min if t_min is not None else schedule.t_min
    if float(schedule.ve_sigma(torch.tensor(lo, dtype=torch.float64))) == 0:
        return schedule.ve_sigma(torch.linspace(hi, lo, n + 1, dtype=torch.float64)).float()
    t = torch.linspace(hi, lo, n, dtype=torch.float64)
    return _append_zero(schedule.ve_sigma(t)).float()


def time_quadratic_sigmas(schedule: Schedule, n: int, t_min: float | None = None,
                          t_max: float | None = None) -> torch.Tensor:
    """Uniform in sqrt(t) (DDIM's "quadratic" skip, Song et al. 2021a, App. D.2; Lu et al. 2022)."""
    lo = t_min if t_min is not None else schedule.t_min
    hi = t_max if t_max is not None else schedule.t_max
    t = torch.linspace(math.sqrt(hi), math.sqrt(lo), n, dtype=torch.float64) ** 2
    return _append_zero(schedule.ve_sigma(t)).float()


def discrete_sigmas(schedule: DiscreteVP, n: int, spacing: str = "trailing") -> torch.Tensor:
    """Sigmas at n of the T integer timesteps of a discrete schedule (DDIM, Song et al. 2021a),
    with the spacings compared by Lin et al. (2024, Table 2):
    ``linspace`` rounds linspace(0, T-1, n); ``leading`` takes 0, T/n, 2T/n, ...;
    ``trailing`` takes round(T - i T/n) - 1 = T-1, ... (always includes the last, noisiest step)."""
    T = schedule.T
    if not 1 <= n <= T:
        raise ValueError(f"n must be in [1, {T}], got {n}")
    if spacing == "linspace":
        steps = torch.linspace(0, T - 1, n, dtype=torch.float64).round().long()
    elif spacing == "leading":
        steps = torch.arange(n, dtype=torch.long) * (T // n)
    elif spacing == "trailing":
        # Round the 1-indexed step T - i T/n, then shift: rounding T-1 - i T/n instead differs
        # at half-integers (e.g. n = 16), where round-half-to-even goes the other way.
        steps = ((T - torch.arange(n, dtype=torch.float64) * (T / n)).round() - 1).long().flip(0)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose linspace, leading or trailing")
    return _append_zero(schedule.sigmas[steps.flip(0)]).float()


def consistency_grid(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """The n noise levels sigma_min = s_1 < ... < s_n = sigma_max of consistency models (Karras et
    al.'s spacing, Song et al. 2023, sec. 5), increasing, float64."""
    return karras_sigmas(n, sigma_min, sigma_max, rho).double()[:-1].flip(0)


def consistency_sigmas(steps: int, sigma_min: float, sigma_max: float) -> list[float]:
    """The native sigmas of a ``steps``-step consistency model: the top ``steps`` of the ``steps + 1``
    Karras levels (sigma_max first, sigma_min left out: re-noising to it would change nothing)
    and a trailing 0, for the ``consistency`` sampler."""
    return consistency_grid(steps + 1, sigma_min, sigma_max).flip(0)[:steps].tolist() + [0.0]


# ---------------------------------------------------------------------------------------------
# Forward process and posteriors


def q_sample(schedule: Schedule, x0: torch.Tensor, t, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x0) = N(alpha(t) x0, std(t)^2 I) (Ho et al. 2020, eq. 4)."""
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    t = _t(t)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    alpha = schedule.alpha(t).to(x0).reshape(shape)
    std = schedule.std(t).to(x0).reshape(shape)
    return alpha * x0 + std * noise


def ddpm_posterior(schedule: DiscreteVP, x0: torch.Tensor, x_t: torch.Tensor, t: int):
    """Mean and variance of q(x_{t-1} | x_t, x0) (Ho et al. 2020, eq. 6-7), for integer t >= 1:
    mean = sqrt(ab_{t-1}) beta_t/(1-ab_t) x0 + sqrt(alpha_t)(1-ab_{t-1})/(1-ab_t) x_t,
    var = beta_t (1-ab_{t-1})/(1-ab_t)."""
    ab, beta = schedule.alphas_cumprod, schedule.betas
    ab_t, ab_prev, beta_t = float(ab[t]), float(ab[t - 1]), float(beta[t])
    coef_x0 = math.sqrt(ab_prev) * beta_t / (1 - ab_t)
    coef_xt = math.sqrt(1 - beta_t) * (1 - ab_prev) / (1 - ab_t)
    return coef_x0 * x0 + coef_xt * x_t, beta_t * (1 - ab_prev) / (1 - ab_t)


def ve_posterior(x0, x, sigma: float, sigma_next: float):
    """q(x_next | x, x0) in the VE convention, for sigma_next < sigma:
    N(x0 + (s'^2/s^2)(x - x0), s'^2 (s^2 - s'^2)/s^2) — eq. 6-7 of Ho et al. 2020 after x -> x/alpha."""
    ratio = (sigma_next / sigma) ** 2
    return x0 + ratio * (x - x0), sigma_next**2 * (1 - ratio)

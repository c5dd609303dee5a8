"""What a training step minimises: the denoising loss, or the distillation of a teacher.

An objective draws the randomness and the targets of the whole global batch in :meth:`draw` (the
teacher's calls happen there, without gradients) and computes the loss of a slice of it in
:meth:`loss`, so gradient accumulation and data parallelism split every objective alike:

- :class:`Denoising`: the weighted denoising loss of :mod:`.losses` (Karras et al. 2022, eq. 2);
- :class:`Progressive`: progressive distillation (Salimans & Ho 2022, Algorithm 2): one student
  DDIM step matches two of the teacher's;
- :class:`Consistency`: consistency distillation with an ODE step of the teacher and the EMA as
  target network (Song et al. 2023, Algorithm 2), or without a teacher consistency training with
  the improved recipe (Song & Dhariwal 2024: pseudo-Huber loss, discretisation curriculum,
  lognormal choice of the noise level);
- :class:`Guided`: guided distillation, stage one (Meng et al. 2023, sec. 4.1): a student fed the
  guidance scale w matches the teacher's classifier-free guided denoiser in one call;
- :class:`VDM`: the continuous-time variational bound of Variational Diffusion Models (Kingma et
  al. 2021), with the noise schedule (:class:`LearnedLogSNR`) learned jointly with the network.

docs/distill.md has the derivations.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..denoisers import NetworkDenoiser, append_dims
from ..guidance import cfg
from ..likelihood.ode import check_8bit_range
from ..likelihood.vdm import low_discrepancy_times, quantize_8bit, vdm_decoder_nll, vdm_prior_kl
from ..samplers.stepping import heun_step
from ..schedules import LogSNRTable, consistency_grid, make_schedule
from .checkpoint import build_model
from ..editing.inpaint import observation_condition
from .losses import (denoising_loss, draw_noise, draw_observation_mask, drop_captions, drop_labels,
                     x0_output_scale)
from .tasks import IMAGE_TASKS, draw_task_batch

__all__ = ["Objective", "Denoising", "Progressive", "Consistency", "Guided", "VDM", "LearnedLogSNR",
           "make_objective", "learned_log_snr", "load_teacher", "ddim_step", "progressive_target", "guided_target",
           "ct_discretisation", "pseudo_huber"]


def load_teacher(path, device) -> NetworkDenoiser:
    """The denoiser of a model directory (EMA weights, eval mode, no gradients) for distillation."""
    net, config, _ = build_model(path, device)
    net.eval().requires_grad_(False)
    return NetworkDenoiser(net, make_schedule(config.schedule), config.prediction, config.sigma_data)


def _cond(y, text=None) -> dict:
    return {k: v for k, v in {"y": y, "text": text}.items() if v is not None}


class Objective:
    """``draw(x0, y, paired_noise, generator, step, text=None) -> dict`` of tensors with the batch
    first (``text``: caption tokens of a text-conditional model); ``loss(batch) -> (mean, per-sample
    losses)`` on any slice of it."""

    def __init__(self, student: NetworkDenoiser, config):
        self.student, self.config = student, config

    def draw(self, x0, y, paired, generator, step: int, text=None) -> dict:
        raise NotImplementedError

    def _drop_text(self, text, generator):
        """Caption dropout, drawn after everything else so label-only runs keep their random stream."""
        return drop_captions(text, self.config.cond_drop, generator)

    def loss(self, batch: dict):
        raise NotImplementedError

    def learned_schedule(self):
        """The noise schedule as trained so far, when the objective learns it (:class:`VDM`): the model
        directory records it as its config's schedule. None: the config's schedule stays."""
        return None


class Denoising(Objective):
    """The denoising loss (:func:`difflab.training.losses.denoising_loss`); for ``task = "impute"``
    with a random observation mask per signal, the observations as the network's ``condition`` and
    the loss on the missing values only (CSDI, Tashiro et al. 2021, Algorithm 1)."""

    def draw(self, x0, y, paired, generator, step, text=None):
        sigma, noise, y = draw_noise(self.student.schedule, x0, y, self.config, generator, paired)
        batch = {"x0": x0, "sigma": sigma, "noise": noise, "y": y, "text": self._drop_text(text, generator)}
        if self.config.task == "impute":
            mask = draw_observation_mask(x0, generator)
            batch.update(condition=observation_condition(x0, mask), loss_mask=1 - mask)
        elif self.config.task in IMAGE_TASKS:  # SR3 / Palette: the degraded image as the condition
            batch.update(draw_task_batch(self.config.task, x0, factor=self.config.sr_factor,
                                         cond_aug=self.config.cond_aug, generator=generator))
        return batch

    def loss(self, b):
        extra = {k: b[k] for k in ("w", "text", "condition") if b.get(k) is not None}
        return denoising_loss(self.student, b["x0"], b["sigma"], b["noise"], b.get("y"), self.config,
                              extra_cond=extra or None, loss_mask=b.get("loss_mask"))


def ddim_step(x, x0_hat, sigma, sigma_next):
    """DDIM (eta = 0) from sigma to sigma_next per row, x' = x0_hat + (sigma'/sigma)(x - x0_hat); at
    sigma = inf (x the unit noise) its limit x0_hat + sigma' x. ``sigma``, ``sigma_next``: (B,)."""
    s, s_next = append_dims(sigma, x.ndim).to(x.dtype), append_dims(sigma_next, x.ndim).to(x.dtype)
    ratio = torch.where(torch.isinf(s), 0, s_next / torch.where(torch.isinf(s), 1, s))
    return torch.where(torch.isinf(s), x0_hat + s_next * x, x0_hat + ratio * (x - x0_hat))


@torch.no_grad()
def progressive_target(teacher, x, sigma, sigma_mid, sigma_next, cond: dict | None = None):
    """The x0 target of progressive distillation (Salimans & Ho 2022, Algorithm 2, in the VE
    convention): two teacher DDIM steps sigma -> sigma_mid -> sigma_next give x'', and the target is
    the x0_hat with which one DDIM step from (x, sigma) lands exactly on x'':

        x'' = x0 + (s''/s)(x - x0)   =>   x0 = (x'' - (s''/s) x) / (1 - s''/s),

    (x0 = x'' - s'' x from sigma = inf, x0 = x'' when s'' = 0). Per row: (B,) sigmas."""
    cond = cond or {}
    x1 = ddim_step(x, teacher(x, sigma, **cond), sigma, sigma_mid)
    x2 = ddim_step(x1, teacher(x1, sigma_mid, **cond), sigma_mid, sigma_next)
    s, s2 = append_dims(sigma, x.ndim).to(x.dtype), append_dims(sigma_next, x.ndim).to(x.dtype)
    inf = torch.isinf(s)
    ratio = torch.where(inf, 0, s2 / torch.where(inf, 1, s))
    return torch.where(inf, x2 - s2 * x, (x2 - ratio * x) / (1 - ratio))


class Progressive(Objective):
    """Progressive distillation: ``distill["sigmas"]`` is the teacher's grid of 2K steps (2K + 1
    values ending at 0); the student learns the K-step grid of every other value. A training point
    is x = x0 + sigma n at a student sigma (uniform over its K steps) and the target is
    :func:`progressive_target`."""

    def __init__(self, student, config, teacher: NetworkDenoiser):
        super().__init__(student, config)
        self.teacher = teacher
        grid = torch.tensor(config.distill["sigmas"], dtype=torch.float64)
        if len(grid) < 3 or len(grid) % 2 == 0 or float(grid[-1]) != 0 or not bool((grid[1:] < grid[:-1]).all()):
            raise ValueError("progressive distillation needs the teacher's grid: 2K + 1 decreasing sigmas ending at 0")
        self.grid = grid

    def draw(self, x0, y, paired, generator, step, text=None):
        grid = self.grid.to(x0.device)
        k = len(grid) // 2
        i = torch.randint(0, k, (x0.shape[0],), generator=generator, device=x0.device)
        sigma, sigma_mid, sigma_next = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        s = append_dims(sigma, x0.ndim).to(x0.dtype)
        x = torch.where(torch.isinf(s), noise, x0 + s * noise)
        null = self.config.num_classes if self.config.num_classes is not None else -1
        y = drop_labels(y, self.config.cond_drop, null, generator)
        text = self._drop_text(text, generator)
        target = progressive_target(self.teacher, x, sigma, sigma_mid, sigma_next, _cond(y, text))
        # the noise that puts the target at x: x = target + sigma n (n = x itself at sigma = inf)
        n = torch.where(torch.isinf(s), x, (x - target) / torch.where(torch.isinf(s), 1, s))
        return {"x0": target, "sigma": sigma, "noise": n, "y": y, "text": text}

    loss = Denoising.loss


def ct_discretisation(step: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    """N(k) of improved consistency training (Song & Dhariwal 2024, sec. 3.4, eq. 5): the number of
    noise levels doubles from s0 + 1 to s1 + 1 in equal stages over the ``total`` steps:
    N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2 floor(s1 / s0) + 1))."""
    stage = max(1, total // (int(math.log2(s1 // s0)) + 1))
    return min(s0 * 2 ** (step // stage), s1) + 1


def pseudo_huber(diff: torch.Tensor, c: float) -> torch.Tensor:
    """sqrt(|d|^2 + c^2) - c per sample (Song & Dhariwal 2024, sec. 3.3); c = 0: the squared norm
    divided by the dimension (the L2 metric of Song et al. 2023)."""
    sq = diff.flatten(1).square().sum(1)
    return sq / diff[0].numel() if c == 0 else (sq + c * c).sqrt() - c


class Consistency(Objective):
    """Consistency distillation (with a teacher) or training (without). Options (``distill``):
    ``steps`` N of the distillation's discretisation (18, Song et al. 2023 for CIFAR-10), ``s0``, ``s1``
    of the training curriculum (10, 1280), ``rho`` (7), ``P_mean``, ``P_std`` of training's
    lognormal noise levels (-1.1, 2.0), ``huber_c`` (default 0.00054 sqrt(d) for training, 0 = L2
    for distillation). The target network is the EMA for distillation (their theta^-) and the
    current weights without gradient for training (Song & Dhariwal 2024, sec. 3.2)."""

    def __init__(self, student, config, teacher: NetworkDenoiser | None, ema_denoiser: NetworkDenoiser | None):
        super().__init__(student, config)
        o = config.distill
        self.teacher, self.ema = teacher, ema_denoiser
        if teacher is not None and ema_denoiser is None:
            raise ValueError("consistency distillation needs an EMA (ema_decay > 0): it is the target network")
        self.sigma_min, self.sigma_max = student.schedule.sigma_min, student.schedule.sigma_max
        self.rho, self.steps = o.get("rho", 7.0), o.get("steps", 18)
        self.s0, self.s1 = o.get("s0", 10), o.get("s1", 1280)
        self.P_mean, self.P_std = o.get("P_mean", -1.1), o.get("P_std", 2.0)
        self.huber_c = o.get("huber_c")

    def _levels(self, step: int) -> torch.Tensor:
        n = self.steps if self.teacher is not None else ct_discretisation(step, self.config.steps, self.s0, self.s1)
        return consistency_grid(n, self.sigma_min, self.sigma_max, self.rho)

    def _index_probabilities(self, sigmas: torch.Tensor) -> torch.Tensor:
        """p(n) of the pair (s_n, s_n+1): uniform for distillation; for training proportional to
        erf((log s_n+1 - P_mean)/(sqrt 2 P_std)) - erf((log s_n - P_mean)/(sqrt 2 P_std))
        (Song & Dhariwal 2024, sec. 3.5)."""
        if self.teacher is not None:
            return torch.ones(len(sigmas) - 1, dtype=torch.float64)
        cdf = torch.erf((sigmas.log() - self.P_mean) / (math.sqrt(2) * self.P_std))
        return cdf[1:] - cdf[:-1]

    def draw(self, x0, y, paired, generator, step, text=None):
        sigmas = self._levels(step).to(x0.device)
        p = self._index_probabilities(sigmas.cpu()).to(x0.device)
        i = torch.multinomial(p, x0.shape[0], replacement=True, generator=generator)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        null = self.config.num_classes if self.config.num_classes is not None else -1
        y = drop_labels(y, self.config.cond_drop, null, generator)
        text = self._drop_text(text, generator)
        x_next = x0 + append_dims(sigma_next, x0.ndim).to(x0.dtype) * z
        with torch.no_grad():
            if self.teacher is not None:  # one Heun step of the teacher's ODE, sigma_n+1 -> sigma_n
                x_hat = _heun_rows(self.teacher, x_next, sigma_next, sigma, _cond(y, text))
                target = self.ema(x_hat, sigma, **_cond(y, text))
                weight = torch.ones_like(sigma)
            else:
                x_hat = x0 + append_dims(sigma, x0.ndim).to(x0.dtype) * z
                target = self.student(x_hat, sigma, **_cond(y, text))
                weight = 1 / (sigma_next - sigma)
        return {"x": x_next, "sigma": sigma_next, "target": target, "weight": weight, "y": y, "text": text}

    def loss(self, b):
        f = self.student(b["x"], b["sigma"], **_cond(b.get("y"), b.get("text")))
        c = self.huber_c if self.huber_c is not None else (0.0 if self.teacher is not None
                                                           else 0.00054 * math.sqrt(f[0].numel()))
        per_sample = b["weight"].to(f.dtype) * pseudo_huber(f.float() - b["target"].float(), c)
        return per_sample.mean(), per_sample


def _heun_rows(denoiser, x, sigma, sigma_next, cond):
    """Heun's step (Karras et al. 2022, Alg. 1) with a different (sigma, sigma') per row."""
    s, s_next = append_dims(sigma, x.ndim).to(x.dtype), append_dims(sigma_next, x.ndim).to(x.dtype)
    slope = (x - denoiser(x, sigma, **cond)) / s
    x_euler = x + (s_next - s) * slope
    slope_next = (x_euler - denoiser(x_euler, sigma_next, **cond)) / s_next
    return x + (s_next - s) * 0.5 * (slope + slope_next)


class Guided(Objective):
    """Guided distillation, stage one (Meng et al. 2023, eq. 6 in difflab's convention): at x =
    x0 + sigma n the student D(x, sigma, y, w) regresses onto the teacher's classifier-free guided
    D(x|null) + w (D(x|y) - D(x|null)) for a guidance scale w ~ U[w_min, w_max] per sample
    (``distill["w_min"]``, ``["w_max"]``; default 1 to 5, i.e. their w in [0, 4])."""

    def __init__(self, student, config, teacher: NetworkDenoiser):
        super().__init__(student, config)
        if config.num_classes is None or config.net.get("text"):
            raise ValueError("guided distillation needs a class-conditional teacher (not a text-conditional one)")
        self.teacher = teacher
        self.w_min, self.w_max = config.distill.get("w_min", 1.0), config.distill.get("w_max", 5.0)
        if not self.w_min <= self.w_max:
            raise ValueError(f"need w_min <= w_max, got {self.w_min} and {self.w_max}")

    def draw(self, x0, y, paired, generator, step, text=None):
        # the student is always told its class: the guided target of a dropped (null) label is just
        # the unconditional denoiser, which w could not change
        sigma, noise, _ = draw_noise(self.student.schedule, x0, y, self.config, generator, paired)
        w = self.w_min + (self.w_max - self.w_min) * torch.rand(x0.shape[0], generator=generator, device=x0.device,
                                                                dtype=torch.float64)
        s = append_dims(sigma, x0.ndim).to(x0.dtype)
        x = torch.where(torch.isinf(s), noise, x0 + s * noise)
        with torch.no_grad():
            target = guided_target(self.teacher, x, sigma, y, w, self.config.num_classes)
        n = torch.where(torch.isinf(s), x, (x - target) / torch.where(torch.isinf(s), 1, s))
        return {"x0": target, "sigma": sigma, "noise": n, "y": y, "w": w}

    loss = Denoising.loss


def guided_target(teacher, x, sigma, y, w, num_classes: int) -> torch.Tensor:
    """D(x|null) + w (D(x|y) - D(x|null)) with a scale per row: :func:`difflab.guidance.cfg`."""
    return cfg(teacher, w, num_classes=num_classes)(x, sigma, y=y)


class LearnedLogSNR(nn.Module):
    """VDM's learned noise schedule gamma(t) = -log SNR(t) on t in [0, 1] (Kingma et al. 2021, eq. 3-5;
    App. H uses a monotone network, this is the monotone piecewise-linear map with learnable
    endpoints): with K pieces, p = softmax(logits) and S_k = p_0 + ... + p_{k-1},

        gamma(t) = gamma_0 + (gamma_1 - gamma_0) s(t),   s(t) = S_k + p_k (K t - k) on [k/K, (k+1)/K],

    so s rises strictly from s(0) = 0 to s(1) = 1, gamma'(t) = (gamma_1 - gamma_0) K p_k, and the
    endpoints are the parameters ``gamma_0`` and ``log_range`` = log(gamma_1 - gamma_0) alone. It
    starts as the ``initial`` table's interpolation on the K + 1 knots (VDM's linear schedule for a
    two-value table). Parameters are float64; :meth:`table` is the exact :class:`LogSNRTable`.
    """

    def __init__(self, initial: LogSNRTable, knots: int = 32, trainable: bool = True):
        super().__init__()
        gamma = initial.gamma(torch.linspace(0, 1, knots + 1, dtype=torch.float64))
        span = gamma[-1] - gamma[0]
        self.gamma_0 = nn.Parameter(gamma[0].clone())
        self.log_range = nn.Parameter(span.log())
        self.logits = nn.Parameter((gamma.diff() / span).log())
        self.trainable = trainable
        self.requires_grad_(trainable)

    def endpoints(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gamma_0, self.gamma_0 + self.log_range.exp()

    def shape(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s(t), s'(t)) at times t (B,), float64."""
        K = self.logits.numel()
        p = torch.softmax(self.logits, 0)
        S = torch.cat([p.new_zeros(1), p.cumsum(0)])
        t = t.to(torch.float64).clamp(0, 1)
        k = (t * K).floor().long().clamp(max=K - 1)
        return S[k] + p[k] * (t * K - k), K * p[k]

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma(t), gamma'(t)) at times t (B,)."""
        s, ds = self.shape(t)
        g0, g1 = self.endpoints()
        return g0 + (g1 - g0) * s, (g1 - g0) * ds

    @torch.no_grad()
    def table(self) -> LogSNRTable:
        """The schedule as a :class:`LogSNRTable` of gamma at the K + 1 knots (linear in between, as here)."""
        g0, g1 = self.endpoints()
        S = torch.cat([self.logits.new_zeros(1), torch.softmax(self.logits, 0).cumsum(0)])
        return LogSNRTable((g0 + (g1 - g0) * S).cpu())

    def state_json(self) -> dict:
        """The parameters as JSON numbers (float64 values round-trip exactly through JSON)."""
        return {name: p.detach().cpu().tolist() for name, p in self.named_parameters()}

    @torch.no_grad()
    def load_state_json(self, state: dict) -> None:
        for name, p in self.named_parameters():
            p.copy_(torch.tensor(state[name], dtype=p.dtype))


class VDM(Objective):
    """The continuous-time variational bound of VDM (Kingma et al. 2021, eq. 11 with T -> infinity;
    :mod:`difflab.likelihood.vdm`) in bits/dim per sample, on 8-bit data x in [-1, 1] rounded to
    its levels:

        L = L_prior(gamma_1) + L_recon(gamma_0) + 1/2 gamma'(t) e^{-gamma} c^2 ||F - target||^2,

    t from the low-discrepancy sampler over the global batch, F the network's output at
    z_t = alpha_t x + sigma_t eps (x_in = alpha x_ve with x_ve = x + e^{gamma/2} eps), c the factor
    that turns an output error into an x0 error (1/2 gamma' ||eps - eps_hat||^2 for eps prediction,
    eq. 17). The network's time input is :meth:`LogSNRTable.c_noise_of_gamma`, differentiable in gamma.

    With a trainable :class:`LearnedLogSNR` ("Variance minimization" section of the paper), the
    endpoints follow the gradient of the bound, and the shape between them the gradient of the
    squared diffusion loss E[L_inf^2], which by the invariance of E[L_inf] to the shape (sec. 5.1)
    is the gradient of its variance: one backward pass does both, a hook on s(t) and s'(t) scaling
    each sample's gradient by 2 L_inf (d/ds L^2 = 2 L dL/ds). The network follows the bound.
    """

    def __init__(self, student, config, gamma: LearnedLogSNR):
        super().__init__(student, config)
        if not isinstance(student.schedule, LogSNRTable) or student.prediction not in ("eps", "x0", "v"):
            raise ValueError("objective 'vdm' trains eps, x0 or v prediction on a LogSNRTable schedule")
        if config.weighting != "uniform":
            raise ValueError("objective 'vdm' weights the squared error by its bound itself; set weighting = 'uniform'")
        if config.task != "generate":
            raise ValueError(f"objective 'vdm' bounds the likelihood of the data (task 'generate'), not task {config.task!r}")
        self.gamma, self._checked = gamma, False

    def draw(self, x0, y, paired, generator, step, text=None):
        if not self._checked:  # once per run: the 8-bit likelihood needs data in [-1, 1]
            check_8bit_range(x0, "objective 'vdm'")
            self._checked = True
        t = low_discrepancy_times(x0.shape[0], generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        noise_0 = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        null = self.config.num_classes if self.config.num_classes is not None else -1
        y = drop_labels(y, self.config.cond_drop, null, generator)
        return {"x0": quantize_8bit(x0), "t": t, "noise": noise, "noise_0": noise_0, "y": y,
                "text": self._drop_text(text, generator)}

    def terms(self, b) -> dict:
        """prior, decoder and diffusion terms in nats per sample (B,), differentiable."""
        x0, dim = b["x0"], b["x0"][0].numel()
        s, ds = self.gamma.shape(b["t"])
        g0, g1 = self.gamma.endpoints()
        gamma, slope = g0 + (g1 - g0) * s, (g1 - g0) * ds
        sigma = (0.5 * gamma).exp()
        extra = {"text": b["text"]} if b.get("text") is not None else None
        _, mse = denoising_loss(self.student, x0, sigma, b["noise"], b.get("y"), self.config, extra_cond=extra)
        c = x0_output_scale(self.student.prediction, sigma, self.student.schedule.alpha_of_ve_sigma(sigma))
        diffusion = 0.5 * slope * (-gamma).exp() * c**2 * dim * mse
        if s.requires_grad and torch.is_grad_enabled():  # the shape follows d E[L_inf^2] (see the class docstring)
            scale = 2 * diffusion.detach() / (dim * math.log(2))  # the loss is in bits/dim
            s.register_hook(lambda grad: grad * scale)
            ds.register_hook(lambda grad: grad * scale)
        recon = vdm_decoder_nll(x0, x0 + (0.5 * g0).exp().to(x0.dtype) * b["noise_0"], g0)
        return {"prior": vdm_prior_kl(x0, g1), "decoder": recon, "diffusion": diffusion}

    def loss(self, b):
        terms = self.terms(b)
        per_sample = (terms["prior"] + terms["decoder"] + terms["diffusion"]) / (b["x0"][0].numel() * math.log(2))
        return per_sample.mean(), per_sample

    def learned_schedule(self):
        return self.gamma.table() if self.gamma.trainable else None


VDM_OPTIONS = {"knots": 32, "learn_schedule": True}  # TrainConfig.distill of objective "vdm", with the defaults


def learned_log_snr(config) -> LearnedLogSNR | None:
    """The :class:`LearnedLogSNR` of a ``vdm`` objective (None for the others), from the config's
    schedule and its options ``distill = {"knots": K, "learn_schedule": bool}`` (32, true): the
    trainer puts its parameters in the optimizer and its state in the training state."""
    if config.objective != "vdm":
        return None
    unknown = sorted(set(config.distill) - set(VDM_OPTIONS))
    if unknown or config.teacher is not None:
        raise ValueError(f"objective 'vdm' takes no teacher and the options {', '.join(VDM_OPTIONS)}; got "
                         f"{unknown or 'a teacher'}")
    options = {**VDM_OPTIONS, **config.distill}
    knots, learn = options["knots"], options["learn_schedule"]
    if isinstance(knots, bool) or not isinstance(knots, int) or knots < 1 or not isinstance(learn, bool):
        raise ValueError(f"objective 'vdm' needs knots a positive integer and learn_schedule true or false, got {options}")
    schedule = make_schedule(config.schedule)
    if not isinstance(schedule, LogSNRTable):
        raise ValueError(f"objective 'vdm' learns a LogSNRTable schedule, got {type(schedule).__name__}")
    return LearnedLogSNR(schedule, knots, learn)


def make_objective(config, student: NetworkDenoiser, ema_denoiser: NetworkDenoiser | None, device,
                   gamma: LearnedLogSNR | None = None) -> Objective:
    """The config's objective, with its teacher loaded onto ``device``; ``gamma``: the
    :func:`learned_log_snr` module of a ``vdm`` objective."""
    if config.objective == "vdm":
        return VDM(student, config, gamma if gamma is not None else learned_log_snr(config).to(device))
    teacher = load_teacher(config.teacher, device) if config.teacher is not None else None
    if config.objective == "progressive":
        return Progressive(student, config, teacher)
    if config.objective == "consistency":
        return Consistency(student, config, teacher, ema_denoiser)
    if config.objective == "guided":
        return Guided(student, config, teacher)
    return Denoising(student, config)

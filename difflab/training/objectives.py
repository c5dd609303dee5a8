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
  guidance scale w matches the teacher's classifier-free guided denoiser in one call.

docs/distill.md has the derivations.
"""
from __future__ import annotations

import math

import torch

from ..denoisers import NetworkDenoiser, append_dims
from ..guidance import cfg
from ..samplers.stepping import heun_step
from ..schedules import consistency_grid, make_schedule
from .checkpoint import build_model
from ..editing.inpaint import observation_condition
from .losses import denoising_loss, draw_noise, draw_observation_mask, drop_captions, drop_labels

__all__ = ["Objective", "Denoising", "Progressive", "Consistency", "Guided", "make_objective", "load_teacher",
           "ddim_step", "progressive_target", "guided_target", "ct_discretisation", "pseudo_huber"]


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


def make_objective(config, student: NetworkDenoiser, ema_denoiser: NetworkDenoiser | None, device) -> Objective:
    """The config's objective, with its teacher loaded onto ``device``."""
    teacher = load_teacher(config.teacher, device) if config.teacher is not None else None
    if config.objective == "progressive":
        return Progressive(student, config, teacher)
    if config.objective == "consistency":
        return Consistency(student, config, teacher, ema_denoiser)
    if config.objective == "guided":
        return Guided(student, config, teacher)
    return Denoising(student, config)

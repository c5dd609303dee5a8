"""Training objectives: denoising score matching in each parametrization, with its weightings.

Every objective here is one weighted regression (Karras et al. 2022, eq. 2 and 8; Ho et al. 2020,
eq. 14): draw sigma ~ p_train, n ~ N(0, I), form x = x0 + sigma n (the VE convention of docs/design.md),
and regress the network output F onto the target of its parametrization,

    L = E[ w(sigma) || F(x_in, c_noise) - target ||^2 ].

Every target is affine in x0 at fixed x, x0_hat = a + c(sigma) F, so an error dF costs
|dx0|^2 = c^2 |dF|^2 in data space: a weighting ``lambda(sigma)`` of the x0-space error (Karras et
al. 2022, eq. 8) is ``w = lambda c^2`` in the network's own space. :func:`loss_weight` states every
weighting this way, which is what makes them comparable across parametrizations.
"""
from __future__ import annotations

import torch

from ..denoisers import NetworkDenoiser, append_dims, edm_coefficients, prediction_from_x0
from ..editing.inpaint import observation_condition
from ..likelihood.learned import hybrid_vlb_term
from ..nets.text import empty_caption
from ..schedules import EDM, DiscreteVP, Schedule

__all__ = ["sample_training_sigmas", "x0_output_scale", "x0_weight", "loss_weight", "draw_noise",
           "drop_labels", "drop_captions", "ot_pairing", "denoising_loss", "diffusion_loss",
           "draw_observation_mask"]


def sample_training_sigmas(schedule: Schedule, n: int, generator: torch.Generator | None = None, *,
                           P_mean: float = -1.2, P_std: float = 1.2, time_sampling: str = "uniform",
                           logit_mean: float = 0.0, logit_std: float = 1.0, device=None) -> torch.Tensor:
    """n training noise levels (float64, on ``device`` or the generator's device):

    - :class:`DiscreteVP`: a uniform integer timestep t in {0, ..., T-1} (Ho et al. 2020, Algorithm 1);
    - :class:`EDM`: log sigma ~ N(P_mean, P_std^2) (Karras et al. 2022, sec. 5, Table 1);
    - other continuous schedules (VP, sub-VP, VE, Flow): t = t_min + u (t_max - t_min) with
      u ~ U(0, 1) (Song et al. 2021, eq. 7; Lipman et al. 2023, eq. 23) or, for
      ``time_sampling="logit_normal"``, u = sigmoid(logit_mean + logit_std z), z ~ N(0, 1)
      (Esser et al. 2024, sec. 3.1, eq. 19), which favours the middle of the path.
    """
    device = torch.device(device) if device is not None else (generator.device if generator else None)
    if isinstance(schedule, EDM):
        z = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
        return (P_mean + P_std * z).exp()
    if isinstance(schedule, DiscreteVP):
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        t = (u * schedule.T).long().clamp(max=schedule.T - 1)
        return schedule.tables(u.device)[0][t]
    if time_sampling == "logit_normal":
        u = torch.sigmoid(logit_mean + logit_std * torch.randn(n, generator=generator, device=device,
                                                                dtype=torch.float64))
    else:
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    t = schedule.t_min + u * (schedule.t_max - schedule.t_min)
    return schedule.ve_sigma(t).to(torch.float64)


def x0_output_scale(prediction: str, sigma, alpha=None, sigma_data: float = 0.5):
    """c(sigma) = d x0_hat / d F, the factor by which an output error becomes a data error.

    eps: -sigma (x0 = x - sigma eps); x0: 1; v: -sigma / (alpha (1 + sigma^2)) (from
    x0 = (alpha^2 x - std v)/(alpha^2 + std^2), std = alpha sigma, Salimans & Ho 2022);
    flow: -sigma / (1 + sigma) (from x0 = (x - sigma u)/(1 + sigma); -t on the Flow schedule);
    edm: c_out (Karras et al. 2022, Table 1).
    """
    if prediction == "eps":
        return -sigma
    if prediction == "x0":
        return torch.ones_like(sigma)
    if prediction == "v":
        return -sigma / (alpha * (1 + sigma**2))
    if prediction == "flow":
        return -sigma / (1 + sigma)
    if prediction == "edm":
        return edm_coefficients(sigma, sigma_data)[1]
    raise ValueError(f"unknown prediction {prediction!r}; choose eps, x0, v, flow or edm")


def x0_weight(weighting: str, prediction: str, sigma, alpha=None, *, gamma: float = 5.0,
              sigma_data: float = 0.5):
    """lambda(sigma), the weight of the x0-space error ||x0_hat - x0||^2 that a weighting implies.

    - ``uniform``: the unweighted loss in the network's own space (Ho et al. 2020, eq. 14,
      "L_simple" for eps), i.e. lambda = 1 / c^2;
    - ``min_snr``: lambda = min(SNR, gamma), SNR = alpha^2 / std^2 = 1 / sigma^2 (Hang et al. 2023, eq. 9);
    - ``edm``: lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Karras et al. 2022, sec. 5).
    """
    if weighting == "uniform":
        return x0_output_scale(prediction, sigma, alpha, sigma_data) ** -2
    if weighting == "min_snr":
        return (sigma**-2).clamp(max=gamma)
    if weighting == "edm":
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    raise ValueError(f"unknown weighting {weighting!r}; choose uniform, min_snr or edm")


def loss_weight(weighting: str, prediction: str, sigma, alpha=None, *, gamma: float = 5.0,
                sigma_data: float = 0.5):
    """w(sigma) = lambda(sigma) c(sigma)^2, the weight of the squared error in the network's own space.

    For min-SNR this is Hang et al. (2023, sec. 3.4)'s form per parametrization: eps
    min(SNR, gamma)/SNR, x0 min(SNR, gamma), v min(SNR, gamma)/(SNR + 1) (for VP schedules, where
    alpha^2 (1 + sigma^2) = 1). For EDM weighting with EDM preconditioning it is exactly 1
    (Karras et al. 2022, eq. 8 and Table 1: lambda = 1 / c_out^2); ``uniform`` is 1 everywhere.
    """
    if weighting == "uniform":
        return torch.ones_like(sigma)
    c = x0_output_scale(prediction, sigma, alpha, sigma_data)
    return x0_weight(weighting, prediction, sigma, alpha, gamma=gamma, sigma_data=sigma_data) * c**2


def drop_labels(y, cond_drop: float, null_class: int, generator=None):
    """Replace each label by ``null_class`` with probability ``cond_drop`` (Ho & Salimans 2022,
    Algorithm 1), so one network learns both the conditional and unconditional denoiser."""
    if y is None or cond_drop <= 0:
        return y
    drop = torch.rand(y.shape, generator=generator, device=y.device) < cond_drop
    return torch.where(drop, torch.full_like(y, null_class), y)


def ot_pairing(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The permutation p minimising sum_i |x0_i - noise_p(i)|^2 over the batch: an exact optimal
    transport plan between the two empirical measures (minibatch OT-CFM, Tong et al. 2024, sec. 3.2;
    Pooladian et al. 2023), by the Hungarian method (``scipy.optimize.linear_sum_assignment``)."""
    from scipy.optimize import linear_sum_assignment

    a, b = x0.detach().flatten(1).double().cpu(), noise.detach().flatten(1).double().cpu()
    cost = torch.cdist(a, b).square().numpy()
    rows, cols = linear_sum_assignment(cost)
    return torch.as_tensor(cols[rows.argsort()], device=x0.device)


def drop_captions(tokens, cond_drop: float, generator=None):
    """Replace each caption by the empty one ([BOS] and padding) with probability ``cond_drop``:
    caption dropout, the text version of :func:`drop_labels` (Nichol et al. 2022, sec. 3.2)."""
    if tokens is None or cond_drop <= 0:
        return tokens
    drop = torch.rand(tokens.shape[0], generator=generator, device=tokens.device) < cond_drop
    return torch.where(drop[:, None], empty_caption(tokens), tokens)


def draw_noise(schedule: Schedule, x0: torch.Tensor, y, config, generator=None, paired_noise=None):
    """The randomness of one training batch, in a fixed order: (sigma (B,), n like x0, labels
    after :func:`drop_labels`). ``config`` supplies the noise-level distribution (P_mean, P_std,
    time_sampling, logit_mean, logit_std), cond_drop, num_classes and the coupling: ``ot`` pairs
    the batch's fresh noise with its data by :func:`ot_pairing`; ``pairs`` uses ``paired_noise``
    (the data set's own noise column)."""
    sigma = sample_training_sigmas(schedule, x0.shape[0], generator, P_mean=config.P_mean, P_std=config.P_std,
                                   time_sampling=config.time_sampling, logit_mean=config.logit_mean,
                                   logit_std=config.logit_std, device=x0.device)
    if config.coupling == "pairs":
        if paired_noise is None:
            raise ValueError("coupling 'pairs' needs a data set with a noise column (written by difflab reflow)")
        noise = paired_noise.to(x0)
    else:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if config.coupling == "ot":
            noise = noise[ot_pairing(x0, noise)]
    null = config.num_classes if config.num_classes is not None else -1
    return sigma, noise, drop_labels(y, config.cond_drop, null, generator)


def draw_observation_mask(x0: torch.Tensor, generator=None) -> torch.Tensor:
    """Random observation masks (1 = observed) for training an imputation model on signals
    (B, C, L), shared by the channels of a signal (CSDI's random and history strategies, Tashiro et
    al. 2021, sec. 4.1): with probability 1/2 a known past, the first k steps with k uniform in
    {1, ..., L - 1} (forecasting); otherwise each step observed with probability r ~ U(0.1, 0.9)
    (imputation). At least one step of each signal is missing."""
    b, _, length = x0.shape
    dev = x0.device
    past = torch.arange(length, device=dev)[None] < torch.randint(1, length, (b, 1), generator=generator, device=dev)
    rate = 0.1 + 0.8 * torch.rand(b, 1, generator=generator, device=dev)
    scattered = torch.rand(b, length, generator=generator, device=dev) < rate
    scattered[torch.arange(b, device=dev), torch.randint(0, length, (b,), generator=generator, device=dev)] = False
    forecast = torch.rand(b, 1, generator=generator, device=dev) < 0.5
    return torch.where(forecast, past, scattered)[:, None].expand_as(x0).to(x0.dtype)


def network_target(denoiser: NetworkDenoiser, x0, x, sigma, alpha, noise=None):
    """What F should output at (x, sigma) for clean data x0 (and the noise, when known):
    ``prediction_from_x0``, or for EDM preconditioning (x0 - c_skip x) / c_out (Karras et al.
    2022, eq. 8)."""
    s = append_dims(sigma, x0.ndim)
    if denoiser.prediction == "edm":
        c_skip, c_out, _ = edm_coefficients(s, denoiser.sigma_data)
        return (x0 - c_skip * x) / c_out
    return prediction_from_x0(denoiser.prediction, x0, x, s, append_dims(alpha, x0.ndim), eps=noise)


def denoising_loss(denoiser: NetworkDenoiser, x0, sigma, noise, y, config, extra_cond: dict | None = None,
                   loss_mask: torch.Tensor | None = None):
    """Weighted denoising loss for given sigma and noise: (mean, per-sample losses (B,)).

    x = x0 + sigma n (n itself at sigma = inf, for a flow); per-sample loss = w(sigma) mean_i
    (F_i - target_i)^2 with w from :func:`loss_weight`. ``y`` None trains unconditionally;
    ``extra_cond``: more keyword inputs of the network (the guidance scale ``w`` of a guided student,
    the observations of an imputation model). ``loss_mask`` (like x0, 1 = counted): the mean runs
    over those coordinates only (the missing values of an imputation model).
    """
    s = append_dims(sigma, x0.ndim).to(x0.dtype)
    x = torch.where(torch.isinf(s), noise, x0 + s * noise)  # at sigma = inf the state is the noise
    x_in, c_noise, alpha = denoiser.network_inputs(x, sigma)
    cond = {**({} if y is None else {"y": y}), **(extra_cond or {})}
    out = denoiser.net(x_in, c_noise.to(x0.dtype), **cond).float()
    v = None
    if out.ndim == x0.ndim and out.shape[1] == 2 * x0.shape[1]:  # learn_sigma: [prediction, variance]
        out, v = out.chunk(2, dim=1)
    target = network_target(denoiser, x0, x, sigma, alpha, noise).to(out.dtype)
    w = loss_weight(config.weighting, denoiser.prediction, sigma, alpha, gamma=config.min_snr_gamma,
                    sigma_data=denoiser.sigma_data).to(out.dtype)
    if loss_mask is None:
        per_sample = w * (out - target).square().flatten(1).mean(1)
    else:
        lm = loss_mask.to(out.dtype).flatten(1)
        per_sample = w * ((out - target).square().flatten(1) * lm).sum(1) / lm.sum(1).clamp_min(1)
    if v is not None and getattr(config, "vlb_weight", 0.0) > 0:
        per_sample = per_sample + config.vlb_weight * hybrid_vlb_term(denoiser, x0, x, sigma, out, v)
    return per_sample.mean(), per_sample


def diffusion_loss(denoiser: NetworkDenoiser, x0, y, config, generator=None):
    """One Monte Carlo estimate of the training objective on the batch x0 (labels y or None):
    :func:`draw_noise` then :func:`denoising_loss`. Returns (loss scalar, per-sample losses)."""
    sigma, noise, y = draw_noise(denoiser.schedule, x0, y, config, generator)
    return denoising_loss(denoiser, x0, sigma, noise, y, config)

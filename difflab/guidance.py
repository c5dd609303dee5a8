"""Guidance: Denoiser -> Denoiser transforms that steer sampling toward a class y.

Everything is in the x0 convention of docs/design.md (``x = x0 + sigma n``), where Tweedie's formula
links a denoiser to the score of the noisy density, ``D(x, sigma) = x + sigma^2 grad_x log p(x; sigma)``
(Efron 2011; Karras et al. 2022, eq. 3). Both methods are shifts of the score, hence of ``D``:

- classifier-free guidance (Ho & Salimans 2022, eq. 6), with w = 1 + their w:
  ``D_w = D(x|null) + w (D(x|y) - D(x|null))`` -- :func:`cfg`;
- classifier guidance (Dhariwal & Nichol 2021, sec. 4.1, Algorithms 1 and 2):
  ``score + s grad log p(y|x)``, i.e. ``D_s = D + s sigma^2 grad_x log p(y | x, sigma)`` --
  :func:`classifier_guidance`.

A guided model is just another Denoiser ``D(x, sigma, y=...)``, so it works with every sampler:
``difflab.sample(guided, x, sigmas, cond={"y": y})``. :func:`guided_denoiser` builds one from a
model and the user's options. The derivations are in docs/guidance.md.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .denoisers import append_dims, edm_coefficients
from .nets.text import empty_caption
from .schedules import Schedule

__all__ = ["cfg", "dynamic_threshold", "classifier_guidance", "ClassLogProb", "classifier_inputs",
           "noisy_classifier_log_prob", "exact_log_prob", "check_classes", "check_labels",
           "guided_denoiser"]


# ---------------------------------------------------------------------------------------------
# Labels and class counts


def check_labels(y, num_classes: int, batch_size: int | None = None, device=None) -> torch.Tensor:
    """``y`` (an int, a sequence or a tensor) as int64 class ids, expanded to ``(batch_size,)`` when
    given; ValueError unless every id lies in [0, num_classes)."""
    if y is None:
        raise ValueError("class labels y are missing (pass cond={'y': ...} to the sampler)")
    y = torch.as_tensor(y, device=device).long().reshape(-1)
    if batch_size is not None and y.numel() == 1:
        y = y.expand(batch_size)
    if batch_size is not None and y.shape != (batch_size,):
        raise ValueError(f"y must be one class id or {batch_size} of them, got {y.numel()}")
    bad = y[(y < 0) | (y >= num_classes)]
    if len(bad):
        raise ValueError(f"class id {int(bad[0])} is out of range: there are {num_classes} classes, "
                         f"0..{num_classes - 1}")
    return y


def check_classes(n_model: int | None, n_classifier: int) -> None:
    """ValueError unless a guidance classifier has the model's number of classes."""
    if n_model is not None and n_model != n_classifier:
        raise ValueError(f"the classifier has {n_classifier} classes but the model has {n_model}; "
                         "train the classifier on the model's data set")


def _sigma_vector(sigma, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(sigma, device=x.device).reshape(-1).expand(x.shape[0])


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance


def dynamic_threshold(x0: torch.Tensor, p: float) -> torch.Tensor:
    """Dynamic thresholding of an x0 estimate (Saharia et al. 2022, sec. 2.3).

    Per sample, s = max(1, the p-quantile of |x0|); x0 is clipped to [-s, s] and divided by s, so
    saturated pixels are pushed inward instead of sticking at +-1. Meant for pixel data in [-1, 1].
    """
    flat = x0.reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs().float(), p, dim=1).clamp_min(1.0).to(x0.dtype)
    s = append_dims(s, x0.ndim)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def cfg(denoiser, scale: float, *, num_classes: int | None = None, null_label: int | None = None,
        interval: tuple[float, float] | None = None, threshold: float | None = None):
    """Classifier-free guidance as a Denoiser ``D_w(x, sigma, y)`` (Ho & Salimans 2022, eq. 6);
    ``scale`` is one w or a (B,) tensor of them, one per sample. The condition is class ids ``y``
    (the null label is ``num_classes``) and/or caption tokens ``text`` (the null is the empty
    caption, :func:`difflab.nets.text.empty_caption`).

    ``D_w = D(x|null) + w (D(x|y) - D(x|null))``: w = 1 is plain conditional, w = 0 unconditional
    (Ho & Salimans' w is our w - 1; since x0 = x - sigma eps is affine in eps, their eq. 6 on eps is
    this equation on x0). Both terms come from ONE call of ``denoiser`` on the batch ``[x; x]``,
    ``[sigma; sigma]``, ``[y; null]``.

    interval: ``(sigma_lo, sigma_hi)``: guide only where sigma_lo < sigma <= sigma_hi and use the
        conditional D elsewhere, evaluated without the unconditional half (Kynkäänniemi et al. 2024,
        sec. 3). With w = 1 there is nothing to guide and D(x|y) is called alone.
    threshold: the percentile p of :func:`dynamic_threshold` applied to the guided x0 (Saharia et al.
        2022, sec. 2.3), for pixel-space models whose data lie in [-1, 1].
    null_label: the label of the unconditional model, default ``num_classes`` (difflab.nets).
    """
    null_label = num_classes if null_label is None else null_label
    if not bool(torch.isfinite(torch.as_tensor(scale)).all()):
        raise ValueError(f"the guidance scale must be a finite number, got {scale}")
    if interval is not None and not 0 <= interval[0] < interval[1]:
        raise ValueError(f"the guidance interval needs 0 <= sigma_lo < sigma_hi, got {tuple(interval)}")
    if threshold is not None and not 0 < threshold <= 1:
        raise ValueError(f"the dynamic-thresholding percentile must lie in (0, 1], got {threshold}")

    def guided(x, sigma, y=None, text=None):
        sigma = _sigma_vector(sigma, x)
        if y is None and text is None:
            raise ValueError("class labels y are missing (and no caption tokens text): classifier-free guidance "
                             "needs a condition")
        if y is not None:
            if num_classes is None:
                raise ValueError("classifier-free guidance on class labels needs num_classes")
            y = check_labels(y, num_classes, x.shape[0], x.device)
        w = torch.as_tensor(scale, device=x.device, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        guide = w != 1
        if interval is not None:
            guide &= (sigma > interval[0]) & (sigma <= interval[1])
        idx = guide.nonzero().squeeze(1)
        # One call: every sample conditionally, and again with the null condition where it is guided.
        cond = {}
        if y is not None:
            cond["y"] = torch.cat([y, torch.full_like(y[idx], null_label)])
        if text is not None:
            text = torch.as_tensor(text, device=x.device)
            cond["text"] = torch.cat([text, empty_caption(text[idx])])
        out = denoiser(torch.cat([x, x[idx]]), torch.cat([sigma, sigma[idx]]), **cond)
        x0, uncond = out[:x.shape[0]], out[x.shape[0]:]
        w_idx = append_dims(w[idx], x.ndim).to(x0.dtype)
        x0 = x0.index_copy(0, idx, uncond + w_idx * (x0[idx] - uncond))
        return x0 if threshold is None else dynamic_threshold(x0, threshold)

    return guided


# ---------------------------------------------------------------------------------------------
# Classifier guidance


@dataclass(frozen=True)
class ClassLogProb:
    """A class log-likelihood ``log p(y | x, sigma)``: called as ``(x, sigma, y) -> (B,)``, with the
    class ids checked against ``num_classes`` first."""

    fn: Callable
    num_classes: int

    def __call__(self, x, sigma, y):
        return self.fn(x, _sigma_vector(sigma, x), check_labels(y, self.num_classes, x.shape[0], x.device))


def _grad_log_prob(log_prob_fn, x, sigma, y) -> torch.Tensor:
    """grad_x sum_i log p(y_i | x_i, sigma_i), by autograd even when the caller runs under no_grad
    or inference_mode (inputs are cloned: inference tensors cannot be saved for backward)."""
    with torch.inference_mode(False), torch.enable_grad():
        x_in = x.detach().clone().requires_grad_(True)
        log_p = log_prob_fn(x_in, sigma.clone(), y.clone())
        (grad,) = torch.autograd.grad(log_p.sum(), x_in)
    return grad


def classifier_guidance(denoiser, log_prob_fn, scale: float, *, conditional_model: bool = False):
    """Classifier guidance as a Denoiser ``D_s(x, sigma, y)`` (Dhariwal & Nichol 2021, Algorithms 1-2).

    Their score shift ``grad log p(x) + s grad log p(y|x)`` becomes, by Tweedie's formula
    D = x + sigma^2 grad log p(x; sigma),

        D_s(x, sigma, y) = D(x, sigma) + s sigma^2 grad_x log p(y | x, sigma),

    and at s = 1 with the exact p(y|x, sigma) it is exactly the class-conditional denoiser (Bayes:
    grad log p(x|y) = grad log p(x) + grad log p(y|x)). ``log_prob_fn(x, sigma, y) -> (B,)``, e.g.
    :func:`noisy_classifier_log_prob` or :func:`exact_log_prob`. ``conditional_model``: pass y to
    ``denoiser`` too (a class-conditional or CFG-guided model); else it is called as D(x, sigma).
    Other keyword conditions (caption tokens) go to ``denoiser`` as they are.
    """
    if not math.isfinite(scale):
        raise ValueError(f"the classifier guidance scale must be a finite number, got {scale}")

    def guided(x, sigma, y=None, **cond):
        sigma = _sigma_vector(sigma, x)
        if y is None:
            raise ValueError("classifier guidance needs class labels y (pass cond={'y': ...} to the sampler)")
        y = torch.as_tensor(y, device=x.device).long().reshape(-1).expand(x.shape[0])
        x0 = denoiser(x, sigma, y=y, **cond) if conditional_model else denoiser(x, sigma, **cond)
        if bool(torch.isinf(sigma).any()):  # pure noise (a flow's first step) says nothing of y: unguided
            return x0
        grad = _grad_log_prob(log_prob_fn, x, sigma, y)
        return x0 + scale * append_dims(sigma.to(x.dtype), x.ndim) ** 2 * grad.to(x0.dtype)

    return guided


def classifier_inputs(x, sigma, schedule: Schedule | None = None, sigma_data: float = 0.5):
    """``(x_in, c_noise)`` that a noise-aware classifier sees for ``x = x0 + sigma n``.

    schedule None: EDM preconditioning (Karras et al. 2022, Table 1), x_in = x / sqrt(sigma^2 +
    sigma_data^2) and c_noise = log(sigma)/4 -- the convention of :mod:`difflab.training.classifier`.
    A :class:`~difflab.schedules.Schedule`: x_in = alpha(sigma) x and c_noise = schedule.c_noise(sigma),
    the inputs of a network trained on that schedule (e.g. ADM's classifiers on DDPM timesteps).
    """
    sigma = sigma.to(torch.float64)
    if schedule is None:
        _, _, scale = edm_coefficients(sigma, sigma_data)
        c_noise = 0.25 * sigma.log()
    else:
        scale, c_noise = schedule.alpha_of_ve_sigma(sigma), schedule.c_noise(sigma)
    return x * append_dims(scale, x.ndim).to(x.dtype), c_noise.to(x.dtype)


def noisy_classifier_log_prob(classifier, schedule: Schedule | None = None, *,
                              sigma_data: float = 0.5) -> ClassLogProb:
    """log p(y | x, sigma) = log_softmax(classifier(x_in, c_noise))[y] of a
    :class:`~difflab.nets.NoisyClassifier` (Dhariwal & Nichol 2021, sec. 4), with the inputs of
    :func:`classifier_inputs` for ``schedule`` / ``sigma_data``."""

    def log_prob(x, sigma, y):
        x_in, c_noise = classifier_inputs(x, sigma, schedule, sigma_data)
        logits = classifier(x_in, c_noise).float()
        return logits.log_softmax(1).gather(1, y[:, None]).squeeze(1)

    return ClassLogProb(log_prob, classifier.config.num_classes)


def exact_log_prob(gmm) -> ClassLogProb:
    """The exact class posterior of a :class:`~difflab.exact.GaussianMixture` whose components are
    the classes, by Bayes' rule: log p(y | x; sigma) = log w_y + log p_y(x; sigma) - log p(x; sigma),
    with p_y the y-th component alone (computed in log space, so far-away x give no underflow)."""
    components = [type(gmm)(gmm.means[k:k + 1], gmm.stds[k:k + 1], dtype=gmm.dtype)
                  for k in range(gmm.num_components)]

    def log_prob(x, sigma, y):
        log_p_k = torch.stack([c.log_prob(x, sigma) for c in components], 1)  # (B, K)
        log_joint = gmm.log_weights[y] + log_p_k.gather(1, y[:, None].to(log_p_k.device)).squeeze(1)
        return log_joint - gmm.log_prob(x, sigma)

    return ClassLogProb(log_prob, gmm.num_components)


# ---------------------------------------------------------------------------------------------
# One entry point for callers (TrainedModel.sample, the CLI)


def guided_denoiser(model_denoiser, *, y, num_classes: int | None, guidance: float | None = None,
                    interval: tuple[float, float] | None = None, threshold: float | None = None,
                    classifier: ClassLogProb | None = None, classifier_scale: float = 1.0, text=None):
    """``(denoiser, cond)`` to pass to :func:`difflab.sample` for class(es) ``y`` and/or caption
    tokens ``text``.

    num_classes: the model's classes (None: an unconditional model, which only a classifier can guide).
    guidance: the classifier-free guidance scale w of :func:`cfg` (None: no CFG; the model is called
        with y and text); ``interval`` and ``threshold`` are cfg's.
    classifier: a :class:`ClassLogProb` (:func:`difflab.training.load_classifier`'s second
        value, or :func:`exact_log_prob`) applied on top with ``classifier_scale``; its class count
        must match the model's.
    ``cond`` holds ``y`` and ``text`` (None for an unguided unconditional model); a caller that
    samples in batches slices its tensors with the batch.
    """
    if num_classes is None and text is None and guidance is not None:
        raise ValueError("classifier-free guidance needs a class-conditional model (or a text-conditional one); "
                         "this one is unconditional")
    if classifier is not None:
        check_classes(num_classes, classifier.num_classes)
    n = num_classes if num_classes is not None else (classifier.num_classes if classifier else None)
    if n is None and y is not None:
        raise ValueError("this model has no classes; class labels need a guidance classifier")
    cond = {}
    if n is not None:
        cond["y"] = check_labels(y, n)
    if text is not None:
        cond["text"] = text
    if not cond:
        return model_denoiser, None
    denoiser = model_denoiser
    if guidance is not None:
        denoiser = cfg(model_denoiser, guidance, num_classes=num_classes, interval=interval, threshold=threshold)
    elif interval is not None or threshold is not None:
        raise ValueError("a guidance interval or threshold needs a classifier-free guidance scale")
    if classifier is not None:
        denoiser = classifier_guidance(denoiser, classifier, classifier_scale,
                                       conditional_model=num_classes is not None)
    return denoiser, cond

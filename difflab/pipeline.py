"""Load a trained model directory and sample it: ``difflab.load(dir).sample(n, ...)``.

:func:`load` reads a model directory (or a training output folder holding ``model/``) written by
:mod:`difflab.training` and returns a :class:`TrainedModel`: the network wrapped as a Denoiser of
docs/design.md, its config, and :meth:`TrainedModel.sample`, which adds class labels, classifier-free
and classifier guidance (:func:`difflab.guidance.guided_denoiser`) and batching around
:func:`difflab.samplers.generate`.
"""
from __future__ import annotations

import torch
from torch import nn

from .denoisers import NetworkDenoiser
from .guidance import check_labels, guided_denoiser
from .samplers import SAMPLERS, generate
from .schedules import karras_sigmas, make_schedule
from .training.checkpoint import CheckpointError, build_model
from .training.config import TrainConfig

__all__ = ["TrainedModel", "load", "CheckpointError"]


def load(path, device="cpu") -> TrainedModel:
    """Load a model directory (or a training output folder holding ``model/``) for sampling, with
    its EMA weights when it has them. Raises :class:`CheckpointError` (a ValueError) for a missing,
    incomplete or corrupt directory."""
    net, config, info = build_model(path, device)
    return TrainedModel(net, config, info["data_shape"], info["class_names"], info["data_kind"], info["step"])


class TrainedModel:
    """A trained network with its config: ``.denoiser`` (eval mode, EMA weights when saved),
    ``.net``, ``.config``, ``.data_shape``, ``.num_classes``, ``.class_names`` and :meth:`sample`."""

    def __init__(self, net: nn.Module, config: TrainConfig, data_shape, class_names=None,
                 data_kind: str | None = None, step: int | None = None):
        self.net, self.config = net.eval(), config
        self.data_shape = tuple(int(s) for s in data_shape)
        self.class_names = None if class_names is None else tuple(class_names)
        self.data_kind = data_kind or ("image" if len(self.data_shape) == 3 else "points")
        self.step = step
        self.schedule = make_schedule(config.schedule)
        self.denoiser = NetworkDenoiser(net, self.schedule, config.prediction, config.sigma_data).eval()

    @property
    def num_classes(self) -> int | None:
        return self.config.num_classes

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def __repr__(self) -> str:
        return (f"TrainedModel({self.config.preset!r}, data_shape={self.data_shape}, "
                f"num_classes={self.num_classes}, step={self.step})")

    def labels(self, y, n: int, classifier=None) -> torch.Tensor | None:
        """Class ids (n,) for ``y`` (int, sequence or tensor; default 0, 1, ..., K-1, 0, ...
        cycling) over the model's classes, or a guidance classifier's for an unconditional model;
        None when there are no classes."""
        num_classes = self.num_classes or (classifier.num_classes if classifier is not None else None)
        if num_classes is None:
            if y is not None:
                raise CheckpointError("this model is unconditional; class labels y need a guidance classifier")
            return None
        if y is None:
            return torch.arange(n) % num_classes
        try:
            return check_labels(y, num_classes, n)
        except ValueError as e:
            raise CheckpointError(str(e)) from e

    def sample(self, n: int, *, sampler: str = "dpmpp_2m", steps: int = 20, seed: int | None = None,
               y=None, guidance: float | None = None, classifier=None, classifier_scale: float = 1.0,
               batch_size: int | None = None, progress: bool = False, sigma_min: float | None = None,
               sigma_max: float | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """n samples (on the CPU) in the data's shape; images are clamped to [-1, 1].

        Starts from x = sigma_max z and integrates along Karras et al. (2022, eq. 5) sigmas between
        the schedule's sigma range (or ``sigma_min``/``sigma_max``) with ``sampler``. ``noise``: the
        standard normal z, shape (n, *data_shape), to start from (to compare two models point by
        point); without it ``seed`` decides z. ``y``: class ids (default: 0, 1, ..., K-1, 0, ...
        cycling); ``guidance``: the classifier-free guidance scale w of :func:`difflab.guidance.cfg`,
        D = D(x|null) + w (D(x|y) - D(x|null)) from one batched call (Ho & Salimans 2022; 1: plain
        conditional, 0: unconditional). ``classifier``: a :class:`~difflab.guidance.ClassLogProb`
        (e.g. :func:`difflab.training.load_classifier`'s second value) adding classifier guidance
        with ``classifier_scale`` (Dhariwal & Nichol 2021), also to unconditional models. Both go
        through :func:`difflab.guidance.guided_denoiser`. Draws happen in batches of
        ``batch_size``; the result is a function of (n, seed or noise, batch_size, sampler, steps,
        y, guidance, classifier, classifier_scale).
        """
        if n < 1 or steps < 1:
            raise CheckpointError(f"need n >= 1 and steps >= 1, got n={n}, steps={steps}")
        if sampler not in SAMPLERS:
            raise CheckpointError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
        if noise is not None and tuple(noise.shape) != (n, *self.data_shape):
            raise CheckpointError(f"noise must have shape {(n, *self.data_shape)} (n, *data_shape), "
                                  f"got {tuple(noise.shape)}")
        labels = self.labels(y, n, classifier)
        try:
            denoiser, cond = guided_denoiser(self.denoiser, y=labels, num_classes=self.num_classes,
                                             guidance=guidance, classifier=classifier,
                                             classifier_scale=classifier_scale)
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        lo = self.schedule.sigma_min if sigma_min is None else sigma_min
        hi = self.schedule.sigma_max if sigma_max is None else sigma_max
        if not 0 < lo < hi:
            raise CheckpointError(f"need 0 < sigma_min < sigma_max, got {lo} and {hi}")
        device = self.device
        gen = torch.Generator(device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        x = generate(denoiser, self.data_shape, n, karras_sigmas(steps, lo, hi).to(device), sampler,
                     noise=noise, generator=gen, cond=cond, batch_size=batch_size, progress=progress)
        return x.clamp(-1, 1) if self.data_kind == "image" else x

"""Conditional denoisers for image restoration: SR3 and Palette (Saharia et al. 2022).

A model trained with ``TrainConfig.task`` one of :data:`IMAGE_TASKS` learns the law of a clean image
x0 given a degraded version y = H(x0) (docs/conditional.md). Its network sees the degraded image as
extra input channels, ``condition`` (a UNet with ``cond_channels``), so its denoiser is
D(x, sigma | y) ~ E[x0 | x0 + sigma n = x, y], trained by the ordinary denoising loss
(SR3, Saharia et al. 2022a, eq. 4; Palette, Saharia et al. 2022b, eq. 1):

- ``super-resolution``: y = A_f(x0), the mean of each f x f block (area down-sampling by the
  factor f = ``sr_factor``); the network sees U_f(y), y up-sampled bicubically back to full size
  (SR3, sec. 2.3: "we upsample the low-resolution image to the target resolution using bicubic
  interpolation"). Conditioning augmentation for cascades (Ho et al. 2022, sec. 3.2, the
  fixed-level variant): y + s z, z ~ N(0, I), with s = ``cond_aug`` in training and the chosen
  ``aug_level`` in sampling.
- ``colorization``: y = the channel mean of x0 repeated to the C channels.
- ``inpainting`` and ``uncropping``: known pixels x0 where a mask m is 1; the network sees
  [m x0, m] (2C channels, as the imputation task, :func:`difflab.editing.observation_condition`).
  Inpainting draws a random rectangle of missing pixels (Palette sec. 4: box masks); uncropping
  removes a border of width H/4. The loss counts the missing pixels, and sampling keeps the known
  ones (:func:`task_denoiser`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..editing.inpaint import observation_condition
from ..samplers import generate

__all__ = ["IMAGE_TASKS", "task_cond_channels", "degrade", "task_condition", "draw_task_batch",
           "task_denoiser", "uncrop_mask", "restore"]

IMAGE_TASKS = ("super-resolution", "colorization", "inpainting", "uncropping")


class TaskError(ValueError):
    """A degraded input that does not fit the model's task."""


def task_cond_channels(task: str, channels: int) -> int:
    """The UNet's ``cond_channels`` for ``task`` on images of ``channels`` channels."""
    return 2 * channels if task in ("inpainting", "uncropping") else channels


def upsample(y: torch.Tensor, factor: int) -> torch.Tensor:
    """U_f: bicubic up-sampling by ``factor`` (SR3's conditioning, Saharia et al. 2022a, sec. 2.3)."""
    return F.interpolate(y, scale_factor=factor, mode="bicubic", align_corners=False)


def uncrop_mask(shape, device=None) -> torch.Tensor:
    """The uncropping mask (1 = known) of images (B, C, H, W): the centre, without a border of H // 4."""
    b, c, h, w = shape
    bh, bw = max(h // 4, 1), max(w // 4, 1)
    m = torch.zeros(shape, device=device)
    m[..., bh:h - bh, bw:w - bw] = 1
    return m


def _box_masks(x0: torch.Tensor, generator=None) -> torch.Tensor:
    """Random inpainting masks (1 = known): one missing rectangle per image, each side uniform in
    [H/4, 3H/4] pixels at a uniform position (Palette's box masks, Saharia et al. 2022b, sec. 4)."""
    b, c, h, w = x0.shape
    dev = x0.device
    sizes = [torch.randint(max(n // 4, 1), max(3 * n // 4, 1) + 1, (b,), generator=generator, device=dev)
             for n in (h, w)]
    starts = [(torch.rand(b, generator=generator, device=dev) * (n - s + 1)).long() for n, s in zip((h, w), sizes)]
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_r = (rows[None] >= starts[0][:, None]) & (rows[None] < (starts[0] + sizes[0])[:, None])
    in_c = (cols[None] >= starts[1][:, None]) & (cols[None] < (starts[1] + sizes[1])[:, None])
    missing = in_r[:, :, None] & in_c[:, None, :]
    return (~missing)[:, None].expand_as(x0).to(x0.dtype)


def degrade(task: str, x0: torch.Tensor, *, factor: int = 2, generator=None):
    """(y, mask): the degraded observation of clean images x0 (B, C, H, W) as a user passes it to
    ``TrainedModel.sample(condition=y)``: the (H/f, W/f) block means for super-resolution, the gray
    image for colorization, the masked image (mask 1 = known, else None) for inpainting and
    uncropping."""
    if task == "super-resolution":
        return F.avg_pool2d(x0, factor), None
    if task == "colorization":
        return x0.mean(1, keepdim=True).expand_as(x0), None
    mask = _box_masks(x0, generator) if task == "inpainting" else uncrop_mask(x0.shape, x0.device).to(x0.dtype)
    return x0 * mask, mask


def task_condition(task: str, y: torch.Tensor, shape, *, factor: int = 2, mask=None,
                   aug_level: float = 0.0, generator=None) -> torch.Tensor:
    """The conditioning channels (B, cond_channels, H, W) of images of ``shape`` (B, C, H, W) from
    the degraded input ``y`` (see :func:`degrade`); a TaskError (one sentence) when ``y`` or
    ``mask`` does not fit. ``aug_level`` s > 0 noises a super-resolution input, y + s z
    (conditioning augmentation, Ho et al. 2022, sec. 3.2); at s = 0 nothing is drawn."""
    b, c, h, w = shape
    if task == "super-resolution":
        expected = (b, c, h // factor, w // factor)
        if tuple(y.shape) != expected:
            raise TaskError(f"a super-resolution model of {(c, h, w)} images takes low-resolution inputs of shape "
                            f"{expected[1:]} (N, C, H/{factor}, W/{factor}), got {tuple(y.shape[1:])}")
        if aug_level > 0:
            y = y + aug_level * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return upsample(y, factor)
    if tuple(y.shape[2:]) != (h, w) or y.shape[0] != b or y.shape[1] not in (1, c):
        raise TaskError(f"a {task} model takes degraded images of shape ({c} or 1, {h}, {w}), "
                        f"got {tuple(y.shape[1:])}")
    if task == "colorization":
        return y.mean(1, keepdim=True).expand(b, c, h, w)
    if task == "uncropping":
        mask = uncrop_mask(shape, y.device)
    elif mask is None:
        raise TaskError("an inpainting model needs the mask of known pixels (1 = known) beside the image")
    mask = torch.as_tensor(mask, device=y.device, dtype=y.dtype)
    try:
        mask = mask.expand(b, c, h, w)
    except RuntimeError:
        raise TaskError(f"the mask of shape {tuple(mask.shape)} does not broadcast to the images "
                        f"{(b, c, h, w)}") from None
    if not ((mask == 0) | (mask == 1)).all():
        raise TaskError("the mask must hold only 0 (missing) and 1 (known)")
    return observation_condition(y.expand(b, c, h, w), mask)


def draw_task_batch(task: str, x0: torch.Tensor, *, factor: int = 2, cond_aug: float = 0.0,
                    generator=None) -> dict:
    """The extra training inputs of a conditional denoiser: ``condition`` for the network and, for
    inpainting and uncropping, ``loss_mask`` (the missing pixels, the only ones counted)."""
    y, mask = degrade(task, x0, factor=factor, generator=generator)
    condition = task_condition(task, y, x0.shape, factor=factor, mask=mask, aug_level=cond_aug, generator=generator)
    return {"condition": condition} if mask is None else {"condition": condition, "loss_mask": 1 - mask}


def task_denoiser(denoiser, task: str):
    """The sampling denoiser of a conditional model, called with ``condition=``: for inpainting and
    uncropping the known pixels are kept, D' = m y + (1 - m) D(x, sigma | y) (as
    :func:`difflab.editing.observed_denoiser`), reading y and m from the condition itself so that
    batched sampling slices them with the rows; the other tasks use D unchanged."""
    if task not in ("inpainting", "uncropping"):
        return denoiser

    def d(x, sigma, *, condition, **cond):
        c = x.shape[1]
        known, keep = condition[:, :c].to(x.dtype), condition[:, c:] > 0
        return torch.where(keep, known, denoiser(x, sigma, condition=condition, **cond))

    return d


def restore(denoiser, task: str, degraded: torch.Tensor, sigmas, *, shape=None, factor: int = 2, mask=None,
            aug_level: float = 0.0, sampler: str = "dpmpp_2m", generator=None, **options) -> torch.Tensor:
    """Samples of a conditional denoiser given one degraded image per row: x ~ p(x0 | y) by
    ``sampler`` on ``sigmas`` with D(x, sigma | y) (:func:`task_condition`, :func:`task_denoiser`).
    ``shape``: the (C, H, W) of the clean images (default: that of ``degraded``, times ``factor``
    in H and W for super-resolution). Returns (B, C, H, W) on the CPU (:func:`difflab.samplers.generate`)."""
    if shape is None:
        f = factor if task == "super-resolution" else 1
        shape = (degraded.shape[1], degraded.shape[2] * f, degraded.shape[3] * f)
    n = degraded.shape[0]
    condition = task_condition(task, degraded, (n, *shape), factor=factor, mask=mask, aug_level=aug_level,
                               generator=generator)
    return generate(task_denoiser(denoiser, task), shape, n, sigmas, sampler, generator=generator,
                    cond={"condition": condition}, **options)

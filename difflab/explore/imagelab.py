"""The image lab: the reverse process step by step, the same noise through several samplers, inpainting
a drawn mask and SDEdit of a painted image, each one call of the library on a trained image model
(:func:`difflab.load`'s :class:`~difflab.pipeline.TrainedModel`).

Images are (B, C, H, W) float tensors in [-1, 1] on the CPU. A latent model's frames are decoded to
pixels; the editors work on pixel models only.
"""
from __future__ import annotations

import time

import torch

from ..editing import inpaint, sdedit
from ..samplers import STOCHASTIC, denoiser_calls

__all__ = ["IMAGE_SCHEDULES", "EDIT_METHODS", "check_image_model", "labels", "reverse_process", "compare_samplers",
           "source_image", "inpaint_images", "sdedit_images"]

IMAGE_SCHEDULES = ("auto", "karras", "logsnr", "uniform")
EDIT_METHODS = ("repaint", "replace")


def check_image_model(model, editing: bool = False) -> None:
    """ValueError unless ``model`` makes images the lab can show (and, for ``editing``, edit in pixels)."""
    if model.data_kind != "image":
        raise ValueError(f"the image lab needs an image model; this one makes {model.data_kind} data")
    if model.tokenizer is not None:
        raise ValueError("this model is text-conditional; the image lab does not take prompts yet "
                         "(use 'difflab sample --prompt')")
    if editing and model.autoencoder is not None:
        raise ValueError("this latent model denoises latents; the lab's editors draw masks on pixels "
                         "(use 'difflab edit' for latent models)")


def labels(model, label: int | None, n: int):
    """The class ids of n images: ``label`` for all, or (None) the model's cycling default; None for an
    unconditional model, which takes no label."""
    if model.num_classes is None:
        if label is not None:
            raise ValueError("this model is unconditional; it takes no class label")
        return None
    return model.labels(label, n)


def _decoded(model, x: torch.Tensor) -> torch.Tensor:
    return (model.decode(x) if model.autoencoder is not None else x).float().cpu()


def reverse_process(model, *, sampler: str, steps: int, schedule: str = "auto", n: int = 4, seed: int = 0,
                    label: int | None = None, guidance: float | None = None) -> dict:
    """:meth:`TrainedModel.sample` with a callback that keeps, at each step i, the state x_i at
    sigma_i and the denoiser's estimate D(x_i; sigma_i) (E[x0 | x_i], Tweedie's formula; Karras et
    al. 2022, eq. 3): ``x`` and ``denoised`` (steps, n, C, H, W), ``sigmas`` (the sigma each step
    started from), and the ``output`` (n, C, H, W), exactly ``model.sample``'s."""
    check_image_model(model)
    xs, ds, sigmas = [], [], []

    def keep(info):
        xs.append(info["x"].float().cpu().clone())
        ds.append(info["denoised"].float().cpu().clone())
        sigmas.append(float(info["sigma"]))

    out = model.sample(n, sampler=sampler, steps=steps, seed=seed, y=labels(model, label, n), guidance=guidance,
                       schedule=schedule, callback=keep)
    if model.autoencoder is not None:
        xs, ds = [_decoded(model, x) for x in xs], [_decoded(model, d) for d in ds]
    return {"sigmas": sigmas, "x": torch.stack(xs), "denoised": torch.stack(ds), "output": out,
            "nfe": denoiser_calls(sampler, model.sigmas(steps, schedule, sampler=sampler))}


def compare_samplers(model, *, samplers, steps: int, schedule: str = "auto", n: int = 4, seed: int = 0,
                     label: int | None = None, guidance: float | None = None) -> dict:
    """The same standard normal noise z (n, *data_shape), drawn from a generator seeded with ``seed``,
    through each sampler: ``model.sample(n, sampler=s, steps=steps, noise=z, seed=seed, ...)``.
    Returns ``{"samplers": [{"sampler", "nfe", "seconds", "images"}, ...]}``; the deterministic
    ones follow one ODE (Song et al. 2021, sec. 4.3), so their images agree as steps grow."""
    check_image_model(model)
    z = torch.randn((n, *model.data_shape), generator=torch.Generator().manual_seed(seed))
    y = labels(model, label, n)
    rows = []
    for s in samplers:
        start = time.perf_counter()
        images = model.sample(n, sampler=s, steps=steps, noise=z, seed=seed, y=y, guidance=guidance, schedule=schedule)
        rows.append({"sampler": s, "stochastic": s in STOCHASTIC, "seconds": time.perf_counter() - start,
                     "nfe": denoiser_calls(s, model.sigmas(steps, schedule, sampler=s)), "images": images})
    return {"samplers": rows}


def source_image(model, seed: int = 0, label: int | None = None) -> torch.Tensor:
    """The image the editors start from: ``model.sample(1, seed=seed)`` with the default sampler, (1, C, H, W)."""
    check_image_model(model, editing=True)
    return model.sample(1, seed=seed, y=labels(model, label, 1))


def _drawn(model, drawn) -> torch.Tensor:
    """The user's drawing as a boolean (1, 1, H, W) on the model's device; ValueError unless it is an
    H x W grid of 0 and 1."""
    h, w = model.image_shape[-2:]
    drawn = torch.as_tensor(drawn, dtype=torch.float32)
    if tuple(drawn.shape) != (h, w):
        raise ValueError(f"the mask must be {h} rows of {w} values (the image's size), got shape {tuple(drawn.shape)}")
    if not ((drawn == 0) | (drawn == 1)).all():
        raise ValueError("the mask must hold only 0 and 1")
    return drawn.bool()[None, None].to(model.device)


def inpaint_images(model, *, drawn, source_seed: int = 0, method: str = "repaint", sampler: str = "ddpm",
                   steps: int = 20, schedule: str = "auto", n: int = 4, seed: int = 0,
                   label: int | None = None) -> dict:
    """Fill in the drawn pixels of :func:`source_image` n times: :func:`difflab.editing.inpaint` with
    mask = 1 where nothing is drawn (RePaint, Lugmayr et al. 2022, Algorithm 1; or the replacement
    method, Song et al. 2021, App. I.2), on ``model.sigmas(steps, schedule, sampler=sampler)``, with a
    generator seeded with ``seed``. Returns the ``source`` and the ``images``."""
    source = source_image(model, source_seed, label)
    keep = ~_drawn(model, drawn)
    x_known = source.to(model.device).expand(n, *source.shape[1:])
    sigmas = model.sigmas(steps, schedule, sampler=sampler)
    gen = torch.Generator(model.device).manual_seed(seed)
    y = labels(model, label, n)
    cond = None if y is None else {"y": y.to(model.device)}
    with torch.inference_mode():
        out = inpaint(model.denoiser, x_known, keep, sigmas, method=method, generator=gen, sampler=sampler, cond=cond)
    return {"source": source, "images": out.clamp(-1, 1).cpu()}


def sdedit_images(model, *, drawn, strength: float = 0.5, source_seed: int = 0, sampler: str = "ddpm",
                  steps: int = 20, schedule: str = "auto", n: int = 4, seed: int = 0,
                  label: int | None = None) -> dict:
    """SDEdit (Meng et al. 2022, Algorithm 1) of the guide = :func:`source_image` with the drawn pixels
    painted white (+1): :func:`difflab.editing.sdedit` at ``strength`` t0, which noises the guide to
    sigma(t0) and solves back. Returns the ``guide`` and the ``images``."""
    source = source_image(model, source_seed, label)
    guide = torch.where(_drawn(model, drawn).cpu(), 1.0, source)
    sigmas = model.sigmas(steps, schedule, sampler=sampler)
    gen = torch.Generator(model.device).manual_seed(seed)
    y = labels(model, label, n)
    cond = None if y is None else {"y": y.to(model.device)}
    with torch.inference_mode():
        out = sdedit(model.denoiser, guide.to(model.device).expand(n, *guide.shape[1:]), sigmas, strength=strength,
                     sampler=sampler, generator=gen, cond=cond)
    return {"guide": guide, "images": out.clamp(-1, 1).cpu()}

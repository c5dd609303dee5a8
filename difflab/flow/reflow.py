"""Reflow (Liu et al. 2023, Algorithm 1): train the next rectified flow on the noise-sample pairs
of the current one.

Given a model whose ODE maps noise z to x0 = Phi(z), draw pairs (z, Phi(z)) and train a new model
on the linear path between exactly these pairs, x_t = (1 - t) Phi(z) + t z, starting from the old
weights. The new coupling is at least as good in every convex transport cost and its paths are
straighter (their Theorems 3.3 and 3.7); repeated, k-rectified flows approach straight lines, which
one Euler step integrates exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..io import atomic
from ..pipeline import TrainedModel, load
from ..training import train
from ..training.checkpoint import MODEL_DIR
from .paths import straightness

__all__ = ["draw_pairs", "reflow", "PAIRS_FILE", "REPORT_FILE"]

PAIRS_FILE = "pairs.npz"
REPORT_FILE = "reflow.json"
STRAIGHTNESS_NOISES = 256  # fresh noises on which straightness is reported
STRAIGHTNESS_STEPS = 64


def draw_pairs(model: TrainedModel, n: int, *, sampler: str = "dpmpp_2m", steps: int = 50, seed: int = 0,
               progress: bool = False) -> dict:
    """n pairs (z, x0 = the model's ODE from z), with the class ids of a class-conditional model
    (0, 1, ..., K-1 cycling): ``{"noise": z, "x": x0, "y": ids or None}``. ``sampler`` must be
    deterministic: the pairs are the ODE's coupling."""
    from ..samplers import STOCHASTIC

    if sampler in STOCHASTIC:
        raise ValueError(f"reflow pairs come from the probability-flow ODE; {sampler!r} is stochastic")
    if n < 1 or steps < 1:
        raise ValueError(f"need pairs >= 1 and steps >= 1, got {n} and {steps}")
    z = torch.randn((n, *model.data_shape), generator=torch.Generator().manual_seed(seed))
    y = model.labels(None, n)
    x0 = model.sample(n, sampler=sampler, steps=steps, noise=z, y=y, progress=progress)
    return {"noise": z, "x": x0, "y": y}


def _save_pairs(path: Path, pairs: dict) -> Path:
    arrays = {"x": pairs["x"].numpy(), "noise": pairs["noise"].numpy()}
    if pairs["y"] is not None:
        arrays["y"] = pairs["y"].numpy()
    return atomic.write_with(path, lambda f: np.savez(f, **arrays))


def reflow(teacher_dir, out_dir, *, pairs: int = 10_000, steps: int = 50, sampler: str = "dpmpp_2m",
           seed: int = 0, train_steps: int | None = None, resume: bool = False, progress: bool = True,
           device=None, **overrides) -> Path:
    """One reflow: pairs from the teacher's ODE (``pairs`` of them, ``steps`` steps of ``sampler``),
    then a student trained on them (the teacher's config with ``coupling="pairs"``, initialised from
    the teacher's weights, ``train_steps`` steps, default the teacher's; ``overrides`` are further
    TrainConfig fields). Writes ``out_dir/pairs.npz``, the model directory ``out_dir/model`` and
    ``out_dir/reflow.json`` (the straightness of teacher and student on the same fresh noises);
    returns the model directory. ``resume``: reuse the pairs and continue the training."""
    out_dir = Path(out_dir)
    teacher = load(teacher_dir, device)
    pairs_path = out_dir / PAIRS_FILE
    if resume and pairs_path.exists():
        pass
    elif (out_dir / MODEL_DIR).exists():
        raise ValueError(f"{out_dir} already holds a model; pass resume=True (--resume) or choose another folder")
    else:
        _save_pairs(pairs_path, draw_pairs(teacher, pairs, sampler=sampler, steps=steps, seed=seed,
                                           progress=progress))
    config = teacher.config.replace(
        preset=f"{teacher.config.preset}-reflow", data=str(pairs_path.resolve()), coupling="pairs",
        init=str(Path(teacher_dir).resolve()), **({"steps": train_steps} if train_steps else {}), **overrides)
    model_dir = train(config, out_dir, resume=resume, progress=progress, device=device)
    student = load(model_dir, device)
    z = torch.randn((STRAIGHTNESS_NOISES, *teacher.data_shape), generator=torch.Generator().manual_seed(seed + 1))
    report = {"teacher": str(teacher_dir), "pairs": pairs, "pair_steps": steps, "pair_sampler": sampler,
              "straightness_noises": STRAIGHTNESS_NOISES, "straightness_steps": STRAIGHTNESS_STEPS}
    for name, model in (("teacher", teacher), ("student", student)):
        noise = z.to(model.device)
        cond = None if model.num_classes is None else {"y": model.labels(None, len(noise)).to(model.device)}
        report[f"straightness_{name}"] = straightness(model.denoiser, noise, STRAIGHTNESS_STEPS, cond=cond)
    atomic.write_text(out_dir / REPORT_FILE, json.dumps(report, indent=2))
    return model_dir

"""The distillation procedures behind ``difflab distill progressive|consistency|guided``."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..pipeline import load
from ..samplers import default_sigmas
from ..schedules import EDM, consistency_sigmas
from ..training import train
from ..training.checkpoint import MODEL_DIR

__all__ = ["progressive", "consistency", "guided"]


def _train(config, out_dir: Path, progress: bool, device) -> Path:
    """Train, or continue (and return at once) a run already in ``out_dir``."""
    return train(config, out_dir, resume=(out_dir / MODEL_DIR).exists(), progress=progress, device=device)


def progressive(teacher_dir, out_dir, *, student_steps: int = 4, teacher_steps: int | None = None,
                train_steps: int | None = None, progress: bool = True, device=None, **overrides) -> Path:
    """Progressive distillation (Salimans & Ho 2022, Algorithm 2): halve the teacher's DDIM steps
    until ``student_steps``, each student initialised from the previous one and trained
    ``train_steps`` steps (default: the teacher's) with the learning rate annealed linearly to 0
    (their sec. 4). The base grid is the teacher's native sigmas when it is a student itself, else
    ``teacher_steps`` (default: ``student_steps`` times the smallest power of 2 reaching 64) of its
    default Euler/DDIM sigmas. Intermediate students go to ``out_dir/stages/steps-N``, the last
    one to ``out_dir``; a run already there is continued. Returns the model directory."""
    out_dir = Path(out_dir)
    teacher = load(teacher_dir, device)
    if teacher.config.native:
        grid = torch.tensor(teacher.config.native["sigmas"], dtype=torch.float64)
    else:
        n = teacher_steps or student_steps * 2 ** max(1, math.ceil(math.log2(64 / student_steps)))
        grid = default_sigmas(teacher.schedule, n, "euler").double()
    n = len(grid) - 1
    if student_steps < 1 or n <= student_steps or n % student_steps or (n // student_steps) & (n // student_steps - 1):
        raise ValueError(f"the teacher's {n} steps must be the student's {student_steps} times a power of 2 (>= 2)")
    fixed = dict(objective="progressive", lr_decay="linear", **overrides, **({"steps": train_steps} if train_steps else {}))
    current = Path(teacher_dir)
    while len(grid) - 1 > student_steps:
        k = (len(grid) - 1) // 2
        stage_dir = out_dir if k == student_steps else out_dir / "stages" / f"steps-{k}"
        config = teacher.config.replace(
            preset=f"{teacher.config.preset}-pd{k}", teacher=str(current.resolve()), init=str(current.resolve()),
            distill={"sigmas": grid.tolist()}, native={"sampler": "ddim", "sigmas": grid[::2].tolist()}, **fixed)
        current = _train(config, stage_dir, progress, device)
        grid = grid[::2]
    return current


def consistency(teacher_dir, out_dir, *, student_steps: int = 1, discretisation: int = 18,
                train_steps: int | None = None, target_ema: float = 0.95, progress: bool = True, device=None,
                **overrides) -> Path:
    """Consistency distillation (Song et al. 2023, Algorithm 2): a consistency model on the EDM
    noise range of the teacher (0.002 to 80 for flows and EDM models), the teacher's Heun step
    between ``discretisation`` Karras levels, the EMA with decay ``target_ema`` as the target
    network (and the weights sampled from), the squared error. Initialised from the teacher's
    weights when the teacher is EDM-preconditioned like the student. Samples natively with
    ``student_steps`` steps of multistep consistency sampling. Returns the model directory."""
    teacher = load(teacher_dir, device)
    lo, hi = teacher.schedule.sigma_min, teacher.schedule.sigma_max
    if not 0 < lo < hi < math.inf:
        lo, hi = 0.002, 80.0
    init = str(Path(teacher_dir).resolve()) if teacher.config.prediction == "edm" else None
    config = teacher.config.replace(
        preset=f"{teacher.config.preset}-cd", objective="consistency", prediction="consistency",
        schedule=EDM(lo, hi).to_dict(), teacher=str(Path(teacher_dir).resolve()), init=init,
        ema_decay=target_ema, ema_warmup=False, distill={"steps": discretisation}, time_sampling="default",
        native={"sampler": "consistency", "sigmas": consistency_sigmas(student_steps, lo, hi),
                "options": {"sigma_min": lo}},
        **overrides, **({"steps": train_steps} if train_steps else {}))
    return _train(config, Path(out_dir), progress, device)


def guided(teacher_dir, out_dir, *, w_min: float = 1.0, w_max: float = 5.0, train_steps: int | None = None,
           progress: bool = True, device=None, **overrides) -> Path:
    """Guided distillation, stage one (Meng et al. 2023, sec. 4.1): a student with the teacher's
    network plus a guidance-scale input (zero-initialised, so it starts as the teacher) learns the
    teacher's classifier-free guided denoiser for w in [w_min, w_max] in one call per step.
    ``.sample(n, y=..., guidance=w)`` then costs half a CFG sample. Returns the model directory."""
    teacher = load(teacher_dir, device)
    if teacher.num_classes is None:
        raise ValueError(f"{teacher_dir}: guided distillation needs a class-conditional teacher")
    config = teacher.config.replace(
        preset=f"{teacher.config.preset}-guided", objective="guided", teacher=str(Path(teacher_dir).resolve()),
        init=str(Path(teacher_dir).resolve()), net={**teacher.config.net, "guidance_embedding": True},
        distill={"w_min": w_min, "w_max": w_max}, **overrides, **({"steps": train_steps} if train_steps else {}))
    return _train(config, Path(out_dir), progress, device)

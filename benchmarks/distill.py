"""Distillation measured (issue 13): progressive and consistency students against their teacher.

    python benchmarks/distill.py [--part toy|digits|all] [--out benchmarks/distill] [--work benchmarks/out/distill]

For a teacher on the 8-Gaussian mixture (the `toy2d` network on `8gaussians`) and for the `digits`
teacher: progressive distillation down to 1 step (its 4- and 2-step stages are kept) and a
consistency-distilled student. At 1, 2 and 4 steps, from the same noises z: the RMS distance of the
student's sample to the teacher's ODE solution from z (100 Heun steps), beside the teacher's own
DDIM at the same steps (on the same nested sigmas, every 64/k-th of its 64-step grid); and sample quality, the exact W2 to 2,000 fresh data points (toy) or the
digits Fréchet distance of 300 samples (digits), beside the teacher at 50 steps. Each training
run is timed. Trained models go to --work (git-ignored; reused when present), tables to --out.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import time
from pathlib import Path

import torch

import difflab
from difflab import distill
from difflab.evaluation import evaluate_digits, wasserstein2
from difflab.exact import ring_mixture
from difflab.io import atomic
from difflab.samplers import default_sigmas
from difflab.schedules import consistency_sigmas
from difflab.training import PRESETS, train

STEPS = (1, 2, 4)
TOY_GMM = ring_mixture(8, radius=math.sqrt(2 * (1 - 0.2**2)), std=0.2)  # the 8gaussians data set


def _timed(label, fn, log):
    t0 = time.time()
    out = fn()
    seconds = time.time() - t0
    log(f"  {label}: {seconds:.0f} s -> {out}")
    return out, seconds


def _train_teacher(config, out: Path, log):
    if (out / "model").exists():
        return out / "model", None
    return _timed("teacher", lambda: train(config, out, progress=False, device="cpu"), log)


def _students(teacher: Path, work: Path, pd_steps: int, cd_steps: int, teacher_steps: int, log) -> tuple[dict, dict]:
    times = {}
    pd_dir, cd_dir = work / "progressive", work / "consistency"
    if not (pd_dir / "model").exists():
        _, times["progressive (all halvings)"] = _timed(
            "progressive", lambda: distill.progressive(teacher, pd_dir, student_steps=1, teacher_steps=teacher_steps,
                                                       train_steps=pd_steps, progress=False, device="cpu"), log)
    if not (cd_dir / "model").exists():
        _, times["consistency"] = _timed(
            "consistency", lambda: distill.consistency(teacher, cd_dir, train_steps=cd_steps, progress=False,
                                                       device="cpu"), log)
    students = {"progressive 4": pd_dir / "stages" / "steps-4", "progressive 2": pd_dir / "stages" / "steps-2",
                "progressive 1": pd_dir, "consistency": cd_dir}
    return students, times


def _compare(teacher_dir: Path, students: dict, z: torch.Tensor, quality, log) -> list[dict]:
    """Rows: for each K, the teacher's DDIM and each student able to take K steps."""
    teacher = difflab.load(teacher_dir, "cpu")
    reference = teacher.sample(len(z), sampler="heun", steps=100, noise=z, schedule="karras")
    rows = [{"model": "teacher, Heun 100 steps", "steps": 100, "rms_to_ode": 0.0, "quality": quality(reference)}]
    rows.append({"model": "teacher, DPM-Solver++(2M) 50 steps", "steps": 50, "rms_to_ode": None,
                 "quality": quality(teacher.sample(len(z), steps=50, noise=z))})
    rows[-1]["rms_to_ode"] = _rms(teacher.sample(len(z), steps=50, noise=z), reference)
    base = default_sigmas(teacher.schedule, 64, "euler")  # the grid the progressive students halve
    for k in STEPS:
        x = teacher.sample(len(z), sampler="ddim", noise=z, schedule=base[:: 64 // k])
        rows.append({"model": "teacher, DDIM", "steps": k, "rms_to_ode": _rms(x, reference), "quality": quality(x)})
        for name, path in students.items():
            student = difflab.load(path, "cpu")
            native = len(student.config.native["sigmas"]) - 1
            if name.startswith("progressive") and native != k:
                continue
            if name == "consistency":  # the same student at 1, 2 and 4 steps of multistep sampling
                sigmas = torch.tensor(consistency_sigmas(k, student.schedule.sigma_min, student.schedule.sigma_max))
                x = student.sample(len(z), sampler="consistency", noise=z, schedule=sigmas, seed=0,
                                   **student.config.native.get("options", {}))
            else:
                x = student.sample(len(z), noise=z, seed=0)  # its native sampler and sigmas
            rows.append({"model": name, "steps": k, "rms_to_ode": _rms(x, reference), "quality": quality(x)})
    for r in rows:
        log(f"  {r['model']:<36} {r['steps']:>3} steps: RMS to the ODE {r['rms_to_ode']:.4g}, quality {r['quality']:.4g}")
    return rows


def _rms(a, b) -> float:
    return float((a.double() - b.double()).square().mean().sqrt())


def toy(work: Path, quick: bool, log=print):
    steps = 300 if quick else 2000
    teacher, t_teacher = _train_teacher(PRESETS["toy2d"].replace(data="8gaussians", steps=steps, sample_every=0),
                                        work / "teacher", log)
    students, times = _students(teacher, work, 200 if quick else 1500, 400 if quick else 4000, 64, log)
    g = torch.Generator().manual_seed(20)
    data = TOY_GMM.sample(2000, g).float()
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(21))
    rows = _compare(teacher, students, z, lambda x: wasserstein2(x, data), log)
    if t_teacher:
        times["teacher"] = t_teacher
    return rows, times


def digits(work: Path, quick: bool, log=print):
    steps = 200 if quick else PRESETS["digits"].steps
    teacher, t_teacher = _train_teacher(PRESETS["digits"].replace(steps=steps, sample_every=0), work / "teacher", log)
    students, times = _students(teacher, work, 100 if quick else 600, 200 if quick else 1500, 64, log)
    z = torch.randn(300, 1, 8, 8, generator=torch.Generator().manual_seed(22))
    rows = _compare(teacher, students, z, lambda x: evaluate_digits(x)["fd"], log)
    if t_teacher:
        times["teacher"] = t_teacher
    return rows, times


def _table(rows, quality_name):
    lines = [f"| model | steps | RMS to the teacher's ODE | {quality_name} |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['steps']} | {r['rms_to_ode']:.4g} | {r['quality']:.4g} |" for r in rows]
    return "\n".join(lines)


def _write_csv(rows, path):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, text.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("toy", "digits", "all"), default="all")
    parser.add_argument("--out", default="benchmarks/distill", type=Path)
    parser.add_argument("--work", default="benchmarks/out/distill", type=Path)
    parser.add_argument("--quick", action="store_true", help="short trainings (checks the script)")
    args = parser.parse_args()
    sections = []
    for part, fn, quality in (("toy", toy, "W2 to data"), ("digits", digits, "FD (300)")):
        if args.part not in (part, "all"):
            continue
        print(f"{part}:")
        rows, times = fn(args.work / part, args.quick)
        _write_csv(rows, args.out / f"{part}.csv")
        timing = ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) or "reused"
        sections.append(f"## {part}\n\n{_table(rows, quality)}\n\nTraining time on the CPU: {timing}.")
    text = "# Distillation (benchmarks/distill.py)\n\n" + "\n\n".join(sections) + "\n"
    atomic.write_text(args.out / ("output.md" if args.part == "all" else f"output_{args.part}.md"), text)
    print("\n" + text)


if __name__ == "__main__":
    main()

"""`difflab reflow`: the next rectified flow, trained on the noise-sample pairs of a model's ODE."""
from __future__ import annotations

from pathlib import Path

from .common import (check_output, check_positive, check_sampler, check_student_overrides, parse_set,
                     removed_on_error)

#: The student's config fields that reflow sets itself (difflab.flow.reflow).
FIXED = ("preset", "data", "coupling", "init")


def add_parser(sub) -> None:
    p = sub.add_parser("reflow", help="straighten a flow: train on the (noise, sample) pairs of its ODE",
                       description="Draw noise/sample pairs with the teacher's ODE, then train a student "
                       "(initialised from the teacher) on the linear paths between exactly these pairs "
                       "(Liu et al. 2023). Repeat on the output for a k-rectified flow. Writes OUT/pairs.npz, "
                       "the model OUT/model and OUT/reflow.json (straightness of teacher and student).")
    p.add_argument("teacher", type=Path, metavar="TEACHER_DIR", help="trained model directory")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--pairs", type=int, default=10_000, metavar="N", help="pairs to draw (default: %(default)s)")
    p.add_argument("--steps", type=int, default=50, metavar="S", help="teacher ODE steps per pair "
                   "(default: %(default)s)")
    p.add_argument("--sampler", default="dpmpp_2m", metavar="NAME", help="a deterministic sampler for the "
                   "teacher's ODE (default: %(default)s)")
    p.add_argument("--train-steps", type=int, metavar="K", help="student training steps (default: the teacher's)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the pairs' noise (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the student's training config (repeatable)")
    p.add_argument("--resume", action="store_true", help="reuse OUT/pairs.npz and continue the training")
    p.add_argument("--device", metavar="DEV", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=run)


def run(args) -> None:
    import json

    from ..flow import reflow
    from ..flow.reflow import REPORT_FILE

    check_positive(pairs=args.pairs, steps=args.steps, train_steps=args.train_steps)
    check_sampler(args.sampler)
    overrides = dict(parse_set(item) for item in args.set)
    check_student_overrides(args.teacher, overrides, FIXED, "reflow")
    check_output(args.out, "--out", folder=True)
    with removed_on_error(args.out):
        model_dir = reflow(args.teacher, args.out, pairs=args.pairs, steps=args.steps, sampler=args.sampler,
                           seed=args.seed, train_steps=args.train_steps, resume=args.resume, device=args.device,
                           **overrides)
    report = json.loads((args.out / REPORT_FILE).read_text())
    print(f"straightness (per dimension, {report['straightness_noises']} noises, "
          f"{report['straightness_steps']} Euler steps): teacher {report['straightness_teacher']:.4g}, "
          f"student {report['straightness_student']:.4g}")
    print(f"model saved in {model_dir}")

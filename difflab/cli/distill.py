"""`difflab distill progressive|consistency|guided`: students that sample in one to four steps."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import (UserError, check_finite, check_output, check_positive, check_student_overrides, parse_set,
                     removed_on_error)

#: The student's config fields that each procedure sets itself (difflab.distill.procedures).
FIXED = {"progressive": ("preset", "objective", "lr_decay", "teacher", "init", "distill", "native"),
         "consistency": ("preset", "objective", "prediction", "schedule", "teacher", "init", "ema_decay",
                         "ema_warmup", "distill", "time_sampling", "native"),
         "guided": ("preset", "objective", "teacher", "init", "net", "distill")}


def add_parser(sub, parser_class) -> None:
    p = sub.add_parser("distill", help="distil a model into a few-step student",
                       description="Train a student of a trained model that samples in few steps; the "
                       "student's directory records its native sampler and sigmas, which 'difflab sample' "
                       "uses unless told otherwise. See docs/distill.md.")
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True, parser_class=parser_class)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("teacher", type=Path, metavar="TEACHER_DIR", help="trained model directory")
    common.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    common.add_argument("--train-steps", type=int, metavar="N", help="training steps (per halving for "
                        "progressive; default: the teacher's)")
    common.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the student's training config (repeatable)")
    common.add_argument("--device", metavar="DEV", help="cpu, cuda, ... (default: cuda when available)")

    q = methods.add_parser("progressive", parents=[common], help="halve the DDIM steps until K (Salimans & Ho 2022)",
                           description="Progressive distillation: each student's DDIM step matches two of its "
                           "teacher's; halvings from the teacher's steps to --student-steps.")
    q.add_argument("--student-steps", type=int, default=4, metavar="K", help="the final student's steps "
                   "(default: %(default)s)")
    q.add_argument("--teacher-steps", type=int, metavar="N", help="the teacher's DDIM steps, K times a power of 2 "
                   "(default: K 2^m >= 64)")
    q.set_defaults(func=run)
    q = methods.add_parser("consistency", parents=[common], help="a consistency model of the teacher's ODE "
                           "(Song et al. 2023)", description="Consistency distillation: the student maps any "
                           "point of the teacher's ODE to its end; samples in 1 step or a few.")
    q.add_argument("--student-steps", type=int, default=1, metavar="K", help="native sampling steps "
                   "(default: %(default)s)")
    q.add_argument("--discretisation", type=int, default=18, metavar="N", help="noise levels of the teacher's "
                   "ODE steps (default: %(default)s)")
    q.set_defaults(func=run)
    q = methods.add_parser("guided", parents=[common], help="one call per step instead of two for "
                           "classifier-free guidance (Meng et al. 2023)", description="Guided distillation: "
                           "a student fed the guidance scale w matches the teacher's guided denoiser.")
    q.add_argument("--w-min", type=float, default=1.0, metavar="W", help="(default: %(default)s)")
    q.add_argument("--w-max", type=float, default=5.0, metavar="W", help="(default: %(default)s)")
    q.set_defaults(func=run)


def run(args) -> None:
    from .. import distill

    check_positive(train_steps=args.train_steps, student_steps=getattr(args, "student_steps", None),
                   teacher_steps=getattr(args, "teacher_steps", None))
    if args.method == "consistency" and args.discretisation < 2:
        raise UserError(f"--discretisation must be at least 2 noise levels, got {args.discretisation}")
    if args.method == "guided":
        check_finite(w_min=args.w_min, w_max=args.w_max)
        if args.w_min > args.w_max:
            raise UserError(f"--w-min {args.w_min} is above --w-max {args.w_max}; give w-min <= w-max")
    overrides = dict(parse_set(i) for i in args.set)
    check_student_overrides(args.teacher, overrides, FIXED[args.method], f"distill {args.method}")
    check_output(args.out, "--out", folder=True)
    common = dict(train_steps=args.train_steps, device=args.device, **overrides)
    with removed_on_error(args.out):
        if args.method == "progressive":
            model_dir = distill.progressive(args.teacher, args.out, student_steps=args.student_steps,
                                            teacher_steps=args.teacher_steps, **common)
        elif args.method == "consistency":
            model_dir = distill.consistency(args.teacher, args.out, student_steps=args.student_steps,
                                            discretisation=args.discretisation, **common)
        else:
            model_dir = distill.guided(args.teacher, args.out, w_min=args.w_min, w_max=args.w_max, **common)
    print(f"student saved in {model_dir}")

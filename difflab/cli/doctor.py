"""`difflab doctor RUN_DIR`: what is wrong with a training run, in words."""
from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="check a training run and say what is wrong with it",
                       description="Check a training run (its output folder or model directory): the "
                       "checkpoint's files, whether it finished, the EMA's horizon, the loss in log.csv, the "
                       "learning rate and the data's range. One line per finding, then a verdict. Exit status: "
                       "0 without errors (warnings allowed), 1 when a finding is an error, 2 when RUN_DIR is "
                       "not a training run.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="training output folder (--out of difflab "
                   "train) or a model directory")
    p.add_argument("--json", action="store_true", help="print the findings as JSON instead")
    p.set_defaults(func=run)


def run(args) -> int:
    """Print the findings of `difflab.training.doctor.diagnose`; 1 if any is an error."""
    import json

    from ..training.doctor import diagnose, verdict

    findings = diagnose(args.run_dir)
    errors = any(f.severity == "error" for f in findings)
    if args.json:
        print(json.dumps({"run": str(args.run_dir), "findings": [f.to_dict() for f in findings],
                          "verdict": verdict(findings)}, indent=2))
    else:
        for f in findings:
            print(f"{f.severity:<8} {f.code:<15} {f.message}")
        print(f"verdict  {verdict(findings)}")
    return 1 if errors else 0

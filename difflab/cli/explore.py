"""`difflab explore`: the interactive lab in the browser (difflab.explore)."""
from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("explore", help="an interactive lab in the browser: samplers, schedules, guidance, editing, "
                       "training runs",
                       description="Start a local web app and print its address: the 2-D lab on exact Gaussian "
                       "mixtures and 2-D models, the image lab for image models, and the training view of run "
                       "directories. docs/explore.md.")
    p.add_argument("dirs", nargs="*", type=Path, metavar="MODEL_DIR", help="trained model directories and/or "
                   "training run folders (from 'difflab train --out')")
    p.add_argument("--port", type=int, default=8000, metavar="P", help="port (default: %(default)s; 0: any free one)")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR", help="address to listen on (default: %(default)s, "
                   "this machine only)")
    p.add_argument("--device", metavar="DEV", help="cpu, cuda, ... for the models (default: cuda when available)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads (default: %(default)s, measured "
                   "fastest for the lab's small tensors on shared cores; 0: torch's default)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.set_defaults(func=run)


def run(args) -> None:
    """`difflab explore`: :func:`difflab.explore.serve`."""
    from ..explore import serve

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be from 0 to 65535, got {args.port}")
    if args.threads < 0:
        raise ValueError(f"--threads must be 0 (torch's default) or more, got {args.threads}")
    serve(args.dirs, host=args.host, port=args.port, device=args.device, verbose=args.verbose,
          threads=args.threads or None)

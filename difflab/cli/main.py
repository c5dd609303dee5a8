"""The `difflab` command line: a thin layer over the library, one small module per command.

Every command has `--help`. Exit status: 0 on success, 2 with one line `difflab: error: ...` on a
user error (bad options, a missing model directory, unreadable data: the library raises ValueError
subclasses for those, caught here); genuine bugs still show their traceback. Each command module
(`train`, `train_autoencoder`, `sample`, `forecast` (with `impute`), `reflow`, `distill`, `edit`, `info`,
`evaluate`, `bench`, `demo`, `explore`, `doctor`) has ``add_parser(sub)`` and
imports torch and the library only inside the command, so building the parser and printing help
take no more than Python's start-up.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..version import __version__
from . import (bench, cascade, demo, distill, doctor, edit, evaluate, explore, forecast, info, reflow, sample,
               train, train_autoencoder)

PROG = "difflab"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `difflab sample: error: ... (see --help)`, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (no heavy imports)."""
    parser = _Parser(prog=PROG, description="Diffusion models: train, sample, forecast, impute, edit, evaluate, "
                     "benchmark.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    demo.add_parser(sub)
    train.add_parser(sub)
    sample.add_parser(sub)
    forecast.add_parser(sub)
    train_autoencoder.add_parser(sub)
    reflow.add_parser(sub)
    distill.add_parser(sub, _Parser)
    edit.add_parser(sub, _Parser)
    cascade.add_parser(sub)
    info.add_parser(sub)
    evaluate.add_parser(sub)
    bench.add_parser(sub, _Parser)
    explore.add_parser(sub)
    doctor.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `difflab info | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return status or 0

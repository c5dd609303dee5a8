"""What every command shares: the one-line user error and the checks of common options."""
from __future__ import annotations

import math
from pathlib import Path

from ..io.atomic import removed_on_error

__all__ = ["UserError", "DEFAULT_SAMPLER", "check_sampler", "check_positive", "check_finite", "check_output",
           "removed_on_error", "check_student_overrides", "parse_set", "add_model_options", "add_sampling_options",
           "add_option_argument", "load_model", "sampler_options"]

DEFAULT_SAMPLER = "dpmpp_2m"


class UserError(ValueError):
    """A mistake in the command line, reported as one line."""


def check_sampler(name: str) -> None:
    from ..samplers import SAMPLERS

    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")


def check_positive(**values) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")


def check_finite(**values) -> None:
    """Each value must be a finite number (None: not given); a pair ``(value, lowest)`` also needs
    value >= lowest."""
    for name, value in values.items():
        value, lowest = value if isinstance(value, tuple) else (value, None)
        if value is None:
            continue
        if not math.isfinite(value) or (lowest is not None and value < lowest):
            bound = "" if lowest is None else f" and at least {lowest:g}"
            raise UserError(f"--{name.replace('_', '-')} must be a finite number{bound}, got {value}")


def check_output(path, flag: str, *, folder: bool = False) -> None:
    """Before any work: ``path``, an output of ``flag``, can be created -- it is not an existing
    folder (``folder=True``: not an existing file), and no file stands where a parent folder goes."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise UserError(f"{flag} {path} is an existing {'file' if folder else 'folder'}; give a "
                        f"{'folder' if folder else 'file'} path")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{flag} {path} lies under {parent}, which is a file; choose another path")


def check_student_overrides(teacher, overrides: dict, fixed, command: str) -> None:
    """Before any work: the --set overrides of a student trained from ``teacher`` (reflow, distill)
    name fields that ``command`` leaves to the user (``fixed`` it sets itself; the training steps
    are --train-steps), with values the teacher's config accepts."""
    for key in overrides:
        if key == "steps":
            raise UserError(f"{command}: give the student's training steps as --train-steps N, not --set steps")
        if key in fixed:
            raise UserError(f"--set {key}: {command} sets {key} itself; leave it out")
    if overrides:
        from ..training import CheckpointError, find_model_dir, read_config

        try:
            config, _ = read_config(find_model_dir(teacher))
        except CheckpointError:  # not a difflab model directory: loading the teacher reports it (or reads diffusers)
            return
        config.replace(**overrides)


def add_model_options(p) -> None:
    """--device, --dtype and --compile: where and how the network runs (see difflab.load)."""
    p.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="precision of the network's calls (default: %(default)s; the sampler's state stays fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (CUDA graphs on a GPU)")


def add_sampling_options(p) -> None:
    """--schedule and --option: the sigma schedule and the sampler's own options."""
    p.add_argument("--schedule", default="auto", metavar="NAME|FILE.json",
                   help="sigma schedule: auto (the measured best for the sampler), karras, logsnr, uniform, "
                   "or a JSON list of sigmas (default: %(default)s)")
    add_option_argument(p)


def add_option_argument(p) -> None:
    """--option KEY=VALUE: the sampler's own options (read by :func:`sampler_options`)."""
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a sampler option, e.g. eta=0.5 or order=2 (repeatable; see 'difflab info')")


def load_model(args, path):
    """The model at ``path`` on --device with --dtype and --compile."""
    from ..pipeline import load

    return load(path, args.device, dtype=args.dtype, compile=args.compile)


def sampler_options(args) -> dict:
    """--option KEY=VALUE pairs as a dict, values read as JSON numbers / booleans where they are."""
    import json

    options = {}
    for item in args.option:
        key, value = _key_value(item, "--option")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
        number = options[key] if isinstance(options[key], float) else _float_word(value)
        if number is not None and not math.isfinite(number):
            raise UserError(f"--option {key}={value}: a sampler option must be a finite number")
    return options


def _float_word(text: str) -> float | None:
    """``float(text)`` for the words Python reads as floats (nan, inf, ...), else None."""
    try:
        return float(text)
    except ValueError:
        return None


def parse_set(item: str) -> tuple[str, str]:
    """`key=value` -> (key, value), with dashes in the key read as underscores."""
    key, value = _key_value(item, "--set")
    return key.replace("-", "_"), value


def _key_value(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"{flag} expects key=value, got {item!r}")
    return key.strip(), value.strip()

"""What every command shares: the one-line user error and the checks of common options."""
from __future__ import annotations

__all__ = ["UserError", "DEFAULT_SAMPLER", "check_sampler", "check_positive"]

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

"""The `difflab` command line (:func:`main`) and the demo; see :mod:`.main`."""
from .main import main

__all__ = ["main"]

"""The version of difflab, in one place (read by the package, model directories and the CLI)."""

__version__ = "0.1.0"

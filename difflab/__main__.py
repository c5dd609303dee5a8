"""`python -m difflab`: the same as the `difflab` command."""
import sys

from .cli import main

sys.exit(main())

"""Start-up cost of the command line: wall time of `difflab [COMMAND] --help` (median of runs).

    python benchmarks/startup.py [--runs N]

Each run is a fresh process, as a user's would be; the table ends with `import torch` alone for
scale. Help must not load torch (tests/test_layout.py checks that); this measures what it costs.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = [[], ["demo"], ["train"], ["train-classifier"], ["sample"], ["edit"], ["edit", "inpaint"], ["info"],
            ["eval"], ["bench"], ["bench", "samplers"]]


def seconds(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print("| command | median seconds |\n|---|---|")
    for command in COMMANDS:
        argv = [sys.executable, "-m", "difflab", *command, "--help"]
        print(f"| `difflab {' '.join(command + ['--help'])}` | {seconds(argv, args.runs):.3f} |")
    print(f"| `python -c 'import torch'` (for scale) | {seconds([sys.executable, '-c', 'import torch'], args.runs):.3f} |")


if __name__ == "__main__":
    main()

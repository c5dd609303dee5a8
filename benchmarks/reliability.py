"""Reliability under bad inputs and faults (issue 17).

    .venv/bin/python benchmarks/reliability.py [--runs 5] [--kills 4] [--fresh 30] [--out benchmarks/reliability]

Bad inputs: the corpus of `difflab.bench.fuzz.bad_inputs` (bad options, data files, TOML configs and
model directories for every command), each run through `difflab.cli.main.main` in this process,
and every k-th of them (--fresh of them) through `python -m difflab` in a fresh process. A clean
error is exit status 2 with exactly one line on stderr (progress bars and warnings count), no
traceback and none of the command's outputs left behind. Crashes:
`difflab.bench.reliability.crash_trials` (--runs runs, each killed --kills times with kill -9 at a
random moment while it trains or saves; after each kill the folder must load whenever it
holds a checkpoint, and the resumed run must end bit for bit where an uninterrupted one does). Planted pickles: `planted_payloads` in a trained model's
directory, then load and resume. Prints the tables and writes them to --out/output.md.
"""
from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

from difflab.bench.fuzz import bad_inputs, run_case, summarise
from difflab.bench.fuzz_files import MODEL
from difflab.bench.reliability import crash_trials, planted_payloads
from difflab.io import atomic


def corpus_rows(work: Path, fresh: int, log) -> tuple[list[str], list[str]]:
    """Table rows for the bad-input corpus in this process and in fresh ones, and the cases that
    were not clean."""
    cases = bad_inputs(work)
    log(f"{len(cases)} bad inputs")
    start = time.perf_counter()
    here = summarise([run_case(c) for c in cases])
    log(f"in process: {here['clean']} clean of {here['tried']} in {time.perf_counter() - start:.0f} s")
    chosen = cases[:: max(1, len(cases) // fresh)][:fresh] if fresh else []
    start = time.perf_counter()
    apart = summarise([run_case(c, in_process=False) for c in chosen])
    log(f"fresh processes: {apart['clean']} clean of {apart['tried']} in {time.perf_counter() - start:.0f} s")
    ways = (("`difflab.cli.main.main`, in process", here), ("`python -m difflab`, fresh process", apart))
    rows = [f"| {where} | {s['tried']} | {s['clean']} | {s['tracebacks']} | {s['partial']} |" for where, s in ways
            if s["tried"]]
    return rows, here["not_clean"] + apart["not_clean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="crash-trial runs (default: %(default)s)")
    parser.add_argument("--kills", type=int, default=4, help="kills per run (default: %(default)s)")
    parser.add_argument("--fresh", type=int, default=30, help="corpus cases also run in a fresh process "
                        "(default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/reliability"))
    args = parser.parse_args()
    out = io.StringIO()

    def emit(text=""):
        print(text, flush=True)
        out.write(text + "\n")

    with tempfile.TemporaryDirectory(prefix="difflab-reliability-") as tmp:
        tmp = Path(tmp)
        rows, failures = corpus_rows(tmp / "fuzz", args.fresh, print)
        start = time.perf_counter()
        report = crash_trials(tmp / "crash", runs=args.runs, kills_per_run=args.kills,
                              progress=lambda line: print(f"  {line}", flush=True))
        crash_seconds = time.perf_counter() - start
        model = tmp / "planted" / MODEL
        shutil.copytree(tmp / "fuzz" / "models" / "toy" / MODEL, model)
        planted, executed = planted_payloads(model, tmp / "planted" / "executed.txt")

    emit("## Bad inputs")
    emit()
    emit("| run through | inputs tried | clean errors | tracebacks | partial outputs |")
    emit("|---|---|---|---|---|")
    for row in rows:
        emit(row)
    for line in failures:
        emit(f"- not clean: {line}")
    emit()
    emit(f"## kill -9 during training ({args.runs} runs, {args.kills} kills each, {crash_seconds:.0f} s)")
    emit()
    emit("| kills (while running) | then holding a checkpoint | loadable | runs resumed | bit-exact resumes |")
    emit("|---|---|---|---|---|")
    emit(f"| {report.kills} | {report.with_checkpoint} | {report.loadable} | {report.runs} | {report.bit_exact} |")
    emit()
    emit("Each kill lands while the run trains or saves (after its training loop started, within the first 80% of "
         "the training time still ahead); a kill before the first checkpoint leaves nothing to load (that is the "
         "'holding a checkpoint' column).")
    for line in report.failures:
        emit(f"- failure: {line}")
    emit()
    emit("## Planted pickles")
    emit()
    emit("| payloads planted | payloads executed |")
    emit("|---|---|")
    emit(f"| {planted} | {executed} |")
    atomic.write_text(args.out / "output.md", out.getvalue())


if __name__ == "__main__":
    main()

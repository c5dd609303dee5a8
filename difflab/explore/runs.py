"""The directories the lab shows: trained models (2-D or image) and training runs, and the training
view of a run: its loss log, its sample grids over steps and, once `difflab doctor` exists, its
findings.

A training run (:func:`difflab.training.train`'s output folder) holds ``log.csv`` (step, loss, lr,
grad_norm, seconds), ``samples/step_XXXXXX.png`` (a grid of EMA samples from a fixed seed) and
``model/``; a model directory holds ``config.json`` (docs/design.md, "Trained models").
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from ..training.checkpoint import CheckpointError, find_model_dir, read_config

__all__ = ["Entry", "describe", "unique_names", "read_log", "sample_grids", "has_doctor", "doctor_findings",
           "training_view"]

LOG_FILE = "log.csv"
SAMPLES_DIR = "samples"
SAMPLE_FILE = re.compile(r"step_(\d+)\.png")


@dataclass(frozen=True)
class Entry:
    """A directory given to the lab: ``kind`` "2d" or "image" for a model a lab can show (None for a
    model of other data, or a run without a model yet), ``run`` when it has a training log or grids."""

    name: str
    path: Path
    kind: str | None
    run: bool
    preset: str | None = None
    data_shape: tuple = ()
    num_classes: int | None = None


def describe(path, name: str | None = None) -> Entry:
    """What ``path`` holds (reading config.json only, no weights); ValueError for a directory that is
    neither a model nor a training run."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ValueError(f"{path}: no such directory")
    run = (path / LOG_FILE).is_file() or (path / SAMPLES_DIR).is_dir()
    try:
        config, info = read_config(find_model_dir(path))
    except CheckpointError:
        if not run:
            raise ValueError(f"{path}: neither a model directory (config.json) nor a training run (log.csv, "
                             "samples/)") from None
        return Entry(name or path.resolve().name, path, None, run)
    shape = tuple(info["data_shape"])
    data_kind = info["data_kind"] or ("image" if len(shape) == 3 else "points")
    kind = "2d" if shape == (2,) else "image" if data_kind == "image" else None
    return Entry(name or path.resolve().name, path, kind, run, config.preset, shape, config.num_classes)


def unique_names(paths) -> list[str]:
    """A short distinct name per path: its folder name, with ``-2``, ``-3`` ... on repeats."""
    names, seen = [], {}
    for p in paths:
        base = Path(p).expanduser().resolve().name or "model"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def read_log(run_dir) -> dict[str, list[float]]:
    """The columns of ``log.csv`` as lists of numbers (rows that do not parse, such as a line being
    written, are skipped); empty lists when there is no log yet."""
    path = Path(run_dir) / LOG_FILE
    columns: dict[str, list[float]] = {}
    if not path.is_file():
        return columns
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        columns = {k: [] for k in fields}
        for row in reader:
            try:
                values = {k: float(row[k]) for k in fields}
            except (TypeError, ValueError):
                continue
            for k, v in values.items():
                columns[k].append(v)
    return columns


def sample_grids(run_dir) -> list[dict]:
    """The sample grids of a run, by step: ``[{"step": 500, "file": "step_000500.png"}, ...]``."""
    folder = Path(run_dir) / SAMPLES_DIR
    grids = [(int(m.group(1)), p.name) for p in folder.glob("step_*.png") if (m := SAMPLE_FILE.fullmatch(p.name))]
    return [{"step": step, "file": name} for step, name in sorted(grids)]


def doctor_findings(run_dir) -> list[dict] | None:
    """`difflab doctor`'s findings on the run (:func:`difflab.training.doctor.diagnose`) as
    ``{"severity", "code", "message"}`` dicts, or None where the library has no doctor. A doctor that
    cannot read the run (a ValueError) becomes one error finding: the rest of the view still shows."""
    try:
        from ..training import doctor
    except ImportError:
        return None
    try:
        findings = doctor.diagnose(Path(run_dir))
    except ValueError as e:
        return [{"severity": "error", "code": "doctor", "message": str(e)}]
    return [{"severity": getattr(f, "severity", None), "code": getattr(f, "code", None),
             "message": getattr(f, "message", str(f))} for f in findings]


def has_doctor() -> bool:
    """Whether the library has `difflab doctor` (:mod:`difflab.training.doctor`)."""
    try:
        from ..training import doctor  # noqa: F401
    except ImportError:
        return False
    return True


def training_view(entry: Entry) -> dict:
    """What the training view shows of a run: the log's columns, the sample grids, the preset and its
    planned steps, and whether there is a doctor (its findings, which take seconds, are
    :func:`doctor_findings`)."""
    planned = None
    try:
        config, _ = read_config(find_model_dir(entry.path))
        planned = config.steps
    except CheckpointError:
        pass
    return {"name": entry.name, "path": str(entry.path), "preset": entry.preset, "planned_steps": planned,
            "log": read_log(entry.path), "samples": sample_grids(entry.path), "doctor": has_doctor()}

"""What is wrong with a training run, in words: ``difflab doctor RUN_DIR``.

:func:`diagnose` reads a run's output folder (or its model directory) and returns a list of
:class:`Finding`: the files (checkpoint, weights, EMA, training state, log), whether the run
finished, the EMA's horizon against the steps run, the loss curve of ``log.csv``, the learning
rate against the preset's, and the range and scale of the data. Each check that cannot run on a
damaged folder becomes an ``info`` finding; nothing here writes to the run. See docs/training.md,
"difflab doctor".
"""
from __future__ import annotations

import csv
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors.torch import load_file

from ..io import atomic
from .checkpoint import MODEL_DIR, CheckpointError, read_config
from .config import PRESETS, TrainConfig
from .data import DataError, load_dataset
from .trainer import ema_decay_at

__all__ = ["Finding", "SEVERITIES", "diagnose", "verdict", "ema_initial_share", "ema_steps_to_share", "read_log"]

SEVERITIES = ("error", "warning", "info", "ok")  # most serious first
STATE_FILES = ("training_state.json", "training_state.pt")  # the training state, in either format
WEIGHT_FILES = ("model.safetensors", "ema.safetensors")
EMA_ERROR, EMA_WARNING = 0.10, 0.01  # share of the EMA still on the initial network
LR_FACTOR = 10.0  # lr this many times above or below the preset's
SCALE_FACTOR = 10.0  # data std this many times above or below sigma_data
MIN_LOG_ROWS = 10  # fewer rows of log.csv are too few to judge the loss
DATA_SAMPLE = 2000  # samples of the data set read to check its range


@dataclass(frozen=True)
class Finding:
    """One result of a check: ``severity`` (one of :data:`SEVERITIES`), a short ``code`` naming the
    check (``"ema-horizon"``), and a ``message`` that says what it means and what to do."""

    severity: str
    code: str
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Run:
    """What the checks read: the output folder (None for a bare model directory), the model
    directory (None when there is none), and its config and other config.json fields."""

    path: Path
    out_dir: Path | None
    model_dir: Path | None
    config: TrainConfig | None = None
    info: dict | None = None


def diagnose(run_dir) -> list[Finding]:
    """The findings on the training run ``run_dir`` (an output folder or a model directory), most
    serious first. Raises CheckpointError (a ValueError) when the path is not a run at all."""
    run, findings = _locate(run_dir), []
    if run.model_dir is not None:
        try:
            run.config, run.info = read_config(run.model_dir)
        except CheckpointError as e:
            findings.append(Finding("error", "config", f"{e}; the checks that need the config are skipped"))
    for code, check, needs_config in _CHECKS:
        if needs_config and run.config is None:
            findings.append(Finding("info", code, "not checked: there is no readable config.json"))
            continue
        try:
            findings += check(run)
        except Exception as e:  # noqa: BLE001  (a damaged run must not stop the other checks)
            findings.append(Finding("info", code, f"could not be checked ({type(e).__name__}: {e})"))
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def verdict(findings: list[Finding]) -> str:
    """One line summing up the findings: the counts of errors and warnings and what they mean."""
    errors = sum(f.severity == "error" for f in findings)
    warnings = sum(f.severity == "warning" for f in findings)
    counts = f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    if errors:
        return f"{counts}: this run has problems to fix before its samples can be trusted"
    if warnings:
        return f"{counts}: the run works, but read the warnings"
    return "no errors or warnings: the run looks healthy"


def _locate(path) -> _Run:
    """The run at ``path``: a model directory (it holds config.json or weights) or an output
    folder (it holds model/, log.csv or samples/). Reads only: an interrupted save's previous
    checkpoint (``.old-model``) is diagnosed where it lies."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such run folder or model directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder; give a training run's output folder or its model directory")
    if any((path / name).exists() for name in ("config.json", *WEIGHT_FILES, *STATE_FILES)):
        beside = path.name == MODEL_DIR and any((path.parent / n).exists() for n in ("log.csv", "samples"))
        return _Run(path, path.parent if beside else None, path)
    model_dir, old = path / MODEL_DIR, atomic.old_path(path / MODEL_DIR)
    if not any(p.exists() for p in (model_dir, old, path / "log.csv", path / "samples")):
        raise CheckpointError(f"{path}: not a difflab training run (no model/, log.csv or samples/ in it)")
    if not model_dir.exists():
        model_dir = old if old.is_dir() else None
    return _Run(path, path, model_dir)


# ---------------------------------------------------------------------------------------------
# Files


def _check_files(run: _Run) -> list[Finding]:
    """The model directory and its files, and log.csv."""
    found = []
    if run.model_dir is None:
        found.append(Finding("error", "checkpoint", f"{run.path} holds no model directory: training saved no "
                             "checkpoint yet (it saves every ckpt_every steps and at the end) or it was deleted; "
                             "there is nothing to sample or resume"))
    elif run.out_dir is not None and run.model_dir == atomic.old_path(run.out_dir / MODEL_DIR):
        found.append(Finding("warning", "checkpoint", f"a checkpoint save was interrupted: {run.out_dir}/model is "
                             "missing and the previous checkpoint waits in .old-model; difflab.load or "
                             "'difflab train --resume' puts it back"))
    if run.model_dir is not None:
        found += _model_files(run)
    if run.out_dir is not None and not (run.out_dir / "log.csv").exists():
        found.append(Finding("warning", "log", f"{run.out_dir} has no log.csv, so the loss cannot be checked"))
    elif run.out_dir is None:
        found.append(Finding("info", "log", "a model directory without its run folder: no log.csv to check the "
                             "loss with (give the training output folder)"))
    return found


def _model_files(run: _Run) -> list[Finding]:
    """Weights, EMA weights and the training state of an existing model directory."""
    md, found = run.model_dir, []
    if not (md / "model.safetensors").exists():
        found.append(Finding("error", "weights", f"{md} has no model.safetensors: the checkpoint is incomplete "
                             "and cannot be resumed; retrain or restore the file"))
    has_ema = (md / "ema.safetensors").exists()
    if run.config is not None and run.config.ema_decay > 0 and not has_ema:
        found.append(Finding("error", "ema-weights", f"{md} has no ema.safetensors although ema_decay is "
                             f"{run.config.ema_decay:g}: sampling falls back to the raw weights and the run cannot "
                             "be resumed; restore the file or retrain"))
    if not any((md / name).exists() for name in STATE_FILES):
        found.append(Finding("warning", "training-state", f"{md} has no training state ({' or '.join(STATE_FILES)}): "
                             "the model can be sampled, but the run cannot be resumed"))
    elif not found:
        found.append(Finding("ok", "checkpoint", f"{md} holds the weights{', the EMA' * has_ema} and the "
                             "training state"))
    return found


def _check_weights(run: _Run) -> list[Finding]:
    """Every weight file of the model directory is readable and finite."""
    if run.model_dir is None:
        return []
    found = []
    for name in WEIGHT_FILES:
        path = run.model_dir / name
        if not path.exists():
            continue
        try:
            tensors = load_file(path)
        except Exception as e:  # noqa: BLE001  (safetensors raises several types for damaged files)
            found.append(Finding("error", "weights", f"{path} cannot be read ({type(e).__name__}: {e}); "
                                 "restore it from a copy or retrain"))
            continue
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            found.append(Finding("error", "weights", f"{path} holds NaN or infinite values ({len(bad)} tensors, "
                                 f"e.g. {bad[0]}): the model is broken; retrain with a lower lr"))
    return found or [Finding("ok", "weights", "the weight files are readable and finite")]


def _check_progress(run: _Run) -> list[Finding]:
    """Whether the checkpoint reached the config's ``steps``."""
    step, steps = (run.info or {}).get("step"), run.config.steps
    if not isinstance(step, int):
        return [Finding("info", "stopped-early", "config.json records no step; progress not checked")]
    if step >= steps:
        return [Finding("ok", "stopped-early", f"the checkpoint is of the last step ({step} of {steps})")]
    last = _last_log_step(run)
    lost = (f"; log.csv goes on to step {last}, so {last - step} steps after the last checkpoint were lost"
            if last is not None and last > step else "")
    out = run.out_dir or (run.model_dir.parent if run.model_dir.name == MODEL_DIR else "OUT")
    return [Finding("warning", "stopped-early", f"the run stopped at step {step} of {steps} (or is still running)"
                    f"{lost}; 'difflab train --out {out} --resume' continues it")]


def _last_log_step(run: _Run) -> int | None:
    try:
        steps = [s for s, _ in read_log(run.out_dir / "log.csv")[0]] if run.out_dir else []
    except (OSError, ValueError):
        return None
    return max(steps, default=None)


# ---------------------------------------------------------------------------------------------
# EMA


def ema_initial_share(config: TrainConfig, steps: int) -> float:
    """The weight that the EMA after ``steps`` updates still gives the network it started from.

    With e_{k+1} = d_k e_k + (1 - d_k) theta_{k+1} and e_0 = theta_0, e_K = (prod_{k<K} d_k) theta_0
    + sum_j w_j theta_j, so the share is prod_{k<K} d_k with d_k = ``ema_decay_at(config, k)``: d^K
    for a constant decay, 9! K! / (K + 9)! during the warm-up (1 + k) / (10 + k). The warm-up only
    grows, so once it reaches ``ema_decay`` the rest of the product is a power.
    """
    log_share = 0.0
    for k in range(steps):
        d = ema_decay_at(config, k)
        if d == config.ema_decay:
            return math.exp(log_share + (steps - k) * math.log(d)) if d > 0 else 0.0
        log_share += math.log(d)
    return math.exp(log_share)


def ema_steps_to_share(config: TrainConfig, share: float) -> int:
    """The fewest steps K with :func:`ema_initial_share` (config, K) <= ``share`` (0 < share < 1)."""
    log_share, target, k = 0.0, math.log(share), 0
    while log_share > target:
        d = ema_decay_at(config, k)
        if d == config.ema_decay:  # constant from here: solve d^n <= exp(target - log_share)
            n = math.ceil((target - log_share) / math.log(d) - 1e-9)
            return k + max(n, 1)
        log_share += math.log(d)
        k += 1
    return k


def _check_ema(run: _Run) -> list[Finding]:
    """How much of the EMA (what samples are drawn from) is still the initial network."""
    c, step = run.config, (run.info or {}).get("step")
    if c.ema_decay == 0:
        return [Finding("info", "ema-horizon", "no EMA (ema_decay 0): samples use the raw weights")]
    if not isinstance(step, int):
        return [Finding("info", "ema-horizon", "config.json records no step; the EMA horizon is not checked")]
    share = ema_initial_share(c, step)
    half_life = math.log(0.5) / math.log(c.ema_decay)
    horizon = (f"ema_decay {c.ema_decay:g} has a half-life of {half_life:,.0f} steps"
               f"{'' if c.ema_warmup else ' and ema_warmup is off'}")
    if share <= EMA_WARNING:
        return [Finding("ok", "ema-horizon", f"the EMA has forgotten its initial network ({share:.2%} left "
                        f"after {step} steps; {horizon})")]
    if c.init is not None:
        return [Finding("info", "ema-horizon", f"the EMA is still {share:.0%} the initial weights after {step} "
                        f"steps ({horizon}); they come from init {c.init}, a trained model, so this is fine")]
    severity = "error" if share > EMA_ERROR else "warning"
    effect = "EMA samples look like noise" if severity == "error" else "EMA samples are degraded by it"
    needed = ema_steps_to_share(c, EMA_WARNING)
    return [Finding(severity, "ema-horizon", f"the EMA weights, which samples are drawn from, are still "
                    f"{share:.1%} the random initial network after {step} steps: {horizon}, so {effect}; "
                    f"set ema_warmup = true, lower ema_decay to at most {_decay_for(step)} for this many steps, "
                    f"or train for at least {needed:,} steps")]


def _decay_for(steps: int) -> str:
    """The largest round decay d with d^steps <= 1%: an EMA short enough for ``steps`` steps."""
    d = EMA_WARNING ** (1 / max(steps, 1))
    digits = math.ceil(-math.log10(1 - d)) + 1
    return f"{math.floor(d * 10**digits) / 10**digits:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# Loss


def read_log(path) -> tuple[list[tuple[int, float]], int]:
    """((step, loss) of every readable row of a log.csv, number of unreadable rows)."""
    rows, bad = [], 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"step", "loss"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: no step and loss columns")
        for r in reader:
            try:
                rows.append((int(r["step"]), float(r["loss"])))
            except (TypeError, ValueError):
                bad += 1
    return rows, bad


def _noise(losses: list[float]) -> float:
    """The standard deviation of one row's loss about the trend, from successive differences
    (robust to a smooth trend and to outliers): 1.4826 MAD(diff) / sqrt(2)."""
    diffs = [b - a for a, b in zip(losses, losses[1:])]
    centre = statistics.median(diffs)
    return 1.4826 * statistics.median(abs(x - centre) for x in diffs) / math.sqrt(2)


def _check_loss(run: _Run) -> list[Finding]:
    """Non-finite losses, then a diverging loss, then a flat one, from log.csv."""
    path = run.out_dir / "log.csv" if run.out_dir else None
    if path is None or not path.exists():
        return [Finding("info", "loss", "no log.csv: the loss is not checked")]
    rows, bad = read_log(path)
    unread = f" ({bad} unreadable rows skipped)" if bad else ""
    broken = [(s, x) for s, x in rows if not math.isfinite(x)]
    if broken:
        return [Finding("error", "loss-nonfinite", f"the loss is {broken[0][1]} at step {broken[0][0]}{unread}: "
                        "training diverged; lower lr, keep grad_clip on, and check the data for NaN")]
    if len(rows) < MIN_LOG_ROWS:
        return [Finding("info", "loss", f"log.csv has {len(rows)} rows{unread}, too few to judge the loss "
                        f"(need {MIN_LOG_ROWS}; lower log_every)")]
    losses = [x for _, x in rows]
    steps = [s for s, _ in rows]
    sigma = _noise(losses)
    # Distillation and consistency training change their target as they go: a rising or flat
    # loss is expected there, so it is only reported.
    expected = run.config is not None and run.config.objective != "denoising"
    found = _diverging(losses, steps, sigma) or _flat(losses, sigma)
    if not found:
        return [Finding("ok", "loss", f"the loss fell from {losses[0]:.4g} to {losses[-1]:.4g} over "
                        f"{steps[-1]} steps{unread}")]
    severity, code, message = found
    if expected:
        severity, message = "info", f"{message} (expected of the {run.config.objective} objective)"
    return [Finding(severity, code, message + unread)]


def _diverging(losses: list[float], steps: list[int], sigma: float):
    """(severity, code, message) when the last window's median loss is well above the lowest
    median of any window of the run (w = max(3, n / 10) rows): by more than 4 standard errors
    and 25% of that minimum (a warning) or 100% (an error). None otherwise."""
    w = max(3, len(losses) // 10)
    medians = [statistics.median(losses[i - w:i]) for i in range(w, len(losses) + 1)]
    best = min(range(len(medians)), key=medians.__getitem__)
    low, recent = medians[best], medians[-1]
    noise = 4 * 1.2533 * sigma / math.sqrt(w)  # 4 standard errors of a median of w rows
    rise = recent - low
    if rise <= max(noise, 0.25 * abs(low)):
        return None
    severity = "error" if rise > max(noise, abs(low)) else "warning"
    return (severity, "loss-diverging", f"the loss is rising: {recent:.4g} over the last {w} rows against "
            f"{low:.4g} at step {steps[best + w - 1]}; the learning rate ({'far ' * (severity == 'error')}"
            "too high?) or the data may be at fault: lower lr or add warm-up, and compare the sample grids "
            "of samples/ over the steps")


def _flat(losses: list[float], sigma: float):
    """(severity, code, message) when the median loss of the last 20% of the rows is not below
    that of the first 20% by 2 standard errors of their difference (1.2533 sigma sqrt(2 / m) for
    medians of m rows) and 2% of the first, nor below the first row (the untrained network's
    loss, for a loss that levels off early) by 3 sigma and 5% of it. None otherwise."""
    m = max(2, round(0.2 * len(losses)))
    first, last = statistics.median(losses[:m]), statistics.median(losses[-m:])
    needed = max(2 * 1.2533 * sigma * math.sqrt(2 / m), 0.02 * abs(first))
    if first - last >= needed or losses[0] - last >= max(3 * sigma, 0.05 * abs(losses[0])):
        return None
    return ("warning", "loss-flat", f"the loss is not going down: {last:.4g} over the last {m} rows against "
            f"{first:.4g} over the first {m} (a fall of at least {needed:.2g} would be clear): the model is "
            "not learning, or levelled off at once; check lr (too low or far too high), the data and the network")


# ---------------------------------------------------------------------------------------------
# Config and data


def _check_lr(run: _Run) -> list[Finding]:
    """The learning rate against its preset's, when the run started from one."""
    c = run.config
    preset = PRESETS.get(c.preset)
    if preset is None:
        return [Finding("info", "lr", f"preset {c.preset!r} is not a built-in preset: no learning rate to "
                        "compare with")]
    ratio = c.lr / preset.lr
    if 1 / LR_FACTOR <= ratio <= LR_FACTOR:
        return [Finding("ok", "lr", f"lr {c.lr:g} is within {LR_FACTOR:g}x of the {c.preset} preset's {preset.lr:g}")]
    if ratio > 1:
        effect = "so large a rate tends to make the loss diverge and the samples blurry"
        times = f"{ratio:.0f}x"
    else:
        effect = "training with so small a rate is slow and stops far from where it could"
        times = f"1/{1 / ratio:.0f}"
    return [Finding("warning", "lr", f"lr {c.lr:g} is {times} the {c.preset} preset's {preset.lr:g}: {effect}; "
                    f"unless the batch size or network changed a lot, go back toward {preset.lr:g}")]


def _check_data(run: _Run) -> list[Finding]:
    """Images in [-1, 1] and not only in [0, 1] or a sliver of it; the data's scale against the one
    the preconditioning assumes (sigma_data for EDM, 1 for the other schedules)."""
    c = run.config
    if c.data is None:
        return [Finding("info", "data", "the config names no data set: the data are not checked")]
    try:
        ds = load_dataset(c.data, resolution=c.resolution, channels=c.channels, size=DATA_SAMPLE, seed=c.seed)
    except (DataError, ValueError, OSError) as e:
        return [Finding("info", "data", f"the data set cannot be loaded here, so it is not checked ({e})")]
    found = _image_range(ds) if ds.kind == "image" else []
    if c.autoencoder is None:
        found += _data_scale(ds, c)
    return found


def _image_range(ds) -> list[Finding]:
    lo, hi = ds.x.min().item(), ds.x.max().item()
    span = f"the images of {ds.name} lie in [{lo:.3g}, {hi:.3g}]"
    if lo >= -1e-3 and hi <= 1 + 1e-3:
        return [Finding("error", "data-range", f"{span}, inside [0, 1], but models take images in [-1, 1] (black -1, "
                        "white 1): samples come out in the wrong range; rescale with x * 2 - 1, or store uint8 "
                        "in 0..255, which difflab maps to [-1, 1]")]
    if hi - lo < 0.25:
        return [Finding("error", "data-range", f"{span}, a sliver of [-1, 1]: the images are nearly constant (uint8 "
                        "data holding 0..1 instead of 0..255?); store uint8 in 0..255 or floats in [-1, 1]")]
    return [Finding("ok", "data-range", f"{span}")]


def _data_scale(ds, c: TrainConfig) -> list[Finding]:
    std = ds.x.float().std().item()
    edm = c.prediction == "edm" or c.weighting == "edm"
    scale, name = (c.sigma_data, f"sigma_data {c.sigma_data:g}") if edm else (1.0, "1")
    ratio = std / scale
    if 1 / SCALE_FACTOR <= ratio <= SCALE_FACTOR:
        return [Finding("ok", "data-scale", f"the data's standard deviation {std:.3g} is close to {name}")]
    assumes = ("EDM preconditioning scales the network's input and output for data of standard deviation "
               "sigma_data" if edm else "the schedule's noise assumes data of about unit scale")
    fix = f"set sigma_data = {std:.2g} or standardise the data" if edm else "standardise the data"
    return [Finding("warning", "data-scale", f"the data's standard deviation is {std:.3g}, {ratio:.3g}x {name}: "
                    f"{assumes}; {fix}")]


_CHECKS = (  # (code for a check that cannot run, check, needs the config)
    ("checkpoint", _check_files, False),
    ("weights", _check_weights, False),
    ("stopped-early", _check_progress, True),
    ("ema-horizon", _check_ema, True),
    ("loss", _check_loss, False),
    ("lr", _check_lr, True),
    ("data", _check_data, True),
)

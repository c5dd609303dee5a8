"""The trained-model directory of DESIGN.md: save it atomically, load it, sample from it.

A training run's output folder ``OUT`` holds the model directory ``OUT/model``::

    config.json          TrainConfig.to_dict() plus data_shape, data_kind, class_names, step,
                         difflab_version: everything needed to rebuild the model
    model.safetensors    the trained weights
    ema.safetensors      their exponential moving average (when ema_decay > 0)
    training_state.pt    optimizer state, step and run statistics, for resuming

A checkpoint is first written completely into ``OUT/.tmp-XXXX`` (every file fsynced) and then
renamed into place, so ``OUT/model`` is always one complete checkpoint: the previous one is moved
to ``OUT/.old-model`` for the instant between the two renames, and :func:`recover` puts it back
if a crash struck exactly then. Loading reads JSON and safetensors only; the optimizer state is
read with ``torch.load(..., weights_only=True)``, which unpickles nothing but tensors and plain data.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from .config import TrainConfig
from .denoisers import NetworkDenoiser
from .guidance import check_labels, guided_denoiser
from .nets import build_network
from .samplers import SAMPLERS
from .samplers import sample as run_sampler
from .schedules import karras_sigmas, make_schedule

__all__ = ["CheckpointError", "TrainedModel", "MODEL_DIR", "save_checkpoint", "load", "recover",
           "find_model_dir", "read_config", "read_training_state", "load_weights"]

MODEL_DIR = "model"
SAMPLE_BUDGET = 2**18  # default sampling batch: about this many numbers per batch of x


class CheckpointError(ValueError):
    """A model directory is missing, incomplete or corrupt, or a request does not fit the model."""


# ---------------------------------------------------------------------------------------------
# Saving


def _write_synced(path: Path, write) -> None:
    """``write(file)`` then flush and fsync, so the bytes are on disk before any rename."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _state_bytes(module: nn.Module, step: int) -> bytes:
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return save(tensors, metadata={"step": str(step)})


def save_checkpoint(out_dir, config: TrainConfig, model: nn.Module, ema: nn.Module | None,
                    optimizer: torch.optim.Optimizer, step: int, extra: dict | None = None) -> Path:
    """Write the model directory ``out_dir/model`` atomically and return its path.

    ``extra["data"]`` (a ``Dataset.info()`` dict) fills config.json's data fields; every other
    key of ``extra`` (plain data and tensors) is stored in training_state.pt.
    """
    from . import __version__

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    data = extra.pop("data", {})
    meta = {**config.to_dict(), "data_shape": list(data.get("shape", [])), "data_kind": data.get("kind"),
            "data_name": data.get("name"), "class_names": data.get("class_names"), "step": step,
            "difflab_version": __version__}
    state = {"step": step, "optimizer": optimizer.state_dict(), **extra}
    tmp = out_dir / f".tmp-{secrets.token_hex(4)}"
    tmp.mkdir()  # not tempfile.mkdtemp: its mode 0700 would become the model directory's
    try:
        _write_synced(tmp / "config.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
        _write_synced(tmp / "model.safetensors", lambda f: f.write(_state_bytes(model, step)))
        if ema is not None:
            _write_synced(tmp / "ema.safetensors", lambda f: f.write(_state_bytes(ema, step)))
        _write_synced(tmp / "training_state.pt", lambda f: torch.save(state, f))
        _fsync_dir(tmp)
        final, old = out_dir / MODEL_DIR, out_dir / f".old-{MODEL_DIR}"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final


def recover(out_dir) -> None:
    """Undo a crash between the two renames of :func:`save_checkpoint`: ``model`` missing but the
    complete previous checkpoint in ``.old-model``. (Half-written ``.tmp-*`` folders are never
    read; :func:`difflab.train.train` removes them when it starts.)"""
    out_dir = Path(out_dir)
    final, old = out_dir / MODEL_DIR, out_dir / f".old-{MODEL_DIR}"
    if not final.exists() and (old / "config.json").exists():
        os.replace(old, final)


# ---------------------------------------------------------------------------------------------
# Reading


def find_model_dir(path) -> Path:
    """The model directory at ``path``: ``path`` itself, or ``path/model`` for a training output
    folder (recovering an interrupted save first). Raises CheckpointError if there is none."""
    path = Path(path).expanduser()
    if path.name == MODEL_DIR and not path.exists() and path.parent.is_dir():
        recover(path.parent)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such model directory")
    if not (path / "config.json").exists():
        if (path / f".old-{MODEL_DIR}").exists() or (path / MODEL_DIR).exists():
            recover(path)
            if (path / MODEL_DIR / "config.json").exists():
                return path / MODEL_DIR
        raise CheckpointError(f"{path}: not a difflab model directory (no config.json)")
    return path


def read_config(model_dir) -> tuple[TrainConfig, dict]:
    """(TrainConfig, the other config.json fields) of a model directory."""
    path = Path(model_dir) / "config.json"
    try:
        meta = json.loads(path.read_text())
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from e
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    info = {k: meta.pop(k, None) for k in ("data_shape", "data_kind", "data_name", "class_names", "step",
                                           "difflab_version")}
    try:
        config = TrainConfig.from_dict(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a valid training config ({e})") from e
    if not info["data_shape"]:
        raise CheckpointError(f"{path}: data_shape is missing")
    return config, info


def load_weights(module: nn.Module, path, device="cpu") -> None:
    """Load a safetensors file into ``module`` (every key must match)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: missing weights file")
    try:
        state = load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the weights ({e})") from e
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not match the network in config.json ({first})") from e


def read_training_state(model_dir, device="cpu") -> dict:
    """training_state.pt, read with ``weights_only=True`` (no arbitrary unpickling)."""
    path = Path(model_dir) / "training_state.pt"
    if not path.exists():
        raise CheckpointError(f"{path}: missing, so the run cannot be resumed")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many types for corrupt or unsafe files)
        raise CheckpointError(f"{path}: cannot read the training state ({type(e).__name__})") from e


def load(path, device="cpu") -> TrainedModel:
    """Load a model directory (or a training output folder holding ``model/``) for sampling."""
    model_dir = find_model_dir(path)
    config, info = read_config(model_dir)
    try:
        net = build_network(config.network, config.net)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{model_dir}/config.json: cannot build the network ({e})") from e
    weights = model_dir / "ema.safetensors"
    load_weights(net, weights if weights.exists() else model_dir / "model.safetensors", device)
    return TrainedModel(net.to(device), config, info["data_shape"], info["class_names"], info["data_kind"],
                        info["step"])


# ---------------------------------------------------------------------------------------------
# Sampling


class TrainedModel:
    """A trained network with its config: ``.denoiser`` (eval mode, EMA weights when saved),
    ``.net``, ``.config``, ``.data_shape``, ``.num_classes``, ``.class_names`` and :meth:`sample`."""

    def __init__(self, net: nn.Module, config: TrainConfig, data_shape, class_names=None,
                 data_kind: str | None = None, step: int | None = None):
        self.net, self.config = net.eval(), config
        self.data_shape = tuple(int(s) for s in data_shape)
        self.class_names = None if class_names is None else tuple(class_names)
        self.data_kind = data_kind or ("image" if len(self.data_shape) == 3 else "points")
        self.step = step
        self.schedule = make_schedule(config.schedule)
        self.denoiser = NetworkDenoiser(net, self.schedule, config.prediction, config.sigma_data).eval()

    @property
    def num_classes(self) -> int | None:
        return self.config.num_classes

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def __repr__(self) -> str:
        return (f"TrainedModel({self.config.preset!r}, data_shape={self.data_shape}, "
                f"num_classes={self.num_classes}, step={self.step})")

    def labels(self, y, n: int, classifier=None) -> torch.Tensor | None:
        """Class ids (n,) for ``y`` (int, sequence or tensor; default 0, 1, ..., K-1, 0, ...
        cycling) over the model's classes, or a guidance classifier's for an unconditional model;
        None when there are no classes."""
        num_classes = self.num_classes or (classifier.num_classes if classifier is not None else None)
        if num_classes is None:
            if y is not None:
                raise CheckpointError("this model is unconditional; class labels y need a guidance classifier")
            return None
        if y is None:
            return torch.arange(n) % num_classes
        try:
            return check_labels(y, num_classes, n)
        except ValueError as e:
            raise CheckpointError(str(e)) from e

    def sample(self, n: int, *, sampler: str = "dpmpp_2m", steps: int = 20, seed: int | None = None,
               y=None, guidance: float | None = None, classifier=None, classifier_scale: float = 1.0,
               batch_size: int | None = None, progress: bool = False, sigma_min: float | None = None,
               sigma_max: float | None = None) -> torch.Tensor:
        """n samples (on the CPU) in the data's shape; images are clamped to [-1, 1].

        Starts from x = sigma_max n and integrates along Karras et al. (2022, eq. 5) sigmas between
        the schedule's sigma range (or ``sigma_min``/``sigma_max``) with ``sampler``. ``y``: class ids
        (default: 0, 1, ..., K-1, 0, ... cycling); ``guidance``: the classifier-free guidance scale
        w of :func:`difflab.guidance.cfg`, D = D(x|null) + w (D(x|y) - D(x|null)) from one batched
        call (Ho & Salimans 2022; 1: plain conditional, 0: unconditional). ``classifier``: a
        :class:`~difflab.guidance.ClassLogProb` (e.g. :func:`difflab.train_classifier.load_classifier`'s
        second value) adding classifier guidance with ``classifier_scale`` (Dhariwal & Nichol 2021),
        also to unconditional models. Both go through :func:`difflab.guidance.guided_denoiser`.
        Draws happen in batches of ``batch_size``; the result is a function of (n, seed,
        batch_size, sampler, steps, y, guidance, classifier, classifier_scale).
        """
        if n < 1 or steps < 1:
            raise CheckpointError(f"need n >= 1 and steps >= 1, got n={n}, steps={steps}")
        if sampler not in SAMPLERS:
            raise CheckpointError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
        labels = self.labels(y, n, classifier)
        try:
            denoiser, cond = guided_denoiser(self.denoiser, y=labels, num_classes=self.num_classes,
                                             guidance=guidance, classifier=classifier,
                                             classifier_scale=classifier_scale)
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        lo = self.schedule.sigma_min if sigma_min is None else sigma_min
        hi = self.schedule.sigma_max if sigma_max is None else sigma_max
        if not 0 < lo < hi:
            raise CheckpointError(f"need 0 < sigma_min < sigma_max, got {lo} and {hi}")
        device = self.device
        sigmas = karras_sigmas(steps, lo, hi).to(device)
        gen = torch.Generator(device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        batch_size = batch_size or max(1, SAMPLE_BUDGET // math.prod(self.data_shape))
        out = []
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                x = sigmas[0] * torch.randn((b, *self.data_shape), generator=gen, device=device)
                batch_cond = None if cond is None else {"y": cond["y"][start:start + b].to(device)}
                x = run_sampler(denoiser, x, sigmas, sampler, generator=gen, progress=progress, cond=batch_cond)
                out.append(x.float().cpu())
        x = torch.cat(out)
        return x.clamp(-1, 1) if self.data_kind == "image" else x

"""The trained-model directory (docs/design.md, "Trained models"): write it atomically, read it back.

A training run's output folder ``OUT`` holds the model directory ``OUT/model``::

    config.json          TrainConfig.to_dict() plus data_shape, data_kind, class_names, step,
                         difflab_version: everything needed to rebuild the model
    model.safetensors    the trained weights
    ema.safetensors      their exponential moving average (when ema_decay > 0)
    training_state.json         step, run statistics and the optimizer's hyperparameters, for resuming
    training_state.safetensors  the optimizer's tensors (AdamW's moments and step counts)

A checkpoint is written by :func:`difflab.io.atomic.directory`: completely into a temporary
folder (every file fsynced), then renamed into place, so ``OUT/model`` is always one complete
checkpoint; the previous one waits in ``OUT/.old-model`` for the instant between the two renames,
and :func:`recover` puts it back if a crash struck exactly then. Every file is JSON or
safetensors: nothing in a model directory is ever unpickled (a ``training_state.pt`` of older
versions, or one planted there, is never opened). :mod:`difflab.pipeline` loads a directory for
sampling.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from ..io import atomic
from ..nets import build_network
from .config import TrainConfig

__all__ = ["CheckpointError", "MODEL_DIR", "AUTOENCODER_DIR", "save_checkpoint", "recover", "find_model_dir", "read_config",
           "read_training_state", "load_weights", "build_model"]

MODEL_DIR = "model"
STATE_JSON, STATE_TENSORS = "training_state.json", "training_state.safetensors"
LEGACY_STATE = "training_state.pt"  # written by difflab before 0.x; never read (it is a pickle)
AUTOENCODER_DIR = "autoencoder"  # inside a latent model's directory


class CheckpointError(ValueError):
    """A model directory is missing, incomplete or corrupt, or a request does not fit the model."""


# ---------------------------------------------------------------------------------------------
# Saving


def _state_bytes(module: nn.Module, step: int) -> bytes:
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return save(tensors, metadata={"step": str(step)})


def save_checkpoint(out_dir, config: TrainConfig, model: nn.Module, ema: nn.Module | None,
                    optimizer: torch.optim.Optimizer, step: int, extra: dict | None = None,
                    autoencoder=None) -> Path:
    """Write the model directory ``out_dir/model`` atomically and return its path.

    ``extra["data"]`` (a ``Dataset.info()`` dict) fills config.json's data fields; every other
    key of ``extra`` (JSON data) is stored in training_state.json. ``autoencoder``: the
    directory of a latent model's autoencoder, copied into ``model/autoencoder`` so that the model
    directory is complete by itself.
    """
    from ..version import __version__

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    data = extra.pop("data", {})
    meta = {**config.to_dict(), "data_shape": list(data.get("shape", [])), "data_kind": data.get("kind"),
            "data_name": data.get("name"), "class_names": data.get("class_names"), "step": step,
            "sample_rate": data.get("sample_rate"),
            "difflab_version": __version__}
    state_json, state_tensors = _split_state({"step": step, "optimizer": optimizer.state_dict(), **extra})
    final = out_dir / MODEL_DIR
    try:
        _write_model_dir(final, meta, model, ema, step, state_json, state_tensors, autoencoder)
    except OSError as e:  # disk full, read-only folder, ...: the previous checkpoint stays in place
        kept = "the previous checkpoint is kept" if (final / "config.json").exists() else "nothing was saved"
        raise CheckpointError(f"cannot write the checkpoint of step {step} to {final} "
                              f"({e.strerror or e}); {kept}") from e
    return final


def _write_model_dir(final, meta, model, ema, step, state_json, state_tensors, autoencoder) -> None:
    with atomic.directory(final) as tmp:
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        (tmp / "model.safetensors").write_bytes(_state_bytes(model, step))
        if ema is not None:
            (tmp / "ema.safetensors").write_bytes(_state_bytes(ema, step))
        (tmp / STATE_TENSORS).write_bytes(save(state_tensors))
        (tmp / STATE_JSON).write_text(json.dumps(state_json, indent=1))
        if autoencoder is not None:
            shutil.copytree(Path(autoencoder), tmp / AUTOENCODER_DIR)


def recover(out_dir) -> None:
    """Undo a crash between the two renames of :func:`save_checkpoint`: ``model`` missing but the
    complete previous checkpoint in ``.old-model``. (Half-written ``.tmp-*`` folders are never
    read; :func:`difflab.training.train` removes them when it starts.)"""
    atomic.recover(Path(out_dir) / MODEL_DIR)


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
        if atomic.old_path(path / MODEL_DIR).exists() or (path / MODEL_DIR).exists():
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
                                           "difflab_version", "sample_rate")}
    try:
        config = TrainConfig.from_dict(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a valid training config ({e})") from e
    if not info["data_shape"]:
        raise CheckpointError(f"{path}: data_shape is missing")
    return config, info


def load_weights(module: nn.Module, path, device="cpu", missing_prefix: str | None = None) -> None:
    """Load a safetensors file into ``module`` (every key must match, but for keys of the module
    starting with ``missing_prefix``, which keep their values)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: missing weights file")
    try:
        state = load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the weights ({e})") from e
    if missing_prefix is not None:
        state = {**{k: v for k, v in module.state_dict().items() if k.startswith(missing_prefix)}, **state}
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not match the network in config.json ({first})") from e


def read_training_state(model_dir, device="cpu") -> dict:
    """The training state of a model directory, ``{"step", "optimizer", **extra}`` as
    :func:`save_checkpoint` received it, from training_state.json and training_state.safetensors
    (no unpickling)."""
    model_dir = Path(model_dir)
    path, tensors_path = model_dir / STATE_JSON, model_dir / STATE_TENSORS
    if not path.exists():
        if (model_dir / LEGACY_STATE).exists():
            raise CheckpointError(f"{model_dir}: its training state is a pickle ({LEGACY_STATE}, older difflab), which "
                                  "difflab never unpickles; start a new run from its weights with --set init=DIR")
        raise CheckpointError(f"{path}: missing, so the run cannot be resumed")
    try:
        state = json.loads(path.read_text())
        tensors = load_file(tensors_path, device=str(device))
        return _join_state(state, tensors)
    except FileNotFoundError as e:
        raise CheckpointError(f"{tensors_path}: missing, so the run cannot be resumed") from e
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise CheckpointError(f"{model_dir}: the training state is damaged ({type(e).__name__}: {e})") from e


def _split_state(state: dict) -> tuple[dict, dict]:
    """(JSON data, tensors) of a training state: the optimizer's per-parameter tensors go to the
    tensors as ``optimizer.<param id>.<name>``, everything else (its hyperparameters, the step and
    the run statistics) to JSON."""
    optimizer = state["optimizer"]
    tensors, scalars = {}, {}
    for pid, entries in optimizer["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in optimizer["param_groups"]]
    rest = {k: v for k, v in state.items() if k != "optimizer"}
    return {**rest, "optimizer": {"param_groups": groups, "scalars": scalars}}, tensors


def _join_state(state: dict, tensors: dict) -> dict:
    """The inverse of :func:`_split_state`."""
    entries: dict = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        entries.setdefault(int(pid), {})[name] = value
    for key, value in state["optimizer"]["scalars"].items():
        pid, name = key.split(".", 1)
        entries.setdefault(int(pid), {})[name] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in state["optimizer"]["param_groups"]]
    return {**{k: v for k, v in state.items() if k != "optimizer"},
            "optimizer": {"state": entries, "param_groups": groups}}


def build_model(path, device="cpu") -> tuple[nn.Module, TrainConfig, dict]:
    """(network with the weights to sample from, its TrainConfig, the other config.json fields) of
    a model directory or a training output folder: EMA weights when the directory has them."""
    model_dir = find_model_dir(path)
    config, info = read_config(model_dir)
    try:
        net = build_network(config.network, config.net)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{model_dir}/config.json: cannot build the network ({e})") from e
    weights = model_dir / "ema.safetensors"
    load_weights(net, weights if weights.exists() else model_dir / "model.safetensors", device)
    return net.to(device), config, info

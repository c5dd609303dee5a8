"""Training configuration: one plain dataclass, named presets, and TOML files.

A :class:`TrainConfig` is data only (JSON / TOML serialisable, no objects): the network is a
``build_network`` kind plus its config dict, the schedule is ``Schedule.to_dict()`` output. The
network's data-dependent fields (``in_channels``, ``resolution``, ``dim``, ``num_classes``) are
filled in from the data set by :func:`difflab.training.train`, and the resolved config is what a
model directory's ``config.json`` stores.

A TOML file holds TrainConfig fields as top-level keys and ``[net]`` / ``[schedule]`` tables; a
``preset = "NAME"`` key starts from that preset, and the tables update the preset's dicts key by
key. TOML has no null: a key left out keeps the preset's (or the default) value.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io import atomic
from ..nets import NETWORKS as NETWORK_CLASSES
from ..nets import UNET_PRESETS, DiTConfig, MLPConfig, UNetConfig
from ..nets.wavenet import WaveNetConfig
from ..nets.text import TextConfig
from ..samplers import SAMPLERS
from ..schedules import EDM, DiscreteVP, Flow, LogSNRTable, consistency_sigmas, make_schedule
from .data import SHAPES_TEXT_VOCAB
from .tasks import IMAGE_TASKS

__all__ = ["TrainConfig", "PRESETS", "load_config", "save_config", "config_from_dict", "native_sampling"]

NETWORKS = ("unet", "dit", "mlp", "wavenet")
TRAIN_PREDICTIONS = ("eps", "x0", "v", "flow", "edm", "consistency")
WEIGHTINGS = ("uniform", "min_snr", "edm")
PRECISIONS = ("fp32", "bf16")
LR_DECAYS = ("none", "cosine", "linear")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
TIME_SAMPLINGS = ("default", "uniform", "logit_normal")
COUPLINGS = ("independent", "ot", "pairs")
OBJECTIVES = ("denoising", "progressive", "consistency", "guided", "vdm")
TASKS = ("generate", "impute", *IMAGE_TASKS)  # IMAGE_TASKS: conditional denoisers (SR3 / Palette), .tasks
_DICT_FIELDS = ("net", "schedule", "distill", "native")
#: Presets of latent models: they train on the latents of an autoencoder given as --autoencoder DIR.
LATENT_PRESETS = {"digits-latent": "digits-ae", "shapes-text": "shapes-ae"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Counts of 0 switch a feature off
    (``grad_clip``, ``warmup_steps``, ``ckpt_every`` (then only the final checkpoint),
    ``sample_every``, ``weight_decay``).

    ``keep``: how many checkpoints to keep. ``model/`` is always the latest; with ``keep`` K > 1 the
    K latest are also kept as ``checkpoints/step_XXXXXX/`` (hard links of ``model/``'s files, so
    the latest costs no extra space), each a complete model directory.

    ``lr_decay``: after the warm-up the learning rate stays constant (``none``) or decays to 0 at
    the last step, on a half cosine (``cosine``) or linearly (``linear``).

    ``batch_size`` is the global batch per optimizer step, split over ``grad_accum`` micro-batches
    and the processes of a multi-process run. ``num_classes`` (None: unconditional) makes the model
    class-conditional; ``cond_drop`` replaces a label by the null class with that probability, for
    classifier-free guidance (Ho & Salimans 2022, Algorithm 1). ``P_mean``, ``P_std``: the lognormal
    training sigmas of EDM schedules (Karras et al. 2022, sec. 5); ``min_snr_gamma``: the gamma of
    min-SNR weighting (Hang et al. 2023); ``sigma_data``: EDM preconditioning and weighting.
    ``vlb_weight``: lambda of the hybrid loss L_simple + lambda L_vlb (Nichol & Dhariwal 2021, eq. 16;
    1e-3 there) for a ``learn_sigma`` UNet trained with eps prediction on a DiscreteVP schedule;
    0 (the default) switches it off. See :mod:`difflab.likelihood.learned`. ``precision``: fp32
    (TF32 matrix products on CUDA) or bf16 (autocast on CUDA; the CPU always runs fp32).
    ``compile``: ``torch.compile`` the loss (network forward and backward) with that mode;
    ``"reduce-overhead"`` captures it in CUDA graphs on a GPU.

    Flow matching (Lipman et al. 2023; docs/flow.md) is ``prediction = "flow"`` (the velocity
    n - x0) on the ``Flow`` schedule. ``time_sampling`` for continuous-time schedules: ``uniform``
    t (the default) or ``logit_normal``, t = sigmoid(logit_mean + logit_std z) (Esser et al. 2024,
    sec. 3.1). ``coupling`` of data and noise in a batch: ``independent``, ``ot`` (minibatch optimal
    transport, Tong et al. 2024, exact assignment of the batch) or ``pairs`` (the data set's own
    noise column, from ``difflab reflow``). ``init``: a model directory whose weights start the run.

    ``objective`` (docs/distill.md): ``denoising`` (the default), or a distillation of the model
    directory ``teacher`` -- ``progressive`` (Salimans & Ho 2022), ``consistency`` (Song et al.
    2023; without a teacher: consistency training, Song & Dhariwal 2024) or ``guided`` (Meng et al.
    2023) -- with its options in the ``distill`` table; or ``vdm``, the continuous-time bound of
    Kingma et al. (2021) with a learned noise schedule (docs/likelihood.md; ``distill`` options
    ``knots``, ``learn_schedule``). ``native``: the sampler and sigmas that
    ``TrainedModel.sample`` uses when none are given (a distilled student's own).

    ``autoencoder``: an autoencoder directory (``difflab train-autoencoder``): the model is trained
    on the data's latents (latent diffusion, Rombach et al. 2022), and its directory holds a copy of
    the autoencoder, which decodes its samples. A text-conditional model is a network whose config
    has a ``text`` entry (a :class:`~difflab.nets.text.TextConfig`) on captioned data; ``cond_drop``
    is then also the caption dropout.

    ``task``: ``generate`` (the default) learns the data's law; ``impute`` (signals, CSDI, Tashiro
    et al. 2021) learns the law of the missing values given the observed ones: each training signal
    gets a random observation mask (a known past for forecasting or scattered observed points,
    :func:`~difflab.training.losses.draw_observation_mask`), the network sees the observed values and
    the mask as extra channels, and the loss counts the missing values only. ``super-resolution``,
    ``colorization``, ``inpainting``, ``uncropping`` (images, a UNet; SR3 and Palette, Saharia et
    al. 2022; docs/conditional.md) learn the law of an image given a degraded version of it, which
    the network sees as extra channels (:mod:`difflab.training.tasks`): ``sr_factor`` is the
    down-sampling factor of super-resolution, ``cond_aug`` the std of the Gaussian noise added to
    its low-resolution input in training (conditioning augmentation for cascades, Ho et al. 2022).
    """

    preset: str = "custom"
    data: str | None = None
    resolution: int | None = None
    channels: int | None = None
    network: str = "unet"
    net: dict = field(default_factory=dict)
    schedule: dict = field(default_factory=lambda: EDM().to_dict())
    prediction: str = "edm"
    weighting: str = "edm"
    min_snr_gamma: float = 5.0
    sigma_data: float = 0.5
    P_mean: float = -1.2
    P_std: float = 1.2
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_decay: str = "none"
    grad_clip: float = 1.0
    batch_size: int = 64
    grad_accum: int = 1
    steps: int = 10_000
    ema_decay: float = 0.999
    ema_warmup: bool = True
    precision: str = "fp32"
    seed: int = 0
    ckpt_every: int = 1000
    keep: int = 1
    sample_every: int = 1000
    log_every: int = 50
    num_classes: int | None = None
    cond_drop: float = 0.0
    sample_sampler: str = "dpmpp_2m"
    sample_steps: int = 20
    vlb_weight: float = 0.0
    compile: str = "none"
    time_sampling: str = "default"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    coupling: str = "independent"
    init: str | None = None
    objective: str = "denoising"
    teacher: str | None = None
    distill: dict = field(default_factory=dict)
    native: dict = field(default_factory=dict)
    autoencoder: str | None = None
    task: str = "generate"
    sr_factor: int = 2
    cond_aug: float = 0.0

    def __post_init__(self):
        for name, hint in _hints().items():
            object.__setattr__(self, name, _check_type(name, getattr(self, name), hint))
        for name in _DICT_FIELDS:
            object.__setattr__(self, name, dict(getattr(self, name)))
        _validate(self)

    def to_dict(self) -> dict:
        """Plain JSON data (tuples become lists, dicts are copied)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ValueError, missing keys take defaults."""
        names = set(_hints())
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; valid keys are {sorted(names)}")
        return cls(**data)

    def replace(self, **overrides) -> TrainConfig:
        """A copy with ``overrides``; string values (from a command line) are converted to the
        field's type: ``"1e-4"`` -> float, ``"none"`` -> None, ``"0.9,0.99"`` -> tuple, JSON for
        dicts. A dotted key ``"net.base_channels"`` sets one entry of a dict field."""
        values = self.to_dict()
        hints = _hints()
        for key, value in overrides.items():
            name, _, sub = key.partition(".")
            if name not in hints or (sub and name not in _DICT_FIELDS):
                raise ValueError(f"unknown TrainConfig key {key!r}; valid keys are {sorted(hints)}")
            if sub:
                values[name][sub] = _parse_like(key, value, values[name].get(sub))
            else:
                values[name] = _coerce(name, value, hints[name])
        return TrainConfig.from_dict(values)


def _hints() -> dict:
    return typing.get_type_hints(TrainConfig)


def _check_type(name: str, value, hint):
    """Accept ``value`` for a field of type ``hint`` (ints for floats, integral floats for ints,
    lists for tuples), else raise a ValueError naming the field."""
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    base = next((a for a in args if a is not type(None)), hint) if isinstance(hint, types.UnionType) else hint
    base_origin = typing.get_origin(base) or base
    if base is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer beyond float range (TOML and JSON integers have no bound here)
            raise ValueError(f"TrainConfig.{name} must be a number within float range, got an integer of "
                             f"{len(str(abs(value)))} digits") from None
    if base is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if base_origin is tuple and isinstance(value, (list, tuple)):
        return tuple(float(v) for v in value)
    if isinstance(value, base_origin) and not (base is int and isinstance(value, bool)):
        return value
    raise ValueError(f"TrainConfig.{name} must be of type {hint}, got {value!r}")


_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _coerce(name: str, value, hint):
    """Convert a command-line string to the type ``hint``; other values pass through unchanged."""
    if not isinstance(value, str):
        return value
    args = typing.get_args(hint)
    if type(None) in args:
        if value.strip().lower() in ("none", "null"):
            return None
        hint = next(a for a in args if a is not type(None))
    try:
        if hint is bool:
            return _BOOLS[value.strip().lower()]
        if hint is int:
            return _parse_int(value)
        if hint is float:
            return float(value)
        if typing.get_origin(hint) is tuple:
            return tuple(float(v) for v in value.strip("()[] ").split(","))
        if hint is dict:
            return json.loads(value)
    except (KeyError, ValueError) as e:
        raise ValueError(f"TrainConfig.{name}: cannot read {value!r} as {hint}") from e
    return value


def _parse_int(text: str) -> int:
    """``"64"``, ``"1e5"``, ``"100_000"`` -> int; a non-integral number is a ValueError."""
    try:
        return int(text)
    except ValueError:
        number = float(text)
        if not number.is_integer():
            raise
        return int(number)


def _parse_like(key: str, value, current):
    """A string for a dict entry, converted like the entry's current value (JSON if unknown)."""
    if not isinstance(value, str) or isinstance(current, str):
        return value
    try:
        if value.strip().lower() in ("none", "null"):
            return None
        if isinstance(current, bool):
            return _BOOLS[value.strip().lower()]
        return json.loads(value)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{key}: cannot read {value!r}") from e


def _validate(c: TrainConfig) -> None:
    """Range and choice checks, each a one-sentence ValueError."""
    choices = {"network": NETWORKS, "prediction": TRAIN_PREDICTIONS, "weighting": WEIGHTINGS,
               "precision": PRECISIONS, "compile": COMPILE_MODES, "time_sampling": TIME_SAMPLINGS,
               "coupling": COUPLINGS, "objective": OBJECTIVES, "lr_decay": LR_DECAYS, "task": TASKS}
    for name, allowed in choices.items():
        if getattr(c, name) not in allowed:
            raise ValueError(f"TrainConfig.{name} must be one of {', '.join(allowed)}, got {getattr(c, name)!r}")
    for name in ("batch_size", "grad_accum", "steps", "log_every", "sample_steps", "keep"):
        if getattr(c, name) < 1:
            raise ValueError(f"TrainConfig.{name} must be at least 1, got {getattr(c, name)}")
    for name in ("warmup_steps", "ckpt_every", "sample_every", "seed", "grad_clip", "weight_decay"):
        if getattr(c, name) < 0:
            raise ValueError(f"TrainConfig.{name} must be non-negative, got {getattr(c, name)}")
    if not c.vlb_weight >= 0 or not math.isfinite(c.vlb_weight):
        raise ValueError(f"TrainConfig.vlb_weight must be non-negative, got {c.vlb_weight}")
    if c.vlb_weight > 0:
        if c.prediction != "eps" or c.schedule.get("beta_schedule") is None:
            raise ValueError("TrainConfig.vlb_weight needs eps prediction on a DiscreteVP schedule")
        if not c.net.get("learn_sigma", False):
            raise ValueError("TrainConfig.vlb_weight needs a network with learn_sigma = true")
    for name in ("lr", "sigma_data", "P_std", "min_snr_gamma"):
        if not getattr(c, name) > 0 or not math.isfinite(getattr(c, name)):
            raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(c, name)}")
    if not 0 <= c.ema_decay < 1:
        raise ValueError(f"TrainConfig.ema_decay must lie in [0, 1), got {c.ema_decay}")
    if len(c.betas) != 2 or not all(0 <= b < 1 for b in c.betas):
        raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {c.betas}")
    if not 0 <= c.cond_drop < 1:
        raise ValueError(f"TrainConfig.cond_drop must lie in [0, 1), got {c.cond_drop}")
    if c.num_classes is not None and c.num_classes < 1:
        raise ValueError(f"TrainConfig.num_classes must be positive or None, got {c.num_classes}")
    if c.cond_drop > 0 and c.num_classes is None and not c.net.get("text"):
        raise ValueError("TrainConfig.cond_drop needs a class-conditional model (set num_classes) or a "
                         "text-conditional one")
    if c.sample_sampler not in SAMPLERS:
        raise ValueError(f"TrainConfig.sample_sampler {c.sample_sampler!r} is not one of {', '.join(SAMPLERS)}")
    try:
        schedule = make_schedule(c.schedule)
        lo, hi = schedule.sigma_min, schedule.sigma_max
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"TrainConfig.schedule {c.schedule} is not a valid schedule ({e})") from e
    if not 0 <= lo < hi:
        raise ValueError(f"TrainConfig.schedule {c.schedule} spans sigma {lo} to {hi}; it needs "
                         "0 <= sigma_min < sigma_max")
    _check_net(c.network, c.net)
    if (c.prediction == "consistency") != (c.objective == "consistency"):
        raise ValueError("a consistency model (prediction 'consistency') is trained with objective 'consistency', "
                         "and that objective needs it")
    if c.objective in ("progressive", "guided") and c.teacher is None:
        raise ValueError(f"TrainConfig.objective {c.objective!r} distils a teacher: set teacher = a model directory")
    if c.objective == "denoising" and (c.teacher is not None or c.distill):
        raise ValueError("TrainConfig.teacher and distill apply to a distillation objective")
    if c.native and (c.native.get("sampler") not in SAMPLERS or not isinstance(c.native.get("sigmas"), list)):
        raise ValueError(f"TrainConfig.native must hold a sampler of {', '.join(SAMPLERS)} and a list of sigmas, "
                         f"got {c.native}")
    if c.time_sampling != "default" and isinstance(schedule, (EDM, DiscreteVP)):
        raise ValueError(f"TrainConfig.time_sampling {c.time_sampling!r} applies to continuous-time schedules; "
                         f"{type(schedule).__name__} draws its own noise levels")
    if c.task == "impute" and (c.network != "wavenet" or c.objective != "denoising"):
        raise ValueError("TrainConfig.task 'impute' trains a wavenet on signals with the denoising objective")
    if c.task in IMAGE_TASKS and (c.network != "unet" or c.objective != "denoising"):
        raise ValueError(f"TrainConfig.task {c.task!r} trains a unet on images with the denoising objective")
    if c.sr_factor < 2 or not 0 <= c.cond_aug < math.inf:
        raise ValueError(f"TrainConfig.sr_factor must be at least 2 and cond_aug a non-negative number, "
                         f"got {c.sr_factor} and {c.cond_aug}")
    if not c.logit_std > 0 or not math.isfinite(c.logit_std) or not math.isfinite(c.logit_mean):
        raise ValueError(f"TrainConfig.logit_std must be positive, got {c.logit_std}")


#: Integer fields of the network configs that may be 0 (every other one must be at least 1).
_NET_ZERO_OK = ("num_res_blocks", "depth", "cond_channels")


def _check_net(network: str, net: dict) -> None:
    """The entries of the ``net`` table that the network's config has must be of their types
    (positive integers, 0 also where :data:`_NET_ZERO_OK`; finite numbers; true / false; lists of
    positive integers) and pass the config's own checks: a bad value is this one sentence, not an
    error deep in PyTorch when the network is built. (Keys it lacks, a table of another network
    kind, are reported when the network is built, beside the data that chose the kind.)"""
    config_cls = NETWORK_CLASSES[network][0]
    hints = _field_hints(config_cls)
    known = {k: v for k, v in net.items() if k in hints}
    for name, value in known.items():
        hint = hints[name]
        if value is None and type(None) in typing.get_args(hint):
            continue
        base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) \
            if isinstance(hint, types.UnionType) else hint
        kind = typing.get_origin(base) or base
        if not _net_value_ok(name, value, kind):
            expected = "a number in [0, 1)" if name == "dropout" else _NET_KINDS.get(kind, kind.__name__)
            raise ValueError(f"TrainConfig.net.{name} must be {expected}{' (or 0)' if name in _NET_ZERO_OK else ''}, "
                             f"got {value!r}")
    try:
        config_cls.from_dict(known)
    except (TypeError, ValueError) as e:
        raise ValueError(f"TrainConfig.net does not fit the {network} network ({e})") from e


@functools.lru_cache(maxsize=None)
def _field_hints(config_cls) -> dict:
    return typing.get_type_hints(config_cls)


_NET_KINDS = {int: "a positive integer", float: "a finite number", bool: "true or false",
              tuple: "a list of positive integers", dict: "a table", str: "a string"}


def _net_value_ok(name: str, value, kind) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and value >= (0 if name in _NET_ZERO_OK else 1)
    if kind is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return number and (name != "dropout" or 0 <= value < 1)
    if kind is tuple:
        return isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                        for v in value)
    return isinstance(value, kind)


def native_sampling(config: TrainConfig):
    """(sampler, sigmas (float64), sampler options) of ``config.native`` (a distilled student's own
    way to sample), or None when the config has none."""
    if not config.native:
        return None
    sigmas = torch.tensor(config.native["sigmas"], dtype=torch.float64)
    return config.native["sampler"], sigmas, dict(config.native.get("options", {}))


# ---------------------------------------------------------------------------------------------
# Presets


def _presets() -> dict[str, TrainConfig]:
    digits_net = UNET_PRESETS["digits"].to_dict()
    edm = dict(prediction="edm", weighting="edm", schedule=EDM().to_dict(), ema_warmup=True)
    # Flow matching (Lipman et al. 2023, eq. 23): the velocity n - x0 on the linear path, the plain
    # (uniform) squared error, t ~ U(0, 1).
    flow = dict(prediction="flow", weighting="uniform", schedule=Flow().to_dict())
    ct = dict(prediction="consistency", objective="consistency", schedule=EDM().to_dict(), sample_sampler="consistency",
              native={"sampler": "consistency", "sigmas": consistency_sigmas(2, 0.002, 80.0),
                      "options": {"sigma_min": 0.002}})
    digits = TrainConfig(
        preset="digits", data="digits", network="unet", net=digits_net, **edm,
        lr=2e-3, warmup_steps=100, batch_size=128, steps=1200, ema_decay=0.999,
        ckpt_every=400, sample_every=400, log_every=20)
    toy2d = TrainConfig(
        preset="toy2d", data="moons", network="mlp", net=MLPConfig(hidden_channels=128, depth=3).to_dict(), **edm,
        lr=3e-3, warmup_steps=100, batch_size=512, steps=2000, ema_decay=0.995, ckpt_every=1000,
        sample_every=1000, log_every=20)
    # 1-D signals: a DiffWave network (Kong et al. 2021) under EDM preconditioning, sigma_data the
    # data's standard deviation (ar1 1, sines about 0.54, tones about 0.19).
    wavenet = WaveNetConfig(residual_channels=32, layers=8, dilation_cycle=6).to_dict()
    ar1 = TrainConfig(
        preset="ar1", data="ar1", network="wavenet", net=wavenet, **edm, sigma_data=1.0, lr=1e-3,
        warmup_steps=100, lr_decay="cosine", batch_size=128, steps=3000, ema_decay=0.999, ckpt_every=1000,
        sample_every=1000, log_every=50)
    return {
        "digits": digits,
        # The demo's model (make demo): 16 channels, one residual block per level, no attention but
        # the middle block's, 1500 steps with a cosine decay: about 90 s of training on 2 CPU cores.
        # Its samples are best with a stochastic sampler (FD about 0.55x dpmpp_2m's at 20 steps).
        "digits-small": digits.replace(
            preset="digits-small", net=dict(digits_net, base_channels=16, num_res_blocks=1, attn_resolutions=[]),
            steps=1500, lr_decay="cosine", ckpt_every=500, sample_every=500, sample_sampler="dpmpp_2m_sde"),
        "digits-cond": digits.replace(preset="digits-cond", num_classes=10, cond_drop=0.1, steps=2500,
                                      ckpt_every=1000, sample_every=1000),
        "toy2d": toy2d,
        # A 2-D mixture with a known velocity field (8 Gaussians of std 0.2 on a circle; any
        # --data FILE.npy of shape (N, 2) works too).
        "toy2d-flow": TrainConfig(
            preset="toy2d-flow", data="8gaussians", network="mlp",
            net=MLPConfig(hidden_channels=128, depth=3).to_dict(), **flow, ema_warmup=True,
            lr=3e-3, warmup_steps=100, batch_size=512, steps=2000, ema_decay=0.995,
            ckpt_every=1000, sample_every=1000, log_every=20),
        "digits-flow": digits.replace(preset="digits-flow", **flow),
        # A Diffusion Transformer on the digits' pixels: 2x2 patches, 16 tokens (Peebles & Xie 2023).
        "digits-dit": digits.replace(
            preset="digits-dit", network="dit", lr=1e-3, lr_decay="cosine",
            net=DiTConfig(in_channels=1, resolution=8, patch_size=2, hidden=128, depth=4, num_heads=4).to_dict()),
        # Latent diffusion (Rombach et al. 2022): the digits UNet's shape on the 4x4x2 latents of a
        # digits-ae autoencoder (difflab train-autoencoder --preset digits-ae; pass --autoencoder DIR).
        "digits-latent": digits.replace(
            preset="digits-latent", lr_decay="cosine",
            net=UNetConfig(in_channels=2, resolution=4, base_channels=32, channel_mult=(1, 2), num_res_blocks=2,
                           attn_resolutions=(2,), num_heads=2, dropout=0.0).to_dict()),
        # Text to image at toy scale: a latent DiT with a caption encoder and cross-attention on the
        # 8x8x4 latents of a shapes-ae autoencoder, caption dropout 0.1 for guidance.
        "shapes-text": TrainConfig(
            preset="shapes-text", data="shapes-text", network="dit", **edm, lr=5e-4, warmup_steps=200,
            lr_decay="cosine", batch_size=128, steps=6000, ema_decay=0.999, cond_drop=0.1, ckpt_every=1000,
            sample_every=1000, log_every=50,
            net=DiTConfig(in_channels=4, resolution=8, patch_size=2, hidden=192, depth=6, num_heads=6,
                          text=TextConfig(vocab=SHAPES_TEXT_VOCAB, max_words=4, dim=128, depth=2,
                                          num_heads=4).to_dict()).to_dict()),
        # Consistency training without a teacher (Song & Dhariwal 2024): pseudo-Huber loss,
        # discretisation curriculum 10 -> 1280 levels, lognormal choice of the level; samples
        # natively in 2 steps of multistep consistency sampling.
        "toy2d-ct": toy2d.replace(preset="toy2d-ct", **ct, steps=4000, ckpt_every=2000, sample_every=2000),
        "digits-ct": digits.replace(preset="digits-ct", **ct, steps=2000, ckpt_every=1000, sample_every=1000),
        "shapes32": TrainConfig(
            preset="shapes32", data="shapes", network="unet", net=UNET_PRESETS["shapes32"].to_dict(),
            **edm, lr=5e-4, warmup_steps=1000, batch_size=64, steps=100_000, ema_decay=0.9995,
            ckpt_every=5000, sample_every=5000, log_every=100),
        # Ho et al. 2020, sec. 4 and appendix B: linear betas 1e-4..0.02 over T = 1000, the simple
        # (unweighted) eps loss, Adam lr 2e-4 with 5000 warm-up steps, batch 128, 800k steps,
        # gradient clipping at 1, EMA 0.9999, dropout 0.1 (in the network preset).
        "cifar10-ddpm": TrainConfig(
            preset="cifar10-ddpm", data=None, network="unet", net=UNET_PRESETS["cifar10-ddpm"].to_dict(),
            schedule=DiscreteVP("linear", 1000).to_dict(), prediction="eps", weighting="uniform",
            lr=2e-4, warmup_steps=5000, grad_clip=1.0, batch_size=128, steps=800_000,
            ema_decay=0.9999, ema_warmup=False, ckpt_every=10_000, sample_every=10_000, log_every=100),
        # Improved DDPM (Nichol & Dhariwal 2021) on digits: cosine schedule, T = 1000, eps prediction,
        # learned variances (learn_sigma) trained by the hybrid loss with lambda = 1e-3.
        "digits-iddpm": digits.replace(
            preset="digits-iddpm", net=dict(digits_net, learn_sigma=True),
            schedule=DiscreteVP("cosine", 1000).to_dict(), prediction="eps", weighting="uniform",
            vlb_weight=1e-3, steps=1500, ckpt_every=500, sample_every=500, sample_sampler="ddpm",
            sample_steps=50),
        "ar1": ar1,
        # CSDI-style imputation and forecasting (Tashiro et al. 2021): observed values and mask as
        # conditioning channels; the loss counts the missing values.
        "ar1-csdi": ar1.replace(preset="ar1-csdi", task="impute"),
        "sines": ar1.replace(preset="sines", data="sines", sigma_data=0.5),
        "tones": ar1.replace(
            preset="tones", data="tones", sigma_data=0.2, batch_size=16, steps=2000,
            net=WaveNetConfig(residual_channels=32, layers=10, dilation_cycle=10).to_dict()),
        # Variational Diffusion Models (Kingma et al. 2021): eps prediction trained by the
        # continuous-time bound (bits/dim) jointly with a learned log-SNR schedule of 32 pieces,
        # starting linear from gamma = -13.3 to 5; the model directory records the learned table.
        "digits-vdm": digits.replace(
            preset="digits-vdm", objective="vdm", prediction="eps", weighting="uniform",
            schedule=LogSNRTable().to_dict(), distill={"knots": 32, "learn_schedule": True}),
        # Conditional denoisers for super-resolution (SR3, Saharia et al. 2022; docs/conditional.md):
        # the UNet sees the bicubic up-sampling of the 2x2-block means as extra channels.
        # digits 4x4 -> 8x8 with the demo's small network; shapes 16x16 -> 32x32.
        "digits-sr": digits.replace(
            preset="digits-sr", task="super-resolution", sr_factor=2,
            net=dict(digits_net, base_channels=16, num_res_blocks=1, attn_resolutions=[]),
            steps=1500, lr_decay="cosine", ckpt_every=500, sample_every=500),
        "shapes-sr": TrainConfig(
            preset="shapes-sr", data="shapes", network="unet", task="super-resolution", sr_factor=2,
            net=UNetConfig(in_channels=3, resolution=32, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                           attn_resolutions=(8,), head_channels=32, dropout=0.0).to_dict(),
            **edm, lr=5e-4, warmup_steps=500, lr_decay="cosine", batch_size=64, steps=20_000, ema_decay=0.999,
            ckpt_every=2000, sample_every=2000, log_every=100),
    }


PRESETS: dict[str, TrainConfig] = _presets()


# ---------------------------------------------------------------------------------------------
# TOML files


def config_from_dict(data: dict) -> TrainConfig:
    """A config from TOML-style data: start from ``PRESETS[data["preset"]]`` when that names a
    preset (else the defaults), set the top-level keys, update ``net`` / ``schedule`` key by key."""
    data = dict(data)
    name = data.get("preset")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"preset must be a preset's name (a string), got {name!r}")
    if name is not None and name != "custom" and name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    base = PRESETS[name] if name in PRESETS else TrainConfig()
    values = base.to_dict()
    unknown = sorted(set(data) - set(values))
    if unknown:
        raise ValueError(f"unknown TrainConfig keys {unknown}; valid keys are {sorted(values)}")
    for key in _DICT_FIELDS:
        if key in data:
            if not isinstance(data[key], dict):
                raise ValueError(f"TrainConfig.{key} must be a table, got {data[key]!r}")
            values[key].update(data.pop(key))
    values.update(data)
    return TrainConfig.from_dict(values)


def load_config(path: str | Path) -> TrainConfig:
    """Read a TOML training config (see the module docstring); errors are one-sentence ValueErrors."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"{path}: cannot read the config file ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file (a TOML config is UTF-8 text; {e.reason} at byte {e.start})") from e
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from e
    try:
        return config_from_dict(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"cannot write {value!r} to TOML")


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write ``config`` as TOML (all fields; None values are left out, which :func:`load_config`
    reads back as the preset's value). Raises ValueError if that would not read back equal."""
    lines = ["# difflab training config; see docs/training.md"]
    data = config.to_dict()
    lines += [f"{k} = {_toml_value(v)}" for k, v in data.items() if v is not None and k not in _DICT_FIELDS]
    for table in _DICT_FIELDS:
        lines += ["", f"[{table}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in data[table].items() if v is not None]
    text = "\n".join(lines) + "\n"
    back = config_from_dict(tomllib.loads(text))
    if back != config:
        diff = sorted(k for k, v in back.to_dict().items() if v != data[k])
        raise ValueError(f"config fields {diff} hold None where the preset has a value; TOML cannot store that")
    return atomic.write_text(path, text)

"""Load a trained model directory and sample it: ``difflab.load(dir).sample(n, ...)``.

:func:`load` reads a model directory (or a training output folder holding ``model/``) written by
:mod:`difflab.training` and returns a :class:`TrainedModel`: the network wrapped as a Denoiser of
docs/design.md, its config, and :meth:`TrainedModel.sample`, which adds class labels, classifier-free
and classifier guidance (:func:`difflab.guidance.guided_denoiser`), the sigma schedule, the network's
precision and batching around :func:`difflab.samplers.generate`. The model goes to the GPU when
there is one.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from .denoisers import AutocastDenoiser, NetworkDenoiser
from .guidance import check_labels, guided_denoiser
from .interop.diffusers import is_diffusers_dir, read_diffusers
from .samplers import LOGSNR_SAMPLERS, SAMPLE_BUDGET, SAMPLERS, default_sigmas, generate, sampler_options
from .schedules import karras_sigmas, loglinear_sigmas, make_schedule, time_uniform_sigmas
from .nets.text import TextConfig, Tokenizer
from .training.autoencoder import decode_latents, encode_dataset, load_autoencoder
from .training.checkpoint import AUTOENCODER_DIR, CheckpointError, build_model, find_model_dir
from .training.config import TrainConfig, native_sampling
from .training.data import torch_device
from .training.tasks import IMAGE_TASKS, task_condition, task_denoiser
from .training.trainer import cuda_fast_paths

__all__ = ["TrainedModel", "load", "cascade", "CheckpointError", "resolve_device", "resolve_dtype", "DTYPES",
           "SCHEDULES", "DEFAULT_SCHEDULE"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Named sigma schedules of :meth:`TrainedModel.sigmas`: ``auto`` (the measured default,
#: :func:`difflab.samplers.default_sigmas`), Karras et al. (2022, eq. 5) with rho = 7, uniform in
#: log-SNR (Lu et al. 2022, sec. 3.3) and uniform in the schedule's own time (for a flow: t = 1,
#: ..., 0 from pure noise). A JSON file or a tensor of sigmas also works.
SCHEDULES = ("auto", "karras", "logsnr", "uniform")
DEFAULT_SCHEDULE = "auto"
MEMORY_FRACTION = 0.5  # of the free GPU memory that an automatic batch may use


def resolve_device(device=None) -> torch.device:
    """``device``, or CUDA when it is available and the CPU otherwise."""
    try:
        return torch_device(None if device == "auto" else device)
    except ValueError as e:
        raise CheckpointError(str(e)) from e


def resolve_dtype(dtype=None) -> torch.dtype:
    """A torch dtype from ``"fp32"``, ``"bf16"``, ``"fp16"``, a torch dtype or None (float32)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise CheckpointError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")


def load(path, device=None, *, dtype=None, compile: bool = False) -> TrainedModel:
    """Load a model directory (or a training output folder holding ``model/``) for sampling, with
    its EMA weights when it has them, or a diffusers pipeline or model folder (``save_pretrained``
    output, detected from its files; :mod:`difflab.interop`). ``device``: default CUDA when available, else the CPU;
    ``dtype`` and ``compile``: see :class:`TrainedModel`. Raises :class:`CheckpointError` (a
    ValueError) for a missing, incomplete or corrupt directory."""
    device = resolve_device(device)
    if is_diffusers_dir(path):
        return _load_diffusers(path, device, dtype, compile)
    net, config, info = build_model(path, device)
    model_dir = find_model_dir(path)
    _check_model_dir(model_dir, net, config, info)
    autoencoder = model_dir / AUTOENCODER_DIR
    model = TrainedModel(net, config, info["data_shape"], info["class_names"], info["data_kind"], info["step"],
                         dtype=dtype, compile=compile,
                         autoencoder=load_autoencoder(autoencoder, device) if autoencoder.is_dir() else None)
    model.sample_rate = info.get("sample_rate")
    return model


#: The number of dimensions of one sample of each data kind (config.json's data_kind).
_KIND_RANK = {"points": 1, "signal": 2, "image": 3}


def _check_model_dir(model_dir: Path, net: nn.Module, config: TrainConfig, info: dict) -> None:
    """What config.json says about the data (shape, kind, classes) must fit its network, and the
    weights must be finite: an edited or damaged directory is one CheckpointError here, not a shape
    error (or NaN samples) later."""
    where = model_dir / "config.json"
    shape, kind = info["data_shape"], info["data_kind"]
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                              for s in shape):
        raise CheckpointError(f"{where}: data_shape must be a list of positive integers, got {shape!r}")
    if kind is not None and (kind not in _KIND_RANK or _KIND_RANK[kind] != len(shape)):
        raise CheckpointError(f"{where}: data_kind {kind!r} does not fit data_shape {shape} (points have one "
                              "dimension, signals two, images three)")
    n = config.net
    expected = {"mlp": [n.get("dim")], "wavenet": [n.get("in_channels"), n.get("length")],
                "unet": [n.get("in_channels"), n.get("resolution"), n.get("resolution")]}
    expected["dit"] = expected["unet"]
    want = expected.get(config.network)
    if want is not None and (len(want) != len(shape) or any(w not in (None, s) for w, s in zip(want, shape))):
        raise CheckpointError(f"{where}: data_shape {shape} does not fit the {config.network} network, which "
                              f"takes {[w if w is not None else '?' for w in want]}")
    if "num_classes" in n and n["num_classes"] != config.num_classes:
        raise CheckpointError(f"{where}: num_classes is {config.num_classes} but the network's is "
                              f"{n['num_classes']}; restore the value the model was trained with")
    if not all(bool(torch.isfinite(t).all()) for t in net.state_dict().values() if t.is_floating_point()):
        raise CheckpointError(f"{model_dir}: the weights hold NaN or infinite values; use an earlier checkpoint")


def _load_diffusers(path, device, dtype, compile) -> TrainedModel:
    """A diffusers pipeline or model folder (:mod:`difflab.interop.diffusers`) as a TrainedModel: its
    ``.config`` records the schedule, prediction and classes read from the folder (``preset`` is
    ``diffusers:<class>``); sampling, guidance and editing work as for a difflab model."""
    try:
        found = read_diffusers(path, device=device)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    source = found.source
    if source["class"] == "UNet2DConditionModel":
        raise CheckpointError(f"{path}: a UNet2DConditionModel is conditioned on text embeddings "
                              "(encoder_hidden_states) from its pipeline's text encoder, which difflab does not run; "
                              "use difflab.interop.from_diffusers(path) and pass encoder_hidden_states to the denoiser")
    config = TrainConfig(preset=f"diffusers:{source['class']}", data=str(path), schedule=found.schedule.to_dict(),
                         prediction=found.prediction, sigma_data=found.sigma_data, num_classes=found.num_classes,
                         resolution=found.data_shape[-1], channels=found.data_shape[0])
    autoencoder = None if found.autoencoder is None else (found.autoencoder, {"scale_factor": found.scale_factor,
                                                                               "source": "diffusers"})
    model = TrainedModel(found.net, config, found.data_shape, found.class_names, "image", None, dtype=dtype,
                         compile=compile, autoencoder=autoencoder)
    model.source = source
    return model


class TrainedModel:
    """A trained network with its config: ``.denoiser`` (eval mode, EMA weights when saved),
    ``.net``, ``.config``, ``.data_shape``, ``.num_classes``, ``.class_names`` and :meth:`sample`.

    ``dtype``: the precision of the network's calls while sampling (``"bf16"`` / ``"fp16"`` run it
    under autocast; the sampler's state stays float32). ``compile``: sample through
    ``torch.compile`` of the network (CUDA graphs on a GPU, ``mode="reduce-overhead"``), for
    repeated batches of one shape. ``.denoiser`` itself is always the plain float32 denoiser
    (likelihoods and editing take gradients through it).

    A latent model (Rombach et al. 2022) carries its ``autoencoder`` (the module and its metadata):
    ``.data_shape`` is then the latent shape (the space of the denoiser and of ``noise``),
    ``.image_shape`` the decoded one, and :meth:`sample` returns decoded images. A text-conditional
    model has a ``.tokenizer``; ``sample(prompt=...)`` conditions on a caption.
    """

    def __init__(self, net: nn.Module, config: TrainConfig, data_shape, class_names=None,
                 data_kind: str | None = None, step: int | None = None, *, dtype=None, compile: bool = False,
                 autoencoder=None):
        self.net, self.config = net.eval(), config
        self.data_shape = tuple(int(s) for s in data_shape)
        self.autoencoder, self.autoencoder_meta = autoencoder if autoencoder is not None else (None, None)
        self.image_shape = self.data_shape if autoencoder is None else tuple(self.autoencoder.image_shape)
        text = config.net.get("text")
        self.tokenizer = None if not text else Tokenizer(TextConfig.from_dict(text))
        self.class_names = None if class_names is None else tuple(class_names)
        self.data_kind = data_kind or ("image" if len(self.data_shape) == 3 else "points")
        self.sample_rate = None  # audio models: samples per second
        self.source = None  # for a model from elsewhere (difflab.interop): where it came from
        self.step = step
        self.schedule = make_schedule(config.schedule)
        self.denoiser = NetworkDenoiser(net, self.schedule, config.prediction, config.sigma_data).eval()
        self.dtype = resolve_dtype(dtype)
        self.compile = compile
        self._sampling_denoiser = None
        self._bytes_per_sample = None

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

    def sigmas(self, steps: int = 20, schedule=DEFAULT_SCHEDULE, sigma_min: float | None = None,
               sigma_max: float | None = None, sampler: str = "dpmpp_2m") -> torch.Tensor:
        """The sigma sequence (``steps`` sigmas and a trailing 0, on the model's device) between the
        schedule's range (or ``sigma_min`` / ``sigma_max``): ``schedule`` is a name of
        :data:`SCHEDULES`, a JSON file holding a list of sigmas (or ``{"sigmas": [...]}``, e.g. an
        optimised schedule of :mod:`difflab.tuning`), or the sigmas themselves (then ``steps`` and
        the range are theirs). ``auto`` is :func:`difflab.samplers.default_sigmas`: time-uniform
        from pure noise for a flow, log-SNR for the samplers measured better there, Karras
        otherwise."""
        if isinstance(schedule, str) and schedule in SCHEDULES:
            if steps < 1:
                raise CheckpointError(f"need steps >= 1, got {steps}")
            reaches_noise = math.isinf(self.schedule.sigma_max)
            if schedule == "auto" and (sigma_min, sigma_max) == (None, None):
                return default_sigmas(self.schedule, steps, sampler).to(self.device)
            if schedule == "auto":
                schedule = "logsnr" if sampler in LOGSNR_SAMPLERS else "karras"
            if schedule == "uniform":
                if (sigma_min, sigma_max) != (None, None):
                    raise CheckpointError("the uniform schedule spans the model's own time range; "
                                          "sigma_min and sigma_max apply to karras and logsnr")
                return time_uniform_sigmas(self.schedule, steps).to(self.device)
            lo = self.schedule.sigma_min if sigma_min is None else sigma_min
            hi = self.schedule.sigma_max if sigma_max is None else sigma_max
            if not 0 < lo < hi < math.inf:
                raise CheckpointError(f"the {schedule} schedule needs 0 < sigma_min < sigma_max < inf, got {lo} "
                                      f"and {hi}" + (" (this flow model reaches pure noise: pass sigma_min and "
                                                     "sigma_max, or use the uniform schedule)" if reaches_noise else ""))
            make = karras_sigmas if schedule == "karras" else loglinear_sigmas
            return make(steps, lo, hi).to(self.device)
        if isinstance(schedule, str) and not schedule.endswith(".json") and not Path(schedule).exists():
            raise CheckpointError(f"unknown sigma schedule {schedule!r}; choose {', '.join(SCHEDULES)} or a JSON file")
        values = _read_sigmas(schedule) if isinstance(schedule, (str, Path)) else schedule
        sigmas = torch.as_tensor(values, dtype=torch.float32).flatten()
        if len(sigmas) < 2 or not bool((sigmas[1:] < sigmas[:-1]).all()) or float(sigmas[-2]) <= 0:
            where = f"{schedule}: " if isinstance(schedule, (str, Path)) else ""
            raise CheckpointError(f"{where}a sigma schedule must be at least two decreasing values, positive but "
                                  "the last")
        return sigmas.to(self.device)

    def sampling_denoiser(self):
        """The denoiser that :meth:`sample` calls: ``.denoiser`` compiled and/or under autocast."""
        if self._sampling_denoiser is None:
            den = self.denoiser
            if self.compile:
                mode = "reduce-overhead" if self.device.type == "cuda" else "default"
                den = NetworkDenoiser(torch.compile(self.net, mode=mode, dynamic=False), self.schedule,
                                      self.config.prediction, self.config.sigma_data)
            self._sampling_denoiser = den if self.dtype == torch.float32 else AutocastDenoiser(den, self.dtype)
        return self._sampling_denoiser

    def auto_batch_size(self, n: int, guided: bool = False) -> int | None:
        """On a GPU, the batch that fills :data:`MEMORY_FRACTION` of the free memory (measured once
        with a probe batch of 8); None elsewhere (:func:`difflab.samplers.generate` then picks)."""
        if self.device.type != "cuda":
            return None
        if self._bytes_per_sample is None:
            probe = 8
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            x = torch.zeros((probe, *self.data_shape), device=self.device)
            y = None if self.num_classes is None else {"y": torch.zeros(probe, dtype=torch.long, device=self.device)}
            probe_denoiser = self.denoiser if self.dtype == torch.float32 else AutocastDenoiser(self.denoiser, self.dtype)
            with torch.inference_mode():  # not the compiled one: that would compile for this shape too
                probe_denoiser(x, torch.ones(probe, device=self.device), **(y or {}))
            peak = torch.cuda.max_memory_allocated(self.device) - base
            self._bytes_per_sample = max(1, peak // probe)
        free, _ = torch.cuda.mem_get_info(self.device)
        per_sample = self._bytes_per_sample * (2 if guided else 1)  # CFG doubles the network batch
        return max(1, min(n, int(MEMORY_FRACTION * free / per_sample)))

    def sample(self, n: int, *, sampler: str | None = None, steps: int | None = None, seed: int | None = None,
               y=None, guidance: float | None = None, classifier=None, classifier_scale: float = 1.0,
               batch_size: int | None = None, progress: bool = False, sigma_min: float | None = None,
               sigma_max: float | None = None, noise: torch.Tensor | None = None, schedule=DEFAULT_SCHEDULE,
               callback=None, prompt=None, condition: torch.Tensor | None = None, mask=None,
               aug_level: float = 0.0, **options) -> torch.Tensor:
        """n samples (on the CPU) in the data's shape (decoded images for a latent model); images
        are clamped to [-1, 1].

        ``condition``: for a conditional denoiser (SR3 / Palette, :attr:`restores`) the degraded
        images, one or n rows: low-resolution images (N, C, H/f, W/f) for super-resolution, else
        (N, C or 1, H, W), with the ``mask`` (1 = known) for inpainting; ``aug_level``: the noise
        std added to a low-resolution input (conditioning augmentation, Ho et al. 2022; 0: none).
        See :mod:`difflab.training.tasks`.

        Starts from x = sigma_max z and integrates along :meth:`sigmas` (``schedule``, ``steps``,
        ``sigma_min``, ``sigma_max``) with ``sampler`` and its ``options`` (e.g. ``eta=0.5`` for
        ``ddim``, ``order=2`` for ``unipc``). Without ``sampler`` and ``steps`` a distilled student
        samples its native way (its config's ``native`` sampler and sigmas); other models use
        ``dpmpp_2m`` with 20 steps. ``noise``: the standard normal z, shape
        (n, *data_shape), to start from (to compare two models point by point); without it
        ``seed`` decides z. ``y``: class ids (default: 0, 1, ..., K-1, 0, ... cycling);
        ``guidance``: the classifier-free guidance scale w of :func:`difflab.guidance.cfg`,
        D = D(x|null) + w (D(x|y) - D(x|null)) from one batched call (Ho & Salimans 2022; 1: plain
        conditional, 0: unconditional). ``classifier``: a :class:`~difflab.guidance.ClassLogProb`
        (e.g. :func:`difflab.training.load_classifier`'s second value) adding classifier guidance
        with ``classifier_scale`` (Dhariwal & Nichol 2021), also to unconditional models. Both go
        through :func:`difflab.guidance.guided_denoiser`. ``callback``: the sampler's per-step
        callback. Draws happen in batches of ``batch_size`` (default: from the free memory on a
        GPU); the result is a function of (n, seed or noise, batch_size, sampler, options, sigmas,
        y, prompt, guidance, classifier, classifier_scale). ``prompt``: a caption, or n of them,
        for a text-conditional model (``guidance`` then guides towards it, against the empty
        caption; Nichol et al. 2022).
        """
        if n < 1:
            raise CheckpointError(f"need n >= 1, got n={n}")
        if self.imputes:
            raise CheckpointError("this is an imputation model (task 'impute'): it samples missing values given "
                                  "observed ones; use .impute(values, mask) or .forecast(context, horizon)")
        native = native_sampling(self.config) if (sampler, steps, schedule) == (None, None, DEFAULT_SCHEDULE) \
            and (sigma_min, sigma_max) == (None, None) else None
        if native is not None:
            sampler, schedule, native_options = native
            options = {**native_options, **options}
        sampler = sampler or "dpmpp_2m"
        steps = 20 if steps is None else steps
        if sampler not in SAMPLERS:
            raise CheckpointError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
        if noise is not None and tuple(noise.shape) != (n, *self.data_shape):
            raise CheckpointError(f"noise must have shape {(n, *self.data_shape)} (n, *data_shape), "
                                  f"got {tuple(noise.shape)}")
        sigmas = self.sigmas(steps, schedule, sigma_min, sigma_max, sampler)
        labels = self.labels(y, n, classifier)
        text = self.prompt_tokens(prompt, n)
        if self.config.net.get("guidance_embedding"):
            # a guidance-distilled student takes the scale as an input: one call per step
            if classifier is not None:
                raise CheckpointError("a guidance-distilled student takes no classifier guidance")
            denoiser = self.sampling_denoiser()
            cond = {"y": labels, "w": torch.full((n,), 1.0 if guidance is None else float(guidance))}
        else:
            try:
                denoiser, cond = guided_denoiser(self.sampling_denoiser(), y=labels, num_classes=self.num_classes,
                                                 guidance=guidance, classifier=classifier,
                                                 classifier_scale=classifier_scale, text=text)
            except ValueError as e:
                raise CheckpointError(str(e)) from e
        gen = torch.Generator(self.device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        if self.restores or condition is not None:
            cond = {**(cond or {}), "condition": self._task_condition(n, condition, mask, aug_level, gen)}
            denoiser = task_denoiser(denoiser, self.config.task)
        batch_size = batch_size or self.auto_batch_size(n, guided=guidance is not None and "w" not in (cond or {}))
        with cuda_fast_paths(self.device):
            x = generate(denoiser, self.data_shape, n, sigmas, sampler, noise=noise, generator=gen, cond=cond,
                         batch_size=batch_size, progress=progress, callback=callback, **options)
        if self.autoencoder is not None:
            x = self.decode(x)
        return x.clamp(-1, 1) if self.data_kind == "image" else x

    @property
    def restores(self) -> bool:
        """Whether this is a conditional denoiser of a degraded image (``task`` super-resolution,
        colorization, inpainting or uncropping; SR3 / Palette, Saharia et al. 2022)."""
        return self.config.task in IMAGE_TASKS

    def _task_condition(self, n: int, degraded, mask, aug_level: float, generator) -> torch.Tensor:
        """The network's conditioning channels for n samples from one or n degraded images."""
        if not self.restores:
            raise CheckpointError(f"this model (task {self.config.task!r}) takes no condition; a conditional "
                                  f"denoiser is trained with task {', '.join(IMAGE_TASKS)}")
        if degraded is None:
            raise CheckpointError(f"this is a {self.config.task} model: it samples given degraded images, passed as "
                                  f"condition= (command line: difflab edit {self.config.task}, or difflab cascade)")
        degraded = torch.as_tensor(degraded, dtype=torch.float32, device=self.device)
        if degraded.ndim != 4 or degraded.shape[0] not in (1, n):
            raise CheckpointError(f"condition must hold 1 or n={n} images (N, C, H, W), got shape "
                                  f"{tuple(degraded.shape)}")
        if not aug_level >= 0:
            raise CheckpointError(f"aug_level must be a non-negative number, got {aug_level}")
        try:
            return task_condition(self.config.task, degraded.expand(n, *degraded.shape[1:]), (n, *self.data_shape),
                                  factor=self.config.sr_factor, mask=mask, aug_level=aug_level, generator=generator)
        except ValueError as e:
            raise CheckpointError(str(e)) from e

    # --- Signals: imputation and forecasting ---------------------------------------------------

    @property
    def imputes(self) -> bool:
        """Whether this is an imputation model (``task = "impute"``, CSDI): it samples missing
        values given observed ones through its conditioning channels."""
        return self.config.task == "impute"

    def impute(self, values: torch.Tensor, mask, samples: int = 100, *, method: str = "auto",
               sampler: str | None = None, steps: int | None = None, seed: int | None = None,
               batch_size: int | None = None, progress: bool = False, **options) -> torch.Tensor:
        """Draws (samples, B, C, L) of signals given the ``values`` (B, C, L) where ``mask`` is 1
        (observed); the observed values are kept exactly. Two ways (``method``):

        - ``"condition"``, for an imputation model (``task = "impute"``): its network sees the
          observations as extra channels (CSDI, Tashiro et al. 2021), :func:`difflab.editing.
          observed_denoiser`; any ``sampler`` (default ``dpmpp_2m``, 20 steps);
        - ``"repaint"`` or ``"replace"``, for any unconditional model: inpainting
          (:func:`difflab.editing.inpaint`; RePaint by default, Lugmayr et al. 2022, with the ``ddpm``
          sampler and its ``jump_length`` and ``resamplings`` options).

        ``"auto"`` picks ``condition`` for an imputation model and ``repaint`` otherwise. Values
        where the mask is 0 are ignored (NaN allowed). Forecasting is the mask of a known past
        (:meth:`forecast`)."""
        from tqdm.auto import tqdm

        from .editing import inpaint, observed_denoiser

        if self.data_kind != "signal" or self.autoencoder is not None:
            raise CheckpointError("imputation and forecasting need a model of signals (N, C, L)")
        values = torch.as_tensor(values, dtype=torch.float32)
        values = values[None] if values.ndim == 2 else values
        if values.ndim != 3 or tuple(values.shape[1:]) != self.data_shape:
            raise CheckpointError(f"values must have shape (B, {', '.join(map(str, self.data_shape))}) of this "
                                  f"model's signals, got {tuple(values.shape)}")
        try:
            keep = torch.as_tensor(mask).bool().expand_as(values)
        except RuntimeError as e:
            raise CheckpointError(f"mask of shape {tuple(torch.as_tensor(mask).shape)} does not fit the values "
                                  f"{tuple(values.shape)}") from e
        if not torch.isfinite(values[keep]).all():
            raise CheckpointError("observed values (mask 1) must be finite")
        if samples < 1:
            raise CheckpointError(f"need samples >= 1, got {samples}")
        method = ("condition" if self.imputes else "repaint") if method == "auto" else method
        if method not in ("condition", "repaint", "replace"):
            raise CheckpointError(f"unknown imputation method {method!r}; choose auto, condition, repaint or replace")
        if (method == "condition") != self.imputes:
            raise CheckpointError("method 'condition' needs an imputation model (task 'impute'), and such a model "
                                  "imputes only that way" if method == "condition" else
                                  "this is an imputation model: use method 'condition' (or 'auto')")
        b = len(values)
        rows = values.repeat_interleave(samples, 0).to(self.device)  # sample s of signal i: row i * samples + s
        keep = keep.repeat_interleave(samples, 0).to(self.device)
        rows = torch.where(keep, rows, torch.zeros_like(rows))
        gen = torch.Generator(self.device)
        gen.seed() if seed is None else gen.manual_seed(seed)
        if method == "condition":
            sampler, steps = sampler or "dpmpp_2m", steps or 20
        else:
            sampler, steps = sampler or "ddpm", steps or 100  # RePaint converges by 100 steps (tests/test_signals.py)
        if sampler not in SAMPLERS:
            raise CheckpointError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
        _check_imputation_options(method, sampler, options)
        sigmas = self.sigmas(steps, sampler=sampler)
        chunk = batch_size or max(1, SAMPLE_BUDGET // math.prod(self.data_shape))
        parts = []
        for i in tqdm(range(0, len(rows), chunk), desc="imputing", unit="batch", disable=not progress):
            v, k = rows[i:i + chunk], keep[i:i + chunk]
            with cuda_fast_paths(self.device):
                if method == "condition":
                    parts.append(generate(observed_denoiser(self.sampling_denoiser(), v, k), self.data_shape,
                                          len(v), sigmas, sampler, generator=gen, **options))
                else:
                    parts.append(inpaint(self.sampling_denoiser(), v, k, sigmas, method=method, generator=gen,
                                         sampler=sampler, **options).cpu())
        x = torch.cat(parts).to(self.device)
        x = torch.where(keep, rows, x).cpu()
        return x.reshape(b, samples, *self.data_shape).transpose(0, 1)

    def forecast(self, context: torch.Tensor, horizon: int, samples: int = 100, **options) -> torch.Tensor:
        """Draws (samples, B, C, horizon) of the next ``horizon`` steps after ``context`` (B, C, L0)
        (or (C, L0), or (L0,) for one channel): the model's window of L steps holds the last
        L - horizon values of the context, and the future is imputed (:meth:`impute`, same
        options)."""
        if self.data_kind != "signal":
            raise CheckpointError("forecasting needs a model of signals (N, C, L)")
        channels, length = self.data_shape
        context = torch.as_tensor(context, dtype=torch.float32)
        context = context.reshape(1, 1, -1) if context.ndim == 1 else context[None] if context.ndim == 2 else context
        if context.ndim != 3 or context.shape[1] != channels:
            raise CheckpointError(f"the context must be (B, {channels}, L0) signals of this model's {channels} "
                                  f"channel(s), got {tuple(context.shape)}")
        if not 1 <= horizon < length:
            raise CheckpointError(f"the horizon must lie in [1, {length - 1}] for this model's window of {length} steps, "
                                  f"got {horizon}")
        past = length - horizon
        if context.shape[2] < past:
            raise CheckpointError(f"a horizon of {horizon} needs at least {past} context steps "
                                  f"(the window is {length}), got {context.shape[2]}")
        if not torch.isfinite(context[..., -past:]).all():
            raise CheckpointError("the context must be finite (no NaN or inf)")
        window = torch.cat([context[..., -past:], torch.zeros(*context.shape[:2], horizon)], dim=2)
        mask = (torch.arange(length) < past).expand_as(window)
        return self.impute(window, mask, samples, **options)[..., past:]

    def prompt_tokens(self, prompt, n: int) -> torch.Tensor | None:
        """The caption tokens (n, L) of ``prompt`` (one caption for all, or n of them); None without a
        prompt. A text-conditional model needs one; CheckpointError for unknown words."""
        if self.tokenizer is None:
            if prompt is not None:
                raise CheckpointError("this model is not text-conditional; it takes no prompt")
            return None
        if prompt is None:
            raise CheckpointError("this model is text-conditional: give a prompt (a caption)")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if len(prompts) not in (1, n):
            raise CheckpointError(f"give one prompt or {n} of them, got {len(prompts)}")
        try:
            tokens = self.tokenizer.encode(prompts)
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        return tokens.expand(n, -1) if len(prompts) == 1 else tokens

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """A latent model's latents of images (B, *image_shape) in [-1, 1] (posterior means times the
        scale factor), on the model's device."""
        return encode_dataset(self.autoencoder, images.to(self.device), self.autoencoder_meta["scale_factor"])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (on the CPU) of a latent model's latents."""
        return decode_latents(self.autoencoder, latents.to(self.device), self.autoencoder_meta["scale_factor"]).cpu()


def cascade(models, n: int, *, aug_level: float = 0.0, seed: int | None = None, **options) -> list[torch.Tensor]:
    """Cascaded sampling (Ho et al. 2022, sec. 3): n samples of the base model ``models[0]``, each
    passed as the low-resolution ``condition`` of the next, a super-resolution model (task
    ``super-resolution``), with conditioning augmentation ``aug_level`` (the noise std added to
    each stage's input, sec. 3.2; 0: plain conditioning). ``options`` go to every
    :meth:`TrainedModel.sample`; stage i uses ``seed + i``. Returns every stage's output."""
    for i, m in enumerate(models[1:], 1):
        if m.config.task != "super-resolution":
            raise CheckpointError(f"stage {i + 1} of the cascade is a model of task {m.config.task!r}; every stage "
                                  "after the base must be a super-resolution model")
    stages = [models[0].sample(n, seed=seed, **options)]
    for i, m in enumerate(models[1:], 1):
        stages.append(m.sample(n, condition=stages[-1], aug_level=aug_level,
                               seed=None if seed is None else seed + i, **options))
    return stages


def _check_imputation_options(method: str, sampler: str, options: dict) -> None:
    """Before the progress bar starts: the options of :meth:`TrainedModel.impute` are the sampler's
    (plus RePaint's ``jump_length`` and ``resamplings``, integers >= 1)."""
    repaint = ("jump_length", "resamplings") if method == "repaint" else ()
    allowed = {*sampler_options(sampler), "cond", *repaint}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise CheckpointError(f"{method} with the {sampler} sampler has no option(s) {unknown}; it accepts "
                              f"{sorted(allowed)}")
    for name in repaint:
        value = options.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{name} must be an integer >= 1, got {value!r}")


def _read_sigmas(path) -> list:
    """The sigmas stored in a JSON file: a list, or an object with a "sigmas" list."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the sigma schedule ({e.strerror})") from e
    except ValueError as e:
        raise CheckpointError(f"{path}: not a JSON sigma schedule ({e})") from e
    sigmas = data.get("sigmas") if isinstance(data, dict) else data
    if not isinstance(sigmas, list) or not all(isinstance(v, (int, float)) for v in sigmas):
        raise CheckpointError(f"{path}: expected a list of sigmas or {{\"sigmas\": [...]}}")
    return sigmas

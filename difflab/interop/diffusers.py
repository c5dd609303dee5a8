"""Hugging Face diffusers models as difflab denoisers.

A diffusers model is a network ``model(x_t, timestep, ...)`` trained under a scheduler's noise
schedule with a ``prediction_type``; difflab's :class:`~difflab.denoisers.NetworkDenoiser` is
exactly that pair seen as ``D(x, sigma) -> x0_hat`` (docs/design.md). The translation:

- **Schedule.** The discrete schedulers (DDPM, DDIM, PNDM, Euler, Heun, LMS, DPM-Solver, UniPC,
  DEIS, ...) share ``num_train_timesteps`` T and the betas (``beta_schedule`` linear,
  scaled_linear, squaredcos_cap_v2 = the cosine schedule of Nichol & Dhariwal 2021, eq. 17,
  sigmoid, or ``trained_betas``): a :class:`~difflab.schedules.DiscreteVP`, whose VE
  ``sigma_i = sqrt((1 - abar_i) / abar_i)`` (Karras et al. 2022, Table 1). The EDM schedulers
  (``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler``) are an
  :class:`~difflab.schedules.EDM` schedule with EDM preconditioning (Karras et al. 2022, Table 1).
- **Time input.** A discrete model takes the step index t in [0, T - 1]; difflab passes the
  fractional index whose interpolated log-sigma is the sigma asked for (``DiscreteVP.c_noise``),
  the convention of diffusers' own Euler and Heun schedulers. An EDM model takes ln(sigma) / 4.
- **Prediction.** ``epsilon`` -> ``eps``, ``v_prediction`` -> ``v`` (Salimans & Ho 2022, sec. 4),
  ``sample`` -> ``x0``; the network sees ``x_t = alpha x`` (``NetworkDenoiser`` scales).
- **Sampling settings** of the scheduler (``timestep_spacing``, ``steps_offset``,
  ``clip_sample``, ``thresholding``, ``variance_type``, the solver order) describe a way of
  sampling, not the model: difflab's samplers and sigma schedules replace them.

Weights are read from safetensors only (``use_safetensors=True``): a folder holding only pickled
``.bin`` weights is refused rather than unpickled.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..denoisers import NetworkDenoiser
from ..schedules import EDM, DiscreteVP, Schedule

__all__ = ["DiffusersError", "DiffusersModel", "DiffusersNet", "DiffusersAutoencoder", "from_diffusers",
           "read_diffusers", "is_diffusers_dir", "schedule_from_config", "MODELS", "DISCRETE_SCHEDULERS",
           "EDM_SCHEDULERS"]


class DiffusersError(ValueError):
    """A diffusers model, pipeline folder or scheduler config that difflab cannot read (one sentence)."""


#: Supported denoising networks -> the component name a pipeline folder stores them under.
MODELS = {"UNet2DModel": "unet", "UNet2DConditionModel": "unet", "DiTTransformer2DModel": "transformer"}
#: Autoencoders of latent pipelines (Rombach et al. 2022): the KL one and the VQ one.
AUTOENCODERS = ("AutoencoderKL", "VQModel")
DISCRETE_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler",
                       "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
                       "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler",
                       "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DEISMultistepScheduler",
                       "UniPCMultistepScheduler", "DDIMInverseScheduler", "DDPMParallelScheduler",
                       "DDIMParallelScheduler", "LCMScheduler", "TCDScheduler", "SASolverScheduler")
EDM_SCHEDULERS = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine",
                  "sigmoid": "sigmoid"}
#: Latent pipelines whose decoder takes the latents unscaled (the others divide by scaling_factor).
UNSCALED_LATENTS = ("LDMPipeline",)


def _diffusers():
    try:
        import diffusers
    except ImportError as e:
        raise DiffusersError("reading diffusers models needs the diffusers package: pip install 'difflab[diffusers]'"
                             ) from e
    return diffusers


# ---------------------------------------------------------------------------------------------
# Schedules


def schedule_from_config(config) -> tuple[Schedule, str, float]:
    """``(schedule, prediction, sigma_data)`` of a diffusers scheduler config (a dict, a path to
    ``scheduler_config.json`` or a scheduler object). DiffusersError for an unsupported scheduler,
    beta schedule or prediction type."""
    config = _scheduler_dict(config)
    name = config.get("_class_name")
    prediction_type = config.get("prediction_type", "epsilon")
    if name in EDM_SCHEDULERS:
        if prediction_type != "epsilon":
            raise DiffusersError(f"{name} with prediction_type {prediction_type!r} is not supported; difflab reads "
                                 "EDM-preconditioned models with prediction_type 'epsilon' (Karras et al. 2022)")
        if config.get("sigma_schedule", "karras") != "karras":
            raise DiffusersError(f"{name} with sigma_schedule {config['sigma_schedule']!r} is not supported "
                                 "(its time input is not ln(sigma) / 4); use 'karras'")
        schedule = EDM(float(config.get("sigma_min", 0.002)), float(config.get("sigma_max", 80.0)))
        return schedule, "edm", float(config.get("sigma_data", 0.5))
    if name is not None and name not in DISCRETE_SCHEDULERS:
        raise DiffusersError(f"unsupported diffusers scheduler {name!r}; difflab reads the discrete DDPM-family "
                             f"schedulers ({', '.join(DISCRETE_SCHEDULERS[:4])}, ...) and {', '.join(EDM_SCHEDULERS)}")
    if prediction_type not in PREDICTIONS:
        raise DiffusersError(f"unsupported prediction_type {prediction_type!r}; choose from {', '.join(PREDICTIONS)}")
    if config.get("rescale_betas_zero_snr"):
        raise DiffusersError("rescale_betas_zero_snr schedules reach pure noise at a finite step (sigma = inf), "
                             "which difflab's DiscreteVP does not represent")
    T = int(config.get("num_train_timesteps", 1000))
    if T < 2:
        raise DiffusersError(f"num_train_timesteps must be at least 2, got {T}")
    trained = config.get("trained_betas")
    if trained is not None:
        if len(trained) != T:
            raise DiffusersError(f"trained_betas has {len(trained)} values for num_train_timesteps = {T}")
        schedule = DiscreteVP("given", T, betas=[float(b) for b in trained])
    else:
        kind = config.get("beta_schedule", "linear")
        if kind not in BETA_SCHEDULES:
            raise DiffusersError(f"unsupported beta_schedule {kind!r}; choose from {', '.join(BETA_SCHEDULES)} "
                                 "or give trained_betas")
        if BETA_SCHEDULES[kind] == "cosine":
            schedule = DiscreteVP("cosine", T)
        else:
            schedule = DiscreteVP(BETA_SCHEDULES[kind], T, beta_start=float(config.get("beta_start", 1e-4)),
                                  beta_end=float(config.get("beta_end", 0.02)))
    return schedule, PREDICTIONS[prediction_type], 0.5


def _scheduler_dict(config) -> dict:
    if hasattr(config, "config"):  # a scheduler object
        return {"_class_name": type(config).__name__, **dict(config.config)}
    if isinstance(config, (str, Path)):
        path = Path(config)
        if path.is_dir():
            path = path / "scheduler_config.json"
        return _read_json(path, "scheduler config")
    if not isinstance(config, dict):
        raise DiffusersError(f"a scheduler config is a dict, a scheduler_config.json or a scheduler, got "
                             f"{type(config).__name__}")
    return dict(config)


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DiffusersError(f"{path}: no such file (the {what})") from None
    except OSError as e:
        raise DiffusersError(f"{path}: cannot read the {what} ({e.strerror})") from e
    except ValueError as e:
        raise DiffusersError(f"{path}: the {what} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise DiffusersError(f"{path}: the {what} must be a JSON object")
    return data


# ---------------------------------------------------------------------------------------------
# Networks


class DiffusersNet(nn.Module):
    """A diffusers model as a difflab network ``F(x_in, c_noise, y=None, **cond)``: ``c_noise`` goes
    in as the model's timestep, class labels ``y`` as ``class_labels``, and ``cond`` (e.g.
    ``encoder_hidden_states`` of a ``UNet2DConditionModel``) as keyword arguments.

    ``null_label``: the class id of a model's "no class" embedding (a DiT's row ``num_classes``,
    Peebles & Xie 2023, sec. 3.2, trained with label dropout), used for classifier-free guidance and
    when no label is given; None when the model has none.
    """

    def __init__(self, model: nn.Module, num_classes: int | None = None, null_label: int | None = None,
                 requires_labels: bool = False):
        super().__init__()
        self.model, self.num_classes, self.null_label = model, num_classes, null_label
        self.requires_labels = requires_labels
        self.class_name = type(model).__name__

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor | None = None, **cond):
        if y is None and self.requires_labels:
            if self.null_label is None:
                raise DiffusersError(f"this {self.class_name} is class-conditional: give class labels y")
            y = torch.full((x.shape[0],), self.null_label, device=x.device, dtype=torch.long)
        if y is not None:
            if self.num_classes is None:
                raise DiffusersError(f"this {self.class_name} is unconditional; it takes no class labels")
            if self.null_label is None and not y.is_cuda and bool((y >= self.num_classes).any()):
                raise DiffusersError(f"this {self.class_name} has no null class, so classifier-free guidance "
                                     "cannot run on it; sample with guidance = None")
            cond = {**cond, "class_labels": y.long()}
        out = self.model(x, c_noise.reshape(-1).expand(x.shape[0]), **cond, return_dict=False)
        return out[0]


class DiffusersAutoencoder(nn.Module):
    """The autoencoder of a latent pipeline with the methods difflab's latent models use:
    ``encode(x) -> (mean, logvar)`` and ``decode(z) -> images``, and ``image_shape``."""

    def __init__(self, vae: nn.Module, image_shape):
        super().__init__()
        self.vae, self.image_shape = vae, tuple(image_shape)
        self.kind = type(vae).__name__

    def encode(self, x: torch.Tensor):
        if self.kind == "VQModel":
            z = self.vae.encode(x, return_dict=False)[0]
            return z, torch.zeros_like(z)
        dist = self.vae.encode(x, return_dict=False)[0]
        return dist.mean, dist.logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z, return_dict=False)[0]


@dataclass
class DiffusersModel:
    """What difflab reads from a diffusers model or pipeline folder."""

    net: DiffusersNet
    schedule: Schedule
    prediction: str
    sigma_data: float
    data_shape: tuple
    num_classes: int | None = None
    class_names: tuple | None = None
    autoencoder: DiffusersAutoencoder | None = None
    scale_factor: float = 1.0
    source: dict = field(default_factory=dict)

    def denoiser(self) -> NetworkDenoiser:
        den = NetworkDenoiser(self.net, self.schedule, self.prediction, self.sigma_data).eval()
        den.data_shape, den.num_classes, den.class_names = self.data_shape, self.num_classes, self.class_names
        den.autoencoder, den.scale_factor = self.autoencoder, self.scale_factor
        return den


def is_diffusers_dir(path) -> bool:
    """Whether ``path`` is a diffusers pipeline folder (``model_index.json``) or model folder
    (a ``config.json`` written by diffusers)."""
    path = Path(path).expanduser()
    if (path / "model_index.json").is_file():
        return True
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return "_diffusers_version" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def from_diffusers(path_or_module, scheduler_config=None) -> NetworkDenoiser:
    """A diffusers model as a difflab Denoiser ``D(x, sigma, **cond) -> x0_hat`` (on the CPU, eval mode).

    ``path_or_module``: a pipeline folder written by ``save_pretrained`` (``model_index.json`` with a
    ``unet/`` or ``transformer/``, a ``scheduler/``, and a ``vae/`` or ``vqvae/`` for latent
    pipelines), a model folder (``unet/`` itself), or a model object (``UNet2DModel``,
    ``UNet2DConditionModel``, ``DiTTransformer2DModel``). ``scheduler_config``: a dict, a
    ``scheduler_config.json`` or a scheduler object; needed for a model folder without a sibling
    ``scheduler/`` and for a model object. The denoiser also carries ``.data_shape``,
    ``.num_classes``, ``.class_names`` and, for a latent pipeline, ``.autoencoder`` with
    ``.scale_factor`` (the denoiser works on latents; decode ``z / scale_factor``).
    Conditioning goes in as for any denoiser: ``y`` (class ids) and, for a ``UNet2DConditionModel``,
    ``encoder_hidden_states``.
    """
    return read_diffusers(path_or_module, scheduler_config).denoiser()


def read_diffusers(path_or_module, scheduler_config=None, device="cpu") -> DiffusersModel:
    """The pieces of :func:`from_diffusers` (network, schedule, prediction, shapes, autoencoder)."""
    if isinstance(path_or_module, nn.Module):
        if scheduler_config is None:
            raise DiffusersError("a diffusers model object needs its scheduler_config (a dict, a "
                                 "scheduler_config.json or a scheduler)")
        return _assemble(path_or_module, scheduler_config, None, None, {"class": type(path_or_module).__name__}, device)
    path = Path(path_or_module).expanduser()
    if not path.is_dir():
        raise DiffusersError(f"{path}: no such diffusers folder")
    if (path / "model_index.json").is_file():
        return _read_pipeline(path, scheduler_config, device)
    if not is_diffusers_dir(path):
        raise DiffusersError(f"{path}: not a diffusers folder (no model_index.json, and no config.json written "
                             "by diffusers)")
    if scheduler_config is None:
        scheduler_config = path.parent / "scheduler" / "scheduler_config.json"
        if not scheduler_config.is_file():
            raise DiffusersError(f"{path}: a diffusers model folder without a sibling scheduler/ needs a "
                                 "scheduler_config")
    model = _load_component(path, _read_json(path / "config.json", "model config").get("_class_name"), device)
    return _assemble(model, scheduler_config, None, None, {"path": str(path)}, device)


def _read_pipeline(path: Path, scheduler_config, device) -> DiffusersModel:
    index = _read_json(path / "model_index.json", "pipeline index")
    components = {k: v for k, v in index.items() if isinstance(v, list) and len(v) == 2}
    name = next((k for k in ("unet", "transformer") if k in components), None)
    if name is None:
        raise DiffusersError(f"{path}: the pipeline {index.get('_class_name')!r} has no unet or transformer "
                             "component to sample")
    model = _load_component(path / name, components[name][1], device)
    if scheduler_config is None:
        if "scheduler" not in components:
            raise DiffusersError(f"{path}: the pipeline has no scheduler/; give a scheduler_config")
        scheduler_config = path / "scheduler" / "scheduler_config.json"
    vae_name = next((k for k in ("vae", "vqvae") if k in components), None)
    vae = None if vae_name is None else _load_component(path / vae_name, components[vae_name][1], device,
                                                        AUTOENCODERS)
    labels = index.get("id2label")
    class_names = None
    if isinstance(labels, dict) and labels:
        class_names = tuple(str(labels.get(str(i), i)) for i in range(len(labels)))
    source = {"path": str(path), "pipeline": index.get("_class_name"),
              "components": {k: v[1] for k, v in components.items()}}
    return _assemble(model, scheduler_config, vae, class_names, source, device)


def _load_component(path: Path, class_name, device, allowed=tuple(MODELS)):
    if class_name not in allowed:
        raise DiffusersError(f"{path}: unsupported diffusers class {class_name!r}; difflab reads "
                             f"{', '.join(allowed)}")
    if not any(path.glob("*.safetensors")):
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        raise DiffusersError(f"{path}: no .safetensors weights" + (
            f" (only pickled {', '.join(pickled)}, which difflab does not unpickle; convert weights you trust "
            "with save_pretrained(safe_serialization=True))" if pickled else ""))
    cls = getattr(_diffusers(), class_name)
    try:
        model = cls.from_pretrained(path, use_safetensors=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as e:
        raise DiffusersError(f"{path}: cannot load the {class_name} ({' '.join(str(e).split())[:300]})") from e
    return model.to(device).eval().requires_grad_(False)


def _assemble(model, scheduler_config, vae, class_names, source, device) -> DiffusersModel:
    class_name = type(model).__name__
    if class_name not in MODELS:
        raise DiffusersError(f"unsupported diffusers model {class_name!r}; difflab reads {', '.join(MODELS)}")
    schedule, prediction, sigma_data = schedule_from_config(scheduler_config)
    config = model.config
    size = config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    data_shape = (int(config.in_channels), *map(int, size))
    num_classes = null_label = None
    requires_labels = False
    if class_name == "DiTTransformer2DModel":
        num_classes = config.num_embeds_ada_norm
        table = model.transformer_blocks[0].norm1.emb.class_embedder.embedding_table
        null_label = num_classes if table.num_embeddings > num_classes else None
        requires_labels = True
    elif getattr(config, "num_class_embeds", None):
        num_classes = int(config.num_class_embeds)
    if num_classes is not None and class_names is not None and len(class_names) != num_classes:
        class_names = None
    net = DiffusersNet(model, num_classes, null_label, requires_labels).to(device).eval()
    autoencoder, scale = None, 1.0
    if vae is not None:
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        image_shape = (int(vae.config.out_channels), data_shape[1] * factor, data_shape[2] * factor)
        autoencoder = DiffusersAutoencoder(vae, image_shape).to(device).eval()
        scale = 1.0 if source.get("pipeline") in UNSCALED_LATENTS else float(getattr(vae.config, "scaling_factor", 1.0))
    source = {**source, "class": class_name, "scheduler": _scheduler_dict(scheduler_config).get("_class_name")}
    return DiffusersModel(net, schedule, prediction, sigma_data, data_shape, num_classes, class_names, autoencoder,
                          scale, source)

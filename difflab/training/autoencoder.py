"""Train the KL-regularised autoencoder of latent diffusion, and load it back.

Rombach et al. 2022, sec. 3.1 and appendix G: the autoencoder (:class:`~difflab.nets.autoencoder.
Autoencoder`) is trained on ``L = L_rec(x, D(z)) + kl_weight * KL(q(z | x) || N(0, I))`` with z a
reparametrised sample of the posterior. L_rec is the L1 or squared error summed over pixels (their
perceptual and adversarial terms are left out); the KL term is summed over latent entries; both are
averaged over the batch, which is the weighting of their ``LPIPSWithDiscriminator`` loss, so
``kl_weight`` means what it means there (1e-6 for their f=4 KL models).

The weak KL term leaves the latents' scale free, so after training the *latent scale factor*
``1 / sigma_hat`` is stored, ``sigma_hat^2 = 1/(N c h w) sum (z - mu_hat)^2`` the variance of all
entries of the posterior means z over the training set (sec. 4.3 and appendix G, which estimate it
on the first batch; Stable Diffusion's 0.18215 is this number for its autoencoder). A latent
diffusion model multiplies latents by it before diffusion, where it expects unit variance
(:func:`encode_dataset`), and divides by it before decoding (:func:`decode_latents`).

The output directory holds ``autoencoder.safetensors`` and ``autoencoder.json`` (the training and
network configs, scale factor, held-out reconstruction metrics, data info and difflab version),
written into a temporary folder and renamed into place (:func:`difflab.io.atomic.directory`).
"""
from __future__ import annotations

import json
import math
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..io import atomic
from ..nets.autoencoder import Autoencoder, AutoencoderConfig
from ..nets.layers import JSONConfig
from ..version import __version__
from .classifier import lr_factor
from .data import Dataset, load_dataset, torch_device

__all__ = ["AutoencoderTrainConfig", "AE_PRESETS", "train_autoencoder", "load_autoencoder", "gaussian_kl",
           "autoencoder_loss", "latent_scale_factor", "encode_dataset", "decode_latents",
           "reconstruction_metrics", "RECON_LOSSES"]

RECON_LOSSES = ("l1", "l2")


@dataclass(frozen=True)
class AutoencoderTrainConfig(JSONConfig):
    """Everything that determines a trained autoencoder (stored in autoencoder.json).

    ``net`` holds :class:`AutoencoderConfig` fields but ``in_channels`` and ``resolution``, which
    come from the data (``resolution`` and ``channels`` resize and convert it on loading).
    ``kl_weight``: the weight of the KL term; 1e-6 is that of Rombach et al.'s f=4 KL models
    (appendix G), small enough that reconstructions stay sharp. ``recon``: ``"l1"`` (theirs) or
    ``"l2"``. The learning rate warms up linearly over ``warmup_steps`` and then decays on a half
    cosine (:func:`difflab.training.classifier.lr_factor`).
    """

    preset: str = "custom"
    data: str | None = None
    resolution: int | None = None
    channels: int | None = None
    net: dict = field(default_factory=dict)
    kl_weight: float = 1e-6
    recon: str = "l1"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    steps: int = 1000
    warmup_steps: int = 50
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        for name in _FIELD_TYPES:
            value, allowed = getattr(self, name), _FIELD_TYPES[name]
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
                raise ValueError(f"AutoencoderTrainConfig.{name} must be {names}, got {value!r}")
        keys = sorted(set(AutoencoderConfig.__dataclass_fields__) - {"in_channels", "resolution"})
        if not set(self.net) <= set(keys):
            raise ValueError(f"AutoencoderTrainConfig.net takes the keys {keys} (the rest comes from the "
                             f"data), got {sorted(self.net)}")
        if self.recon not in RECON_LOSSES:
            raise ValueError(f"AutoencoderTrainConfig.recon must be one of {', '.join(RECON_LOSSES)}, "
                             f"got {self.recon!r}")
        for name in ("batch_size", "steps", "resolution"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"AutoencoderTrainConfig.{name} must be at least 1, got {value}")
        for name in ("warmup_steps", "seed", "weight_decay", "kl_weight"):
            value = getattr(self, name)
            if not value >= 0 or not math.isfinite(value):
                raise ValueError(f"AutoencoderTrainConfig.{name} must be non-negative, got {value}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"AutoencoderTrainConfig.lr must be positive, got {self.lr}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"AutoencoderTrainConfig.channels must be 1, 3 or None, got {self.channels}")

    def replace(self, **overrides) -> AutoencoderTrainConfig:
        """A copy with ``overrides``. A string for a field that is not a string (from a command
        line) is read as JSON (``"1e-4"``, ``"[1, 2]"``, ``"none"``); ``"net.KEY"`` sets one entry of
        ``net``."""
        values = {**self.to_dict(), "net": dict(self.net)}
        for key, value in overrides.items():
            name, _, sub = key.partition(".")
            if name not in values or (sub and name != "net"):
                raise ValueError(f"unknown AutoencoderTrainConfig key {key!r}; "
                                 f"valid keys are {sorted(values)}")
            if sub:
                values["net"][sub] = _read(key, value)
            else:
                values[name] = value if str in _FIELD_TYPES[name] else _read(key, value)
        return AutoencoderTrainConfig.from_dict(values)


#: The types each field accepts (ints for floats; bool only where it is the type).
_FIELD_TYPES = {name: (int, float) if hint is float else typing.get_args(hint) or (hint,)
                for name, hint in typing.get_type_hints(AutoencoderTrainConfig).items()}


def _read(key: str, value):
    """A command-line string as JSON, ``"none"`` as None; other values unchanged."""
    if not isinstance(value, str):
        return value
    if value.strip().lower() in ("none", "null"):
        return None
    try:
        return json.loads(value)
    except ValueError as e:
        raise ValueError(f"{key}: cannot read {value!r} as a number, list or JSON value") from e


#: Named training configs (``difflab train-autoencoder --preset NAME``). Sizes, steps and learning
#: rates were chosen by the held-out PSNR of short runs on one CPU thread; the numbers below are
#: those runs' (difflab 0.1.0).
AE_PRESETS: dict[str, AutoencoderTrainConfig] = {
    # 8x8 digits -> 2 x 4 x 4 latents (f = 2): 29.6 dB on the test split in 31 s. Width 32 gained
    # 0.6 dB at 3x the time; squared error instead of L1 lost 0.1 dB.
    "digits-ae": AutoencoderTrainConfig(
        preset="digits-ae", data="digits", lr=4e-3, batch_size=64, steps=1000, warmup_steps=50,
        net={"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "latent_channels": 2,
             "groups": 8}),
    # 32x32 RGB shapes (measured on the "shapes" set; trained on shapes-text, the data of the
    # shapes-text preset) -> 4 x 8 x 8 latents (f = 4, the layout of the f=4 KL model at toy size):
    # 26.9 dB on the test split in 200 s. The squared error gained 0.7 dB of PSNR over L1 here; a
    # second residual block per level 0.2 dB for 25% more time; channel_mult (1, 2, 4) diverged.
    "shapes-ae": AutoencoderTrainConfig(
        preset="shapes-ae", data="shapes-text", recon="l2", lr=4e-3, batch_size=32, steps=1500, warmup_steps=50,
        net={"base_channels": 16, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "latent_channels": 4,
             "groups": 8}),
}


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag(exp(logvar))) || N(0, I)) per sample, shape (B,):
    ``0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)`` over all but the batch axis (Kingma & Welling
    2014, appendix B)."""
    return 0.5 * (mean.square() + logvar.exp() - 1 - logvar).flatten(1).sum(1)


def autoencoder_loss(ae: Autoencoder, x: torch.Tensor, config: AutoencoderTrainConfig,
                     generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, recon, kl)``: ``loss = recon + kl_weight * kl`` with ``recon`` the L1 or squared error
    summed over pixels and ``kl`` :func:`gaussian_kl`, both averaged over the batch (Rombach et al.
    2022, appendix G, without the perceptual and adversarial terms)."""
    x_hat, mean, logvar = ae(x, generator)
    error = (x_hat - x).abs() if config.recon == "l1" else (x_hat - x).square()
    recon = error.flatten(1).sum(1).mean()
    kl = gaussian_kl(mean, logvar).mean()
    return recon + config.kl_weight * kl, recon, kl


def _param_device(ae: Autoencoder) -> torch.device:
    return next(ae.parameters()).device


def _encoded_means(ae: Autoencoder, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Posterior means of ``x``, batch by batch, on ``x``'s device and dtype."""
    device = _param_device(ae)
    return torch.cat([ae.encode(b.to(device))[0].to(x) for b in x.split(batch_size)])


@torch.no_grad()
def latent_scale_factor(ae: Autoencoder, x: torch.Tensor, batch_size: int = 256) -> float:
    """``1 / std(mean)``: one over the standard deviation (over all entries, population) of the
    posterior means of the images ``x`` (Rombach et al. 2022, sec. 4.3 and appendix G)."""
    return 1.0 / _encoded_means(ae, x, batch_size).double().std(correction=0).item()


@torch.no_grad()
def encode_dataset(ae: Autoencoder, x: torch.Tensor, scale_factor: float,
                   batch_size: int = 256) -> torch.Tensor:
    """Latents for a latent diffusion model: ``scale_factor * mean(x)``, the posterior means scaled to
    unit variance, shape (N, latent_channels, H/f, W/f), on ``x``'s device."""
    return scale_factor * _encoded_means(ae, x, batch_size)


@torch.no_grad()
def decode_latents(ae: Autoencoder, z: torch.Tensor, scale_factor: float,
                   batch_size: int = 256) -> torch.Tensor:
    """Images ``D(z / scale_factor)`` of scaled latents (the inverse of :func:`encode_dataset`),
    unbounded like the decoder, on ``z``'s device."""
    device = _param_device(ae)
    return torch.cat([ae.decode(b.to(device) / scale_factor).to(z) for b in z.split(batch_size)])


@torch.no_grad()
def reconstruction_metrics(ae: Autoencoder, x: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """``{"mse", "psnr_db"}`` of the reconstructions D(mean(x)) clipped to [-1, 1]: the mean squared
    error per pixel and ``PSNR = 10 log10(2^2 / MSE)``, the peak-to-peak range of [-1, 1] being 2."""
    x_hat = decode_latents(ae, _encoded_means(ae, x, batch_size), 1.0, batch_size).clamp(-1, 1)
    mse = (x_hat - x).double().square().mean().item()
    return {"mse": mse, "psnr_db": 10 * math.log10(4.0 / mse) if mse > 0 else math.inf}


def _load(config: AutoencoderTrainConfig, split: str = "train") -> Dataset:
    if config.data is None:
        raise ValueError("AutoencoderTrainConfig.data is not set; give a built-in data set name or a path")
    ds = load_dataset(config.data, split=split, resolution=config.resolution, channels=config.channels)
    if ds.kind != "image":
        raise ValueError(f"{ds.name}: an autoencoder needs images, got points of shape {ds.shape}")
    return ds


def _held_out(config: AutoencoderTrainConfig, train: Dataset) -> Dataset:
    """The test split of a built-in data set; user data has none, so the training set stands in."""
    try:
        return _load(config, split="test")
    except ValueError:
        return train


def train_autoencoder(config: AutoencoderTrainConfig, out_dir, *, progress: bool = True, device=None) -> dict:
    """Train an :class:`Autoencoder` by :func:`autoencoder_loss` with AdamW and save it to
    ``out_dir``; returns the saved metadata: the configs, the latent scale factor
    (:func:`latent_scale_factor` over the training set), the held-out :func:`reconstruction_metrics`
    (test split for built-in data, else the training set), data info and training time."""
    device = torch_device(device)
    out_dir = _check_out_dir(out_dir)
    ds = _load(config)
    net = AutoencoderConfig.from_dict({**config.net, "in_channels": ds.shape[0], "resolution": ds.shape[1]})
    with torch.random.fork_rng(devices=[]):  # initial weights from a seeded global RNG, left untouched
        torch.manual_seed(config.seed)
        ae = Autoencoder(net)
    ae = ae.to(device)
    opt = torch.optim.AdamW(ae.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(config, k))
    gen = torch.Generator(device).manual_seed(config.seed)
    steps = range(config.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="training autoencoder")
    start = time.perf_counter()
    ae.train()
    for step in steps:
        loss, recon, kl = autoencoder_loss(ae, ds.batch(config.batch_size, config.seed, step)[0].to(device),
                                           config, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        if progress and step % 50 == 0:
            steps.set_postfix(recon=f"{recon.item():.3f}", kl=f"{kl.item():.1f}")
    seconds = time.perf_counter() - start
    ae.eval()
    held_out = _held_out(config, ds)
    meta = {"config": config.to_dict(), "net": net.to_dict(), "latent_shape": list(net.latent_shape),
            "scale_factor": latent_scale_factor(ae, ds.x), "metrics": reconstruction_metrics(ae, held_out.x),
            "metrics_split": "test" if held_out is not ds else "train", "data": ds.info(),
            "final_loss": {"loss": loss.item(), "recon": recon.item(), "kl": kl.item()},
            "train_seconds": seconds, "difflab_version": __version__}
    _save(out_dir, ae, meta)
    return meta


def _check_out_dir(out_dir) -> Path:
    """``out_dir`` as a Path; ValueError if it holds anything but an autoencoder (it gets replaced)."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) \
            and not (out_dir / "autoencoder.json").exists():
        raise ValueError(f"{out_dir} exists and is not an autoencoder directory; "
                         "choose a new or empty folder")
    return out_dir


def _save(out_dir: Path, ae: Autoencoder, meta: dict) -> None:
    """Write both files into a temporary folder and swap it in for ``out_dir`` (:mod:`difflab.io.atomic`)."""
    with atomic.directory(out_dir) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in ae.state_dict().items()},
                  tmp / "autoencoder.safetensors")
        (tmp / "autoencoder.json").write_text(json.dumps(meta, indent=2))


def load_autoencoder(path, device="cpu") -> tuple[Autoencoder, dict]:
    """``(autoencoder, metadata)`` from a directory written by :func:`train_autoencoder`: the network
    in eval mode with frozen parameters, and the contents of autoencoder.json (``scale_factor``,
    ``metrics``, configs). Weights are read from safetensors; nothing is unpickled."""
    path = Path(path).expanduser()
    try:
        meta = json.loads((path / "autoencoder.json").read_text())
        ae = Autoencoder(AutoencoderConfig.from_dict(meta["net"]))
        ae.load_state_dict(load_file(path / "autoencoder.safetensors", device=str(device)))
        float(meta["scale_factor"])  # a latent model needs it
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        raise ValueError(f"{path}: not a readable autoencoder directory ({type(e).__name__}: {e})") from e
    return ae.to(device).eval().requires_grad_(False), meta

"""Train the noise-aware classifier of classifier guidance, and load it back.

Dhariwal & Nichol 2021, sec. 4: the classifier p(y | x, sigma) is trained with cross-entropy on
noisy images x = x0 + sigma n at noise levels spread over the whole sampling range, so that its
gradient is informative at every step of sampling. difflab's convention (stored in classifier.json
and applied by :func:`difflab.guidance.classifier_inputs`) is EDM's preconditioning (Karras et al.
2022, Table 1): the network sees x_in = x / sqrt(sigma^2 + sigma_data^2), unit variance at every
noise level, and c_noise = log(sigma) / 4.

Noise levels are drawn log-uniformly over [sigma_min, sigma_max] (the default, matching the uniform
timesteps of Dhariwal & Nichol) or lognormally, log sigma ~ N(P_mean, P_std^2) (Karras et al. 2022,
sec. 5). The output directory holds ``classifier.safetensors`` and ``classifier.json`` (the config,
number of classes, input convention, data info and held-out accuracies), written into a temporary
folder and renamed into place (:func:`difflab.io.atomic.directory`), so it is always complete.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..guidance import ClassLogProb, classifier_inputs, noisy_classifier_log_prob
from ..io import atomic
from ..nets import ClassifierConfig, NoisyClassifier
from ..nets.layers import JSONConfig
from .data import Dataset, load_dataset

__all__ = ["ClassifierTrainConfig", "train_classifier", "load_classifier", "classifier_accuracy",
           "draw_sigmas", "lr_factor", "DEFAULT_NET", "EVAL_SIGMAS"]

#: Network defaults (the data-dependent fields are filled from the data set): a one-stage-down
#: encoder of the digits UNet's width with attention pooling; trains on digits in about 2 minutes
#: on two CPU cores.
DEFAULT_NET = {"base_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
               "num_heads": 2, "dropout": 0.0, "pool": "attention"}
#: Noise levels at which the held-out accuracy is reported.
EVAL_SIGMAS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)
SIGMA_SAMPLING = ("loguniform", "lognormal")
INPUT_CONVENTION = "edm: x_in = x / sqrt(sigma^2 + sigma_data^2), c_noise = log(sigma) / 4"


@dataclass(frozen=True)
class ClassifierTrainConfig(JSONConfig):
    """Everything that determines a trained classifier (stored in classifier.json)."""

    data: str = "digits"
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    seed: int = 0
    sigma_sampling: str = "loguniform"
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 0.5
    net: dict = field(default_factory=lambda: dict(DEFAULT_NET))

    def __post_init__(self):
        super().__post_init__()
        if self.sigma_sampling not in SIGMA_SAMPLING:
            raise ValueError(f"unknown sigma sampling {self.sigma_sampling!r}; choose from {SIGMA_SAMPLING}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"need steps, batch_size >= 1 and lr > 0; got steps={self.steps}, "
                             f"batch_size={self.batch_size}, lr={self.lr}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")


def draw_sigmas(config: ClassifierTrainConfig, n: int, generator: torch.Generator) -> torch.Tensor:
    """n training noise levels (float64): log-uniform over [sigma_min, sigma_max], or lognormal
    log sigma ~ N(P_mean, P_std^2) (Karras et al. 2022, sec. 5)."""
    if config.sigma_sampling == "lognormal":
        return (config.P_mean + config.P_std * torch.randn(n, generator=generator, dtype=torch.float64)).exp()
    lo, hi = math.log(config.sigma_min), math.log(config.sigma_max)
    return (lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)).exp()


def lr_factor(config: ClassifierTrainConfig, step: int) -> float:
    """lr multiplier: linear warm-up over ``warmup_steps`` (Goyal et al. 2017, sec. 2.2), then
    cosine decay to 0 at ``steps`` (Loshchilov & Hutter 2017, eq. 5)."""
    warmup = min(1.0, (step + 1) / max(1, config.warmup_steps))
    return warmup * 0.5 * (1 + math.cos(math.pi * step / config.steps))


def _build(config: ClassifierTrainConfig, ds: Dataset) -> NoisyClassifier:
    if ds.kind != "image" or ds.y is None:
        raise ValueError(f"{ds.name}: a guidance classifier needs labelled images")
    net = {**config.net, "in_channels": ds.shape[0], "resolution": ds.shape[1], "num_classes": ds.num_classes}
    return NoisyClassifier(ClassifierConfig.from_dict(net))


def _loss(net, config, x0, y, generator) -> torch.Tensor:
    """Cross-entropy of the classifier on x = x0 + sigma n (Dhariwal & Nichol 2021, sec. 4)."""
    sigma = draw_sigmas(config, x0.shape[0], generator)
    noise = torch.randn(x0.shape, generator=generator)
    x = x0 + sigma.to(x0.dtype)[:, None, None, None] * noise
    x_in, c_noise = classifier_inputs(x, sigma, None, config.sigma_data)
    return F.cross_entropy(net(x_in, c_noise), y)


@torch.no_grad()
def classifier_accuracy(net, ds: Dataset, sigmas=EVAL_SIGMAS, *, sigma_data: float = 0.5,
                        seed: int = 0) -> dict[float, float]:
    """{sigma: fraction of ``ds`` classified correctly at that noise level} (fixed noise per seed)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for s in sigmas:
        x = ds.x + s * torch.randn(ds.x.shape, generator=gen)
        x_in, c_noise = classifier_inputs(x, torch.full((len(x),), float(s)), None, sigma_data)
        pred = torch.cat([net(a, b).argmax(1) for a, b in zip(x_in.split(512), c_noise.split(512))])
        out[float(s)] = (pred == ds.y).double().mean().item()
    return out


def train_classifier(data: str, out_dir, *, progress: bool = True, **options) -> dict:
    """Train a :class:`~difflab.nets.NoisyClassifier` on ``data`` (a :func:`~difflab.training.load_dataset`
    spec with labels) and save it to ``out_dir``; ``options`` are :class:`ClassifierTrainConfig`
    fields (``net`` updates :data:`DEFAULT_NET` key by key). Returns the saved metadata, including
    the held-out accuracy at :data:`EVAL_SIGMAS` (on the test split for built-in data)."""
    options["net"] = {**DEFAULT_NET, **options.get("net", {})}
    config = ClassifierTrainConfig(data=str(data), **options)
    out_dir = _check_out_dir(out_dir)
    ds = load_dataset(config.data)
    with torch.random.fork_rng(devices=[]):  # initial weights from a seeded global RNG, left untouched
        torch.manual_seed(config.seed)
        net = _build(config, ds)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(config, k))
    gen = torch.Generator().manual_seed(config.seed)
    steps = range(config.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="training classifier")
    net.train()
    for step in steps:
        loss = _loss(net, config, *ds.batch(config.batch_size, config.seed, step), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        if progress and step % 50 == 0:
            steps.set_postfix(loss=f"{loss.item():.3f}")
    net.eval()
    held_out = _held_out(config.data, ds)
    accuracy = classifier_accuracy(net, held_out, sigma_data=config.sigma_data)
    meta = {"config": config.to_dict(), "net": net.config.to_dict(), "num_classes": ds.num_classes,
            "class_names": ds.info()["class_names"], "input_convention": INPUT_CONVENTION,
            "sigma_data": config.sigma_data, "data": ds.info(), "final_loss": loss.item(),
            "accuracy": {str(s): a for s, a in accuracy.items()},
            "accuracy_split": "test" if held_out is not ds else "train"}
    _save(out_dir, net, meta)
    return meta


def _held_out(spec: str, train: Dataset) -> Dataset:
    """The test split of a built-in data set; user data has none, so the training set stands in."""
    try:
        return load_dataset(spec, split="test")
    except ValueError:
        return train


def _check_out_dir(out_dir) -> Path:
    """``out_dir`` as a Path; ValueError if it holds anything but a classifier (it gets replaced)."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) \
            and not (out_dir / "classifier.json").exists():
        raise ValueError(f"{out_dir} exists and is not a classifier directory; choose a new or empty folder")
    return out_dir


def _save(out_dir: Path, net: NoisyClassifier, meta: dict) -> None:
    """Write both files into a temporary folder and swap it in for ``out_dir`` (:mod:`difflab.io.atomic`)."""
    with atomic.directory(out_dir) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp / "classifier.safetensors")
        (tmp / "classifier.json").write_text(json.dumps(meta, indent=2))


def load_classifier(path, device="cpu") -> tuple[NoisyClassifier, ClassLogProb]:
    """``(classifier, log_prob)`` from a directory written by :func:`train_classifier`: the network
    (eval mode, parameters frozen) and its ``log p(y | x, sigma)`` for
    :func:`difflab.guidance.classifier_guidance`."""
    path = Path(path).expanduser()
    try:
        meta = json.loads((path / "classifier.json").read_text())
        net = NoisyClassifier(ClassifierConfig.from_dict(meta["net"]))
        net.load_state_dict(load_file(path / "classifier.safetensors", device=str(device)))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{path}: not a readable classifier directory ({type(e).__name__}: {e})") from e
    net = net.to(device).eval().requires_grad_(False)
    return net, noisy_classifier_log_prob(net, sigma_data=meta["sigma_data"])

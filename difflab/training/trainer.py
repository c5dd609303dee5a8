"""The training loop: AdamW with warm-up and clipping, EMA, gradient accumulation, bf16 on CUDA,
exact resume, and data-parallel training over processes started by ``torchrun``.

Every random draw is a pure function of the config's seed and the step: the batch of step k is
``Dataset.batch(batch_size, seed, k)``; sigma, noise and label dropout for the whole global batch
come from a generator seeded by (seed, k); dropout inside the network from the global RNG
reseeded by (seed, k, rank). A run resumed from the checkpoint of step N therefore repeats the
uninterrupted run bit for bit, and since every process draws the global batch's noise and keeps
its own slice, W processes (or ``grad_accum`` micro-batches) compute the same gradient as one
process with the whole batch, up to the order of floating-point sums.

Output folder: ``model/`` (the model directory, see :mod:`difflab.training.checkpoint`), ``log.csv``
and ``samples/step_XXXXXX.png``. Only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import io
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..denoisers import NetworkDenoiser
from ..io import atomic
from ..editing.inpaint import observed_denoiser
from ..io.images import save_grid, save_scatter
from ..io.signals import save_signals
from ..nets import build_network
from ..nets.text import TextConfig, Tokenizer
from ..samplers import default_sigmas, generate
from ..schedules import make_schedule
from .checkpoint import (MODEL_DIR, CheckpointError, find_model_dir, load_weights, read_config,
                         read_training_state, recover, save_checkpoint)
from .autoencoder import decode_latents, encode_dataset, load_autoencoder
from .config import LATENT_PRESETS, TrainConfig, native_sampling
from .data import Dataset, batch_indices, load_dataset, torch_device
from .objectives import learned_log_snr, make_objective
from .tasks import IMAGE_TASKS, degrade, task_cond_channels, task_condition, task_denoiser

__all__ = ["train", "keep_checkpoint", "run_lock", "prepare_data", "resolve_config", "make_optimizer", "cuda_fast_paths", "step_seed", "ema_decay_at", "lr_at",
           "update_ema"]

LOG_FIELDS = ("step", "loss", "lr", "grad_norm", "seconds")
IMAGE_NETWORKS = ("unet", "dit")
NETWORK_OF_KIND = {"image": IMAGE_NETWORKS, "signal": ("wavenet",), "points": ("mlp",)}
#: Fields that may change when a run is resumed: they do not affect the trained weights.
RESUMABLE_CHANGES = {"preset", "steps", "ckpt_every", "sample_every", "log_every", "sample_sampler",
                     "sample_steps", "compile", "keep"}
SAMPLE_GRID = 64  # images per sample grid (8 per class for class-conditional models)
SAMPLE_POINTS = 2000  # points per scatter plot
SAMPLE_SIGNALS = 8  # signals per plot
CHECKPOINTS_DIR = "checkpoints"  # the kept checkpoints (TrainConfig.keep > 1)
LOCK_FILE = ".lock"


def step_seed(*keys: int) -> int:
    """A 63-bit seed mixed from non-negative ints by NumPy's SeedSequence (no collisions between
    nearby (seed, step) pairs, unlike seed + step)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def lr_at(config: TrainConfig, step: int) -> float:
    """Linear warm-up from lr / warmup_steps to lr over the first ``warmup_steps`` steps (Goyal et
    al. 2017, sec. 2.2), then constant (as in Ho et al. 2020 and Karras et al. 2022) or, with
    ``lr_decay``, down to 0 at the last step: lr (1 + cos(pi f)) / 2 (Loshchilov & Hutter 2017,
    eq. 5) or lr (1 - f), f the fraction of the steps after the warm-up done."""
    warm = 1.0 if config.warmup_steps == 0 else min(1.0, (step + 1) / config.warmup_steps)
    if config.lr_decay == "none" or step < config.warmup_steps:
        return config.lr * warm
    f = min(1.0, (step + 1 - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.lr * (0.5 * (1 + math.cos(math.pi * f)) if config.lr_decay == "cosine" else 1 - f)


def ema_decay_at(config: TrainConfig, step: int) -> float:
    """EMA decay at (0-based) step: ema_decay, or with ``ema_warmup`` min(ema_decay,
    (1 + step)/(10 + step)) so early averages forget the random initialisation (the warm-up of
    tf.train.ExponentialMovingAverage's num_updates, used by Song et al. 2021's code)."""
    if not config.ema_warmup:
        return config.ema_decay
    return min(config.ema_decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """ema <- decay ema + (1 - decay) net for parameters (one multi-tensor lerp); buffers are copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - decay)
    for e, b in zip(ema.buffers(), net.buffers()):
        e.copy_(b)


# ---------------------------------------------------------------------------------------------
# Set-up


def prepare_data(config: TrainConfig, device) -> Dataset:
    """Load the config's data set (on ``device`` when it is small) and check it fits the config."""
    if config.data is None:
        raise ValueError(f"the {config.preset} preset needs your data: pass --data PATH "
                         "(a folder of images, a .npy or a .npz)")
    ds = load_dataset(config.data, resolution=config.resolution, channels=config.channels)
    if config.num_classes is not None:
        if ds.y is None:
            raise ValueError(f"{ds.name} has no labels, but num_classes={config.num_classes} asks for a "
                             "class-conditional model")
        if ds.num_classes != config.num_classes:
            raise ValueError(f"{ds.name} has {ds.num_classes} classes, but the config says num_classes="
                             f"{config.num_classes}")
    if config.coupling == "pairs" and ds.noise is None:
        raise ValueError(f"coupling 'pairs' needs data with a paired noise column (a .npz with 'noise', as "
                         f"difflab reflow writes); {ds.name} has none")
    if ds.kind == "image" and ds.shape[1] != ds.shape[2]:
        raise ValueError(f"{ds.name}: images must be square for the UNet, got {ds.shape[1]}x{ds.shape[2]}"
                         " (pass a resolution)")
    if config.net.get("text") and ds.captions is None:
        raise ValueError(f"a text-conditional network needs captioned data; {ds.name} has no captions")
    if config.autoencoder is not None:
        ds = encode_latents(ds, config.autoencoder, device)
    elif config.preset in LATENT_PRESETS:
        raise ValueError(f"the {config.preset} preset trains on an autoencoder's latents: pass --autoencoder DIR "
                         f"(from difflab train-autoencoder --preset {LATENT_PRESETS[config.preset]} --out DIR)")
    small = ds.x.numel() * ds.x.element_size() < 2**30
    return ds.to(device) if small else ds


def encode_latents(ds: Dataset, autoencoder_dir, device) -> Dataset:
    """The data set in the latent space of an autoencoder (posterior means times its scale factor,
    Rombach et al. 2022, sec. 4.3): what a latent diffusion model is trained on."""
    ae, meta = load_autoencoder(autoencoder_dir, device)
    if ds.kind != "image" or tuple(ds.shape) != ae.image_shape:
        raise ValueError(f"the autoencoder {autoencoder_dir} takes images of shape {ae.image_shape}, the data "
                         f"set {ds.name} has {tuple(ds.shape)} (set resolution and channels to match)")
    latents = encode_dataset(ae, ds.x.to(device), meta["scale_factor"]).cpu()
    return dataclasses.replace(ds, x=latents, name=f"{ds.name} (latents)")


def resolve_config(config: TrainConfig, ds: Dataset) -> TrainConfig:
    """Fill the network config's data-dependent fields from the data set: channels and resolution
    (UNet) or dimension (MLP), and num_classes."""
    if config.network not in NETWORK_OF_KIND[ds.kind]:
        raise ValueError(f"network {config.network!r} does not fit {ds.kind} data ({ds.name}); use "
                         f"{' or '.join(NETWORK_OF_KIND[ds.kind])}")
    if config.task in IMAGE_TASKS and ds.kind != "image":
        raise ValueError(f"task {config.task!r} needs images (N, C, H, W); {ds.name} holds {ds.kind}s")
    if config.task == "impute" and ds.kind != "signal":
        raise ValueError(f"task 'impute' needs signals (N, C, L); {ds.name} holds {ds.kind}s")
    net = dict(config.net, num_classes=config.num_classes)
    if ds.kind == "image":
        net.update(in_channels=ds.shape[0], resolution=ds.shape[1])
        if config.task in IMAGE_TASKS:  # SR3 / Palette: the degraded image as extra input channels
            net.update(cond_channels=task_cond_channels(config.task, ds.shape[0]))
    elif ds.kind == "signal":
        net.update(in_channels=ds.shape[0], length=ds.shape[1],
                   cond_channels=2 * ds.shape[0] if config.task == "impute" else 0)
    else:
        net.update(dim=ds.shape[0])
    return config.replace(net=net)


def _check_resumable(saved: TrainConfig, config: TrainConfig, model_dir: Path) -> None:
    a, b = saved.to_dict(), config.to_dict()
    free = RESUMABLE_CHANGES - ({"steps"} if config.lr_decay != "none" else set())  # the decay ends at steps
    changed = sorted(k for k in a if a[k] != b[k] and k not in free)
    if changed:
        details = "; ".join(f"{k}: {a[k]!r} -> {b[k]!r}" for k in changed)
        raise CheckpointError(f"{model_dir}: cannot resume with a different config ({details})")


@dataclass
class _Run:
    """The state of one training run (one per process)."""

    config: TrainConfig
    out_dir: Path
    ds: Dataset
    net: nn.Module  # the plain network (not the DDP wrapper)
    ema: nn.Module | None
    optimizer: torch.optim.Optimizer
    denoiser: NetworkDenoiser  # wraps the DDP module when distributed
    objective: object  # training.objectives.Objective: draws a batch's targets, computes its loss
    loss_fn: object  # objective.loss, compiled when asked
    device: torch.device
    rank: int
    world: int
    params: list | None = None  # the network's parameters, listed once (a module walk per step costs)
    gamma: nn.Module | None = None  # objective 'vdm': its learned noise schedule (objectives.LearnedLogSNR)
    tokens: torch.Tensor | None = None  # the captions' tokens of a text-conditional model
    step: int = 0
    window_sum: torch.Tensor | float = 0.0  # loss sum since the last log row (on the device)
    window_count: int = 0
    elapsed: float = 0.0


def _build(config: TrainConfig, out_dir: Path, resume: bool, device, rank: int, world: int) -> _Run:
    """Data, network, EMA and optimizer, restored from ``out_dir/model`` when resuming."""
    model_dir = out_dir / MODEL_DIR
    if model_dir.exists() and not resume:
        raise CheckpointError(f"{out_dir} already holds a trained model; resume it or choose another folder")
    ds = prepare_data(config, device)
    config = resolve_config(config, ds)
    torch.manual_seed(config.seed)
    net = build_network(config.network, config.net).to(device)
    if config.init is not None and not model_dir.exists():
        _initialise(net, config, Path(config.init), device)
    ema = copy.deepcopy(net).requires_grad_(False).eval() if config.ema_decay > 0 else None
    optimizer = make_optimizer(net.parameters(), config, device)
    # A learned noise schedule (VDM) trains beside the network: a second parameter group without
    # weight decay, outside gradient clipping (its variance gradient has its own scale).
    gamma = learned_log_snr(config)
    if gamma is not None:
        gamma.to(device)
        if gamma.trainable:
            optimizer.add_param_group({"params": list(gamma.parameters()), "weight_decay": 0.0})
    run = _Run(config, out_dir, ds, net, ema, optimizer, None, None, None, device, rank, world,
               params=list(net.parameters()), gamma=gamma)
    if config.net.get("text"):  # every caption tokenised once, kept beside the data
        run.tokens = Tokenizer(TextConfig.from_dict(config.net["text"])).encode(ds.captions).to(ds.x.device)
    if model_dir.exists():
        _restore(run, model_dir)
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    schedule = make_schedule(config.schedule)
    run.denoiser = NetworkDenoiser(net, schedule, config.prediction, config.sigma_data)
    ema_denoiser = None if ema is None else NetworkDenoiser(ema, schedule, config.prediction, config.sigma_data)
    run.objective = make_objective(config, run.denoiser, ema_denoiser, device, gamma)
    run.loss_fn = run.objective.loss if config.compile == "none" else torch.compile(
        run.objective.loss, mode=None if config.compile == "default" else config.compile)
    return run


def make_optimizer(params, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019) with the config's settings: the fused kernel on CUDA, the
    multi-tensor (foreach) one elsewhere, so an optimizer step is a handful of kernels."""
    cuda = device.type == "cuda"
    return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
                             fused=True if cuda else None, foreach=None if cuda else True)


def _initialise(net: nn.Module, config: TrainConfig, init: Path, device) -> None:
    """Start from the weights of the model directory ``init`` (its EMA weights when it has them),
    which must have the same network, or the same plus a guidance-scale input (a guided student,
    whose new input starts at zero)."""
    source = find_model_dir(init)
    saved, _ = read_config(source)
    added = config.net.get("guidance_embedding", False) and not saved.net.get("guidance_embedding", False)
    if (saved.network, {**saved.net, "guidance_embedding": added or saved.net.get("guidance_embedding", False)}) \
            != (config.network, {**config.net, "guidance_embedding": config.net.get("guidance_embedding", False)}):
        raise CheckpointError(f"{source}: its network differs from this run's; init needs the same network "
                              f"({saved.network} {saved.net} vs {config.network} {config.net})")
    weights = source / "ema.safetensors"
    load_weights(net, weights if weights.exists() else source / "model.safetensors", device,
                 missing_prefix="embed.guidance." if added else None)


def _restore(run: _Run, model_dir: Path) -> None:
    """Weights, EMA, optimizer state, step and log window from a checkpoint of the same config."""
    saved, _ = read_config(model_dir)
    state = read_training_state(model_dir, run.device)
    if "learned_schedule" in state:  # config.json holds the schedule learned so far; compare the run's initial one
        saved = saved.replace(schedule=state["learned_schedule"]["initial"])
    _check_resumable(saved, run.config, model_dir)
    load_weights(run.net, model_dir / "model.safetensors", run.device)
    if run.ema is not None:
        load_weights(run.ema, model_dir / "ema.safetensors", run.device)
    try:
        if run.gamma is not None and run.gamma.trainable:
            run.gamma.load_state_json(state["learned_schedule"]["parameters"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.step, run.elapsed = int(state["step"]), float(state["elapsed"])
        run.window_sum, run.window_count = float(state["window"][0]), int(state["window"][1])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{model_dir}: the training state is incomplete or damaged ({e})") from e


# ---------------------------------------------------------------------------------------------
# One step


def _train_step(run: _Run) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the global batch of step ``run.step``: (mean loss, grad norm)."""
    c, k = run.config, run.step
    accum, per_rank = c.grad_accum, c.batch_size // run.world
    micro = per_rank // accum
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(c, k)
    if c.compile == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs may be reused
    torch.manual_seed(step_seed(c.seed, k, 1 + run.rank))  # dropout masks
    gen = torch.Generator(run.device).manual_seed(step_seed(c.seed, k, 0))
    idx = batch_indices(len(run.ds), c.batch_size, c.seed, k, device=run.ds.x.device)
    x0 = run.ds.x[idx].to(run.device)
    y = run.ds.y[idx].to(run.device) if c.num_classes is not None else None
    paired = run.ds.noise[idx].to(run.device) if c.coupling == "pairs" else None
    text = run.tokens[idx].to(run.device) if run.tokens is not None else None
    batch = run.objective.draw(x0, y, paired, gen, k, text=text)
    ddp = run.denoiser.net if run.world > 1 else None
    bf16 = c.precision == "bf16" and run.device.type == "cuda"
    total = torch.zeros((), device=run.device, dtype=torch.float64)
    for a in range(accum):
        rows = slice(run.rank * per_rank + a * micro, run.rank * per_rank + (a + 1) * micro)
        # DDP averages gradients over processes on the last micro-batch's backward only.
        with ddp.no_sync() if ddp is not None and a < accum - 1 else contextlib.nullcontext():
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, _ = run.loss_fn({key: v[rows] for key, v in batch.items() if v is not None})
            (loss / accum).backward()
        total += loss.detach() / accum
    if run.world > 1 and run.gamma is not None and run.gamma.trainable:  # outside DDP: average by hand
        for p in run.gamma.parameters():
            dist.all_reduce(p.grad)
            p.grad /= run.world
    grad_norm = nn.utils.clip_grad_norm_(run.params, c.grad_clip or math.inf)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        update_ema(run.ema, run.net, ema_decay_at(c, k))
    if run.world > 1:
        dist.all_reduce(total)
        total /= run.world
    run.step += 1
    return total, grad_norm


# ---------------------------------------------------------------------------------------------
# Outputs (rank 0)


def _open_log(run: _Run) -> Path:
    """log.csv with the header, keeping the rows before the resumed step (and the row at it if it
    closed a full ``log_every`` window, not the partial final row of the interrupted segment)."""
    path = run.out_dir / "log.csv"
    rows = []
    if run.step > 0 and path.exists():
        on_grid = run.step % run.config.log_every == 0
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f)
                    if int(r["step"]) < run.step or (int(r["step"]) == run.step and on_grid)]
    text = io.StringIO()
    writer = csv.DictWriter(text, LOG_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return atomic.write_text(path, text.getvalue())  # a crash here keeps the old log whole


def _log_row(run: _Run, path: Path, grad_norm: float, seconds: float) -> float:
    """Append (step, mean loss since the last full window, lr, grad norm, seconds). The window
    restarts every ``log_every`` steps only, so a final partial row does not shift later ones."""
    loss = float(run.window_sum) / run.window_count
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow([run.step, f"{loss:.6g}", f"{lr_at(run.config, run.step - 1):.6g}",
                                f"{grad_norm:.6g}", f"{seconds:.2f}"])
    if run.step % run.config.log_every == 0:
        run.window_sum, run.window_count = 0.0, 0
    return loss


def _save_samples(run: _Run) -> Path:
    """A grid (or scatter plot) of EMA samples with a fixed seed, so grids compare across steps."""
    c, ds = run.config, run.ds
    net = (run.ema if run.ema is not None else run.net).eval()
    denoiser = NetworkDenoiser(net, run.objective.learned_schedule() or run.denoiser.schedule, c.prediction,
                               c.sigma_data)
    sampler, sigmas, options = native_sampling(c) or (
        c.sample_sampler, default_sigmas(denoiser.schedule, c.sample_steps, c.sample_sampler), {})
    sigmas = sigmas.to(run.device)
    gen = torch.Generator(run.device).manual_seed(c.seed)
    path = run.out_dir / "samples" / f"step_{run.step:06d}.png"
    if ds.kind == "points":
        n = SAMPLE_POINTS
        y = None if c.num_classes is None else torch.arange(n) % c.num_classes
    elif ds.kind == "signal":
        n, y = SAMPLE_SIGNALS, None if c.num_classes is None else torch.arange(SAMPLE_SIGNALS) % c.num_classes
    else:  # 8 per class for class-conditional models
        y = None if c.num_classes is None else torch.arange(c.num_classes).repeat_interleave(SAMPLE_GRID // 8)
        n = SAMPLE_GRID if y is None else len(y)
    cond = {} if y is None else {"y": y}
    if c.net.get("guidance_embedding"):  # a guided student: at the middle of its trained scales
        cond["w"] = torch.full((n,), (c.distill.get("w_min", 1.0) + c.distill.get("w_max", 5.0)) / 2)
    if run.tokens is not None:  # the first captions of the data set
        cond["text"] = run.tokens[torch.arange(n) % len(run.tokens)]
    reference = ds.x[:n].to(run.device)
    if c.task == "impute":  # forecasts of the second half of the first signals from their first half
        past = (torch.arange(ds.shape[-1], device=run.device) < ds.shape[-1] // 2).expand_as(reference)
        denoiser = observed_denoiser(denoiser, reference, past)
    if c.task in IMAGE_TASKS:  # restorations of the first images from their degraded versions
        degraded, mask = degrade(c.task, reference, factor=c.sr_factor, generator=gen)
        cond["condition"] = task_condition(c.task, degraded, reference.shape, factor=c.sr_factor, mask=mask)
        denoiser = task_denoiser(denoiser, c.task)
    x = generate(denoiser, ds.shape, n, sigmas, sampler, generator=gen, cond=cond or None, **options)
    if c.autoencoder is not None:
        ae, meta = load_autoencoder(c.autoencoder, run.device)
        x = decode_latents(ae, x.to(run.device), meta["scale_factor"]).cpu()
    if ds.kind == "points":
        save_scatter(x, path, reference=ds.x[:SAMPLE_POINTS], title=f"step {run.step}")
    elif ds.kind == "signal":
        title = f"step {run.step}" + (": forecasts of the second half" if c.task == "impute" else "")
        save_signals(x.cpu(), path, reference=reference.cpu(), title=title)
    else:
        save_grid(x.clamp(-1, 1), path, nrow=8)
    run.net.train()
    return path


def _checkpoint(run: _Run) -> Path:
    extra = {"data": run.ds.info(), "elapsed": run.elapsed, "window": [float(run.window_sum), run.window_count],
             "seed": run.config.seed}
    config, learned = run.config, run.objective.learned_schedule()
    if learned is not None:  # the model directory's schedule is the learned one; resuming needs the rest
        config = config.replace(schedule=learned.to_dict())
        extra["learned_schedule"] = {"initial": run.config.schedule, "parameters": run.gamma.state_json()}
    model_dir = save_checkpoint(run.out_dir, config, run.net, run.ema, run.optimizer, run.step, extra,
                                autoencoder=run.config.autoencoder)
    if run.config.keep > 1:
        keep_checkpoint(model_dir, run.out_dir / CHECKPOINTS_DIR, run.step, run.config.keep)
    return model_dir


def keep_checkpoint(model_dir: Path, folder: Path, step: int, keep: int) -> Path:
    """Archive the model directory as ``folder/step_XXXXXX`` (hard links to its files, which are
    never rewritten in place, or copies where links fail) and delete all but the ``keep`` latest
    archives. Built in a temporary folder and renamed, so an archive is complete or absent."""
    target = folder / f"step_{step:06d}"
    with atomic.directory(target) as tmp:
        for f in model_dir.rglob("*"):
            dest = tmp / f.relative_to(model_dir)
            if f.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, dest)
            except OSError:
                shutil.copy2(f, dest)
    archives = sorted(p for p in folder.glob("step_*") if p.is_dir())
    for old in archives[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


@contextlib.contextmanager
def run_lock(out_dir: Path):
    """Hold ``out_dir/.lock`` (an exclusive ``flock``) while a run writes there: a second ``train``
    on the same folder stops with a clear error instead of interleaving checkpoints. The kernel
    releases the lock when the process ends, however it ends, so a crashed run never leaves the
    folder stuck."""
    import fcntl

    path = out_dir / LOCK_FILE
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            owner = f.read().strip() or "unknown"
            raise CheckpointError(f"{out_dir} is in use by another difflab train (pid {owner}); wait for it to "
                                  "finish or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        f.close()


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


# ---------------------------------------------------------------------------------------------
# Entry point


def _distributed(device) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether we started the process group) from torchrun's env vars."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch_device(device, f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    started = world > 1 and not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device, started


@contextlib.contextmanager
def cuda_fast_paths(device: torch.device):
    """On CUDA, while the block runs: TF32 matrix products (10-bit mantissa products, float32 sums;
    cuDNN's convolutions use TF32 by default already), restored afterwards. (``cudnn.benchmark``
    was measured and left off: +15% and -13% for the eager bf16 step in two H200 runs,
    benchmarks/RESULTS.md.)"""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def train(config: TrainConfig, out_dir, *, resume: bool = False, progress: bool = True,
          device=None) -> Path:
    """Train a diffusion model as ``config`` says; return the model directory ``out_dir/model``.

    ``resume``: continue from ``out_dir/model`` (bit-exactly; ``steps`` may be raised); without it
    an existing model there is an error. Under ``torchrun`` (WORLD_SIZE > 1) each process trains
    on its slice of every global batch (gloo on CPU, nccl on CUDA) and rank 0 writes the files.
    """
    rank, world, device, started = _distributed(device)
    try:
        if config.batch_size % (world * config.grad_accum):
            raise ValueError(f"batch_size {config.batch_size} is not divisible by {world} processes x "
                             f"{config.grad_accum} accumulation steps")
        out_dir = Path(out_dir)
        # a run folder this call creates and that gets nothing written (a bad config or data set) is removed
        with atomic.removed_on_error(out_dir, ignore=(LOCK_FILE,)) if rank == 0 else contextlib.nullcontext():
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CheckpointError(f"cannot create the run directory {out_dir} ({e.strerror or e})") from e
            with run_lock(out_dir) if rank == 0 else contextlib.nullcontext():
                if rank == 0:
                    atomic.remove_temporaries(out_dir)
                    atomic.remove_temporaries(out_dir / CHECKPOINTS_DIR)
                    recover(out_dir)
                if world > 1:
                    dist.barrier()
                run = _build(config, out_dir, resume, device, rank, world)
                with cuda_fast_paths(device):
                    _loop(run, progress and rank == 0)
                if world > 1:
                    dist.barrier()
        return out_dir / MODEL_DIR
    finally:
        if started:
            dist.destroy_process_group()


def _loop(run: _Run, progress: bool) -> None:
    from tqdm.auto import tqdm

    c, writer = run.config, run.rank == 0
    try:
        log_path = _open_log(run) if writer else None
    except OSError as e:
        raise CheckpointError(f"cannot write {run.out_dir / 'log.csv'} ({e.strerror or e})") from e
    start_time, start_elapsed = time.perf_counter(), run.elapsed
    bar = tqdm(total=c.steps, initial=run.step, disable=not progress, unit="step", dynamic_ncols=True,
               desc=f"train {c.preset}")
    run.net.train()
    while run.step < c.steps:
        loss, grad_norm = _train_step(run)
        run.window_sum, run.window_count = run.window_sum + loss, run.window_count + 1
        run.elapsed = start_elapsed + time.perf_counter() - start_time
        bar.update(1)
        logging, saving = _due(run.step, c.log_every, c.steps), _due(run.step, c.ckpt_every, c.steps)
        if logging or saving:  # the only host synchronisations: at log and checkpoint steps
            _check_finite(run, weights=saving)
            run.elapsed = start_elapsed + time.perf_counter() - start_time  # the device has caught up
        if not writer:
            continue
        try:
            if logging:
                bar.set_postfix(loss=f"{_log_row(run, log_path, float(grad_norm), run.elapsed):.4f}")
            if c.sample_every > 0 and _due(run.step, c.sample_every, c.steps):
                _save_samples(run)
            if saving:
                _checkpoint(run)
        except OSError as e:  # disk full, read-only folder: stop with the last good checkpoint in place
            saved = run.out_dir / MODEL_DIR
            kept = f"the checkpoint in {saved} is kept" if saved.exists() else "no checkpoint was saved yet"
            raise CheckpointError(f"cannot write to {run.out_dir} at step {run.step} ({e.strerror or e}); {kept}; "
                                  "free some space (or fix the permissions) and --resume") from e
    bar.close()


def _check_finite(run: _Run, weights: bool) -> None:
    """FloatingPointError if the loss since the last log (and, before a checkpoint, any weight of
    the network or its EMA) is not finite: the bad state is never saved, the last checkpoint stays.
    Every process checks the same all-reduced loss and the same weights, so all stop together."""
    ok = torch.isfinite(torch.as_tensor(run.window_sum)).all()
    if weights:
        params = [*run.net.parameters(), *(run.ema.parameters() if run.ema is not None else ())]
        ok = ok & torch.stack([p.detach().isfinite().all() for p in params]).all()
    if not bool(ok):
        saved = run.out_dir / MODEL_DIR
        kept = f"the checkpoint in {saved} is left as it was" if saved.exists() else "nothing was saved"
        raise FloatingPointError(f"training diverged by step {run.step} (loss {float(run.window_sum)}, "
                                 f"lr {lr_at(run.config, run.step - 1):g}); {kept}; try a lower lr")

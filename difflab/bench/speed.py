"""Speed of the user's paths: ``difflab bench train`` and ``difflab bench gpu``.

``train``: images per second of :func:`difflab.training.train` (the real trainer: data, noise,
loss, backward, clipping, AdamW, EMA, logging) against a *bare step* of the same network in the
same process: forward, backward and optimizer step on a batch already on the device, nothing else.
The trainer's rate is read from its own log (seconds at the log rows, taken after the device has
caught up), between a row after the warm-up and the last one.

``gpu``: the table of issue 11 in one run on a CUDA device: the trainer and the bare step in bf16
and fp32, eager and compiled (CUDA graphs), beside diffusers' UNet2DModel of the same layout
(eager and ``torch.compile(mode="reduce-overhead")``); then 256 samples with 10 DPM-Solver++(2M)
steps through ``difflab.load(...).sample`` beside a plain diffusers loop. Model FLOP utilisation
(MFU) is the measured rate times the FLOPs of one image's forward and backward pass (counted by
``torch.utils.flop_counter``) over the device's peak dense bf16 (or TF32) rate. diffusers is
optional: its rows say "not installed" without it. ``quick=True`` runs everything with tiny sizes
on any device, to check the code paths (the numbers then mean nothing).
"""
from __future__ import annotations

import csv
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..denoisers import NetworkDenoiser
from ..io import atomic
from ..nets import build_network, count_parameters
from ..schedules import make_schedule
from ..training import PRESETS, TrainConfig, load_dataset
from ..training.checkpoint import save_checkpoint
from ..training.losses import denoising_loss, draw_noise
from ..training.trainer import cuda_fast_paths, make_optimizer, resolve_config

__all__ = ["bench_train", "bench_gpu", "bare_step_rate", "trainer_rate", "training_flops_per_image",
           "peak_flops", "format_table", "PEAK_TFLOPS"]

#: Dense peak TFLOP/s by device name (bf16 tensor cores; TF32 for fp32 training) from the vendors'
#: data sheets (SXM parts; without sparsity).
PEAK_TFLOPS = {"H200": {"bf16": 989.4, "fp32": 494.7}, "H100": {"bf16": 989.4, "fp32": 494.7},
               "A100": {"bf16": 312.0, "fp32": 156.0}, "L40S": {"bf16": 362.0, "fp32": 183.0}}
COMPILED = {"cuda": "reduce-overhead", "cpu": "default"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's peak dense FLOP/s for ``precision`` ("bf16" or "fp32"), or None if unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks[precision] * 1e12
    return None


def synthetic_images(path: Path, n: int, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """A .npy of n random uint8 images (N, H, W, C): a data set whose content does not matter."""
    c, h, w = shape
    x = np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
    return atomic.write_with(path, lambda f: np.save(f, x))


def _setup(config: TrainConfig, device: torch.device):
    """The network, its denoiser and the data set, exactly as the trainer builds them."""
    ds = load_dataset(config.data, resolution=config.resolution, channels=config.channels).to(device)
    config = resolve_config(config, ds)
    torch.manual_seed(config.seed)
    net = build_network(config.network, config.net).to(device).train()
    denoiser = NetworkDenoiser(net, make_schedule(config.schedule), config.prediction, config.sigma_data)
    return config, ds, net, denoiser


def bare_step_rate(config: TrainConfig, device, *, steps: int = 50, warmup: int = 10) -> float:
    """Images per second of forward + backward + AdamW step of ``config``'s network and loss on one
    batch already on the device (precision and compile as the config says)."""
    device = torch.device(device)
    config, ds, net, denoiser = _setup(config, device)
    opt = make_optimizer(net.parameters(), config, device)  # the trainer's optimizer settings
    x0 = ds.x[: config.batch_size]
    x0 = x0.repeat(-(-config.batch_size // len(x0)), *[1] * (x0.ndim - 1))[: config.batch_size]
    y = None if config.num_classes is None else torch.zeros(len(x0), dtype=torch.long, device=device)
    gen = torch.Generator(device).manual_seed(0)

    def loss_fn(x0, sigma, noise, y):
        return denoising_loss(denoiser, x0, sigma, noise, y, config)

    if config.compile != "none":
        loss_fn = torch.compile(loss_fn, mode=None if config.compile == "default" else config.compile)
    bf16 = config.precision == "bf16" and device.type == "cuda"

    def step():
        sigma, noise, labels = draw_noise(denoiser.schedule, x0, y, config, gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = loss_fn(x0, sigma, noise, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return config.batch_size / _seconds_per_call(step, steps, warmup, device)


def _seconds_per_call(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Mean seconds of ``fn`` after ``warmup`` calls, with the trainer's CUDA settings (TF32) for
    every path measured, difflab's and the peers'."""
    with cuda_fast_paths(device):
        for _ in range(warmup):
            fn()
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)
    return (time.perf_counter() - start) / steps


def trainer_rate(config: TrainConfig, device, *, steps: int = 50, warmup: int = 10) -> float:
    """Images per second of :func:`difflab.training.train` between its log rows at step ``warmup``
    and ``warmup + steps`` (no sample grids; the one checkpoint at the end is not timed)."""
    from ..training import train

    config = config.replace(steps=warmup + steps, log_every=warmup, ckpt_every=0, sample_every=0)
    if steps % warmup:
        raise ValueError("steps must be a multiple of warmup (log rows fall on multiples of it)")
    with tempfile.TemporaryDirectory(prefix="difflab-bench-") as out:
        train(config, out, progress=False, device=device)
        with open(Path(out) / "log.csv", newline="") as f:
            rows = {int(r["step"]): float(r["seconds"]) for r in csv.DictReader(f)}
    return config.batch_size * steps / (rows[warmup + steps] - rows[warmup])


def training_flops_per_image(config: TrainConfig, device) -> float:
    """FLOPs of one image's training forward and backward pass (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(device)
    config, ds, net, denoiser = _setup(config.replace(compile="none"), device)
    x0 = ds.x[:2]
    y = None if config.num_classes is None else torch.zeros(2, dtype=torch.long, device=device)
    sigma, noise, y = draw_noise(denoiser.schedule, x0, y, config, torch.Generator(device).manual_seed(0))
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = denoising_loss(denoiser, x0, sigma, noise, y, config)
        loss.backward()
    return counter.get_total_flops() / 2


def bench_train(preset: str = "digits", device=None, *, steps: int = 50, warmup: int = 10,
                data: str | None = None, batch_size: int | None = None, compile: str = "none",
                precision: str | None = None, repeats: int = 3, log=print) -> list[dict]:
    """The trainer against the bare step of the same network, on ``device`` (default: CUDA when
    available); returns the rows and prints a markdown table."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    config = PRESETS[preset]
    overrides = {"compile": compile, "data": data or config.data, "batch_size": batch_size or config.batch_size,
                 "precision": precision or config.precision}
    config = config.replace(**overrides)
    if config.data is None:
        raise ValueError(f"the {preset} preset needs data: pass data=PATH (or --data)")
    bares, trainers = [], []
    for _ in range(repeats):  # alternated, so a slow spell of the machine hits both
        bares.append(bare_step_rate(config, device, steps=steps, warmup=warmup))
        trainers.append(trainer_rate(config, device, steps=steps, warmup=warmup))
    bare, trainer = statistics.median(bares), statistics.median(trainers)
    rows = [{"path": "bare step (forward, backward, AdamW)", "img/s": bare, "vs bare": 1.0},
            {"path": "difflab train", "img/s": trainer, "vs bare": trainer / bare}]
    log(f"{preset} on {_device_name(device)}, batch {config.batch_size}, {config.precision}, compile "
        f"{config.compile}; medians of {repeats} alternated runs of {steps} timed steps after {warmup}:\n")
    log(format_table(rows, ["path", "img/s", "vs bare"]))
    return rows


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table; floats with 3 significant digits (rates as integers above 100)."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
        return "—" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# diffusers, the peer


def diffusers_available() -> bool:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return False
    return True


def diffusers_unet(net_config: dict):
    """diffusers' UNet2DModel with the layout of difflab's UNet config (the DDPM CIFAR-10 layout of
    Ho et al. 2020: attention at the second level, additive time embedding, conv resampling)."""
    from diffusers import UNet2DModel

    mult, base, res = net_config["channel_mult"], net_config["base_channels"], net_config["resolution"]
    attn = [res // 2**i in net_config["attn_resolutions"] for i in range(len(mult))]
    return UNet2DModel(
        sample_size=res, in_channels=net_config["in_channels"], out_channels=net_config["in_channels"],
        block_out_channels=tuple(base * m for m in mult), layers_per_block=net_config["num_res_blocks"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        dropout=net_config["dropout"], norm_num_groups=net_config["groups"],
        attention_head_dim=None if net_config.get("head_channels") is None else net_config["head_channels"],
        resnet_time_scale_shift="scale_shift" if net_config["scale_shift_norm"] else "default")


def diffusers_train_rate(net_config: dict, batch: int, device, *, compile: bool, bf16: bool,
                         steps: int = 50, warmup: int = 10) -> float:
    """Images per second of the usual diffusers training step: DDPMScheduler.add_noise, eps MSE,
    fused AdamW, bf16 autocast."""
    from diffusers import DDPMScheduler

    device = torch.device(device)
    unet = diffusers_unet(net_config).to(device).train()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-4, fused=True if device.type == "cuda" else None)
    shape = (batch, net_config["in_channels"], net_config["resolution"], net_config["resolution"])
    x0 = torch.rand(shape, device=device) * 2 - 1
    forward = torch.compile(unet, mode=COMPILED[device.type]) if compile else unet

    def step():
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            eps = forward(scheduler.add_noise(x0, noise, t), t).sample
            loss = torch.nn.functional.mse_loss(eps.float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return batch / _seconds_per_call(step, steps, warmup, device)


def diffusers_sample_seconds(net_config: dict, n: int, steps: int, device, *, compile: bool,
                             repeats: int = 3) -> float:
    """Seconds for n samples with a plain diffusers loop: DPMSolverMultistepScheduler (2M), bf16
    weights, ``steps`` steps."""
    from diffusers import DPMSolverMultistepScheduler

    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    unet = diffusers_unet(net_config).to(device, dtype).eval()
    forward = torch.compile(unet, mode=COMPILED[device.type]) if compile else unet
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, solver_order=2)
    shape = (n, net_config["in_channels"], net_config["resolution"], net_config["resolution"])

    @torch.inference_mode()
    def run():
        scheduler.set_timesteps(steps, device=device)
        x = torch.randn(shape, device=device, dtype=dtype)
        for t in scheduler.timesteps:
            x = scheduler.step(forward(x, t).sample, t, x).prev_sample
        return x.float().cpu()

    return _seconds_per_call(run, repeats, 1, device)


# ---------------------------------------------------------------------------------------------
# The GPU table


def _model_dir(config: TrainConfig, out: Path, device) -> Path:
    """A model directory of ``config``'s network with its initial weights (speed only)."""
    config, ds, net, _ = _setup(config.replace(compile="none"), torch.device(device))
    opt = torch.optim.AdamW(net.parameters())
    return save_checkpoint(out, config, net, None, opt, 0, {"data": ds.info()})


def bench_gpu(out_dir="benchmarks/gpu", device=None, *, quick: bool = False, compile: bool = True,
              log=print) -> dict:
    """The train and sample tables of issue 11 for the ``cifar10-ddpm`` network (batch 128 and 256
    samples; ``quick``: the digits network, tiny counts, any device). ``compile=False`` leaves out
    the compiled rows. Writes ``train.csv``, ``sample.csv`` and ``output.md`` under ``out_dir``."""
    from ..pipeline import load

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not quick:
        raise ValueError("difflab bench gpu needs a CUDA device (use --quick to check it on the CPU)")
    steps, warmup = (4, 2) if quick else (50, 10)
    compiled = COMPILED[device.type]
    have_diffusers = diffusers_available()
    with tempfile.TemporaryDirectory(prefix="difflab-bench-") as tmp:
        tmp = Path(tmp)
        if quick:
            base = PRESETS["digits"].replace(batch_size=16, ema_decay=0.999)
        else:
            base = PRESETS["cifar10-ddpm"].replace(data=str(synthetic_images(tmp / "images.npy", 4096, (3, 32, 32))))
        resolved = resolve_config(base, load_dataset(base.data))
        flops = training_flops_per_image(base, device)
        batch = base.batch_size
        train_rows = []

        def add(path, precision, rate):
            peak = peak_flops(device, precision)
            train_rows.append({"path": path, "precision": precision, "img/s": rate,
                               "MFU": None if rate is None or peak is None else f"{rate * flops / peak:.1%}"})
            log(f"  {path}, {precision}: {'not installed' if rate is None else f'{rate:,.0f} img/s'}")

        log(f"training, batch {batch}, {count_parameters(build_network(resolved.network, resolved.net)) / 1e6:.1f}M "
            f"parameters, {flops / 1e9:.2f} GFLOP per image (forward + backward), {_device_name(device)}")
        variants = [("eager", False)] + ([(f"torch.compile({compiled})", True)] if compile else [])
        for name, compile_ in variants:
            rate = (diffusers_train_rate(resolved.net, batch, device, compile=compile_, bf16=device.type == "cuda",
                                         steps=steps, warmup=warmup) if have_diffusers else None)
            add(f"diffusers UNet2DModel, {name}", "bf16", rate)
        for precision in ("bf16", "fp32"):
            for mode in ("none", compiled) if compile else ("none",):
                config = base.replace(precision=precision, compile=mode)
                label = "eager" if mode == "none" else f"compile={mode}"
                add(f"difflab bare step, {label}", precision, bare_step_rate(config, device, steps=steps, warmup=warmup))
                add(f"difflab train, {label}", precision, trainer_rate(config, device, steps=steps, warmup=warmup))

        n, sample_steps = (16, 4) if quick else (256, 10)
        log(f"sampling {n} images, {sample_steps} DPM-Solver++(2M) steps")
        model_dir = _model_dir(base, tmp / "model", device)
        sample_rows = []
        for name, compile_ in variants:
            seconds = (diffusers_sample_seconds(resolved.net, n, sample_steps, device, compile=compile_,
                                                repeats=2 if quick else 5) if have_diffusers else None)
            weights = "bf16" if device.type == "cuda" else "fp32"
            sample_rows.append({"path": f"diffusers loop, {weights} weights, {name}", "seconds": seconds})
        for dtype in ("bf16", "fp32"):
            for compile_ in (False, True) if compile else (False,):
                model = load(model_dir, device, dtype=dtype, compile=compile_)

                def run(model=model):
                    return model.sample(n, steps=sample_steps, seed=0, batch_size=n)

                seconds = _seconds_per_call(run, 2 if quick else 5, 1, device)
                label = f"difflab.load(..., dtype={dtype}{', compile=True' if compile_ else ''}).sample"
                sample_rows.append({"path": label, "seconds": seconds})
        for row in sample_rows:
            row["img/s"] = None if row["seconds"] is None else n / row["seconds"]
            shown = "not installed" if row["seconds"] is None else f"{row['seconds']:.3f} s"
            log(f"  {row['path']}: {shown}")

    out = Path(out_dir)
    _write_csv(train_rows, out / "train.csv")
    _write_csv(sample_rows, out / "sample.csv")
    text = (f"# difflab bench gpu ({'quick check' if quick else 'cifar10-ddpm network'})\n\nDevice: "
            f"{_device_name(device)}; torch {torch.__version__}; diffusers "
            f"{_diffusers_version() if have_diffusers else 'not installed'}.\n\n"
            f"## Training, batch {batch} ({flops / 1e9:.2f} GFLOP per image forward + backward)\n\n"
            f"{format_table(train_rows, ['path', 'precision', 'img/s', 'MFU'])}\n\n"
            f"## Sampling, {n} images, {sample_steps} steps of DPM-Solver++(2M)\n\n"
            f"{format_table(sample_rows, ['path', 'seconds', 'img/s'])}\n")
    atomic.write_text(out / "output.md", text)
    log("\n" + text)
    log(f"wrote {out}/train.csv, sample.csv, output.md")
    return {"train": train_rows, "sample": sample_rows, "flops_per_image": flops}


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _write_csv(rows: list[dict], path: Path) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, text.getvalue())


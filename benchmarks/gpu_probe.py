"""Which memory layout and cuDNN setting make the training step faster on a GPU (issue 11).

    PYTHONPATH=. python3 benchmarks/gpu_probe.py [--quick]

A bare training step of the cifar10-ddpm network (batch 128, bf16 autocast, fused AdamW), eager and
with CUDA graphs, in the default (NCHW) and channels-last layouts, with and without
``cudnn.benchmark``; then diffusers' compiled sampling loop, the peer that gpu_short.py left out.
Each row is printed as soon as it is measured.
"""
from __future__ import annotations

import argparse
import time

import torch

from difflab.bench.speed import (_seconds_per_call, diffusers_available, diffusers_sample_seconds,
                                 synthetic_images, _setup)
from difflab.training import PRESETS
from difflab.training.losses import denoising_loss, draw_noise
from difflab.training.trainer import make_optimizer


def bare_rate(base, device, *, channels_last: bool, compile_mode: str | None, steps: int, warmup: int) -> float:
    config, ds, net, denoiser = _setup(base, device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net.to(memory_format=fmt)
    opt = make_optimizer(net.parameters(), config, device)
    x0 = ds.x[: config.batch_size].contiguous(memory_format=fmt) if ds.x.ndim == 4 else ds.x[: config.batch_size]
    gen = torch.Generator(device).manual_seed(0)

    def loss_fn(x0, sigma, noise):
        return denoising_loss(denoiser, x0, sigma, noise, None, config)[0]

    if compile_mode:
        loss_fn = torch.compile(loss_fn, mode=compile_mode)

    def step():
        if compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        sigma, noise, _ = draw_noise(denoiser.schedule, x0, None, config, gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(x0, sigma, noise.contiguous(memory_format=fmt) if noise.ndim == 4 else noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return config.batch_size / _seconds_per_call(step, steps, warmup, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps, warmup = (3, 2) if args.quick else (30, 10)
    start = time.time()
    if args.quick:
        base = PRESETS["digits"].replace(batch_size=16, precision="bf16")
    else:
        path = synthetic_images(__import__("pathlib").Path("/tmp/probe.npy"), 2048, (3, 32, 32))
        base = PRESETS["cifar10-ddpm"].replace(data=str(path), precision="bf16")
    compiled = "reduce-overhead" if device.type == "cuda" else "default"
    for label, kw in [("eager, NCHW", dict(channels_last=False, compile_mode=None)),
                      ("eager, channels-last", dict(channels_last=True, compile_mode=None)),
                      ("eager, NCHW, cudnn.benchmark", dict(channels_last=False, compile_mode=None, bench=True)),
                      (f"{compiled}, channels-last", dict(channels_last=True, compile_mode=compiled))]:
        torch.backends.cudnn.benchmark = kw.pop("bench", False)
        rate = bare_rate(base, device, steps=steps, warmup=warmup, **kw)
        print(f"[{time.time() - start:5.0f} s] bare step, {label}: {rate:,.0f} img/s", flush=True)
    torch.backends.cudnn.benchmark = False
    if diffusers_available():
        from difflab.bench.speed import diffusers_unet  # noqa: F401  (the same layout)
        from difflab.training import load_dataset
        from difflab.training.trainer import resolve_config

        net = resolve_config(base, load_dataset(base.data)).net
        n, k = (16, 4) if args.quick else (256, 10)
        seconds = diffusers_sample_seconds(net, n, k, device, compile=True, repeats=5)
        print(f"[{time.time() - start:5.0f} s] diffusers loop, bf16 weights, torch.compile({compiled}): "
              f"{seconds * 1000:.0f} ms for {n}", flush=True)


if __name__ == "__main__":
    main()

"""The GPU table of issue 11 in a short device lease: the rows of `difflab bench gpu` that matter
most, eager rows first, each printed as soon as it is measured.

    PYTHONPATH=. python3 benchmarks/gpu_short.py [--quick] [--out DIR]

The cifar10-ddpm network (35.7M parameters), batch 128, on synthetic 32x32 images (speed does not
depend on the pixels): difflab's trainer (bf16 and fp32, eager; bf16 with CUDA graphs) and a bare
training step, beside diffusers' UNet2DModel of the same layout (eager and compiled with CUDA
graphs); then 256 samples of 10 DPM-Solver++(2M) steps, difflab eager and compiled against a plain
diffusers loop. MFU from the counted FLOPs per image. ``--quick`` runs the same code with the digits
network and tiny counts on any device.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from difflab.bench.speed import (COMPILED, _device_name, _model_dir, _seconds_per_call, bare_step_rate,
                                 diffusers_available, diffusers_sample_seconds, diffusers_train_rate, format_table,
                                 peak_flops, synthetic_images, trainer_rate, training_flops_per_image)
from difflab.io import atomic
from difflab.pipeline import load
from difflab.training import PRESETS, load_dataset
from difflab.training.trainer import resolve_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--eager-only", action="store_true", help="leave out the compiled rows")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gpu"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps, warmup = (4, 2) if args.quick else (30, 10)
    mode = COMPILED[device.type]
    start = time.time()
    rows, sample_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.quick:
            base = PRESETS["digits"].replace(batch_size=16)
        else:
            base = PRESETS["cifar10-ddpm"].replace(data=str(synthetic_images(tmp / "x.npy", 4096, (3, 32, 32))))
        net_config = resolve_config(base, load_dataset(base.data)).net
        flops = training_flops_per_image(base, device)
        print(f"{_device_name(device)}; torch {torch.__version__}; {flops / 1e9:.2f} GFLOP/image fwd+bwd", flush=True)

        def add(path, precision, rate):
            peak = peak_flops(device, precision)
            mfu = None if rate is None or peak is None else f"{rate * flops / peak:.1%}"
            rows.append({"path": path, "precision": precision, "img/s": rate, "MFU": mfu})
            print(f"[{time.time() - start:5.0f} s] {path}, {precision}: "
                  f"{'not installed' if rate is None else f'{rate:,.0f} img/s'} (MFU {mfu})", flush=True)

        have = diffusers_available()
        bf16 = device.type == "cuda"
        add("difflab train, eager", "bf16", trainer_rate(base.replace(precision="bf16"), device, steps=steps,
                                                         warmup=warmup))
        add("difflab train, eager", "fp32", trainer_rate(base, device, steps=steps, warmup=warmup))
        add("difflab bare step, eager", "bf16", bare_step_rate(base.replace(precision="bf16"), device, steps=steps,
                                                               warmup=warmup))
        add("diffusers UNet2DModel, eager", "bf16", diffusers_train_rate(
            net_config, base.batch_size, device, compile=False, bf16=bf16, steps=steps, warmup=warmup) if have else None)

        n, k = (16, 4) if args.quick else (256, 10)
        model_dir = _model_dir(base, tmp / "model", device)

        def sample_row(path, seconds):
            sample_rows.append({"path": path, "seconds": seconds, "img/s": None if seconds is None else n / seconds})
            print(f"[{time.time() - start:5.0f} s] {path}: "
                  f"{'not installed' if seconds is None else f'{seconds * 1000:.0f} ms for {n}'}", flush=True)

        for compile_ in (False, True) if not args.eager_only else (False,):
            model = load(model_dir, device, dtype="bf16", compile=compile_)
            seconds = _seconds_per_call(lambda m=model: m.sample(n, steps=k, seed=0, batch_size=n, schedule="karras"),
                                        5, 2, device)
            sample_row(f"difflab.load(dtype=bf16{', compile=True' if compile_ else ''}).sample", seconds)
            if not compile_:
                sample_row("diffusers loop, bf16 weights, eager", diffusers_sample_seconds(
                    net_config, n, k, device, compile=False, repeats=5) if have else None)

        if not args.eager_only:
            add(f"difflab train, compile={mode}", "bf16", trainer_rate(
                base.replace(precision="bf16", compile=mode), device, steps=steps, warmup=warmup))
            add(f"diffusers UNet2DModel, torch.compile({mode})", "bf16", diffusers_train_rate(
                net_config, base.batch_size, device, compile=True, bf16=bf16, steps=steps, warmup=warmup)
                if have else None)
    text = (f"# GPU run (benchmarks/gpu_short.py{' --quick' if args.quick else ''})\n\n{_device_name(device)}; "
            f"torch {torch.__version__}; {flops / 1e9:.2f} GFLOP per image forward + backward\n\n## Training, batch "
            f"{base.batch_size}\n\n{format_table(rows, ['path', 'precision', 'img/s', 'MFU'])}\n\n## Sampling, {n} "
            f"images, {k} DPM-Solver++(2M) steps (Karras sigmas)\n\n"
            f"{format_table(sample_rows, ['path', 'seconds', 'img/s'])}\n")
    atomic.write_text(args.out / "output.md", text)
    print(text, flush=True)


if __name__ == "__main__":
    main()

"""A diffusers DDPM pipeline sampled by difflab's samplers and by diffusers' own (issue 16).

    python benchmarks/interop.py [--out benchmarks/interop] [--work benchmarks/out/interop] [--train-steps N]

1. Trains a small diffusers ``UNet2DModel`` on scikit-learn's 8x8 digits with diffusers' own
   ``DDPMScheduler`` (1000 linear betas, epsilon prediction, the loss of Ho et al. 2020, eq. 14),
   keeps an EMA of its weights, and saves ``DDPMPipeline(unet, scheduler).save_pretrained(DIR)``
   in --work (git-ignored; reused when it is there). Nothing of difflab trains it.
2. ``difflab.load(DIR)`` reads the folder; each difflab sampler draws 500 digits at 10 steps from
   one fixed noise; diffusers' pipeline draws 500 with its own scheduler and with the others it
   offers, at 10 steps.
3. The table: Fréchet distance of each set to the digits (difflab's reference-classifier features,
   :func:`difflab.evaluation.evaluate_digits`; held-out digits score the reference FD), the
   denoiser calls, and the CPU seconds (one thread, one run each, after a warm-up). A grid of the
   first 16 samples of each goes to --out/samples.png.

Both libraries run the same network; the times compare the sampling loops around it.
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch

import difflab
from difflab.evaluation import evaluate_digits
from difflab.io import atomic
from difflab.io.images import save_grid
from difflab.samplers import denoiser_calls
from difflab.training import load_dataset

N = 500
STEPS = 10
DIFFLAB_SAMPLERS = ("euler", "heun", "ddim", "ddpm", "euler_ancestral", "dpm_solver_2", "dpm_solver_3",
                    "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_3m_sde",
                    "unipc", "deis")
#: diffusers scheduler -> its settings beside the pipeline's own config. DDPMPipeline works with
#: the schedulers whose ``step`` takes a generator and which need no ``scale_model_input``: Euler
#: (input scaling) and UniPC (no generator) do not run correctly in it.
DIFFUSERS = {"DDPMScheduler": {}, "DDIMScheduler": {},
             "DPMSolverMultistepScheduler": {"algorithm_type": "dpmsolver++", "solver_order": 2}}
#: network calls per step of the diffusers schedulers (Heun-type ones would be 2)
DIFFUSERS_CALLS = 1


def train_pipeline(path: Path, steps: int, log) -> Path:
    import diffusers

    if (path / "model_index.json").exists():
        log(f"reusing {path}")
        return path
    torch.manual_seed(0)
    x = load_dataset("digits", split="train").x
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=2,
                                 block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                 attention_head_dim=16)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3, weight_decay=0.0)
    sched_lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 200))
    gen = torch.Generator().manual_seed(0)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(len(x), (128,), generator=gen)
        x0 = x[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (128,), generator=gen)
        loss = (unet(scheduler.add_noise(x0, noise, t), t).sample - noise).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched_lr.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
        if step % 500 == 0 or step == steps - 1:
            log(f"  step {step}: loss {loss.item():.4f} ({time.time() - t0:.0f} s)")
    diffusers.DDPMPipeline(unet=ema.eval(), scheduler=scheduler).save_pretrained(path)
    log(f"trained the diffusers UNet ({sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters) "
        f"for {steps} steps in {time.time() - t0:.0f} s -> {path}")
    return path


class ClippedDenoiser:
    """x0 estimates clipped to [-1, 1] (diffusers' ``clip_sample``)."""

    def __init__(self, denoiser):
        self.denoiser = denoiser

    def __call__(self, x, sigma, **cond):
        return self.denoiser(x, sigma, **cond).clamp(-1, 1)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    import diffusers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/interop"))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/interop"))
    parser.add_argument("--train-steps", type=int, default=4000)
    parser.add_argument("--n", type=int, default=500, help="samples per sampler (default: %(default)s)")
    args = parser.parse_args()
    global N
    N = args.n
    torch.set_num_threads(1)
    lines = []

    def log(msg):
        print(msg, flush=True)
        lines.append(msg)

    path = train_pipeline(args.work / "ddpm-digits", args.train_steps, log)
    model = difflab.load(path, "cpu")
    noise = torch.randn(N, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = evaluate_digits(load_dataset("digits", split="test").x[:N])["reference_fd"]
    rows, grids = [], []
    model.sample(8, sampler="dpmpp_2m", steps=STEPS, noise=noise[:8])  # warm-up
    for sampler in DIFFLAB_SAMPLERS:
        x, seconds = timed(lambda: model.sample(N, sampler=sampler, steps=STEPS, noise=noise, seed=0))
        calls = denoiser_calls(sampler, model.sigmas(STEPS, sampler=sampler))
        rows.append({"library": "difflab", "sampler": sampler, "calls": calls, "FD": evaluate_digits(x)["fd"],
                     "seconds": seconds})
        grids.append(x[:16])
        log(f"difflab {sampler}: FD {rows[-1]['FD']:.3g}, {seconds:.2f} s")
    # diffusers' DDIM and DDPM at 10 steps differ from difflab's in two sampling settings, not in the
    # algorithm: "leading" timesteps (900, 800, ..., 0) and clip_sample=True (x0 clipped to [-1, 1]
    # at every step). The same two settings through difflab's samplers:
    leading = diffusers.DDIMScheduler.from_pretrained(path / "scheduler")
    leading.set_timesteps(STEPS)
    abar = leading.alphas_cumprod[leading.timesteps]
    sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1)])
    clipped = ClippedDenoiser(model.denoiser)
    for sampler in ("ddim", "ddpm"):
        x, seconds = timed(lambda: difflab.generate(clipped, model.data_shape, N, sigmas, sampler, noise=noise,
                                                    generator=torch.Generator().manual_seed(0)).clamp(-1, 1))
        rows.append({"library": "difflab", "sampler": f"{sampler}, diffusers' timesteps, x0 clipped", "calls": STEPS,
                     "FD": evaluate_digits(x)["fd"], "seconds": seconds})
        grids.append(x[:16])
        log(f"difflab {rows[-1]['sampler']}: FD {rows[-1]['FD']:.3g}, {seconds:.2f} s")
    pipe = diffusers.DDPMPipeline.from_pretrained(path, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    own = dict(pipe.scheduler.config)
    for name, settings in DIFFUSERS.items():
        pipe.scheduler = getattr(diffusers, name).from_config(own, **settings)
        pipe(batch_size=8, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(1), output_type="np")
        out, seconds = timed(lambda: pipe(batch_size=N, num_inference_steps=STEPS,
                                          generator=torch.Generator().manual_seed(0), output_type="np").images)
        x = torch.from_numpy(out).permute(0, 3, 1, 2) * 2 - 1
        rows.append({"library": "diffusers", "sampler": name + (" (the pipeline's own)" if name == "DDPMScheduler"
                                                                 else ""),
                     "calls": STEPS * DIFFUSERS_CALLS, "FD": evaluate_digits(x)["fd"], "seconds": seconds})
        grids.append(x[:16])
        log(f"diffusers {name}: FD {rows[-1]['FD']:.3g}, {seconds:.2f} s")
    best_hf = min(r["seconds"] for r in rows if r["library"] == "diffusers" and "DPMSolver" in r["sampler"])
    for r in rows:
        r["time / diffusers DPM-Solver++"] = r["seconds"] / best_hf
    text = (f"{N} samples at {STEPS} steps from one diffusers DDPM pipeline trained on digits; FD of held-out "
            f"digits (n = {N}): {reference:.3g}. CPU, one thread.\n\n"
            + table(rows, ["library", "sampler", "calls", "FD", "seconds", "time / diffusers DPM-Solver++"]))
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(args.out / "output.md", "\n".join(lines) + "\n\n" + text + "\n")
    save_grid(torch.cat(grids), args.out / "samples.png", nrow=16)
    print(f"wrote {args.out / 'output.md'} and {args.out / 'samples.png'} (one row per sampler, in table order)")


if __name__ == "__main__":
    main()

"""Latent diffusion, the diffusion transformer and text-to-image measured (issue 14).

    python benchmarks/latent.py [--part digits|shapes|all] [--out benchmarks/latent] [--work benchmarks/out/latent]

digits: the digits-ae autoencoder (held-out PSNR, latent scale factor); the pixel UNet (`digits`),
the latent UNet (`digits-latent`) and the pixel DiT (`digits-dit`) trained for equal CPU time (the
`digits` preset's 1,200 steps set the budget; the others' step counts follow from the seconds
per step of two short timed runs each), plus `digits-latent` on latents left unscaled (scale factor
1) for the same steps, which shows what the scale factor does. Each model draws 300 samples from
fixed noise with DPM-Solver++(2M) and its SDE variant at 20 steps: the digits Fréchet distance
(300 samples, beside held-out digits at 300) and the sampling time per image (decoding included).

shapes: the shapes-ae autoencoder, then the `shapes-text` latent DiT; 500 prompts drawn uniformly
from the 75 captions, one sample each at guidance 1, 3 and 5 (DPM-Solver++(2M), 20 steps), read
back by `difflab.evaluation.prompt_accuracy` (color, shape, position, and all three). A grid of
samples for 10 prompts goes to --out/shapes_text.png.

Trained models go to --work (git-ignored; reused when present), tables to --out. Time it alone:
two torch processes on 2 cores slow each other.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

import difflab
from difflab.evaluation import evaluate_digits, prompt_accuracy
from difflab.io import atomic
from difflab.io.images import save_grid
from difflab.training import AE_PRESETS, PRESETS, train, train_autoencoder
from difflab.training.data import SHAPES_TEXT_CAPTIONS, load_dataset

SAMPLERS = ("dpmpp_2m", "dpmpp_2m_sde")
GUIDANCE = (1.0, 3.0, 5.0)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


QUICK = False  # --quick: short trainings, to check the script


def _autoencoder(preset: str, out: Path, log) -> dict:
    if not (out / "autoencoder.json").exists():
        config = AE_PRESETS[preset].replace(steps=20) if QUICK else AE_PRESETS[preset]
        train_autoencoder(config, out, progress=False, device="cpu")
    meta = json.loads((out / "autoencoder.json").read_text())
    log(f"  {preset}: held-out PSNR {meta['metrics']['psnr_db']:.2f} dB, scale factor {meta['scale_factor']:.4f}, "
        f"{meta['train_seconds']:.0f} s")
    return meta


def _unscaled_copy(ae: Path, out: Path) -> Path:
    """The autoencoder with its scale factor set to 1: its latents go to the model unscaled."""
    if not (out / "autoencoder.json").exists():
        shutil.copytree(ae, out, dirs_exist_ok=True)
        meta = json.loads((out / "autoencoder.json").read_text())
        atomic.write_text(out / "autoencoder.json", json.dumps(dict(meta, scale_factor=1.0), indent=2))
    return out


def _seconds_per_step(config, work: Path) -> float:
    """From two timed short runs (10 and 40 steps), so that set-up time cancels."""
    times = []
    for steps in (10, 40):
        shutil.rmtree(work, ignore_errors=True)
        times.append(_timed(lambda: train(config.replace(steps=steps, warmup_steps=min(config.warmup_steps, steps - 1)),
                                          work, progress=False, device="cpu"))[1])
    shutil.rmtree(work, ignore_errors=True)
    return (times[1] - times[0]) / 30


def _train(config, out: Path, log) -> tuple[Path, float]:
    record = out / "train_seconds.json"
    if (out / "model").exists() and record.exists():
        return out / "model", json.loads(record.read_text())["seconds"]
    shutil.rmtree(out, ignore_errors=True)
    model, seconds = _timed(lambda: train(config, out, progress=False, device="cpu"))
    atomic.write_text(record, json.dumps({"seconds": seconds, "steps": config.steps}))
    log(f"  {config.preset}: {config.steps} steps in {seconds:.0f} s")
    return model, seconds


def digits(work: Path, log=print) -> str:
    ae_meta = _autoencoder("digits-ae", work / "ae", log)
    unscaled = _unscaled_copy(work / "ae", work / "ae-unscaled")
    base = PRESETS["digits"].replace(sample_every=0, ckpt_every=0, **({"steps": 40} if QUICK else {}))
    configs = {
        "digits (pixel UNet)": base,
        "digits-latent (latent UNet)": PRESETS["digits-latent"].replace(sample_every=0, ckpt_every=0,
                                                                       autoencoder=str(work / "ae")),
        "digits-dit (pixel DiT)": PRESETS["digits-dit"].replace(sample_every=0, ckpt_every=0),
    }
    per_step = {}
    for name, config in configs.items():
        per_step[name] = _seconds_per_step(config, work / "pilot")
        log(f"  {name}: {per_step[name] * 1000:.0f} ms per step")
    budget = base.steps * per_step["digits (pixel UNet)"]
    configs = {name: c.replace(steps=round(budget / per_step[name])) for name, c in configs.items()}
    configs["digits-latent, unscaled latents"] = configs["digits-latent (latent UNet)"].replace(
        autoencoder=str(unscaled))
    z_pixel = torch.randn(300, 1, 8, 8, generator=torch.Generator().manual_seed(40))
    z_latent = torch.randn(300, *ae_meta["latent_shape"], generator=torch.Generator().manual_seed(40))
    rows, reference = [], None
    for i, (name, config) in enumerate(configs.items()):
        model_dir, seconds = _train(config, work / f"model-{i}", log)
        model = difflab.load(model_dir, "cpu")
        z = z_latent if config.autoencoder else z_pixel
        row = {"model": name, "steps": config.steps, "train_s": seconds}
        for sampler in SAMPLERS:
            x, t = _timed(lambda: model.sample(300, sampler=sampler, steps=20, noise=z, seed=0))
            result = evaluate_digits(x)
            reference = result["reference_fd"]
            row[f"fd_{sampler}"] = result["fd"]
            row[f"ms_per_image_{sampler}"] = 1000 * t / 300
        rows.append(row)
        log(f"  {name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                                        if k != "model"))
    lines = ["| model | steps | training (s) | FD, DPM-Solver++(2M) | FD, DPM-Solver++(2M) SDE | ms per image |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['steps']} | {r['train_s']:.0f} | {r['fd_dpmpp_2m']:.2f} | "
              f"{r['fd_dpmpp_2m_sde']:.2f} | {r['ms_per_image_dpmpp_2m']:.2f} |" for r in rows]
    lines.append(f"| held-out digits (reference) | | | {reference:.2f} | {reference:.2f} | |")
    m = ae_meta["metrics"]
    return (f"## digits\n\n{chr(10).join(lines)}\n\nAutoencoder digits-ae: held-out PSNR {m['psnr_db']:.2f} dB "
            f"(MSE {m['mse']:.5f}), latents 2x4x4 (f = 2), scale factor {ae_meta['scale_factor']:.4f} "
            f"(latent std {1 / ae_meta['scale_factor']:.3f}), trained in {ae_meta['train_seconds']:.0f} s (not in "
            f"the latent model's budget). FD of 300 samples (biased upward at small n; compare at equal n); "
            f"sampling time for 300 images at 20 steps, one process.")


def shapes(work: Path, out: Path, log=print) -> str:
    ae_meta = _autoencoder("shapes-ae", work / "ae", log)
    config = PRESETS["shapes-text"].replace(autoencoder=str(work / "ae"), sample_every=0,
                                            **({"steps": 20} if QUICK else {}))
    model_dir, seconds = _train(config, work / "model", log)
    model = difflab.load(model_dir, "cpu")
    pick = torch.randint(len(SHAPES_TEXT_CAPTIONS), (500,), generator=torch.Generator().manual_seed(41))
    prompts = [SHAPES_TEXT_CAPTIONS[i] for i in pick]
    z = torch.randn(500, *model.data_shape, generator=torch.Generator().manual_seed(42))
    test = load_dataset("shapes-text", split="test")
    recon = model.decode(model.encode(test.x[:500]))  # what the autoencoder lets through
    rows = [{"guidance": "autoencoder reconstructions of 500 test images (the ceiling)",
             **prompt_accuracy(recon, test.captions[:500]), "ms_per_image": float("nan")}]
    log("  reconstructions: " + ", ".join(f"{k} {v}" for k, v in rows[-1].items()))
    for w in GUIDANCE:
        x, t = _timed(lambda: model.sample(500, sampler="dpmpp_2m", steps=20, noise=z, prompt=prompts, guidance=w))
        rows.append({"guidance": w, **prompt_accuracy(x, prompts), "ms_per_image": 1000 * t / 500})
        log(f"  guidance {w}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items()))
        if w == GUIDANCE[-2]:
            show = [SHAPES_TEXT_CAPTIONS[i] for i in range(0, 75, 8)][:10]
            grid = model.sample(80, steps=20, prompt=[p for p in show for _ in range(8)], guidance=w, seed=0)
            save_grid(grid, out / "shapes_text.png", nrow=8, scale=2)
            atomic.write_text(out / "shapes_text_prompts.txt", "\n".join(show) + "\n")
    lines = ["| guidance | color | shape | position | all three | ms per image |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['guidance']} | {r['color']:.1%} | {r['shape']:.1%} | {r['position']:.1%} | {r['all']:.1%} | "
              f"{r['ms_per_image']:.1f} |".replace("nan", "-") for r in rows]
    m = ae_meta["metrics"]
    return (f"## shapes-text\n\n{chr(10).join(lines)}\n\n500 prompts drawn uniformly from the 75 captions, one "
            f"sample each, DPM-Solver++(2M) at 20 steps (guidance > 1 costs two network calls per step). Latent "
            f"DiT trained {config.steps} steps in {seconds:.0f} s on the CPU; autoencoder shapes-ae: held-out PSNR "
            f"{m['psnr_db']:.2f} dB, latents 4x8x8 (f = 4), scale factor {ae_meta['scale_factor']:.4f}, trained in "
            f"{ae_meta['train_seconds']:.0f} s. Rows of shapes_text.png: the prompts in shapes_text_prompts.txt, at "
            f"guidance {GUIDANCE[-2]:g}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("digits", "shapes", "all"), default="all")
    parser.add_argument("--out", default="benchmarks/latent", type=Path)
    parser.add_argument("--work", default="benchmarks/out/latent", type=Path)
    parser.add_argument("--quick", action="store_true", help="short trainings (checks the script)")
    args = parser.parse_args()
    global QUICK
    QUICK = args.quick
    sections = []
    if args.part in ("digits", "all"):
        print("digits:")
        sections.append(digits(args.work / "digits"))
    if args.part in ("shapes", "all"):
        print("shapes:")
        sections.append(shapes(args.work / "shapes", args.out))
    text = "# Latent diffusion, DiT and text to image (benchmarks/latent.py)\n\n" + "\n\n".join(sections) + "\n"
    atomic.write_text(args.out / ("output.md" if args.part == "all" else f"output_{args.part}.md"), text)
    print("\n" + text)


if __name__ == "__main__":
    main()

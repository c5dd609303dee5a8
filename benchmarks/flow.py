"""Flow matching, minibatch-OT couplings and reflow, measured (issue 12).

    python benchmarks/flow.py [--out benchmarks/flow] [--work benchmarks/out/flow] [--part toy|digits|all]

toy: the 8-Gaussian mixture of the `toy2d-flow` preset. Trains I-CFM (independent coupling: the
1-rectified flow of Liu et al. 2023), OT-CFM (minibatch optimal transport, Tong et al. 2024), and
the 2- and 3-rectified flows (reflow of I-CFM, then of that). For each: the exact 2-Wasserstein
distance of 2,000 samples to 2,000 fresh data points at 1, 2, 4, 8 and 50 Euler steps (from the
same noises), beside the noise floor (W2 between two independent draws of the data), and the
straightness of its paths.

digits: the `digits-flow` preset (I-CFM and OT-CFM) and its reflow against the EDM-trained `digits`
preset, by the digits Fréchet distance of 300 samples at equal steps (Euler, and DPM-Solver++(2M)
at the steps where it differs), with the held-out reference at n = 300 beside it.

Trained models go to --work (git-ignored; a model already there is reused); CSVs and output.md
to --out. Prints the tables.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import time
from pathlib import Path

import torch

import difflab
from difflab.evaluation import evaluate_digits, wasserstein2
from difflab.exact import ring_mixture
from difflab.flow import reflow, straightness
from difflab.io import atomic
from difflab.training import PRESETS, load_dataset, train

STEPS = (1, 2, 4, 8, 50)
N_W2 = 2000
TOY_GMM = ring_mixture(8, radius=math.sqrt(2 * (1 - 0.2**2)), std=0.2)  # the 8gaussians data set


def _train(config, out: Path, log) -> Path:
    if (out / "model").exists():
        log(f"  reusing {out / 'model'}")
        return out / "model"
    t0 = time.time()
    model_dir = train(config, out, progress=False, device="cpu")
    log(f"  trained {config.preset} ({config.coupling}) in {time.time() - t0:.0f} s -> {model_dir}")
    return model_dir


def _reflow(teacher: Path, out: Path, pairs: int, train_steps: int, log) -> Path:
    if (out / "model").exists():
        log(f"  reusing {out / 'model'}")
        return out / "model"
    t0 = time.time()
    model_dir = reflow(teacher, out, pairs=pairs, steps=50, train_steps=train_steps, progress=False, device="cpu")
    log(f"  reflowed {teacher} in {time.time() - t0:.0f} s -> {model_dir}")
    return model_dir


def toy(out: Path, quick: bool, log=print) -> list[dict]:
    steps = 300 if quick else PRESETS["toy2d-flow"].steps
    pairs = 2000 if quick else 20_000
    base = PRESETS["toy2d-flow"].replace(steps=steps, sample_every=0, ckpt_every=0)
    models = {"I-CFM (1-rectified)": _train(base, out / "icfm", log),
              "OT-CFM": _train(base.replace(coupling="ot"), out / "otcfm", log)}
    models["2-rectified"] = _reflow(models["I-CFM (1-rectified)"], out / "reflow2", pairs, steps, log)
    models["3-rectified"] = _reflow(models["2-rectified"], out / "reflow3", pairs, steps, log)
    g = torch.Generator().manual_seed(10)
    data, data2 = TOY_GMM.sample(N_W2, g).float(), TOY_GMM.sample(N_W2, g).float()
    floor = wasserstein2(data, data2)
    z = torch.randn(N_W2, 2, generator=torch.Generator().manual_seed(11))
    rows = []
    for name, model_dir in models.items():
        model = difflab.load(model_dir, "cpu")
        row = {"model": name, "straightness": straightness(model.denoiser, z[:512], 64), "noise_floor": floor}
        for k in STEPS:
            row[f"W2@{k}"] = wasserstein2(model.sample(N_W2, sampler="euler", steps=k, noise=z), data)
        rows.append(row)
        log(f"  {name}: " + ", ".join(f"{key} {value:.4g}" for key, value in row.items() if key != "model"))
    return rows


def digits(out: Path, quick: bool, log=print) -> list[dict]:
    scale = 0.25 if quick else 1.0
    edm = PRESETS["digits"]
    flow = PRESETS["digits-flow"]
    steps = max(50, int(edm.steps * scale))
    models = {"EDM (digits preset)": _train(edm.replace(steps=steps, sample_every=0), out / "edm", log),
              "I-CFM (digits-flow)": _train(flow.replace(steps=steps, sample_every=0), out / "icfm", log),
              "OT-CFM": _train(flow.replace(steps=steps, coupling="ot", sample_every=0), out / "otcfm", log)}
    models["2-rectified"] = _reflow(models["I-CFM (digits-flow)"], out / "reflow2", int(10_000 * scale), steps, log)
    reference = evaluate_digits(load_dataset("digits", split="test").x)["reference_fd"]
    z = torch.randn(300, 1, 8, 8, generator=torch.Generator().manual_seed(12))
    rows = []
    for name, model_dir in models.items():
        model = difflab.load(model_dir, "cpu")
        for sampler in ("euler", "dpmpp_2m"):
            row = {"model": name, "sampler": sampler, "reference_fd": reference}
            for k in STEPS:
                row[f"FD@{k}"] = evaluate_digits(model.sample(300, sampler=sampler, steps=k, noise=z))["fd"]
            rows.append(row)
            log(f"  {name}, {sampler}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if k.startswith("FD")))
    return rows


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in columns) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, text.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/flow", type=Path)
    parser.add_argument("--work", default="benchmarks/out/flow", type=Path, help="trained models (reused)")
    parser.add_argument("--part", choices=("toy", "digits", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="short trainings (checks the script)")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    sections = []
    if args.part in ("toy", "all"):
        print("8-Gaussian mixture (toy2d-flow):")
        rows = toy(args.work / "toy", args.quick)
        write_csv(rows, args.out / "toy.csv")
        sections.append("## 8-Gaussian mixture, exact W2 of 2,000 samples (Euler steps) and straightness\n\n"
                        + table(rows, ["model"] + [f"W2@{k}" for k in STEPS] + ["noise_floor", "straightness"]))
    if args.part in ("digits", "all"):
        print("digits:")
        rows = digits(args.work / "digits", args.quick)
        write_csv(rows, args.out / "digits.csv")
        sections.append("## digits, Fréchet distance of 300 samples (held-out reference at n = 300 beside)\n\n"
                        + table(rows, ["model", "sampler"] + [f"FD@{k}" for k in STEPS] + ["reference_fd"]))
    text = "# Flow matching and reflow (benchmarks/flow.py)\n\n" + "\n\n".join(sections) + "\n"
    atomic.write_text(args.out / ("output.md" if args.part == "all" else f"output_{args.part}.md"), text)
    print("\n" + text)


if __name__ == "__main__":
    main()

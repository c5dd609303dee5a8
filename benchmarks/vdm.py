"""Variational Diffusion Models on digits (issue 19): the learned log-SNR schedule against the fixed one.

Two runs of the `digits-vdm` preset that differ only in `distill.learn_schedule` (true: the preset,
endpoints by the bound and shape by the variance of its estimate; false: VDM's linear schedule
from gamma = -13.3 to 5 throughout), same network, seed, steps and batch. For each model: held-out
bits/dim by VDM's continuous-time bound (its own schedule's t, 64 stratified t per image), the
terms of the bound, the standard deviation of the one-draw estimate of the bound (what the learned
shape minimises), the bound of the same model estimated through the other schedule's shape between
its own endpoints (the invariance of sec. 5.1: same mean, another variance), the probability-flow
ODE bits/dim (Hutchinson) and the Fréchet distance of 300 samples (dpmpp_2m, 20 steps).

Usage: .venv/bin/python benchmarks/vdm.py [--steps N] [--work DIR] [--parts train,eval,report]
       [--only learned|fixed] [--threads 1]
Writes benchmarks/vdm/{results.json,output.md}; the models go to --work (default /tmp/difflab-vdm).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from difflab.evaluation.digits import evaluate_digits
from difflab.likelihood import bits_per_dim, dequantize, ode_nll, quantize_8bit, vdm_diffusion_loss, vdm_elbo_terms
from difflab.pipeline import load
from difflab.schedules import LogSNRTable
from difflab.training import PRESETS, load_dataset, train

HERE = Path(__file__).resolve().parent
OUT = HERE / "vdm"
RUNS = {"learned": True, "fixed": False}


def train_run(name: str, steps: int, work: Path) -> dict:
    config = PRESETS["digits-vdm"].replace(steps=steps, sample_every=0, ckpt_every=0, log_every=50,
                                           distill={"knots": 32, "learn_schedule": RUNS[name]})
    t0 = time.time()
    model_dir = train(config, work / name, progress=False, device="cpu")
    log = (work / name / "log.csv").read_text().strip().splitlines()
    return {"model": str(model_dir), "train_seconds": round(time.time() - t0), "steps": steps,
            "final_logged_loss_bpd": float(log[-1].split(",")[1])}


def one_draw_std_bpd(den, x, schedule, draws: int, gen) -> float:
    """RMS over images of the standard deviation of one draw (iid t ~ U(0, 1), fresh noise) of
    L_inf, in bits/dim: the noise of the training loss that the learned shape minimises."""
    D = x[0].numel() * math.log(2)
    with torch.no_grad():
        rows = torch.stack([vdm_diffusion_loss(den, x, schedule, torch.rand(len(x), generator=gen, dtype=torch.float64),
                                               torch.randn(x.shape, generator=gen)) for _ in range(draws)], 1)
    return float((rows.var(1).mean() / D**2).sqrt())


def evaluate(name: str, info: dict, args) -> dict:
    model = load(info["model"], "cpu")
    den, schedule = model.denoiser, model.schedule
    test = load_dataset("digits", split="test").x[:args.n_elbo].float()
    D = test[0].numel() * math.log(2)
    row = {"gamma_0": math.log(schedule.sigma_min) * 2, "gamma_1": math.log(schedule.sigma_max) * 2,
           "table": schedule.to_dict()["gamma"]}
    linear = LogSNRTable([row["gamma_0"], row["gamma_1"]])  # the same endpoints, VDM's linear shape
    for label, sched in (("own", schedule), ("linear_between_endpoints", linear)):
        t0 = time.time()
        r = vdm_elbo_terms(den, test, sched, samples=args.elbo_samples, generator=torch.Generator().manual_seed(0))
        bpd = r["total"] / D
        row[f"elbo_{label}"] = {"bpd": float(bpd.mean()), "stderr": float(bpd.std() / math.sqrt(len(bpd))),
                                "prior": float(r["prior"].mean() / D), "decoder": float(r["decoder"].mean() / D),
                                "diffusion": float(r["diffusion"].mean() / D), "seconds": round(time.time() - t0)}
        row[f"one_draw_std_{label}"] = one_draw_std_bpd(den, quantize_8bit(test[:100]), sched, 32,
                                                       torch.Generator().manual_seed(1))
        print(name, label, row[f"elbo_{label}"], flush=True)
    t0 = time.time()
    x = dequantize(test[:args.n_ode], generator=torch.Generator().manual_seed(2))
    nll, st = ode_nll(den, x, sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max, trace="hutchinson",
                      probes=args.probes, rtol=1e-4, atol=1e-4, generator=torch.Generator().manual_seed(3),
                      return_stats=True)
    bpd = bits_per_dim(nll, test[0].numel())
    row["ode"] = {"bpd": float(bpd.mean()), "stderr": float(bpd.std() / math.sqrt(len(bpd))), "n": len(x),
                  "probes": args.probes, "seconds": round(time.time() - t0)}
    samples = model.sample(300, sampler="dpmpp_2m", steps=20, seed=0)
    ev = evaluate_digits(samples)
    row["fd"], row["reference_fd"] = float(ev["fd"]), float(ev["reference_fd"])
    print(name, row["ode"], row["fd"], flush=True)
    return row


def report(results: dict, args) -> None:
    lines = ["# VDM on digits: learned vs fixed log-SNR schedule", "",
             f"`digits-vdm` preset (digits UNet, eps prediction, continuous-time bound), {args.steps} steps x batch 128,"
             f" seed 0, CPU; the two runs differ only in `distill.learn_schedule`. Held-out digits: bound on "
             f"{args.n_elbo} images ({args.elbo_samples} stratified t each), ODE on {args.n_ode} dequantized images "
             f"({args.probes} Rademacher probes, rtol 1e-4). Bits/dim of 8-bit levels (bins 2/255), mean ± standard "
             "error over images.", "",
             "| schedule | ELBO bits/dim | prior | reconstruction | diffusion | one-draw std | ELBO via linear t-map "
             "(std) | ODE bits/dim | gamma_0 .. gamma_1 | FD (ref) | train s | final loss |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "elbo_own" not in r:
            continue
        e, lin, o = r["elbo_own"], r["elbo_linear_between_endpoints"], r["ode"]
        lines.append(f"| {name} | {e['bpd']:.4f} ± {e['stderr']:.4f} | {e['prior']:.5f} | {e['decoder']:.4f} | "
                     f"{e['diffusion']:.4f} | {r['one_draw_std_own']:.3f} | {lin['bpd']:.4f} "
                     f"({r['one_draw_std_linear_between_endpoints']:.3f}) | {o['bpd']:.4f} ± {o['stderr']:.4f} | "
                     f"{r['gamma_0']:.2f} .. {r['gamma_1']:.2f} | {r['fd']:.2f} ({r['reference_fd']:.2f}) | "
                     f"{r['train_seconds']} | {r['final_logged_loss_bpd']:.3f} |")
    if all("elbo_own" in results.get(k, {}) for k in RUNS):
        a, b = results["learned"]["elbo_own"], results["fixed"]["elbo_own"]
        diff, se = a["bpd"] - b["bpd"], math.hypot(a["stderr"], b["stderr"])
        lines += ["", f"learned - fixed: {diff:+.4f} bits/dim (± {se:.4f}, independent standard errors; the same test "
                  "images, so this overstates the noise of the difference)."]
        table = results["learned"]["table"]
        lines += ["", "Learned table (gamma at t = k/32): " + ", ".join(f"{g:.2f}" for g in table)]
    (OUT / "output.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=PRESETS["digits-vdm"].steps)
    ap.add_argument("--work", type=Path, default=Path("/tmp/difflab-vdm"))
    ap.add_argument("--parts", default="train,eval,report")
    ap.add_argument("--only", choices=tuple(RUNS), help="train / evaluate one of the two runs (run both in parallel)")
    ap.add_argument("--n-elbo", type=int, default=300)
    ap.add_argument("--elbo-samples", type=int, default=64)
    ap.add_argument("--n-ode", type=int, default=32)
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(exist_ok=True)
    names = [args.only] if args.only else list(RUNS)
    parts = set(args.parts.split(","))
    for name in names:
        path = OUT / f"{name}.json"
        row = json.loads(path.read_text()) if path.exists() else {}
        if "train" in parts:
            row = train_run(name, args.steps, args.work)
        if "eval" in parts:
            row.update(evaluate(name, row, args))
        if parts & {"train", "eval"}:
            path.write_text(json.dumps(row, indent=1) + "\n")
    if "report" in parts:
        results = {k: json.loads((OUT / f"{k}.json").read_text()) for k in RUNS if (OUT / f"{k}.json").exists()}
        (OUT / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        report(results, args)


if __name__ == "__main__":
    main()

"""Guidance on digits (issue 4): accuracy and Fréchet distance of class-guided samples, and the cost
of classifier-free guidance.

    .venv/bin/python benchmarks/guidance.py --cond DIR --uncond DIR --classifier DIR \
        [--n-per-class 100] [--scales 0 1 2 4 8] [--full-best 1000] [--out benchmarks/guidance]

For each method (classifier-free guidance on the class-conditional model; classifier guidance on the
unconditional model with the noise-aware classifier) and scale, samples n per class k = 0..9 with
DPM-Solver++(2M), 20 steps, a fixed seed, and reports:
  - accuracy: the fraction the *evaluation* classifier (difflab.evaluation, trained on clean digits,
    independent of the guidance classifier) assigns to the requested class, overall and the worst class;
  - FD: Fréchet distance of all samples (classes mixed, equal numbers) to the train split, and FD of
    a stratified subset of 300 samples beside the held-out reference (300 test digits) -- FD is only
    comparable at equal n, and the test split has 300 images.
Then the cost: median time of one CFG denoiser call at batch B vs one plain network call at batch 2B.
Writes results.csv, cost.csv, per_class.csv, grid_cfg_best.png and output.md under --out.
"""
from __future__ import annotations

import argparse
import csv
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from difflab.pipeline import load
from difflab.evaluation.digits import REFERENCE_N, classify, digits_fd, evaluate_digits
from difflab.guidance import cfg
from difflab.training.classifier import load_classifier

K = 10


def run(model, n_per_class, seed, batch_size, **kw):
    y = torch.arange(n_per_class * K) % K  # interleaved: every prefix of 10 m is stratified
    t = time.perf_counter()
    x = model.sample(n_per_class * K, sampler="dpmpp_2m", steps=20, seed=seed, y=y,
                     batch_size=batch_size, **kw)
    return x, y, time.perf_counter() - t


def score(x, y):
    pred = classify(x)
    per_class = [float((pred[y == k] == k).double().mean()) for k in range(K)]
    ev = evaluate_digits(x)  # fd on all samples; reference_fd at min(n, 300)
    n300 = min(len(x), REFERENCE_N)
    fd300 = digits_fd(x[:n300]) if len(x) > n300 else ev["fd"]
    return {"n": len(x), "accuracy": float((pred == y).double().mean()), "min_class_acc": min(per_class),
            "worst_class": int(np.argmin(per_class)), "fd_all": ev["fd"], "fd_300": fd300,
            "reference_fd_300": ev["reference_fd"], "per_class": per_class}


def grid_png(x, path, rows=K, cols=10):
    from PIL import Image

    x = ((x.clamp(-1, 1) + 1) * 127.5).round().byte()[:, 0]  # (N, 8, 8)
    pad, s = 1, 8
    img = np.full((rows * (s + pad) + pad, cols * (s + pad) + pad), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            img[pad + r * (s + pad):pad + r * (s + pad) + s, pad + c * (s + pad):pad + c * (s + pad) + s] = \
                x[r * cols + c].numpy()
    Image.fromarray(img).resize((img.shape[1] * 4, img.shape[0] * 4), Image.NEAREST).save(path)


def bench_cost(model, batches, repeats, scale=2.0):
    den = model.denoiser
    guided = cfg(den, scale, num_classes=model.num_classes)
    rows = []
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for B in batches:
            x = torch.randn(B, 1, 8, 8, generator=g)
            sigma = torch.full((B,), 1.0)
            y = torch.arange(B) % K
            x2, s2, y2 = torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([y, torch.full_like(y, K)])
            for _ in range(3):  # warm-up
                guided(x, sigma, y=y)
                den(x2, s2, y=y2)
            tg, tp = [], []
            for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
                t = time.perf_counter(); guided(x, sigma, y=y); tg.append(time.perf_counter() - t)
                t = time.perf_counter(); den(x2, s2, y=y2); tp.append(time.perf_counter() - t)
            mg, mp = statistics.median(tg), statistics.median(tp)
            rows.append({"B": B, "cfg_call_ms": mg * 1e3, "plain_2B_call_ms": mp * 1e3, "ratio": mg / mp,
                         "repeats": repeats})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cond", required=True)
    p.add_argument("--uncond", required=True)
    p.add_argument("--classifier", required=True)
    p.add_argument("--n-per-class", type=int, default=100)
    p.add_argument("--scales", type=float, nargs="+", default=[0, 1, 2, 4, 8])
    p.add_argument("--cg-scales", type=float, nargs="+", default=None)
    p.add_argument("--full-best", type=int, default=0, help="if > 0, resample the best CFG scale with this many per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--cost-batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--cost-repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/guidance")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)

    cond, uncond = load(a.cond), load(a.uncond)
    _, log_prob = load_classifier(a.classifier)
    lines = [f"cond model: {cond!r} ({a.cond}); uncond model: {uncond!r} ({a.uncond}); "
             f"guidance classifier: {a.classifier}",
             f"DPM-Solver++(2M), 20 steps, seed {a.seed}, {a.n_per_class} per class; torch "
             f"{torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}"]
    print("\n".join(lines), flush=True)

    results, samples = [], {}
    jobs = [("cfg", s) for s in a.scales] + [("classifier", s) for s in (a.cg_scales or a.scales)]
    for method, s in jobs:
        if method == "cfg":
            x, y, dt = run(cond, a.n_per_class, a.seed, a.batch_size, guidance=s)
        else:
            x, y, dt = run(uncond, a.n_per_class, a.seed, a.batch_size, classifier=log_prob, classifier_scale=s)
        r = {"method": method, "scale": s, **score(x, y), "seconds": dt}
        results.append(r)
        if method == "cfg":
            samples[s] = (x, y)
        print(f"{method:10s} scale {s:g}: acc {r['accuracy']:.1%} (worst class {r['worst_class']}: "
              f"{r['min_class_acc']:.1%}), FD all {r['fd_all']:.2f}, FD@300 {r['fd_300']:.2f} "
              f"(ref {r['reference_fd_300']:.2f}), {dt:.0f}s", flush=True)

    # The best CFG scale: highest worst-class accuracy among scales with FD@300 <= 2x reference.
    cfg_rows = [r for r in results if r["method"] == "cfg"]
    ok = [r for r in cfg_rows if r["fd_300"] <= 2 * r["reference_fd_300"]] or cfg_rows
    best = max(ok, key=lambda r: (r["min_class_acc"], r["accuracy"]))
    print(f"best CFG scale: {best['scale']:g}", flush=True)
    x, y = samples[best["scale"]]
    order = torch.cat([(y == k).nonzero().squeeze(1)[:10] for k in range(K)])
    grid_png(x[order], out / "grid_cfg_best.png")

    if a.full_best > 0:
        x, y, dt = run(cond, a.full_best, a.seed + 1, a.batch_size, guidance=best["scale"])
        r = {"method": "cfg (full)", "scale": best["scale"], **score(x, y), "seconds": dt}
        results.append(r)
        print(f"cfg full   scale {r['scale']:g}: n {r['n']} acc {r['accuracy']:.1%} (worst class "
              f"{r['worst_class']}: {r['min_class_acc']:.1%}), FD all {r['fd_all']:.2f}, FD@300 "
              f"{r['fd_300']:.2f} (ref {r['reference_fd_300']:.2f}), {dt:.0f}s", flush=True)

    cost = bench_cost(cond, a.cost_batches, a.cost_repeats)
    for c in cost:
        print(f"cost B={c['B']}: cfg call {c['cfg_call_ms']:.2f} ms, plain call at 2B {c['plain_2B_call_ms']:.2f} ms, "
              f"ratio {c['ratio']:.3f}", flush=True)

    keys = ["method", "scale", "n", "accuracy", "min_class_acc", "worst_class", "fd_all", "fd_300",
            "reference_fd_300", "seconds"]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore"); w.writeheader(); w.writerows(results)
    with open(out / "per_class.csv", "w", newline="") as f:
        w = csv.writer(f); w.writerow(["method", "scale", "n"] + [f"acc_{k}" for k in range(K)])
        for r in results:
            w.writerow([r["method"], r["scale"], r["n"]] + [f"{v:.4f}" for v in r["per_class"]])
    with open(out / "cost.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(cost[0])); w.writeheader(); w.writerows(cost)

    md = lines + ["", "| method | scale | n | accuracy | worst class | FD (all n) | FD (300) | reference FD (300) |",
                  "|---|---|---|---|---|---|---|---|"]
    for r in results:
        md.append(f"| {r['method']} | {r['scale']:g} | {r['n']} | {r['accuracy']:.1%} | {r['worst_class']}: "
                  f"{r['min_class_acc']:.1%} | {r['fd_all']:.2f} | {r['fd_300']:.2f} | {r['reference_fd_300']:.2f} |")
    md += ["", f"best CFG scale: {best['scale']:g}", "", "| B | CFG call at B (ms) | plain call at 2B (ms) | ratio |",
           "|---|---|---|---|"]
    md += [f"| {c['B']} | {c['cfg_call_ms']:.2f} | {c['plain_2B_call_ms']:.2f} | {c['ratio']:.3f} |" for c in cost]
    (out / "output.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

"""Latency of `difflab explore`'s 2-D lab: from a control change to the updated plot.

    python benchmarks/explore.py [--repeats N] [--browser]

Starts the lab's server in this process (exact mixtures only) and times, for 500 points and 20
steps and several samplers and problems: /api/2d/run (trajectories, density and field: what the
plot needs), /api/2d/error (the error against the exact ODE solution, shown after the plot; the
first request of a problem also solves that ODE, cached afterwards) and /api/2d/curve (the error
curve). With --browser (Debian's chromium and chromium-driver and `pip install selenium`, which
`make test-browser` installs) it also changes the sampler on the page in headless Chromium and reads
the page's own timings: milliseconds from the change event to the redrawn canvas and to the error
shown. The target is 0.5 s from a control change to the updated plot on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import threading
import time
import urllib.request

import torch

from difflab.explore import make_server
from difflab.explore.server import THREADS

SAMPLERS = ("euler", "heun", "dpmpp_2m", "unipc", "ddpm", "dpm_solver_3")
SETTINGS = [  # (label, parameters beyond 500 points and 20 steps)
    ("ring", {"problem": "ring"}),
    ("moons, class 0, guidance 3", {"problem": "moons", "label": 0, "guidance": 3}),
    ("ring, log-SNR sigmas", {"problem": "ring", "schedule": "logsnr"}),
]
TARGET = 0.5


CPU = []  # CPU seconds of each request (this process: the server's threads and the client)


def post(base: str, path: str, body: dict) -> tuple[float, int]:
    """Seconds for one request (sent, computed, answered and parsed) and the answer's size in bytes;
    its CPU seconds go to CPU."""
    start, cpu = time.perf_counter(), time.process_time()
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as r:
        payload = r.read()
    json.loads(payload)
    CPU.append(time.process_time() - cpu)
    return time.perf_counter() - start, len(payload)


def endpoint_rows(base: str, repeats: int) -> list[tuple[str, list[float], int, list[float]]]:
    rows = []

    def timed(label, requests):
        """Run ``requests`` (path, body) and keep their wall and CPU seconds as one row."""
        first = len(CPU)
        results = [post(base, path, body) for path, body in requests]
        size = results[-1][1] if requests[-1][0] == "/api/2d/run" else 0
        rows.append((label, [t for t, _ in results], size, CPU[first:]))

    for label, extra in SETTINGS:
        body = {"n": 500, "steps": 20, "sampler": "dpmpp_2m", **extra}
        timed(f"{label}: first plot", [("/api/2d/run", body)])
        timed(f"{label}: first error (solves and caches the reference ODE)", [("/api/2d/error", body)])
        timed(f"{label}: plot after a change of sampler ({len(SAMPLERS)} samplers x {repeats})",
              [("/api/2d/run", {**body, "sampler": s}) for s in SAMPLERS * repeats])
        timed(f"{label}: plot after a change of steps (10-30)",
              [("/api/2d/run", {**body, "steps": k}) for k in (10, 15, 20, 25, 30) * repeats])
        timed(f"{label}: error after a change of sampler",
              [("/api/2d/error", {**body, "sampler": s}) for s in SAMPLERS * repeats])
        timed(f"{label}: error curve over NFE", [("/api/2d/curve", {**body, "sampler": s}) for s in SAMPLERS[:3]])
    return rows


def browser_rows(base: str, repeats: int) -> list[tuple[str, list[float], int, list[float]]]:
    """The page's own timings in headless Chromium: change event -> request -> canvas drawn."""
    from selenium import webdriver
    from selenium.webdriver.support.ui import Select

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        raise SystemExit("--browser needs Debian's chromium and chromium-driver (make test-browser installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1480,1100"):
        options.add_argument(flag)
    b = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    try:
        b.get(base + "/")
        wait = "return window.explore && window.explore.updatesError >= {} && window.explore.busy === 0"
        _poll(b, wait.format(1))
        done = 1
        for _ in range(repeats):
            for sampler in SAMPLERS:
                Select(b.find_element("id", "sampler")).select_by_value(sampler)
                done += 1
                _poll(b, wait.format(done))
        # the first load is not a change
        plots, errors = (b.execute_script(f"return window.explore.{k}")[1:] for k in ("timings", "errorTimings"))
    finally:
        b.quit()
    return [("in the page: sampler change -> plot redrawn (ring)", [t / 1000 for t in plots], 0, []),
            ("in the page: sampler change -> error shown (ring)", [t / 1000 for t in errors], 0, [])]


def _poll(browser, script: str, timeout: float = 300):
    end = time.time() + timeout
    while not browser.execute_script(script):
        if time.time() > end:
            raise TimeoutError(script)
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--browser", action="store_true", help="also time the page in headless Chromium")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads, as `difflab explore --threads` "
                        "(default: %(default)s, its default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    server = make_server(port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        rows = endpoint_rows(base, args.repeats)
        if args.browser:
            rows += browser_rows(base, args.repeats)
    finally:
        server.shutdown()
    print(f"`difflab explore`, 2-D lab, 500 points, 20 steps; {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads; target {TARGET} s; load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other processes share the cores)\n")
    print("| what | median s | max s | median CPU s | answer |\n|---|---|---|---|---|")
    for label, times, size, cpu in rows:
        answer = f"{size / 1e3:.0f} kB" if size else ""
        cpu_s = f"{statistics.median(cpu):.3f}" if cpu else ""
        print(f"| {label} | {statistics.median(times):.3f} | {max(times):.3f} | {cpu_s} | {answer} |")


if __name__ == "__main__":
    main()

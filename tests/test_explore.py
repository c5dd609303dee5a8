"""`difflab explore`: every JSON endpoint answers what the library computes for the same inputs, bad
requests get one sentence and a 4xx status, and the server goes on answering after them (and after
a bug's 500). The page itself is driven in tests/test_browser.py."""
import base64
import http.client
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import difflab
from difflab.cli import main
from difflab.editing import inpaint, sdedit
from difflab.exact import GaussianMixture, ring_mixture
from difflab.explore import lab2d, make_server, runs
from difflab.explore.app import Explorer
from difflab.guidance import cfg
from difflab.samplers import denoiser_calls
from difflab.schedules import loglinear_sigmas
from difflab.tuning import optimize_sigmas, reference_solution

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A 2-D model and a digits run with two sample grids, each trained for a few steps."""
    root = tmp_path_factory.mktemp("explore")
    assert main(["train", "--preset", "toy2d", "--out", str(root / "moons"), "--steps", "20",
                 "--batch-size", "32"]) == 0
    assert main(["train", "--preset", "digits-small", "--out", str(root / "digits"), "--steps", "4",
                 "--batch-size", "8", "--set", "sample_every=2", "--set", "log_every=1"]) == 0
    return {"moons": root / "moons", "digits": root / "digits"}


@pytest.fixture(scope="module")
def server(dirs):
    s = make_server([dirs["moons"], dirs["digits"]], port=0, device="cpu")
    thread = threading.Thread(target=s.serve_forever, daemon=True)
    thread.start()
    yield s
    s.shutdown()
    s.server_close()


@pytest.fixture(scope="module")
def api(server):
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def call(path, body=None, *, raw: bytes | None = None):
        """POST a JSON body (or raw bytes) -> (status, decoded JSON or bytes)."""
        data = raw if raw is not None else json.dumps(body or {}).encode()
        request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                status, payload, kind = r.status, r.read(), r.headers["Content-Type"]
        except urllib.error.HTTPError as e:
            status, payload, kind = e.code, e.read(), e.headers["Content-Type"]
        return status, json.loads(payload) if kind == "application/json" else payload

    call.base = base
    return call


def unpack(packed) -> torch.Tensor:
    """The page's decoding of a packed tensor."""
    data = np.frombuffer(base64.b64decode(packed["f32"]), dtype="<f4")
    return torch.from_numpy(data.copy()).reshape(packed["shape"])


def ok(result):
    status, body = result
    assert status == 200, body
    return body


def noise(n, seed):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rms(a, b):
    return float((a.double() - b.double()).square().mean().sqrt())


def grid(half_width, size):
    ticks = torch.linspace(-half_width, half_width, size, dtype=torch.float64)
    gy, gx = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)


# ---------------------------------------------------------------------------------------------
# The 2-D lab


def test_2d_run_and_error_equal_the_library(api):
    body = {"problem": "ring", "sampler": "dpmpp_2m", "steps": 10, "schedule": "logsnr", "n": 64, "seed": 3}
    r, e = ok(api("/api/2d/run", body)), ok(api("/api/2d/error", body))
    gmm, x_T = ring_mixture(), 80.0 * noise(64, 3)
    sigmas = loglinear_sigmas(10, 0.002, 80.0).double()
    path = []
    out = difflab.sample(gmm, x_T.clone(), sigmas, "dpmpp_2m", callback=lambda info: path.append(info["x"].clone()))
    reference = reference_solution(gmm, x_T, 0.002, 80.0)
    assert r["sigmas"] == sigmas.tolist() and r["nfe"] == denoiser_calls("dpmpp_2m", sigmas) == 10
    frames = unpack(r["frames"])
    assert frames.shape == (11, 64, 2)
    assert torch.equal(frames, torch.stack(path + [out]).float())
    assert torch.equal(unpack(e["reference"]), reference.float())
    assert e["error"] == rms(out, reference) and e["nfe"] == 10
    # the density and the field of one frame, on that frame's view
    i, h = 4, r["views"][4]
    assert h == pytest.approx((r["views"][-1] ** 2 + (3 * sigmas[4].item()) ** 2) ** 0.5)
    density = unpack(r["density"])[i].reshape(-1)
    assert torch.allclose(density, gmm.log_prob(grid(h, 48), sigmas[i].item()).float())
    field = unpack(r["field"])[i].reshape(-1, 2)
    g = grid(h, 17)
    assert torch.allclose(field, gmm.denoiser(g, torch.full((len(g),), sigmas[i].item(), dtype=torch.float64)).float())
    assert torch.equal(unpack(r["field"])[-1].reshape(-1, 2), grid(r["views"][-1], 17).float())  # sigma 0: D = x


def test_2d_run_with_karras_rho_and_a_stochastic_sampler(api):
    r = ok(api("/api/2d/run", {"problem": "ring", "sampler": "euler_ancestral", "steps": 6, "rho": 3, "n": 16,
                                "seed": 1}))
    sigmas = difflab.karras_sigmas(6, 0.002, 80.0, rho=3.0).double()
    gen = torch.Generator().manual_seed(1)
    out = difflab.sample(ring_mixture(), 80.0 * noise(16, 1), sigmas, "euler_ancestral", generator=gen)
    assert r["stochastic"] and r["sigmas"] == sigmas.tolist()
    assert torch.equal(unpack(r["frames"])[-1], out.float())


def test_guided_2d_run_is_classifier_free_guidance_of_the_exact_class_denoisers(api):
    r = ok(api("/api/2d/run", {"problem": "moons", "sampler": "heun", "steps": 6, "label": 1, "guidance": 3,
                                "n": 32, "seed": 0}))
    p = lab2d.exact_problems()["moons"]
    gmm = p.gmm
    upper, lower = (GaussianMixture(gmm.means[list(c)], gmm.stds[list(c)]) for c in p.classes)
    assert p.classes == (tuple(range(7)), tuple(range(7, 14)))

    def class_model(x, sigma, y):  # y == 2 is the null label: the whole mixture
        by_class = torch.where((y == 0)[:, None], upper.denoiser(x, sigma), lower.denoiser(x, sigma))
        return torch.where((y == 2)[:, None], gmm.denoiser(x, sigma), by_class)

    guided = cfg(class_model, 3.0, num_classes=2)
    den = lambda x, sigma: guided(x, sigma, y=torch.ones(len(x), dtype=torch.long))  # noqa: E731
    sigmas = difflab.karras_sigmas(6, 0.002, 80.0).double()
    out = difflab.sample(den, 80.0 * noise(32, 0), sigmas, "heun")
    assert torch.allclose(unpack(r["frames"])[-1], out.float(), atol=1e-5)
    reference = reference_solution(den, 80.0 * noise(32, 0), 0.002, 80.0)
    error = ok(api("/api/2d/error", {"problem": "moons", "sampler": "heun", "steps": 6, "label": 1, "guidance": 3,
                                     "n": 32, "seed": 0}))["error"]
    assert error == pytest.approx(rms(out, reference), rel=1e-6)
    # the tilted density (1 - w) log p + w log p_y, whose score the guided ODE follows
    h, sigma = r["views"][2], sigmas[2].item()
    tilted = -2 * gmm.log_prob(grid(h, 48), sigma) + 3 * lower.log_prob(grid(h, 48), sigma)
    assert torch.allclose(unpack(r["density"])[2].reshape(-1), tilted.float(), rtol=1e-5, atol=1e-4)


def test_2d_curve_equals_the_library(api):
    r = ok(api("/api/2d/curve", {"problem": "unbalanced", "sampler": "euler", "steps": 7, "rho": 5, "n": 24,
                                  "seed": 2}))
    p = lab2d.exact_problems()["unbalanced"]
    x_T = 80.0 * noise(24, 2)
    reference = reference_solution(p.gmm, x_T, 0.002, 80.0)
    karras = {row["steps"]: row for row in r["curves"]["karras"]}
    assert 7 in karras and max(karras) == 50
    for steps in (1, 7, 20):
        sigmas = difflab.karras_sigmas(steps, 0.002, 80.0, rho=5.0).double()
        out = difflab.sample(p.gmm, x_T.clone(), sigmas, "euler")
        assert karras[steps]["error"] == rms(out, reference) and karras[steps]["nfe"] == steps
    logsnr = {row["steps"]: row for row in r["curves"]["logsnr"]}
    out = difflab.sample(p.gmm, x_T.clone(), loglinear_sigmas(10, 0.002, 80.0).double(), "euler")
    assert logsnr[10]["error"] == rms(out, reference)
    e = ok(api("/api/2d/error", {"problem": "unbalanced", "sampler": "euler", "steps": 7, "rho": 5, "n": 24,
                                 "seed": 2}))
    assert (e["error"], e["nfe"], e["schedule"]) == (karras[7]["error"], 7, "karras")


def test_optimised_schedule_is_difflab_tuning(api):
    r = ok(api("/api/2d/run", {"problem": "ring", "sampler": "dpmpp_2m", "steps": 3, "schedule": "optimised",
                                "n": 8, "seed": 5}))
    gmm, x_cal = ring_mixture(), 80.0 * noise(lab2d.CALIBRATION_NOISES, 6)
    sigmas, _ = optimize_sigmas(gmm, x_cal, "dpmpp_2m", 3, reference=reference_solution(gmm, x_cal, 0.002, 80.0),
                                maxiter=lab2d.OPTIMISE_ITERATIONS)
    assert r["sigmas"] == sigmas.tolist()
    status, body = api("/api/2d/run", {"sampler": "ddpm", "steps": 3, "schedule": "optimised"})
    assert status == 400 and "stochastic" in body["error"]
    assert ok(api("/api/2d/error", {"problem": "ring", "sampler": "dpmpp_2m", "steps": 3, "schedule": "optimised",
                                    "n": 8, "seed": 5}))["schedule"] == "optimised"


def test_every_lab_sampler_runs_in_the_2d_lab(api):
    for sampler in lab2d.LAB_SAMPLERS:
        r = ok(api("/api/2d/run", {"sampler": sampler, "steps": 3, "n": 8}))
        e = ok(api("/api/2d/error", {"sampler": sampler, "steps": 3, "n": 8}))
        assert len(r["sigmas"]) == 4 and e["error"] is not None and torch.isfinite(unpack(r["frames"])).all(), sampler


def test_trained_2d_model_in_the_2d_lab(api, dirs):
    config = ok(api("/api/config"))
    assert {"id": "model:moons", "exact": False} .items() <= next(
        p for p in config["problems"] if p["id"] == "model:moons").items()
    r = ok(api("/api/2d/run", {"problem": "model:moons", "sampler": "euler", "steps": 5, "n": 16, "seed": 0}))
    model = difflab.load(dirs["moons"], "cpu")
    x_T = 80.0 * noise(16, 0).float()
    sigmas = difflab.karras_sigmas(5, 0.002, 80.0).double()
    out = difflab.sample(model.denoiser, x_T.clone(), sigmas.float(), "euler")
    assert torch.allclose(unpack(r["frames"])[-1], out, atol=1e-6)
    reference = reference_solution(model.denoiser, x_T, 0.002, 80.0, lab2d.NETWORK_REFERENCE_STEPS)
    e = ok(api("/api/2d/error", {"problem": "model:moons", "sampler": "euler", "steps": 5, "n": 16, "seed": 0}))
    assert e["error"] == pytest.approx(rms(out, reference), rel=1e-5)
    assert r["density"] is None  # a network has no closed-form density


# ---------------------------------------------------------------------------------------------
# The image lab


@pytest.fixture(scope="module")
def digits(dirs):
    return difflab.load(dirs["digits"], "cpu")


def test_reverse_process_is_the_model_s_sampling(api, digits):
    r = ok(api("/api/image/reverse", {"model": "digits", "sampler": "heun", "steps": 4, "n": 3, "seed": 7}))
    kept = []
    out = digits.sample(3, sampler="heun", steps=4, seed=7, callback=kept.append)
    assert torch.equal(unpack(r["output"]), out)
    assert unpack(r["x"]).shape == unpack(r["denoised"]).shape == (4, 3, 1, 8, 8)
    assert torch.equal(unpack(r["denoised"])[2], kept[2]["denoised"])
    assert r["sigmas"] == [k["sigma"] for k in kept] and r["nfe"] == 7


def test_samplers_side_by_side_start_from_the_same_noise(api, digits):
    r = ok(api("/api/image/compare", {"model": "digits", "samplers": ["euler", "ddpm"], "steps": 3, "n": 2,
                                      "seed": 4, "schedule": "karras"}))
    z = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(4))
    for row in r["samplers"]:
        expected = digits.sample(2, sampler=row["sampler"], steps=3, noise=z, seed=4, schedule="karras")
        assert torch.equal(unpack(row["images"]), expected)
        assert row["nfe"] == 3
    # comma-separated in a query string works too
    assert [row["sampler"] for row in ok(api("/api/image/compare?model=digits&samplers=euler,heun&steps=2&n=1"))[
        "samplers"]] == ["euler", "heun"]


def test_inpainting_and_sdedit_are_the_editors(api, digits):
    drawn = torch.zeros(8, 8)
    drawn[2:6, 3:7] = 1
    body = {"model": "digits", "mask": drawn.int().tolist(), "source_seed": 2, "steps": 4, "n": 2, "seed": 9,
            "sampler": "ddpm"}
    source = digits.sample(1, seed=2)
    assert torch.equal(unpack(ok(api("/api/image/source", {"model": "digits", "source_seed": 2}))["image"]), source)
    sigmas = digits.sigmas(4, "auto", sampler="ddpm")
    r = ok(api("/api/image/inpaint", {**body, "method": "replace"}))
    with torch.inference_mode():
        expected = inpaint(digits.denoiser, source.expand(2, -1, -1, -1), ~drawn.bool()[None, None], sigmas,
                           method="replace", generator=torch.Generator().manual_seed(9), sampler="ddpm")
    images = unpack(r["images"])
    assert torch.equal(images, expected.clamp(-1, 1))
    keep = ~drawn.bool().expand_as(images)
    assert torch.equal(images[keep], source.expand_as(images)[keep])  # the undrawn pixels are kept
    r = ok(api("/api/image/sdedit", {**body, "strength": 0.5}))
    guide = torch.where(drawn.bool(), 1.0, source)
    with torch.inference_mode():
        expected = sdedit(digits.denoiser, guide.expand(2, -1, -1, -1), sigmas, strength=0.5, sampler="ddpm",
                          generator=torch.Generator().manual_seed(9))
    assert torch.equal(unpack(r["guide"]), guide) and torch.equal(unpack(r["images"]), expected.clamp(-1, 1))


# ---------------------------------------------------------------------------------------------
# The training view


def test_training_view_reads_the_run(api, dirs):
    r = ok(api("/api/training", {"run": "digits"}))
    assert r["log"]["step"] == [1.0, 2.0, 3.0, 4.0] and len(r["log"]["loss"]) == 4
    assert r["samples"] == [{"step": 2, "file": "step_000002.png"}, {"step": 4, "file": "step_000004.png"}]
    assert r["preset"] == "digits-small" and r["planned_steps"] == 4
    status, png = api("/api/training/grid?run=digits&file=step_000004.png")
    assert status == 200 and png == (dirs["digits"] / "samples" / "step_000004.png").read_bytes()
    assert r["doctor"] == runs.has_doctor()


def test_doctor_findings_where_there_is_a_doctor(api, dirs, monkeypatch):
    findings = ok(api("/api/training/doctor", {"run": "digits"}))["findings"]
    if runs.has_doctor():
        from difflab.training.doctor import diagnose

        assert [f["message"] for f in findings] == [f.message for f in diagnose(dirs["digits"])]
    else:
        assert findings is None
    import difflab.training

    monkeypatch.setitem(sys.modules, "difflab.training.doctor", None)  # a library without a doctor
    monkeypatch.delattr(difflab.training, "doctor", raising=False)
    assert not runs.has_doctor() and runs.doctor_findings(dirs["digits"]) is None
    assert ok(api("/api/training", {"run": "digits"}))["doctor"] is False


# ---------------------------------------------------------------------------------------------
# Bad requests and a server that goes on


BAD = [
    ("/api/2d/run", {"sampler": "nope"}, 400, "unknown sampler 'nope'; choose from euler"),
    ("/api/2d/run", {"steps": 0}, 400, "steps must be an integer from 1 to 200, got 0"),
    ("/api/2d/run", {"steps": 201}, 400, "steps must be an integer from 1 to 200"),
    ("/api/2d/run", {"steps": "ten"}, 400, "steps must be an integer"),
    ("/api/2d/run", {"steps": 2.5}, 400, "steps must be an integer"),
    ("/api/2d/run", {"n": 10**6}, 400, "n must be an integer from 1 to 2000"),
    ("/api/2d/run", {"schedule": "cosine"}, 400, "unknown schedule 'cosine'"),
    ("/api/2d/run", {"problem": "spiral"}, 404, "no problem named 'spiral'"),
    ("/api/2d/run", {"problem": ["ring"]}, 404, "no problem named ['ring']"),
    ("/api/image/reverse", {"model": {"a": 1}}, 404, "no model or run named {'a': 1}"),
    ("/api/image/reverse", {}, 400, "choose a model (none was given)"),
    ("/api/2d/run", {"problem": "model:nope"}, 404, "no model or run named 'nope'"),
    ("/api/2d/run", {"problem": "model:digits"}, 400, "digits is not a 2-D model"),
    ("/api/2d/run", {"label": 8}, 400, "label must be an integer from 0 to 7"),
    ("/api/2d/run", {"guidance": 3}, 400, "guidance scale needs a class"),
    ("/api/2d/run", {"problem": "model:moons", "label": 0}, 400, "unconditional"),
    ("/api/2d/curve", {"rho": 0}, 400, "rho must be a number"),
    ("/api/2d/error", {"sampler": "ddpm", "schedule": "optimised"}, 400, "stochastic"),
    ("/api/image/reverse", {"model": "missing"}, 404, "no model or run named 'missing'; this server has moons"),
    ("/api/image/reverse", {"model": "moons"}, 400, "moons is not an image model"),
    ("/api/image/reverse", {"model": "digits", "sampler": "rk45"}, 400, "unknown sampler 'rk45'"),
    ("/api/image/reverse", {"model": "digits", "guidance": 2}, 400, "unconditional"),
    ("/api/image/compare", {"model": "digits", "samplers": []}, 400, "samplers must be a list"),
    ("/api/image/compare", {"model": "digits", "samplers": ["euler"] * 7}, 400, "at most 6 samplers"),
    ("/api/image/inpaint", {"model": "digits"}, 400, "mask must be a list of rows"),
    ("/api/image/inpaint", {"model": "digits", "mask": [[0] * 8] * 7}, 400, "8 rows of 8 values"),
    ("/api/image/inpaint", {"model": "digits", "mask": [[2] * 8] * 8}, 400, "only 0 and 1"),
    ("/api/image/inpaint", {"model": "digits", "mask": [[0] * 8] * 8, "method": "magic"}, 400, "unknown method"),
    ("/api/image/sdedit", {"model": "digits", "mask": [[0] * 8] * 8, "strength": 0}, 400, "strength must be"),
    ("/api/training", {"run": "nope"}, 404, "no model or run named 'nope'"),
    ("/api/training/grid", {"run": "digits", "file": "../log.csv"}, 404, "no sample grid '../log.csv'"),
    ("/api/nothing", {}, 404, "no endpoint /api/nothing"),
    ("/static/../app.py", {}, 404, "no file"),
]


@pytest.mark.parametrize("path, body, status, phrase", BAD, ids=[f"{p} {b}" for p, b, _, _ in BAD])
def test_bad_requests_get_one_sentence(api, path, body, status, phrase):
    got, answer = api(path, body)
    assert got == status, answer
    assert phrase in answer["error"] and "\n" not in answer["error"]


def test_bad_bodies_and_a_bug_leave_the_server_running(api, server, monkeypatch):
    assert api("/api/2d/run", raw=b"{not json") == (400, {"error": "the request body is not valid JSON"})
    assert api("/api/2d/run", raw=b"[1, 2]")[0] == 400

    def bug(self, params):
        raise RuntimeError("a bug")

    monkeypatch.setitem(sys.modules["difflab.explore.app"].ENDPOINTS, "/api/2d/run", bug)
    status, answer = api("/api/2d/run", {})
    assert status == 500 and "internal error (RuntimeError: a bug)" in answer["error"]
    monkeypatch.undo()
    assert ok(api("/api/2d/run", {"steps": 2, "n": 4}))["nfe"] == 2
    # one kept-alive connection: an error answered before the body was needed keeps it in step
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    for path, steps, expected in (("/api/nothing", 2, 404), ("/api/2d/run", 2, 200), ("/api/2d/run", 0, 400),
                                  ("/api/config", 2, 200)):
        connection.request("POST", path, body=json.dumps({"n": 4, "steps": steps}),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == expected and json.loads(response.read())
    connection.close()


def test_get_with_query_parameters_equals_post(api):
    get = ok(api("/api/2d/run?sampler=euler&steps=3&n=8&label=none", raw=b""))
    post = ok(api("/api/2d/run", {"sampler": "euler", "steps": 3, "n": 8}))
    assert get["sigmas"] == post["sigmas"] and get["frames"] == post["frames"]


def test_the_page_and_its_files(api):
    status, html = api("/", raw=b"")
    html = html.decode()
    assert status == 200 and '<script src="/static/app.js">' in html
    for name in ("app.js", "style.css"):
        status, body = api(f"/static/{name}", raw=b"")
        assert status == 200 and len(body) > 1000
    # the controls the script reads exist on the page
    script = api("/static/app.js", raw=b"")[1].decode()
    import re

    ids = set(re.findall(r'\$\("([\w-]+)"\)', script))
    missing = [i for i in ids if f'id="{i}"' not in html]
    assert not missing, missing


def test_explorer_refuses_a_directory_that_is_neither(tmp_path):
    with pytest.raises(ValueError, match="neither a model directory"):
        Explorer([tmp_path])
    with pytest.raises(ValueError, match="no such directory"):
        Explorer([tmp_path / "absent"])


def test_command_line(tmp_path, capsys):
    assert main(["explore", str(tmp_path / "absent"), "--port", "0"]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["explore", "--port", "70000"]) == 2
    assert main(["explore", "--threads", "-1"]) == 2
    probe = ("import sys, difflab.cli\ntry:\n    difflab.cli.main(['explore', '--help'])\nexcept SystemExit:\n"
             "    pass\nprint('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "MODEL_DIR" in done.stdout and done.stdout.split()[-1] == "False"


def test_command_line_serves_and_prints_its_address(dirs):
    """`difflab explore DIR --port 0` in a process of its own: it prints the address and answers there."""
    process = subprocess.Popen([sys.executable, "-m", "difflab", "explore", str(dirs["moons"]), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = process.stdout.readline()
        assert line.startswith("difflab explore: http://127.0.0.1:"), line + process.stderr.read()
        address = line.split()[2]
        with urllib.request.urlopen(address + "api/config", timeout=60) as r:
            assert "model:moons" in {p["id"] for p in json.loads(r.read())["problems"]}
    finally:
        process.terminate()
        process.wait(timeout=30)

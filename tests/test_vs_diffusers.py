"""difflab's samplers against diffusers' own schedulers on the same exact problems, sigmas and noises.

For gmm2d and gmm64 (256 fixed float64 noises, Karras sigmas rho = 7 from 80 to 0.002, 10 and 20
steps) the error is the RMS per dimension against the probability-flow ODE solution (difflab's Heun
with 1500 steps). Each difflab sampler must be within 1.02x of diffusers' error at the same number
of denoiser calls; the algorithms are identical, so the outputs must also agree
to the precision diffusers computes in. ``pytest -s`` prints the table. Skipped without diffusers
(it is not a dependency of difflab; see difflab/compare_diffusers.py for every scheduler setting).
"""
import pytest

pytest.importorskip("diffusers")
# diffusers' set_timesteps calls np.array on a torch tensor, which numpy 2 flags; not our concern.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")

import torch  # noqa: E402

import difflab  # noqa: E402
from difflab.bench.vs_diffusers import FLOAT32_STEP, run_diffusers  # noqa: E402
from difflab.denoisers import CountingDenoiser  # noqa: E402
from difflab.exact import random_mixture, ring_mixture  # noqa: E402
from difflab.samplers import denoiser_calls  # noqa: E402

SMIN, SMAX = 0.002, 80.0
#: label -> (difflab sampler, its options, diffusers scheduler, its config overrides)
CASES = {"euler": ("euler", {}, "euler", {}), "heun": ("heun", {}, "heun", {}),
         "dpmpp_2m": ("dpmpp_2m", {}, "dpmpp_2m", {}), "dpmpp_3m": ("dpmpp_3m", {}, "dpmpp_3m", {}),
         "unipc": ("unipc", {}, "unipc", {}), "unipc_3": ("unipc", {"order": 3}, "unipc", {"solver_order": 3})}
NAMES = list(CASES)
IDENTICAL = set(NAMES)  # every one is the same algorithm as diffusers' (dpmpp_3m: variant="official")
PROBLEMS = {"gmm2d": ring_mixture, "gmm64": random_mixture}
ROWS = []



def rms(a, b):
    return float((a - b).square().mean().sqrt())


@pytest.fixture(scope="module", autouse=True)
def one_thread_and_table():
    """One thread: gmm2d's tiny (256 x 2) float64 matmuls are ~1000x slower with two MKL threads on a
    busy machine. Prints the table when the module is done."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    print(f"\n{'problem':8} {'sampler':9} {'steps':>5} {'calls':>5} {'difflab':>10} {'diffusers':>10}"
          f" {'ratio':>6} {'max|diff|':>9}")
    for problem, name, n, calls, err, err_hf, diff in sorted(ROWS, key=lambda r: (r[0], NAMES.index(r[1]), r[2])):
        print(f"{problem:8} {name:9} {n:5d} {calls:5d} {err:10.4e} {err_hf:10.4e} {err / err_hf:6.3f} {diff:9.1e}")


@pytest.fixture(scope="module", params=list(PROBLEMS))
def problem(request):
    gmm = PROBLEMS[request.param]()
    gen = torch.Generator().manual_seed(0)
    x_T = SMAX * torch.randn(256, gmm.dim, generator=gen, dtype=torch.float64)
    ref = difflab.sample(gmm, x_T.clone(), difflab.karras_sigmas(1500, SMIN, SMAX).double(), "heun")
    return request.param, gmm, x_T, ref


@pytest.mark.parametrize("n", [10, 20])
@pytest.mark.parametrize("name", NAMES)
def test_no_less_accurate_than_diffusers(problem, name, n):
    pname, gmm, x_T, ref = problem
    sampler, options, scheduler, config = CASES[name]
    sigmas = difflab.karras_sigmas(n, SMIN, SMAX).double()
    counted = CountingDenoiser(gmm)
    ours = difflab.sample(counted, x_T.clone(), sigmas, sampler, **options)
    info = {}
    theirs = run_diffusers(scheduler, gmm, x_T.clone(), sigmas, info=info, **config)

    used = info["scheduler"].sigmas
    used = torch.cat([used[:1], used[1::2]]) if name == "heun" else used
    assert torch.equal(used, sigmas), "diffusers did not integrate over difflab's sigmas"
    assert counted.calls == info["nfe"] == denoiser_calls(sampler, sigmas)
    assert theirs.dtype == torch.float64

    err, err_hf = rms(ours, ref), rms(theirs, ref)
    diff = float((ours - theirs).abs().max())
    ROWS.append((pname, name, n, info["nfe"], err, err_hf, diff))
    if name in IDENTICAL:
        # 100 ulps of the largest coordinate in the precision diffusers steps in (10^4 for UniPC,
        # whose coefficients come from small Vandermonde solves done in a different order).
        eps = torch.finfo(torch.float32 if scheduler in FLOAT32_STEP else torch.float64).eps
        tol = (1e4 if sampler == "unipc" else 100) * eps * float(ref.abs().max())
        assert diff <= tol, f"{name}: outputs differ by {diff:.2e} (> {tol:.1e}) though the algorithm is the same"
    assert err <= 1.02 * err_hf, f"difflab {name} error {err:.4e} > 1.02 x diffusers' {err_hf:.4e}"

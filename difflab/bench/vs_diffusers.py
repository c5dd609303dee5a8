"""Run Hugging Face diffusers' own schedulers on a difflab Denoiser, over exactly difflab's sigmas.

A comparison harness, not part of sampling: it lets a test show that each difflab sampler that
implements the same algorithm as a diffusers scheduler is at least as accurate on the same problem,
sigmas and starting noise, at the same number of denoiser calls. diffusers is optional (imported
lazily; :func:`available` says whether it is installed) and is never a dependency of difflab.

How the two conventions meet (Karras et al. 2022, sec. 2 and Table 1). diffusers' schedulers are
written for a variance-preserving epsilon network: the network sees x_vp = x / sqrt(1 + sigma^2)
and predicts the noise eps. The exact difflab denoiser D(x, sigma) becomes that network as

    eps(x_vp, sigma) = (x - D(x, sigma)) / sigma,    x = sqrt(1 + sigma^2) x_vp,

evaluated in the denoiser's dtype (float64 for :mod:`difflab.exact`). Each scheduler's ``sigmas``
(VE sigmas, which is what diffusers stores) are replaced after ``set_timesteps`` by difflab's
sequence in float64 and checked unchanged after the run. (``use_karras_sigmas`` cannot do this:
the Heun and DPM-Solver schedulers take the Karras range from their training betas, not from
0.002..80.) The step counter is pinned with ``set_begin_index(0)``, so the ``timesteps`` (left as
``set_timesteps(n)`` made them) only label the calls: the model ignores them and reads sigma from
``scheduler.sigmas[k]`` at call k.
"""
from __future__ import annotations

import math

import torch

from ..samplers.stepping import denoise

#: name -> (diffusers class, config). Every entry that matters for a fair comparison is spelled out,
#: even where it is diffusers' default, so that a change of defaults cannot silently change the run.
SCHEDULERS = {
    "euler": ("EulerDiscreteScheduler", {"prediction_type": "epsilon", "final_sigmas_type": "zero"}),
    "heun": ("HeunDiscreteScheduler", {"prediction_type": "epsilon", "clip_sample": False}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {
        "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
        "prediction_type": "epsilon", "thresholding": False, "lower_order_final": True,
        "euler_at_final": False, "final_sigmas_type": "zero"}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {
        "algorithm_type": "dpmsolver++", "solver_order": 3, "solver_type": "midpoint",
        "prediction_type": "epsilon", "thresholding": False, "lower_order_final": True,
        "euler_at_final": False, "final_sigmas_type": "zero"}),
    "unipc": ("UniPCMultistepScheduler", {
        "solver_order": 2, "solver_type": "bh2", "predict_x0": True, "disable_corrector": [],
        "prediction_type": "epsilon", "thresholding": False, "lower_order_final": True,
        "final_sigmas_type": "zero"}),
}

#: Schedulers whose ``sample`` is the VE x (they call ``scale_model_input`` to make the model input);
#: the multistep ones integrate the VP-scaled x_vp itself.
_VE_SAMPLE = frozenset({"euler", "heun"})

#: Schedulers whose ``step`` rounds the incoming sample to float32 (``sample.to(torch.float32)``), so
#: their float64 runs agree with an identical float64 algorithm only to about float32 precision.
FLOAT32_STEP = frozenset({"euler", "dpmpp_2m", "dpmpp_3m"})


def available() -> bool:
    """Whether diffusers can be imported."""
    try:
        import diffusers.schedulers  # noqa: F401
    except ImportError:
        return False
    return True


def make_scheduler(name: str, sigmas, **config):
    """The diffusers scheduler for ``name`` (see :func:`run_diffusers`), configured by
    :data:`SCHEDULERS` updated with ``config``, with its sigma sequence set to ``sigmas``."""
    if name not in SCHEDULERS:
        raise ValueError(f"no diffusers counterpart for {name!r}; choose from {', '.join(SCHEDULERS)}")
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if len(s) < 2 or float(s[-1]) != 0 or not bool((s[1:] < s[:-1]).all()):
        raise ValueError("sigmas must be decreasing positive values followed by a final 0")
    try:
        import diffusers
    except ImportError as err:
        raise ImportError("diffusers is not installed; it is only needed for this comparison") from err
    cls_name, defaults = SCHEDULERS[name]
    sched = getattr(diffusers, cls_name)(**{**defaults, **config})
    n = len(s) - 1
    sched.set_timesteps(n)
    if name == "heun":
        # Heun's scheduler takes two calls per step, so it lists every inner sigma twice:
        # [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0] against 2n - 1 timesteps.
        s = torch.cat([s[:1], s[1:-1].repeat_interleave(2), s[-1:]])
    if len(sched.timesteps) != len(s) - 1:
        raise RuntimeError(f"{cls_name}: {len(sched.timesteps)} timesteps for {len(s)} sigmas")
    sched.sigmas = s
    sched.set_begin_index(0)
    return sched


def run_diffusers(name: str, denoiser, x_T: torch.Tensor, sigmas, *, info: dict | None = None,
                  cond: dict | None = None, **config) -> torch.Tensor:
    """Integrate from ``x_T`` (= sigmas[0] * noise, VE convention) along difflab's ``sigmas`` (n
    decreasing sigmas and a final 0) with the diffusers scheduler for ``name``; return x at sigma = 0.

    ``info``, if given, receives ``nfe`` (denoiser calls), ``steps`` (scheduler steps) and
    ``scheduler`` (the configured object, after the run). ``config`` overrides entries of
    :data:`SCHEDULERS` (e.g. ``lower_order_final=False``) to probe a setting.

    The schedulers and what their settings do on these sigmas (diffusers 0.42):

    - ``"euler"``: ``EulerDiscreteScheduler`` (s_churn = 0: deterministic Euler,
      Karras et al. 2022, Alg. 2 without churn). n calls. Its ``step`` casts the incoming sample to
      float32, so x is rounded to float32 once per step (the update itself is then float64).
    - ``"heun"``: ``HeunDiscreteScheduler``: Heun's method with an Euler last step to sigma = 0
      (Karras et al. 2022, Alg. 1). 2n - 1 calls. All float64.
    - ``"dpmpp_2m"``: ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
      solver_type="midpoint")`` (Lu et al. 2022b, Alg. 2). First order on the first step;
      ``final_sigmas_type="zero"`` forces a first-order last step, which is x = D. n calls.
      ``step`` casts the sample (x_vp) to float32 once per step.
    - ``"dpmpp_3m"``: as dpmpp_2m with ``solver_order=3``. Order ramps 1, 2, 3; the last step is
      first order (x = D); and ``lower_order_final=True`` (the default) also drops to second order on
      the step into the last positive sigma when there are fewer than 15 steps. The third-order
      update is the authors' (dpm_solver_pytorch.py): phi_3 D2 with D2 ~ h^2 D''/2, half the
      Taylor term, so it converges at order 2 asymptotically. n calls; float32 rounding of x_vp
      as for dpmpp_2m.
    - ``"unipc"``: ``UniPCMultistepScheduler(solver_type="bh2", solver_order=2, predict_x0=True,
      disable_corrector=[])`` (Zhao et al. 2023; all of these are diffusers' defaults, and order 2
      is difflab's too). Order ramps 1, 2; ``lower_order_final=True`` makes the predictor order
      min(order, n - k) at step k for any n, so the step into the last positive sigma uses UniP-1
      and the last step (to 0) is x = D at the predicted, uncorrected point (the corrector applied
      there is discarded by that step). n calls. ``config={"solver_order": 3}`` compares order 3.
      All float64.

    The sigmas are set in float64 (diffusers would store them as float32); the timesteps passed to
    ``step`` only label calls (our model ignores them).
    """
    sched = make_scheduler(name, sigmas, **config)
    expected = sched.sigmas.clone()
    ve_sample = name in _VE_SAMPLE
    sample = x_T if ve_sample else x_T / math.sqrt(1 + float(sched.sigmas[0]) ** 2)
    nfe = 0
    for k, t in enumerate(sched.timesteps):
        sigma = float(sched.sigmas[k])
        x_vp = sched.scale_model_input(sample, t)
        if sched.step_index is not None and sched.step_index != k:
            raise RuntimeError(f"{type(sched).__name__} is at step {sched.step_index}, expected {k}")
        x = x_vp * math.sqrt(1 + sigma**2)
        eps = (x - denoise(denoiser, x, sigma, cond)) / sigma
        nfe += 1
        sample = sched.step(eps, t, sample).prev_sample
    if not torch.equal(sched.sigmas, expected):
        raise RuntimeError(f"{type(sched).__name__} changed its sigmas during the run")
    if info is not None:
        info.update(nfe=nfe, steps=len(sched.timesteps), scheduler=sched)
    return sample  # at sigma = 0 x_vp = x

"""Flow matching and rectified flow in difflab's one convention (docs/flow.md).

A flow-matching model is a :class:`~difflab.schedules.Flow` schedule (x_t = (1 - t) x0 + t n) with
the ``flow`` (velocity) parametrization, so every sampler, guidance and editing method takes it
unchanged; training options (uniform or logit-normal times, independent or minibatch-OT couplings,
paired noise) are fields of :class:`~difflab.training.TrainConfig`. This package adds what is
specific to flows: the velocity field of any denoiser (:func:`velocity`), Euler in flow time
(:func:`euler_flow`), straightness (:func:`straightness`) and the reflow procedure
(:func:`reflow`, ``difflab reflow``).
"""
from .paths import euler_flow, straightness, velocity
from .reflow import draw_pairs, reflow

__all__ = ["velocity", "euler_flow", "straightness", "draw_pairs", "reflow"]

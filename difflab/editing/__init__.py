"""Editing and inverse problems with an unconditional (or conditional) denoiser.

Every editor is a plain function ``editor(denoiser, input, sigmas, *, options) -> x`` over the
Denoiser contract of docs/design.md, usable with any trained model or exact oracle:

- :func:`inpaint`: the replacement method (Song et al. 2021) and RePaint (Lugmayr et al. 2022), for
  images and signals (forecasting is inpainting the future);
- :func:`observed_denoiser`: the denoiser of an imputation model (CSDI) given observations;
- :func:`sdedit`: SDEdit (Meng et al. 2022);
- :func:`ilvr`: ILVR (Choi et al. 2021);
- :func:`invert`, :func:`reconstruct`: DDIM / probability-flow ODE inversion (Song et al. 2021a);
- :func:`diffedit`, :func:`diffedit_mask`: DiffEdit (Couairon et al. 2023) with a class-conditional denoiser;
- :func:`ddrm`: DDRM (Kawar et al. 2022) with the operators :class:`Inpainting`,
  :class:`SuperResolution` and :class:`Colorization`;
- :func:`dps`: diffusion posterior sampling (Chung et al. 2023) for any differentiable measurement,
  with the operators :func:`gaussian_blur`, :func:`saturation`, :func:`fourier_magnitude`,
  :func:`masking` and :func:`downsampling`.

See docs/editing.md for the mathematics, conventions and what is approximate.
"""
from .ddrm import Colorization, Inpainting, LinearOperator, SuperResolution, ddrm
from .diffedit import diffedit, diffedit_mask
from .dps import dps, dps_denoiser, downsampling, fourier_magnitude, gaussian_blur, masking, saturation
from .ilvr import ilvr, low_pass
from .inpaint import inpaint, observation_condition, observed_denoiser, repaint_schedule, replaced_denoiser
from .inversion import invert, reconstruct
from .sdedit import sdedit

__all__ = ["inpaint", "replaced_denoiser", "observed_denoiser", "observation_condition", "repaint_schedule",
           "sdedit", "ilvr", "low_pass", "invert", "reconstruct", "ddrm", "LinearOperator", "Inpainting", "SuperResolution", "Colorization",
           "diffedit", "diffedit_mask", "dps", "dps_denoiser", "gaussian_blur", "saturation", "fourier_magnitude", "masking", "downsampling"]

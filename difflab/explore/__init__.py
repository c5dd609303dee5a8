"""`difflab explore`: an interactive lab in the browser for seeing how diffusion works.

- the 2-D lab (:mod:`.lab2d`): a sampler's trajectories over the noisy density of an exact Gaussian
  mixture (or a trained 2-D model), the denoiser's field, and the error against the
  probability-flow ODE's solution, over steps, schedules and guidance;
- the image lab (:mod:`.imagelab`): the reverse process step by step, samplers side by side from
  the same noise, inpainting a drawn mask, SDEdit;
- the training view (:mod:`.runs`): a run's loss curve, its sample grids over steps, and the
  doctor's findings where `difflab doctor` exists.

:mod:`.app` holds the endpoints as functions of a parameter dict and :mod:`.server` serves them
and the page (``static/``) with the standard library's HTTP server. docs/explore.md.
"""
from .app import Explorer, RequestError
from .server import make_server, serve

__all__ = ["Explorer", "RequestError", "make_server", "serve"]

"""The lab's endpoints as plain functions of a parameter dict: each checks its parameters, calls the
library through :mod:`.lab2d`, :mod:`.imagelab` or :mod:`.runs`, and returns a JSON-ready dict
(tensors are packed by :func:`jsonable`). :mod:`.server` puts them behind HTTP.

A request a user can get wrong (an unknown sampler, steps out of range, a model that is not loaded)
raises :class:`RequestError` with one sentence and an HTTP status; the library's own ValueErrors
are bad requests too.
"""
from __future__ import annotations

import base64
import math
import threading
from pathlib import Path

import numpy as np
import torch

from . import imagelab, lab2d, runs

__all__ = ["RequestError", "Explorer", "jsonable", "pack", "LIMITS", "ENDPOINTS"]

#: Inclusive ranges of the numeric parameters.
LIMITS = {
    "steps_2d": (1, 200), "n_2d": (1, 2000), "steps_image": (1, 100), "n_image": (1, 16), "guidance": (0.0, 20.0),
    "rho": (0.5, 20.0), "strength": (0.01, 1.0), "seed": (0, 2**31 - 1), "compare_samplers": (1, 6),
}


class RequestError(ValueError):
    """A bad request: ``status`` (400 or 404) and a one-sentence message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------
# Parameters


def _number(params, name, default, kind, limits):
    value = params.get(name, default)
    lo, hi = limits
    what = "an integer" if kind is int else "a number"
    try:
        if isinstance(value, bool) or value is None or value == "":
            raise ValueError
        number = float(value)
        if kind is int and not number.is_integer():
            raise ValueError
        number = kind(number)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"{name} must be {what} from {lo} to {hi}, got {value!r}") from None
    if not lo <= number <= hi:
        raise RequestError(f"{name} must be {what} from {lo} to {hi}, got {value!r}")
    return number


def _choice(params, name, default, choices):
    value = params.get(name, default)
    if value not in choices:
        raise RequestError(f"unknown {name} {value!r}; choose from {', '.join(map(str, choices))}")
    return value


def _label(params, num_classes: int | None):
    """The class id, or None for "no class" (missing, null, "" or "none")."""
    value = params.get("label")
    if value is None or value in ("", "none"):
        return None
    if num_classes is None:
        raise RequestError("this model is unconditional; it takes no class label")
    return _number(params, "label", None, int, (0, num_classes - 1))


def _samplers(params, name="samplers"):
    value = params.get(name, "")
    names = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        raise RequestError(f"{name} must be a list of sampler names")
    lo, hi = LIMITS["compare_samplers"]
    if len(names) > hi:
        raise RequestError(f"compare at most {hi} samplers at a time, got {len(names)}")
    for s in names:
        _choice({"sampler": s}, "sampler", None, lab2d.LAB_SAMPLERS)
    return names


def _grid(params, name: str):
    """A 0/1 drawing (list of rows) from the request body."""
    value = params.get(name)
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise RequestError(f"{name} must be a list of rows of 0 and 1 (send it in a JSON body)")
    try:
        return torch.tensor(value, dtype=torch.float32)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be rows of equal length holding 0 and 1") from None


# ---------------------------------------------------------------------------------------------
# JSON


def pack(t: torch.Tensor) -> dict:
    """A tensor as ``{"shape": [...], "f32": base64 of its little-endian float32 values}`` (what the
    page turns into a Float32Array; ``unpack`` in the tests)."""
    a = np.ascontiguousarray(t.detach().float().cpu().numpy(), dtype="<f4")
    return {"shape": list(a.shape), "f32": base64.b64encode(a.tobytes()).decode("ascii")}


def jsonable(obj):
    """``obj`` with tensors packed, tuples as lists and non-finite floats as None (JSON has no NaN)."""
    if isinstance(obj, torch.Tensor):
        return pack(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------------------------
# The endpoints


class Explorer:
    """The lab's state: the directories given (models and runs, :func:`runs.describe`), the models
    loaded on first use, the exact problems and the 2-D lab's caches. Thread-safe.

    ``paths``: model directories and/or training runs; ``device``: where models run (default: CUDA
    when available)."""

    def __init__(self, paths=(), device=None):
        paths = list(paths)
        self.entries = {name: runs.describe(p, name) for p, name in zip(paths, runs.unique_names(paths))}
        self.device = device
        self.exact = lab2d.exact_problems()
        self.lab = lab2d.Lab2D()
        self._models, self._lock = {}, threading.Lock()

    # --- registry ------------------------------------------------------------------------------

    def entry(self, name, kind: str | None = None) -> runs.Entry:
        """The directory called ``name`` (404 when there is none; 400 when it is not of ``kind``)."""
        if name in (None, ""):
            raise RequestError(f"choose a {'run' if kind == 'run' else 'model'} (none was given)")
        if not isinstance(name, str) or name not in self.entries:
            have = ", ".join(self.entries) or "none: start 'difflab explore MODEL_DIR ...' with some"
            raise RequestError(f"no model or run named {name!r}; this server has {have}", 404)
        entry = self.entries[name]
        if kind == "run" and not entry.run:
            raise RequestError(f"{name} is a model directory without a training log; give its run folder")
        if kind in ("2d", "image") and entry.kind != kind:
            what = {"2d": "a 2-D model", "image": "an image model"}[kind]
            raise RequestError(f"{name} is not {what} (it holds data of shape {list(entry.data_shape)})")
        return entry

    def model(self, name: str, kind: str):
        """The loaded model (:func:`difflab.load`, once)."""
        entry = self.entry(name, kind)
        with self._lock:
            if name not in self._models:
                from ..pipeline import load

                self._models[name] = load(entry.path, self.device)
            return self._models[name]

    def problem(self, name) -> lab2d.Problem:
        """An exact problem by name, or a trained 2-D model as ``model:NAME``."""
        if isinstance(name, str) and name.startswith("model:"):
            model_name = name[len("model:"):]
            return lab2d.model_problem(name, self.model(model_name, "2d"))
        if not isinstance(name, str) or name not in self.exact:
            raise RequestError(f"no problem named {name!r}; choose from {', '.join(self.problem_ids())}", 404)
        return self.exact[name]

    def problem_ids(self) -> list[str]:
        return list(self.exact) + [f"model:{n}" for n, e in self.entries.items() if e.kind == "2d"]

    def config(self, params=None) -> dict:
        """What the page needs to build its controls."""
        from ..samplers import STOCHASTIC

        problems = [{"id": p.name, "title": p.title, "exact": True, "classes": list(p.class_names)}
                    for p in self.exact.values()]
        problems += [{"id": f"model:{n}", "title": f"trained: {n} ({e.preset})", "exact": False,
                      "classes": [f"class {k}" for k in range(e.num_classes or 0)]}
                     for n, e in self.entries.items() if e.kind == "2d"]
        return {
            "problems": problems,
            "samplers": [{"name": s, "stochastic": s in STOCHASTIC} for s in lab2d.LAB_SAMPLERS],
            "schedules_2d": list(lab2d.SCHEDULES), "schedules_image": list(imagelab.IMAGE_SCHEDULES),
            "edit_methods": list(imagelab.EDIT_METHODS),
            "image_models": [{"name": n, "shape": list(e.data_shape), "preset": e.preset,
                              "classes": e.num_classes} for n, e in self.entries.items() if e.kind == "image"],
            "runs": [{"name": n, "preset": e.preset} for n, e in self.entries.items() if e.run],
            "limits": LIMITS,
        }

    # --- 2-D lab -------------------------------------------------------------------------------

    def _params_2d(self, params) -> tuple[lab2d.Problem, dict]:
        p = self.problem(params.get("problem", "ring"))
        return p, {
            "sampler": _choice(params, "sampler", "dpmpp_2m", lab2d.LAB_SAMPLERS),
            "steps": _number(params, "steps", 20, int, LIMITS["steps_2d"]),
            "schedule": _choice(params, "schedule", "karras", lab2d.SCHEDULES),
            "rho": _number(params, "rho", 7.0, float, LIMITS["rho"]),
            "label": _label(params, p.num_classes),
            "guidance": _number(params, "guidance", 1.0, float, LIMITS["guidance"]),
            "n": _number(params, "n", 500, int, LIMITS["n_2d"]),
            "seed": _number(params, "seed", 0, int, LIMITS["seed"]),
        }

    def run_2d(self, params) -> dict:
        """:meth:`lab2d.Lab2D.run`: trajectories, density, field."""
        p, kwargs = self._params_2d(params)
        return self.lab.run(p, **kwargs)

    def error_2d(self, params) -> dict:
        """:meth:`lab2d.Lab2D.error`: the reference end points and the error."""
        p, kwargs = self._params_2d(params)
        return self.lab.error(p, **kwargs)

    def curve_2d(self, params) -> dict:
        """:meth:`lab2d.Lab2D.curve`: error over denoiser calls."""
        p, kwargs = self._params_2d(params)
        return self.lab.curve(p, **kwargs)

    # --- image lab -----------------------------------------------------------------------------

    def _image(self, params, editing=False) -> tuple[object, dict]:
        model = self.model(params.get("model"), "image")
        imagelab.check_image_model(model, editing)
        n_lo, n_hi = LIMITS["n_image"]
        return model, {
            "steps": _number(params, "steps", 20, int, LIMITS["steps_image"]),
            "schedule": _choice(params, "schedule", "auto", imagelab.IMAGE_SCHEDULES),
            "n": _number(params, "n", 4, int, (n_lo, n_hi)),
            "seed": _number(params, "seed", 0, int, LIMITS["seed"]),
            "label": _label(params, model.num_classes),
        }

    def _guidance(self, params):
        value = params.get("guidance")
        return None if value in (None, "") else _number(params, "guidance", None, float, LIMITS["guidance"])

    def image_reverse(self, params) -> dict:
        """:func:`imagelab.reverse_process`."""
        model, kw = self._image(params)
        return imagelab.reverse_process(model, sampler=_choice(params, "sampler", "dpmpp_2m", lab2d.LAB_SAMPLERS),
                                        guidance=self._guidance(params), **kw)

    def image_compare(self, params) -> dict:
        """:func:`imagelab.compare_samplers`."""
        model, kw = self._image(params)
        return imagelab.compare_samplers(model, samplers=_samplers(params), guidance=self._guidance(params), **kw)

    def image_source(self, params) -> dict:
        """:func:`imagelab.source_image`."""
        model = self.model(params.get("model"), "image")
        seed = _number(params, "source_seed", 0, int, LIMITS["seed"])
        return {"image": imagelab.source_image(model, seed, _label(params, model.num_classes))}

    def image_inpaint(self, params) -> dict:
        """:func:`imagelab.inpaint_images` of the drawn ``mask`` (1 = regenerate)."""
        model, kw = self._image(params, editing=True)
        return imagelab.inpaint_images(
            model, drawn=_grid(params, "mask"), source_seed=_number(params, "source_seed", 0, int, LIMITS["seed"]),
            method=_choice(params, "method", "repaint", imagelab.EDIT_METHODS),
            sampler=_choice(params, "sampler", "ddpm", lab2d.LAB_SAMPLERS), **kw)

    def image_sdedit(self, params) -> dict:
        """:func:`imagelab.sdedit_images` of the guide painted where ``mask`` is 1."""
        model, kw = self._image(params, editing=True)
        return imagelab.sdedit_images(
            model, drawn=_grid(params, "mask"), strength=_number(params, "strength", 0.5, float, LIMITS["strength"]),
            source_seed=_number(params, "source_seed", 0, int, LIMITS["seed"]),
            sampler=_choice(params, "sampler", "ddpm", lab2d.LAB_SAMPLERS), **kw)

    # --- training view -------------------------------------------------------------------------

    def training(self, params) -> dict:
        """:func:`runs.training_view` of the run ``run``."""
        return runs.training_view(self.entry(params.get("run"), "run"))

    def doctor(self, params) -> dict:
        """:func:`runs.doctor_findings` of the run ``run`` (``findings`` None without a doctor)."""
        return {"findings": runs.doctor_findings(self.entry(params.get("run"), "run").path)}

    def training_grid(self, params) -> bytes:
        """The PNG bytes of one sample grid (``file``, as listed by :meth:`training`)."""
        entry = self.entry(params.get("run"), "run")
        name = params.get("file")
        if name not in {g["file"] for g in runs.sample_grids(entry.path)}:
            raise RequestError(f"{entry.name} has no sample grid {name!r}", 404)
        return (entry.path / runs.SAMPLES_DIR / name).read_bytes()


#: path -> Explorer method; every one takes GET query parameters or a POST JSON body.
ENDPOINTS = {
    "/api/config": Explorer.config, "/api/2d/run": Explorer.run_2d, "/api/2d/error": Explorer.error_2d,
    "/api/2d/curve": Explorer.curve_2d,
    "/api/image/reverse": Explorer.image_reverse, "/api/image/compare": Explorer.image_compare,
    "/api/image/source": Explorer.image_source, "/api/image/inpaint": Explorer.image_inpaint,
    "/api/image/sdedit": Explorer.image_sdedit, "/api/training": Explorer.training,
    "/api/training/grid": Explorer.training_grid, "/api/training/doctor": Explorer.doctor,
}

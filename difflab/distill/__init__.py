"""Distillation: from fifty steps to one to four (docs/distill.md).

Each procedure trains a student with the trainer of :mod:`difflab.training` and one of its
distillation objectives (:mod:`difflab.training.objectives`), so a student is an ordinary model
directory that records its native sampler and sigmas:

- :func:`progressive`: halvings of the teacher's DDIM steps down to K (Salimans & Ho 2022);
- :func:`consistency`: consistency distillation (Song et al. 2023); consistency training without a
  teacher is the ``toy2d-ct`` / ``digits-ct`` presets;
- :func:`guided`: a student that takes the guidance scale w as an input (Meng et al. 2023).
"""
from .procedures import consistency, guided, progressive

__all__ = ["progressive", "consistency", "guided"]

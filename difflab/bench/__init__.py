"""Benchmarks: every sampler against exact solutions (:mod:`.samplers`, ``difflab bench samplers``),
the harness that runs diffusers' schedulers on the same problems (:mod:`.vs_diffusers`), and the
speed of training and sampling against a bare step and against diffusers (:mod:`.speed`,
``difflab bench train`` and ``difflab bench gpu``)."""

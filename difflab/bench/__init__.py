"""Benchmarks: every sampler against exact solutions (:mod:`.samplers`, ``difflab bench samplers``)
and the harness that runs diffusers' schedulers on the same problems (:mod:`.vs_diffusers`)."""

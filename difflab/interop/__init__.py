"""Models from elsewhere as difflab denoisers and networks.

- :func:`from_diffusers`: a Hugging Face diffusers model (``UNet2DModel``, ``UNet2DConditionModel``,
  ``DiTTransformer2DModel``) and its scheduler config, or a whole pipeline folder written by
  ``save_pretrained``, as a :class:`~difflab.denoisers.NetworkDenoiser`; :func:`read_diffusers`
  gives the pieces :func:`difflab.load` builds a model from. diffusers is optional (the ``diffusers``
  extra) and imported only here.
- :func:`load_adm` / :func:`adm_to_difflab`: a guided-diffusion / improved-diffusion UNet state dict
  (Dhariwal & Nichol 2021; Nichol & Dhariwal 2021) mapped onto difflab's ADM UNet.

Nothing here unpickles a file: diffusers weights are read from safetensors only, a ``.pt`` state
dict with ``torch.load(weights_only=True)``.
"""
from .adm import AdmError, adm_config, adm_to_difflab, difflab_to_adm, load_adm
from .diffusers import (DiffusersError, DiffusersModel, DiffusersNet, from_diffusers, is_diffusers_dir,
                        read_diffusers, schedule_from_config)

__all__ = ["from_diffusers", "read_diffusers", "is_diffusers_dir", "schedule_from_config", "DiffusersModel",
           "DiffusersNet", "DiffusersError", "load_adm", "adm_to_difflab", "difflab_to_adm", "adm_config",
           "AdmError"]

"""ADM-family checkpoints (guided-diffusion, improved-diffusion) on difflab's ADM UNet.

guided-diffusion's ``UNetModel`` (Dhariwal & Nichol 2021, sec. 3) and improved-diffusion's
(Nichol & Dhariwal 2021) are the architecture of :class:`difflab.nets.UNet`, block for block: the
same sinusoidal timestep features and two-layer embedding MLP, residual blocks with (optional)
scale-shift norm and BigGAN up/down-sampling, multi-head attention, and a decoder of
``num_res_blocks + 1`` blocks per level. Only the names differ, and the attention's qkv
projection: the "legacy" order of those repositories stores each head's q, k and v together
(rows ``[head][q|k|v][channel]``), difflab stores q, k and v apart (``[q|k|v][head][channel]``,
their ``use_new_attention_order``). :func:`adm_to_difflab` renames and reorders;
:func:`difflab_to_adm` is its inverse.

What a state dict does not record is passed in: the image size (attention sits at given
downsampling rates) and the number of attention heads. The network's time input is the timestep
index (``rescale_timesteps=False``), so with the checkpoint's schedule (guided-diffusion's ImageNet
models: 1000 linear betas, eps prediction with learned variances) it is a difflab denoiser::

    net = load_adm("256x256_diffusion_uncond.pt", image_size=256, num_head_channels=64)
    denoiser = NetworkDenoiser(net, DiscreteVP("linear", 1000), "eps")
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..nets.unet import AttentionBlock, Downsample, ResBlock, UNet, UNetConfig, Upsample

__all__ = ["AdmError", "adm_config", "adm_to_difflab", "difflab_to_adm", "load_adm", "read_state_dict"]


class AdmError(ValueError):
    """A state dict that does not fit difflab's ADM UNet (one sentence naming the keys)."""


_RESBLOCK = {"norm1": "in_layers.0", "conv1": "in_layers.2", "emb_proj": "emb_layers.1", "norm2": "out_layers.0",
             "conv2": "out_layers.3", "skip": "skip_connection"}
_ATTENTION = {"norm": "norm", "qkv": "qkv", "proj": "proj_out"}


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.pt`` / ``.pth`` state dict read with
    ``torch.load(weights_only=True)`` (plain tensors only: nothing else is unpickled)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AdmError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise AdmError(f"{path}: not a readable state dict ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
                       ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise AdmError(f"{path}: expected a state dict of tensors")
    return state


def _count(state, pattern: str) -> int:
    indices = {int(m.group(1)) for k in state for m in [re.match(pattern, k)] if m}
    return max(indices) + 1 if indices else 0


def adm_config(state: dict, *, image_size: int, num_heads: int | None = None, num_head_channels: int | None = None,
               dropout: float = 0.0) -> UNetConfig:
    """The :class:`~difflab.nets.UNetConfig` of an ADM state dict: channels, levels, blocks,
    attention levels, scale-shift norm, BigGAN resampling, classes and learned variances are read
    from the tensors; ``image_size`` and the heads (``num_heads`` or ``num_head_channels``) are
    given."""
    need = ["time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise AdmError(f"not an ADM UNet state dict: no {', '.join(missing)}")
    base = state["time_embed.0.weight"].shape[1]
    in_ch = state["input_blocks.0.0.weight"].shape[1]
    out_ch = state["out.2.weight"].shape[0]
    n_out = _count(state, r"output_blocks\.(\d+)\.")
    # the first output block with an upsampler (a conv or a second residual block) ends level 1
    up_blocks = [i for i in range(n_out)
                 if any(re.match(rf"output_blocks\.{i}\.[12]\.(conv|in_layers)\.", k) for k in state)]
    if not up_blocks:
        levels, per_level = 1, n_out
    else:
        per_level = up_blocks[0] + 1
        levels = n_out // per_level
    num_res_blocks = per_level - 1
    if num_res_blocks < 1 or levels * per_level != n_out:
        raise AdmError(f"cannot read the levels of this ADM UNet ({n_out} output blocks)")
    mult, attn = [], []
    for level in range(levels):
        first = 1 + level * per_level
        ch = state[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0]
        if ch % base:
            raise AdmError(f"input_blocks.{first} has {ch} channels, not a multiple of {base}")
        mult.append(ch // base)
        if f"input_blocks.{first}.1.qkv.weight" in state:
            attn.append(image_size // 2**level)
    resblock_updown = levels > 1 and f"input_blocks.{per_level}.0.in_layers.0.weight" in state
    scale_shift = state["input_blocks.1.0.emb_layers.1.weight"].shape[0] == 2 * mult[0] * base
    has_attention = "middle_block.1.qkv.weight" in state
    if has_attention and (num_heads is None) == (num_head_channels is None):
        raise AdmError("the state dict does not record the attention heads: pass num_heads or num_head_channels "
                       "(guided-diffusion's ImageNet models use num_head_channels=64)")
    num_classes = state["label_emb.weight"].shape[0] if "label_emb.weight" in state else None
    try:
        return UNetConfig(in_channels=in_ch, resolution=image_size, base_channels=base, channel_mult=tuple(mult),
                          num_res_blocks=num_res_blocks, attn_resolutions=tuple(attn), num_heads=num_heads or 1,
                          head_channels=num_head_channels, dropout=dropout, scale_shift_norm=scale_shift,
                          resblock_updown=resblock_updown, groups=32,
                          out_channels=None if out_ch in (in_ch, 2 * in_ch) else out_ch,
                          num_classes=num_classes, learn_sigma=out_ch == 2 * in_ch and out_ch != in_ch)
    except ValueError as e:
        raise AdmError(f"the state dict does not give a valid UNet for image_size {image_size} ({e})") from e


def _module_pairs(net: UNet):
    """(difflab module prefix, ADM module prefix, module) for every weight-holding module."""
    yield "embed.mlp.0", "time_embed.0", net.embed.mlp[0]
    yield "embed.mlp.2", "time_embed.2", net.embed.mlp[2]
    yield "encoder.conv_in", "input_blocks.0.0", net.encoder.conv_in
    stages = [(f"encoder.down.{i}", f"input_blocks.{i + 1}", s) for i, s in enumerate(net.encoder.down)]
    stages.append(("encoder.middle", "middle_block", net.encoder.middle))
    stages += [(f"up.{i}", f"output_blocks.{i}", s) for i, s in enumerate(net.up)]
    for ours, theirs, stage in stages:
        for j, block in enumerate(stage):
            a, b = f"{ours}.{j}", f"{theirs}.{j}"
            if isinstance(block, ResBlock):
                for name, adm in _RESBLOCK.items():
                    if name != "skip" or not isinstance(block.skip, torch.nn.Identity):
                        yield f"{a}.{name}", f"{b}.{adm}", getattr(block, name)
            elif isinstance(block, AttentionBlock):
                if block.cross is not None:
                    raise AdmError("a text-conditional UNet has no ADM counterpart")
                for name, adm in _ATTENTION.items():
                    yield f"{a}.{name}", f"{b}.{adm}", getattr(block, name)
            elif isinstance(block, Downsample):
                yield f"{a}.conv", f"{b}.op", block.conv
            elif isinstance(block, Upsample):
                yield f"{a}.conv", f"{b}.conv", block.conv
    yield "norm_out", "out.0", net.norm_out
    yield "conv_out", "out.2", net.conv_out


def _qkv_order(heads: int, channels: int, legacy_to_split: bool) -> torch.Tensor:
    """Row permutation between the legacy qkv order [head][q|k|v][ch] and difflab's [q|k|v][head][ch]."""
    d = channels // heads
    legacy = torch.arange(3 * channels).reshape(heads, 3, d)  # legacy row of (head, part, ch)
    split_rows = legacy.permute(1, 0, 2).reshape(-1)  # difflab row r holds legacy row split_rows[r]
    return split_rows if legacy_to_split else torch.argsort(split_rows)


def adm_to_difflab(state: dict, config: UNetConfig, attention_order: str = "legacy") -> dict[str, torch.Tensor]:
    """An ADM state dict renamed and reshaped into a state dict of ``UNet(config)``. AdmError naming
    the keys when the architecture does not match (missing, unexpected or mis-shaped tensors)."""
    if attention_order not in ("legacy", "new"):
        raise AdmError(f"attention_order must be 'legacy' or 'new', got {attention_order!r}")
    with torch.device("meta"):
        net = UNet(config)
    target = net.state_dict()
    out, used, missing, shapes = {}, set(), [], []
    for ours, theirs, module in _module_pairs(net):
        for pname, param in module.named_parameters(recurse=False):
            key, adm_key = f"{ours}.{pname}", f"{theirs}.{pname}"
            if adm_key not in state:
                missing.append(adm_key)
                continue
            value = state[adm_key]
            used.add(adm_key)
            if isinstance(module, torch.nn.Conv2d) and value.ndim == 3:  # conv1d (out, in, 1) in attention
                value = value[..., None]
            if ours.endswith(".qkv") and attention_order == "legacy":
                value = value[_qkv_order(_heads(net, ours), module.in_channels, True)]
            if tuple(value.shape) != tuple(param.shape):
                shapes.append(f"{adm_key} {tuple(value.shape)} vs {tuple(param.shape)}")
                continue
            out[key] = value
    if config.num_classes is not None:
        table = state.get("label_emb.weight")
        used.add("label_emb.weight")
        if table is None or table.shape[0] != config.num_classes:
            missing.append("label_emb.weight")
        else:  # difflab's table has an extra null row (classifier-free guidance); ADM models have none
            out["embed.label.weight"] = torch.cat([table, table.new_zeros(1, table.shape[1])])
    unexpected = sorted(set(state) - used)
    if missing or unexpected or shapes:
        parts = [f"{what} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if keys]
        raise AdmError(f"the ADM state dict does not match this UNet: {'; '.join(parts)}")
    absent = sorted(set(target) - set(out))
    if absent:
        raise AdmError(f"difflab's UNet has tensors with no ADM counterpart: {', '.join(absent[:4])}")
    return out


def difflab_to_adm(net: UNet, attention_order: str = "legacy") -> dict[str, torch.Tensor]:
    """The inverse of :func:`adm_to_difflab`: a difflab UNet's weights under ADM's names (the null
    class row dropped), e.g. to run the same weights in guided-diffusion's code."""
    if net.config.guidance_embedding or net.text is not None:
        raise AdmError("only a plain or class-conditional UNet has an ADM counterpart")
    out = {}
    for ours, theirs, module in _module_pairs(net):
        for pname, param in module.named_parameters(recurse=False):
            value = param.detach().clone()
            if ours.endswith(".qkv") and attention_order == "legacy":
                value = value[_qkv_order(_heads(net, ours), module.in_channels, False)]
            if value.ndim == 4 and _is_attention(net, ours):  # ADM's attention uses conv1d (out, in, 1)
                value = value[..., 0]
            out[f"{theirs}.{pname}"] = value
    if net.embed.label is not None:
        out["label_emb.weight"] = net.embed.label.weight.detach()[:-1].clone()
    return out


def _block(net: UNet, prefix: str):
    return net.get_submodule(prefix.rsplit(".", 1)[0])


def _is_attention(net: UNet, prefix: str) -> bool:
    return isinstance(_block(net, prefix), AttentionBlock)


def _heads(net: UNet, prefix: str) -> int:
    return _block(net, prefix).num_heads


def load_adm(path_or_state, *, image_size: int, num_heads: int | None = None, num_head_channels: int | None = None,
             attention_order: str = "legacy", device="cpu") -> UNet:
    """difflab's :class:`~difflab.nets.UNet` (eval mode) with the weights of an ADM checkpoint: a
    ``.pt`` / ``.safetensors`` file (see :func:`read_state_dict`) or a state dict. The architecture is
    read from the tensors (:func:`adm_config`); AdmError names the keys that do not fit."""
    state = path_or_state if isinstance(path_or_state, dict) else read_state_dict(path_or_state)
    config = adm_config(state, image_size=image_size, num_heads=num_heads, num_head_channels=num_head_channels)
    net = UNet(config)
    net.load_state_dict(adm_to_difflab(state, config, attention_order))
    return net.to(device).eval()

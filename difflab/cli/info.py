"""`difflab info`: the presets and samplers, or one model's configuration."""
from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="list presets and samplers, or describe a trained model",
                       description="Without DIR: the presets with their parameter counts and the "
                       "samplers with their options. With DIR: the model's configuration.")
    p.add_argument("dir", type=Path, metavar="DIR", nargs="?", help="trained model directory")
    p.set_defaults(func=run)


def run(args) -> None:
    """`difflab info [DIR]`: presets and samplers, or one model's configuration."""
    if args.dir is None:
        _print_presets()
        _print_samplers()
        return
    from ..pipeline import load
    from ..nets import count_parameters

    model = load(args.dir)
    c = model.config
    classes = f"{model.num_classes} classes" if model.num_classes else "unconditional"
    print(f"{args.dir}: preset {c.preset}, trained {model.step} steps")
    print(f"  data      {c.data} ({model.data_kind}, shape {model.data_shape}, {classes})")
    print(f"  network   {c.network}, {count_parameters(model.net):,} parameters")
    print(f"  diffusion {model.schedule.to_dict()}, prediction {c.prediction}, weighting {c.weighting}")
    print("  config:")
    for key, value in c.to_dict().items():
        print(f"    {key:<16} {value}")


def _print_presets() -> None:
    import torch

    from ..training import PRESETS
    from ..nets import UNET_PRESETS, UNet, count_parameters

    from ..training import AE_PRESETS

    times = _preset_times()
    where = times.get("measured", {})
    print(f"training presets (difflab train --preset NAME); CPU time measured by benchmarks/preset_times.py "
          f"({where.get('threads', '?')} threads, {where.get('date', 'not measured')}):")
    for name, config in PRESETS.items():
        print(f"  {name:<14} {_describe_preset(config)}, {_cpu_time(times.get('presets', {}).get(name), config.steps)}")
    print("autoencoder presets (difflab train-autoencoder --preset NAME):")
    for name, config in AE_PRESETS.items():
        print(f"  {name:<14} data {config.data}, {config.steps:,} steps of batch {config.batch_size}, "
              f"{_cpu_time(times.get('autoencoder_presets', {}).get(name), config.steps)}")
    print("UNet presets (network only):")
    with torch.device("meta"):  # counts parameters without allocating them
        for name, net_config in UNET_PRESETS.items():
            params = count_parameters(UNet(net_config))
            print(f"  {name:<14} {params / 1e6:6.2f}M parameters, {net_config.resolution}x"
                  f"{net_config.resolution}x{net_config.in_channels}")


def _preset_times() -> dict:
    """The measured CPU times of the presets (difflab/training/preset_times.json), {} if unreadable."""
    import json

    from .. import training

    try:
        return json.loads((Path(training.__file__).parent / "preset_times.json").read_text())
    except (OSError, ValueError):
        return {}


def _cpu_time(entry: dict | None, steps: int) -> str:
    """``"about 5 min on the CPU"``: a preset's measured seconds per step (its entry of
    preset_times.json) times its ``steps``."""
    if not entry or "seconds_per_step" not in entry:
        return "CPU time not measured"
    return f"about {_duration(entry['seconds_per_step'] * steps)} on the CPU"


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}" if seconds >= 20 * size else f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _describe_preset(config) -> str:
    import torch

    from ..nets import build_network, count_parameters

    net = dict(config.net, **({"num_classes": config.num_classes} if config.num_classes else {}))
    with torch.device("meta"):
        params = count_parameters(build_network(config.network, net))
    from ..training.config import LATENT_PRESETS

    latent = f" (latents of --autoencoder: {LATENT_PRESETS[config.preset]})" if config.preset in LATENT_PRESETS else ""
    return (f"{config.network} {params / 1e6:.2f}M parameters, data {config.data or '(give --data)'}{latent}, "
            f"{config.steps:,} steps of batch {config.batch_size}")


def _print_samplers() -> None:
    from ..samplers import SAMPLERS, STOCHASTIC, sampler_options

    print("samplers (--sampler NAME):")
    for name, fn in SAMPLERS.items():
        options = ", ".join(f"{k}={v}" for k, v in sampler_options(name).items())
        kind = "stochastic" if name in STOCHASTIC else "deterministic"
        print(f"  {name:<16} {kind:<13} {options or '-'}")
        print(f"  {'':<16} {_summary(fn.__doc__)}")


def _summary(doc: str | None, width: int = 96) -> str:
    """The first paragraph of a docstring on one line, cut at a word boundary to ``width`` characters."""
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    return text if len(text) <= width else text[: text.rfind(" ", 0, width - 3)] + " ..."

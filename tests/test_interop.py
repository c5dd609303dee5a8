"""Models from elsewhere: diffusers pipelines and ADM state dicts, checked against diffusers' own
model calls and schedulers, and against an independent functional ADM forward pass.

Every diffusers model here is small and randomly initialised (weights perturbed, so no branch is
zero), saved with ``save_pretrained`` into a temporary folder and read back by difflab.
"""
import json
import math
import subprocess
import sys

import pytest

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import difflab  # noqa: E402
from difflab.interop import (AdmError, DiffusersError, adm_config, difflab_to_adm, from_diffusers,  # noqa: E402
                             is_diffusers_dir, load_adm, schedule_from_config)
from difflab.nets import UNet, UNetConfig  # noqa: E402
from difflab.pipeline import CheckpointError  # noqa: E402
from difflab.schedules import DiscreteVP  # noqa: E402

PREDICTIONS = ("epsilon", "v_prediction", "sample")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturb(model, seed=0, scale=0.05):
    """Add noise to every parameter, so zero-initialised output layers do not hide a wrong mapping."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model.eval()


def tiny_unet(**kw):
    torch.manual_seed(0)
    args = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                norm_num_groups=8, attention_head_dim=8)
    return perturb(diffusers.UNet2DModel(**{**args, **kw}))


def tiny_dit(num_classes=3):
    torch.manual_seed(0)
    return perturb(diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1, sample_size=4,
        patch_size=2, num_embeds_ada_norm=num_classes, norm_num_groups=4))


def tiny_vae():
    torch.manual_seed(0)
    return perturb(diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=4, sample_size=8, layers_per_block=1), scale=0.01)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def save_ddpm(path, unet, scheduler):
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(path)
    return path


def x0_from_diffusers(output, x_t, abar, prediction_type):
    """diffusers' own conversion of a model output to x0 (DDPMScheduler.step, eq. 15 of Ho et al.)."""
    a, s = abar.sqrt(), (1 - abar).sqrt()
    if prediction_type == "epsilon":
        return (x_t - s * output) / a
    if prediction_type == "v_prediction":
        return a * x_t - s * output
    return output


# --- Schedules -------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    {"beta_schedule": "linear"}, {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"}, {"beta_schedule": "sigmoid"}, {"num_train_timesteps": 50},
    {"trained_betas": torch.linspace(1e-3, 0.05, 100).tolist(), "num_train_timesteps": 100}])
def test_schedule_equals_diffusers_alphas_cumprod(config):
    sched = diffusers.DDPMScheduler(**config)
    schedule, prediction, _ = schedule_from_config(sched)
    assert isinstance(schedule, DiscreteVP) and prediction == "eps"
    ours = schedule.alphas_cumprod
    assert ours.shape == sched.alphas_cumprod.shape
    torch.testing.assert_close(ours.float(), sched.alphas_cumprod, rtol=2e-5, atol=1e-7)
    # and the round trip through the schedule's JSON form (what a model directory stores)
    assert torch.equal(difflab.schedules.make_schedule(schedule.to_dict()).alphas_cumprod, ours)


@pytest.mark.parametrize("config, words", [
    ({"_class_name": "ScoreSdeVeScheduler"}, "unsupported diffusers scheduler"),
    ({"prediction_type": "flow"}, "unsupported prediction_type"),
    ({"beta_schedule": "exp"}, "unsupported beta_schedule"),
    ({"rescale_betas_zero_snr": True}, "zero_snr"),
    ({"trained_betas": [0.1, 0.2], "num_train_timesteps": 3}, "trained_betas has 2"),
    ({"_class_name": "EDMEulerScheduler", "prediction_type": "v_prediction"}, "EDM"),
])
def test_unsupported_scheduler_configs_are_one_line_errors(config, words):
    with pytest.raises(DiffusersError, match=words) as info:
        schedule_from_config(config)
    assert "\n" not in str(info.value)


# --- Parity of the denoiser with diffusers' model calls --------------------------------------


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_unet_denoiser_equals_diffusers_call(tmp_path, unet, prediction_type):
    sched = diffusers.DDPMScheduler(prediction_type=prediction_type)
    den = from_diffusers(save_ddpm(tmp_path / "pipe", unet, sched))
    assert den.data_shape == (1, 8, 8) and den.autoencoder is None
    gen = torch.Generator().manual_seed(1)
    for t in (0, 7, 250, 999):
        abar = sched.alphas_cumprod[t]
        x_t = torch.randn(3, 1, 8, 8, generator=gen)
        with torch.no_grad():
            expected = x0_from_diffusers(unet(x_t, t).sample, x_t, abar, prediction_type)
            sigma = ((1 - abar) / abar).sqrt()
            ours = den(x_t / abar.sqrt(), torch.full((3,), float(sigma)))
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_unet_with_cross_attention_takes_encoder_hidden_states(tmp_path):
    torch.manual_seed(0)
    model = perturb(diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12, norm_num_groups=8, attention_head_dim=8))
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    prediction_type="v_prediction")
    model.save_pretrained(tmp_path / "unet")
    sched.save_pretrained(tmp_path / "scheduler")
    den = from_diffusers(tmp_path / "unet")  # a model folder with a sibling scheduler/
    context = torch.randn(2, 5, 12)
    t, abar = 400, sched.alphas_cumprod[400]
    x_t = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = x0_from_diffusers(model(x_t, t, encoder_hidden_states=context).sample, x_t, abar, "v_prediction")
        ours = den(x_t / abar.sqrt(), ((1 - abar) / abar).sqrt().expand(2), encoder_hidden_states=context)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(CheckpointError, match="encoder_hidden_states"):
        difflab.load(tmp_path / "unet", "cpu")


def test_dit_latent_pipeline(tmp_path):
    dit, vae = tiny_dit(), tiny_vae()
    sched = diffusers.DPMSolverMultistepScheduler()
    diffusers.DiTPipeline(transformer=dit, vae=vae, scheduler=sched).save_pretrained(tmp_path / "dit")
    den = from_diffusers(tmp_path / "dit")
    assert den.data_shape == (4, 4, 4) and den.num_classes == 3
    assert den.autoencoder.image_shape == (3, 8, 8) and den.scale_factor == vae.config.scaling_factor
    t, abar = 600, sched.alphas_cumprod[600]
    x_t, y = torch.randn(4, 4, 4, 4), torch.tensor([0, 1, 2, 3])  # 3 is DiT's null class
    with torch.no_grad():
        eps = dit(x_t, torch.full((4,), t), class_labels=y).sample[:, :4]  # learned-sigma half dropped
        expected = x0_from_diffusers(eps, x_t, abar, "epsilon")
        ours = den(x_t / abar.sqrt(), ((1 - abar) / abar).sqrt().expand(4), y=y)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    # difflab.load: class-conditional sampling with classifier-free guidance (DiT's null row), decoded
    model = difflab.load(tmp_path / "dit", "cpu")
    images = model.sample(2, steps=4, seed=0, y=[0, 2], guidance=3.0)
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()
    # the latent model's editing path (encode -> SDEdit -> decode) works too
    z = model.encode(images)
    assert z.shape == (2, 4, 4, 4)


# --- Samplers against diffusers' schedulers --------------------------------------------------


def test_one_ddim_step_equals_diffusers(tmp_path, unet):
    sched = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True)
    den = from_diffusers(save_ddpm(tmp_path / "pipe", unet, sched))
    sched.set_timesteps(10)
    gen = torch.Generator().manual_seed(2)
    timesteps = sched.timesteps.tolist()
    for k in (0, 4, len(timesteps) - 1):
        t = timesteps[k]
        prev = t - sched.config.num_train_timesteps // 10
        abar_t = sched.alphas_cumprod[t]
        abar_prev = sched.alphas_cumprod[prev] if prev >= 0 else torch.tensor(1.0)
        x_t = torch.randn(2, 1, 8, 8, generator=gen)
        with torch.no_grad():
            expected = sched.step(unet(x_t, t).sample, t, x_t, eta=0.0).prev_sample
        sigmas = torch.stack([((1 - a) / a).sqrt() for a in (abar_t, abar_prev)])
        ours = difflab.sample(den, x_t / abar_t.sqrt(), sigmas, "ddim") * abar_prev.sqrt()
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_ten_step_dpmpp_run_equals_diffusers_pipeline(tmp_path, unet):
    sched = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)
    path = save_ddpm(tmp_path / "pipe", unet, sched)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=4, generator=torch.Generator().manual_seed(3), num_inference_steps=10,
                  output_type="np").images  # (B, H, W, C) in [0, 1]
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    sched.set_timesteps(10)
    sigmas = sched.sigmas.float()
    assert float(sigmas[-1]) == 0 and len(sigmas) == 11
    den = from_diffusers(path)
    # diffusers starts at x_T = noise (variance preserving); in difflab's variables x = x_T / alpha_T
    ours = difflab.sample(den, noise * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas, "dpmpp_2m")
    ours = (ours.clamp(-1, 1) / 2 + 0.5).permute(0, 2, 3, 1).numpy()
    assert abs(ours - theirs).max() < 2e-4


# --- Loading and the command line ------------------------------------------------------------


def test_load_and_cli_sample_a_diffusers_pipeline(tmp_path, unet):
    path = save_ddpm(tmp_path / "pipe", unet, diffusers.DDPMScheduler())
    assert is_diffusers_dir(path) and is_diffusers_dir(path / "unet") and not is_diffusers_dir(tmp_path)
    model = difflab.load(path, "cpu")
    assert model.config.prediction == "eps" and model.source["pipeline"] == "DDPMPipeline"
    a = model.sample(3, sampler="unipc", steps=6, seed=0)
    b = model.sample(3, sampler="unipc", steps=6, seed=0)
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b)
    out = tmp_path / "x.png"
    run = subprocess.run([sys.executable, "-m", "difflab", "sample", str(path), "--n", "4", "--sampler", "unipc",
                          "--steps", "5", "--out", str(out)], capture_output=True, text=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert run.returncode == 0, run.stderr
    assert out.stat().st_size > 0


def test_editing_takes_a_diffusers_model(tmp_path, unet):
    model = difflab.load(save_ddpm(tmp_path / "pipe", unet, diffusers.DDPMScheduler()), "cpu")
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    mask = torch.zeros_like(x)
    mask[..., :4] = 1
    out = difflab.editing.inpaint(model.denoiser, x, mask, model.sigmas(8, sampler="euler"), method="replace",
                                  generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out[..., :4], x[..., :4], atol=1e-5)


def cli(*args):
    run = subprocess.run([sys.executable, "-m", "difflab", *map(str, args)], capture_output=True, text=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": ""})
    return run.returncode, run.stderr.strip()


def test_bad_diffusers_folders_are_one_line_errors(tmp_path, unet):
    path = save_ddpm(tmp_path / "pipe", unet, diffusers.DDPMScheduler())
    scheduler = path / "scheduler" / "scheduler_config.json"
    config = json.loads(scheduler.read_text())

    def check(words):
        code, err = cli("sample", path, "--n", "2", "--steps", "2", "--out", tmp_path / "x.png")
        assert code == 2 and len(err.splitlines()) == 1 and words in err, err
        assert not (tmp_path / "x.png").exists()

    scheduler.write_text(json.dumps({**config, "prediction_type": "flow"}))
    check("unsupported prediction_type")
    scheduler.write_text(json.dumps({**config, "_class_name": "KarrasVeScheduler"}))
    check("unsupported diffusers scheduler")
    scheduler.unlink()
    check("no such file")
    scheduler.write_text(json.dumps(config))
    weights = next((path / "unet").glob("*.safetensors"))
    weights.rename(weights.with_suffix(".bin"))  # only "pickled" weights: refused, never unpickled
    check("does not unpickle")


# --- ADM (guided-diffusion) state dicts ------------------------------------------------------


ADM_CASES = {
    "ddpm-like": dict(in_channels=3, resolution=16, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                      attn_resolutions=(8,), num_heads=2, scale_shift_norm=False),
    "adm-imagenet-like": dict(in_channels=3, resolution=16, base_channels=32, channel_mult=(1, 1, 2),
                              num_res_blocks=2, attn_resolutions=(8, 4), head_channels=16, scale_shift_norm=True,
                              resblock_updown=True, num_classes=5, learn_sigma=True),
}


def adm_forward(sd, cfg: UNetConfig, x, t, y=None, legacy=True):
    """guided-diffusion's UNetModel.forward written functionally on its own state-dict names (the
    reference the mapping is checked against; it shares no code with difflab.nets)."""
    def norm(h, p):
        return F.group_norm(h.float(), 32, sd[p + ".weight"], sd[p + ".bias"])

    def conv(h, p, **kw):
        return F.conv2d(h, sd[p + ".weight"], sd[p + ".bias"], **kw)

    def resblock(h, p, emb, resample=None):
        r = F.silu(norm(h, p + ".in_layers.0"))
        if resample == "down":
            r, h = F.avg_pool2d(r, 2), F.avg_pool2d(h, 2)
        elif resample == "up":
            r, h = F.interpolate(r, scale_factor=2.0), F.interpolate(h, scale_factor=2.0)
        r = conv(r, p + ".in_layers.2", padding=1)
        e = F.linear(F.silu(emb), sd[p + ".emb_layers.1.weight"], sd[p + ".emb_layers.1.bias"])[..., None, None]
        if cfg.scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            r = norm(r, p + ".out_layers.0") * (1 + scale) + shift
        else:
            r = norm(r + e, p + ".out_layers.0")
        r = conv(F.silu(r), p + ".out_layers.3", padding=1)
        skip = conv(h, p + ".skip_connection") if p + ".skip_connection.weight" in sd else h
        return skip + r

    def attention(h, p):
        b, c, hh, ww = h.shape
        heads = c // cfg.head_channels if cfg.head_channels else cfg.num_heads
        flat = h.reshape(b, c, -1)
        qkv = F.conv1d(norm(flat, p + ".norm"), sd[p + ".qkv.weight"], sd[p + ".qkv.bias"])
        d = c // heads
        if legacy:  # heads first, then q, k, v
            q, k, v = qkv.reshape(b * heads, 3 * d, -1).split(d, dim=1)
        else:
            q, k, v = (z.reshape(b * heads, d, -1) for z in qkv.chunk(3, dim=1))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
        return (flat + F.conv1d(a, sd[p + ".proj_out.weight"], sd[p + ".proj_out.bias"])).reshape(b, c, hh, ww)

    def run_block(h, p, emb, down_stage=False, output=False):
        i = 0
        while any(k.startswith(f"{p}.{i}.") for k in sd):
            q = f"{p}.{i}"
            if q + ".qkv.weight" in sd:
                h = attention(h, q)
            elif q + ".op.weight" in sd:
                h = conv(h, q + ".op", stride=2, padding=1)
            elif q + ".conv.weight" in sd:
                h = conv(F.interpolate(h, scale_factor=2.0), q + ".conv", padding=1)
            else:  # a residual block; BigGAN resampling in a down stage or as an output block's upsampler
                h = resblock(h, q, emb, "down" if down_stage else "up" if output and i > 0 else None)
            i += 1
        return h

    half = cfg.base_channels // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    emb = F.linear(F.silu(F.linear(emb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])),
                   sd["time_embed.2.weight"], sd["time_embed.2.bias"])
    if y is not None:
        emb = emb + sd["label_emb.weight"][y]
    hs = [conv(x, "input_blocks.0.0", padding=1)]
    n_in = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("input_blocks."))
    for i in range(1, n_in):
        hs.append(run_block(hs[-1], f"input_blocks.{i}", emb, down_stage=i % (cfg.num_res_blocks + 1) == 0))
    h = run_block(hs[-1], "middle_block", emb)
    n_out = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("output_blocks."))
    for i in range(n_out):
        h = run_block(torch.cat([h, hs.pop()], dim=1), f"output_blocks.{i}", emb, output=True)
    return conv(F.silu(norm(h, "out.0")), "out.2", padding=1)


@pytest.mark.parametrize("case", list(ADM_CASES))
@pytest.mark.parametrize("order", ["legacy", "new"])
def test_adm_state_dict_runs_as_in_guided_diffusion(tmp_path, case, order):
    cfg = UNetConfig(**ADM_CASES[case], dropout=0.0)
    torch.manual_seed(0)
    net = perturb(UNet(cfg))
    sd = difflab_to_adm(net, order)
    assert not any(k.startswith(("embed", "encoder", "up.", "conv_out")) for k in sd)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 700.0])
    y = torch.tensor([1, 4]) if cfg.num_classes else None
    with torch.no_grad():
        reference = adm_forward(sd, cfg, x, t, y, legacy=order == "legacy")
        # the architecture read back from the tensors, the weights mapped onto a fresh difflab UNet
        heads = {"num_head_channels": cfg.head_channels} if cfg.head_channels else {"num_heads": cfg.num_heads}
        assert adm_config(sd, image_size=16, **heads) == cfg
        loaded = load_adm(sd, image_size=16, attention_order=order, **heads)
        torch.testing.assert_close(loaded(x, t, y), reference, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(net(x, t, y), reference, rtol=1e-4, atol=1e-5)
    # from files: .pt through torch.load(weights_only=True), and .safetensors
    from safetensors.torch import save_file
    torch.save(sd, tmp_path / "adm.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "adm.safetensors")
    for name in ("adm.pt", "adm.safetensors"):
        again = load_adm(tmp_path / name, image_size=16, attention_order=order, **heads)
        with torch.no_grad():
            torch.testing.assert_close(again(x, t, y), reference, rtol=1e-4, atol=1e-5)


def test_adm_mismatches_name_the_keys(tmp_path):
    cfg = UNetConfig(**ADM_CASES["ddpm-like"], dropout=0.0)
    sd = difflab_to_adm(UNet(cfg))
    bad = dict(sd)
    del bad["middle_block.1.qkv.weight"]
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(AdmError, match="missing middle_block.1.qkv.weight.*unexpected extra.weight"):
        load_adm(bad, image_size=16, num_heads=2)
    bad = dict(sd, **{"out.2.bias": torch.zeros(7)})
    with pytest.raises(AdmError, match="mis-shaped out.2.bias"):
        load_adm(bad, image_size=16, num_heads=2)
    with pytest.raises(AdmError, match="num_head_channels"):
        load_adm(sd, image_size=16)
    with pytest.raises(AdmError, match="not an ADM UNet"):
        load_adm({"weight": torch.zeros(2)}, image_size=16, num_heads=2)


class Payload:
    """A pickle that would run code when unpickled."""

    def __reduce__(self):
        return (print, ("PAYLOAD EXECUTED",))


def test_adm_loader_never_runs_a_pickled_payload(tmp_path, capsys):
    torch.save({"time_embed.0.weight": torch.zeros(2, 2), "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(AdmError, match="not a readable state dict"):
        load_adm(tmp_path / "evil.pt", image_size=16, num_heads=1)
    assert "PAYLOAD" not in capsys.readouterr().out
